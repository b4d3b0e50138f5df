"""Kernels chosen by measurement: the one registry of the alternative implementations of aimc's hot operations.

Several operations of the simulation can run in more than one way: the core's signed product on int8 planes through
oneDNN or ``torch._int_mm``, or in float32; the auxiliary products in bfloat16 or float32; the converter and LDPU
arithmetic compiled by numba or as PyTorch operations; one MVM on both thread pools or split into per-thread parts;
training under bfloat16 autocast or in float32. Which is fastest depends on the CPU, the PyTorch build and the shape,
not on the CPU's feature flags: the same oneDNN int8 operator that is the fastest path on one x86 CPU with VNNI can be
a thousand times slower on another that has VNNI too. So every operation lists its candidates here
(:func:`operations`), and the one that runs is chosen by timing each candidate on this machine, on a representative
shape, at the operation's first use:

1. Candidates that cannot run here (no oneDNN, no numba, not a CPU tensor) are pruned. Nothing else is decided from
   flags.
2. Each remaining candidate makes a small *probe* call twice (the first pays one-off costs: loading a library's
   kernels, creating its primitives). One whose second probe is more than :data:`ABANDON_FACTOR` times slower than
   the fastest is abandoned there.
3. The others are timed on the representative call, in rounds of one call each (:data:`REPEATS` rounds); the
   fastest by the median over rounds of its time relative to the first candidate's in the same round wins (a
   shared machine's speed drifts between seconds; within a round it hits all candidates alike). A candidate listed
   earlier keeps the place unless a later one is faster by more than :data:`TIE_MARGIN` (choices then do not flip
   on timing noise between runs).

This takes milliseconds to a few tenths of a second per operation. The choice is cached per machine (CPU model,
architecture, thread count, PyTorch, numba and aimc versions) in ``kernels.json`` in the user's cache folder
(``$AIMC_CACHE_DIR``, else the platform's cache folder for aimc). An entry that is corrupt, from another machine or
version, or names a candidate that cannot run here is measured anew, never trusted.

Choosing explicitly: a :class:`Backend` passed to ``aimc.program`` / ``ProgrammedChip.run`` /
``ProgrammedCore.prepare`` fixes any operation's kernel, e.g. ``Backend(pos_neg_product="float32")``, and the
environment variable ``AIMC_KERNELS`` does the same for a whole process, e.g.
``AIMC_KERNELS="pos_neg_product=int-mm,mvm_tail=torch"``. An unknown operation or kernel name is an error that lists
the choices. The chosen kernels change the numbers slightly (each candidate states how, in ``numerics``; the tests
check every candidate against that tolerance), so every result records them (:func:`used`).

Candidates other than the first available one are measured on the CPU only; on other devices (CUDA) the first
available candidate runs.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import functools
import importlib
import json
import math
import os
import platform
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from aimc import _version
from aimc.errors import UnknownNameError, ValidationError

#: Environment variable that forces kernels for the whole process: ``"op=kernel,op=kernel"``.
FORCE_ENV = "AIMC_KERNELS"
#: Environment variable naming the folder of the kernel cache (default: the platform's user cache folder).
CACHE_DIR_ENV = "AIMC_CACHE_DIR"
#: A candidate whose probe call takes more than this many times the fastest candidate's is abandoned (its time on
#: the representative call is then not measured). Measured on a Zen 4 EPYC: oneDNN's int8 matmul 900x float32 at the
#: probe shape; the slowest useful candidate seen, torch._int_mm, 6x at the probe shape and 0.6x at the full one.
ABANDON_FACTOR = 20.0
#: A later-listed candidate replaces an earlier one only when faster by more than this fraction.
TIE_MARGIN = 0.05
#: Rounds of timed representative calls (the median of each candidate's is kept); fewer once MAX_SECONDS per
#: candidate are spent.
REPEATS = 9
#: Untimed representative calls of each candidate before the rounds (measured on a 2-core EPYC VM: the first few
#: calls of an MVM after building it ran up to 20% slower).
WARMUP = 3
#: Time budget (s) of one candidate's representative calls.
MAX_SECONDS = 0.5
#: Version of the cache file's layout.
CACHE_FORMAT = 1

#: Modules that register operations (imported by :func:`operations` so that the registry is complete).
_OWNERS = ("aimc.core.analog", "aimc.chip", "aimc.train.cifar")


class KernelError(UnknownNameError):
    """An operation or kernel name that is not in the registry, or a kernel that cannot run here."""


@dataclass(frozen=True)
class Candidate:
    """One implementation of an operation.

    Attributes:
        name: its name in :class:`Backend` and ``AIMC_KERNELS``.
        summary: what it is, in a few words.
        numerics: how its results differ from the operation's reference, with the tolerance the tests check.
        available: ``available(device_type)`` whether it can run at all here (a library or build feature, the
            device); it prunes, it never chooses.
    """

    name: str
    summary: str
    numerics: str
    available: Callable[[str], bool] = field(default=lambda device_type: True, repr=False)


def compiled_or_torch(
    compiled: str, torch_ops: str, compiled_available: Callable[[str], bool]
) -> tuple[Candidate, Candidate]:
    """The two candidates of an operation that has a numba-compiled pass and PyTorch operations giving the same
    numbers: ``"numba"`` (described by ``compiled``, runnable where ``compiled_available``) and ``"torch"`` (the
    reference, described by ``torch_ops``)."""
    return (
        Candidate("numba", compiled, "bit-identical to torch", compiled_available),
        Candidate("torch", torch_ops, "the reference"),
    )


@dataclass
class Workload:
    """The calls that time one candidate: ``probe`` (small, made first; a clearly slow candidate is abandoned after
    it) and ``run`` (the representative call, timed)."""

    probe: Callable[[], object]
    run: Callable[[], object]


@dataclass(frozen=True)
class Operation:
    """A hot operation with its candidates, in order of preference on a tie.

    Attributes:
        name: the operation's name.
        summary: what it computes.
        candidates: its implementations.
        workloads: ``workloads(choices, names)`` builds a :class:`Workload` for each candidate named in ``names``
            (representative shapes), given the chosen kernels of the operations in ``after``; its set-up (compiling,
            packing) is not timed.
        after: operations whose choice the workloads use (chosen first).
    """

    name: str
    summary: str
    candidates: tuple[Candidate, ...]
    workloads: Callable[[Mapping[str, str], tuple[str, ...]], dict[str, Workload]] = field(repr=False)
    after: tuple[str, ...] = ()

    def candidate(self, name: str) -> Candidate:
        for c in self.candidates:
            if c.name == name:
                return c
        raise KernelError(
            f"unknown kernel {name!r} for operation {self.name!r}; the choices are: "
            + ", ".join(c.name for c in self.candidates)
        )


@dataclass(frozen=True)
class Choice:
    """The kernel that runs an operation, and why.

    Attributes:
        kernel: the candidate's name.
        source: ``"measured"``, ``"cache"``, ``"AIMC_KERNELS"``, ``"backend"`` (a :class:`Backend` argument),
            ``"only candidate"`` or ``"device"`` (not measured off the CPU).
        times_ms: median representative time of each candidate measured (ms); None where abandoned or failed.
        probe_ms: the probe call of each candidate (ms, the second call); None where it failed.
        measured_utc: when the measurement was made (cached choices keep theirs).
    """

    kernel: str
    source: str
    times_ms: dict[str, float | None] = field(default_factory=dict)
    probe_ms: dict[str, float | None] = field(default_factory=dict)
    measured_utc: str = ""


_registry: dict[str, Operation] = {}
_lock = threading.RLock()
_memo: dict[tuple[str, str], Choice] = {}
_used: dict[str, Choice] = {}


def register(op: Operation) -> Operation:
    """Add ``op`` to the registry (by the module that implements it, at import); returns it."""
    if not op.candidates:
        raise ValueError(f"operation {op.name!r} has no candidates")
    _registry[op.name] = op
    return op


def operations() -> dict[str, Operation]:
    """Every registered operation, by name (imports the modules that implement them)."""
    for module in _OWNERS:
        importlib.import_module(module)
    return dict(_registry)


def get_operation(name: str) -> Operation:
    """The operation ``name``; :class:`KernelError` listing the operations if unknown."""
    if name not in _registry:
        operations()
    if name not in _registry:
        raise KernelError(f"unknown kernel operation {name!r}; the operations are: {', '.join(sorted(_registry))}")
    return _registry[name]


def _parse(text: str, what: str) -> dict[str, str]:
    """``"op=kernel,op=kernel"`` -> {op: kernel}, each checked against the registry."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        op, sep, kernel = item.partition("=")
        if not sep or not op.strip() or not kernel.strip():
            raise KernelError(f"{what}: {item!r} is not of the form operation=kernel (e.g. pos_neg_product=float32)")
        out[op.strip()] = kernel.strip()
    _check_choices(out, what)
    return out


