"""The package's import graph: no cycles, and the hardware hierarchy devices -> core -> digital -> compiler -> chip ->
perf imported downwards only.

Every ``import`` of an ``aimc`` module counts, wherever it stands: at module level, inside a function (a lazy import
must not hide a cycle) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import aimc

ROOT = Path(aimc.__file__).parent
#: The hardware hierarchy, lowest first: a package may import those before it, never those after it.
HIERARCHY = ("aimc.devices", "aimc.core", "aimc.digital", "aimc.compiler", "aimc.chip", "aimc.perf")


def _modules() -> dict[str, tuple[Path, bool]]:
    """Module name -> (file, is a package) of every module of aimc."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = ["aimc", *path.relative_to(ROOT).with_suffix("").parts]
        package = parts[-1] == "__init__"
        out[".".join(parts[:-1] if package else parts)] = (path, package)
    return out


def _imports() -> dict[str, set[str]]:
    """Module -> the aimc modules it imports (a name imported from a package counts as its submodule if it is one)."""
    modules = _modules()

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, (path, package) in modules.items():
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {resolve(a.name) for a in node.names if a.name.split(".")[0] == "aimc"}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = name.split(".") if package else name.split(".")[:-1]
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                if base.split(".")[0] == "aimc":
                    for a in node.names:
                        full = f"{base}.{a.name}"
                        targets.add(full if full in modules else resolve(base))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` (its nodes in order, the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)) is not None:
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)) is not None:
            return found
    return None


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_module_imports_itself_through_others():
    assert _cycle(_imports()) is None, " -> ".join(_cycle(_imports()) or [])


def test_no_package_imports_itself_through_others():
    """Between the top-level parts of aimc (packages and modules; the root package, which re-exports the public API,
    left out): no cycle."""
    packages: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        if module != "aimc":
            packages.setdefault(_package(module), set()).update(
                _package(t) for t in targets if t != "aimc" and _package(t) != _package(module)
            )
    assert _cycle(packages) is None, " -> ".join(_cycle(packages) or [])


def test_the_hardware_hierarchy_is_imported_downwards():
    upward = sorted(
        f"{module} imports {target}"
        for module, targets in _imports().items()
        for target in targets
        if _package(module) in HIERARCHY
        and _package(target) in HIERARCHY
        and HIERARCHY.index(_package(target)) > HIERARCHY.index(_package(module))
    )
    assert not upward, upward