def _check_choices(choices: Mapping[str, str], what: str) -> None:
    for op, kernel in choices.items():
        if not isinstance(kernel, str):
            raise KernelError(f"{what}: the kernel of {op!r} must be a name (str), got {type(kernel).__name__}")
        try:
            get_operation(op).candidate(kernel)
        except KernelError as err:
            raise KernelError(f"{what}: {err}") from None


def forced() -> dict[str, str]:
    """The kernels forced by ``AIMC_KERNELS`` (empty when unset)."""
    return dict(_forced(os.environ.get(FORCE_ENV, "")))


@functools.lru_cache(maxsize=8)
def _forced(text: str) -> tuple[tuple[str, str], ...]:
    return tuple(_parse(text, FORCE_ENV).items())


class Backend:
    """Which kernel runs each hot operation: the ones given here, the rest as ``AIMC_KERNELS`` forces or as
    measured on this machine (the module docstring).

    Args:
        **choices: ``operation=kernel`` for the operations to fix, e.g. ``Backend(pos_neg_product="float32")``.

    Example:
        >>> chip = aimc.program(mapping, backend=aimc.kernels.Backend(mvm_tail="torch"))  # doctest: +SKIP
    """

    def __init__(self, **choices: str) -> None:
        _check_choices(choices, "Backend")
        self._choices = dict(choices)

    @classmethod
    def parse(cls, text: str) -> Backend:
        """A backend from ``"op=kernel,op=kernel"`` (the ``AIMC_KERNELS`` syntax)."""
        return cls(**_parse(text, "kernels"))

    @property
    def choices(self) -> dict[str, str]:
        """The operations this backend fixes."""
        return dict(self._choices)

    def __repr__(self) -> str:
        return f"Backend({', '.join(f'{k}={v!r}' for k, v in self._choices.items())})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Backend) and other._choices == self._choices

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._choices.items())))

    def choose(self, op: str, device_type: str = "cpu") -> Choice:
        """The kernel of ``op`` for tensors on ``device_type``, with its source (measuring it if need be)."""
        operation = get_operation(op)
        if op in self._choices:
            return _available_or_raise(operation, self._choices[op], device_type, "backend")
        env = forced()
        if op in env:
            return _available_or_raise(operation, env[op], device_type, FORCE_ENV)
        return _automatic(operation, device_type, self)

    def kernel(self, op: str, device_type: str = "cpu") -> str:
        """The name of the kernel that runs ``op`` for tensors on ``device_type``; recorded by :func:`used`."""
        choice = self.choose(op, device_type)
        _used[op] = choice
        return choice.kernel


def resolve(backend: Backend | None) -> Backend:
    """``backend``, or the default backend (nothing fixed) for None; a clear error for anything else."""
    if backend is None:
        return Backend()
    if not isinstance(backend, Backend):
        raise ValidationError(f"backend must be an aimc.kernels.Backend or None, got {type(backend).__name__}")
    return backend


def used() -> dict[str, str]:
    """The kernel each operation ran with in this process so far (the latest choice of each), for provenance."""
    return {op: c.kernel for op, c in sorted(_used.items())}


def _available_or_raise(operation: Operation, name: str, device_type: str, source: str) -> Choice:
    cand = operation.candidate(name)
    if not cand.available(device_type):
        ok = [c.name for c in operation.candidates if c.available(device_type)]
        raise KernelError(
            f"{source}: kernel {name!r} of {operation.name!r} cannot run here ({device_type} tensors, torch "
            f"{torch.__version__}); the kernels that can: {', '.join(ok)}"
        )
    return Choice(name, source)


def _automatic(operation: Operation, device_type: str, backend: Backend) -> Choice:
    names = tuple(c.name for c in operation.candidates if c.available(device_type))
    if not names:
        raise KernelError(f"no kernel of {operation.name!r} can run on {device_type} tensors here")
    if len(names) == 1:
        return Choice(names[0], "only candidate")
    if device_type != "cpu":
        return Choice(names[0], "device")
    after = {op: backend.kernel(op) for op in operation.after}
    key = machine_key()
    memo_key = (key, operation.name + "".join(f"|{k}={v}" for k, v in sorted(after.items())))
    with _lock:
        hit = _memo.get(memo_key)
        if hit is not None:
            return hit
        cached = _read_cache(key, memo_key[1], operation, names)
        if cached is not None:
            _memo[memo_key] = cached
            return cached
        choice = measure(operation, after, names)
        _memo[memo_key] = choice
        _write_cache(key, memo_key[1], choice)
        return choice


def measure(
    operation: Operation,
    after: Mapping[str, str],
    names: tuple[str, ...],
    clock: Callable[[], float] = time.perf_counter,
) -> Choice:
    """Time the candidates ``names`` of ``operation`` (the module docstring's steps 2 and 3); the fastest wins.

    A candidate whose workload raises ``RuntimeError`` (an operator that refuses this build or shape; this includes
    ``NotImplementedError``) is skipped.
    """
    loads = operation.workloads(after, names)
    probe: dict[str, float | None] = {}
    for name in names:
        try:
            loads[name].probe()  # one-off costs
            start = clock()
            loads[name].probe()
            probe[name] = (clock() - start) * 1e3
        except RuntimeError:
            probe[name] = None
    finished = [t for t in probe.values() if t is not None]
    if not finished:
        raise KernelError(f"no kernel of {operation.name!r} ran on this machine")
    fastest = min(finished)
    # failed, or clearly slow: abandoned after the probe
    alive = [n for n in names if probe[n] is not None and probe[n] <= ABANDON_FACTOR * max(fastest, 1e-3)]
    samples: dict[str, list[float]] = {n: [] for n in alive}
    for _ in range(WARMUP):  # untimed: caches, buffers and thread pools settle at the representative shape
        for name in list(alive):
            try:
                loads[name].run()
            except RuntimeError:
                alive.remove(name)
    spent = 0.0
    for _ in range(REPEATS):  # in rounds, one call of each candidate per round: a slow spell hits all alike
        if spent > MAX_SECONDS * max(1, len(alive)) and all(samples[n] for n in alive):
            break
        for name in list(alive):
            try:
                start = clock()
                loads[name].run()
                samples[name].append(clock() - start)
                spent += samples[name][-1]
            except RuntimeError:
                alive.remove(name)
    times: dict[str, float | None] = {
        n: statistics.median(samples[n]) * 1e3 if n in alive and samples[n] else None for n in names
    }
    if not alive:
        raise KernelError(f"no kernel of {operation.name!r} ran on this machine")
    # compared round by round (a machine's speed drifts between seconds): the median of each candidate's time over
    # the first candidate's in the same round
    rounds = min(len(samples[n]) for n in alive)
    base = samples[alive[0]]
    relative = {n: statistics.median(samples[n][i] / base[i] for i in range(rounds)) for n in alive}
    best = alive[0]
    for name in alive[1:]:  # in order of preference: a later one must be clearly faster
        if relative[name] < (1.0 - TIE_MARGIN) * relative[best]:
            best = name
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return Choice(best, "measured", times, probe, now)


# --- the machine and the cache ---------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name (Linux ``/proc/cpuinfo``; elsewhere what the platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


@functools.lru_cache(maxsize=1)
def numba_version() -> str:
    try:
        import numba
    except ImportError:
        return "none"
    return str(numba.__version__)


def machine_key() -> str:
    """What a cached choice holds for: CPU model, architecture, threads, PyTorch, numba and aimc versions."""
    return (
        f"{cpu_model()} | {platform.machine()} | threads {torch.get_num_threads()} | torch {torch.__version__} | "
        f"numba {numba_version()} | aimc {_version.__version__}"
    )


def cache_path() -> Path:
    """The kernel cache file: ``$AIMC_CACHE_DIR/kernels.json``, else in the platform's user cache folder."""
    folder = os.environ.get(CACHE_DIR_ENV)
    if not folder:
        import platformdirs

        folder = platformdirs.user_cache_dir("aimc")
    return Path(folder) / "kernels.json"


def _load_file() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("machines"), dict):
        return {}
    return data


def _valid_times(value: object, names: tuple[str, ...]) -> bool:
    return isinstance(value, dict) and all(
        k in names and (v is None or (isinstance(v, int | float) and math.isfinite(v) and v >= 0))
        for k, v in value.items()
    )


def _read_cache(key: str, entry: str, operation: Operation, names: tuple[str, ...]) -> Choice | None:
    """The cached choice of ``entry`` for machine ``key``, or None where missing, corrupt, not runnable here, or
    measured without one of the candidates ``names`` that can run here."""
    data = _load_file()
    record = data["machines"].get(key) if data else None
    record = record.get(entry) if isinstance(record, dict) else None
    if not isinstance(record, dict):
        return None
    kernel = record.get("kernel")
    if kernel not in names:  # unknown, or cannot run here
        return None
    times, probe, when = record.get("times_ms"), record.get("probe_ms"), record.get("measured_utc", "")
    if not (_valid_times(times, names) and _valid_times(probe, names) and isinstance(when, str)):
        return None
    if times.get(kernel) is None:  # the chosen kernel must have been timed
        return None
    if any(name not in probe for name in names):  # a kernel that runs here was not measured (a newer candidate)
        return None
    return Choice(kernel, "cache", dict(times), dict(probe), when)


def _write_cache(key: str, entry: str, choice: Choice | None) -> None:
    """Add ``choice`` to the cache file (None: remove every entry of machine ``key``), atomically: a temporary file
    renamed over it. Failures are ignored (the choice is then measured again by the next process)."""
    path = cache_path()
    data = _load_file() or {"format": CACHE_FORMAT, "machines": {}}
    machines = data["machines"]
    if choice is None:
        machines.pop(key, None)
    else:
        record = machines.get(key)
        if not isinstance(record, dict):
            record = machines[key] = {}
        record[entry] = {
            "kernel": choice.kernel,
            "times_ms": choice.times_ms,
            "probe_ms": choice.probe_ms,
            "measured_utc": choice.measured_utc,
        }
    _write_file(path, data)


def _write_file(path: Path, data: dict) -> None:
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".json", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(data, f, indent=1, sort_keys=True)
            os.replace(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def clear_memory() -> None:
    """Forget the choices made in this process (the next use reads the cache or measures again)."""
    with _lock:
        _memo.clear()
        _used.clear()


def forget() -> None:
    """Forget this machine's choices, in this process and in the cache file: the next use measures again."""
    with _lock:
        clear_memory()
        _write_cache(machine_key(), "", None)


def report(backend: Backend | None = None, device_type: str = "cpu") -> dict:
    """Everything ``aimc info`` shows: the machine, versions, threads, the cache file and, per operation, the chosen
    kernel with its source and the measured time of every candidate (choosing each now if not yet chosen)."""
    backend = resolve(backend)
    ops = {}
    for name, op in operations().items():
        choice = backend.choose(name, device_type)
        ops[name] = {
            "summary": op.summary,
            "kernel": choice.kernel,
            "source": choice.source,
            "measured_utc": choice.measured_utc,
            "candidates": [
                {
                    "name": c.name,
                    "summary": c.summary,
                    "numerics": c.numerics,
                    "available": bool(c.available(device_type)),
                    "time_ms": choice.times_ms.get(c.name),
                    "probe_ms": choice.probe_ms.get(c.name),
                }
                for c in op.candidates
            ],
        }
    return {
        "cpu": cpu_model(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "aimc": _version.__version__,
        "torch": torch.__version__,
        "numba": numba_version(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "cache": str(cache_path()),
        "forced": os.environ.get(FORCE_ENV, ""),
        "operations": ops,
    }


__all__ = [
    "ABANDON_FACTOR",
    "CACHE_DIR_ENV",
    "FORCE_ENV",
    "Backend",
    "Candidate",
    "Choice",
    "KernelError",
    "Operation",
    "Workload",
    "cache_path",
    "clear_memory",
    "compiled_or_torch",
    "cpu_model",
    "forget",
    "get_operation",
    "machine_key",
    "measure",
    "numba_version",
    "operations",
    "register",
    "report",
    "resolve",
    "used",
]
