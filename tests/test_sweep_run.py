"""Sweeps end to end on ResNet-9 / CIFAR-10 (8 test images, 4 points): in-process, with the driver killed (kill -9)
and resumed, on a local Ray cluster started in this process with a worker killed (kill -9), and the report.

Every run must give the same value for the same point as the in-process reference: the read-noise seed of a point
is derived from its configuration, not from the worker or the order.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter

import pytest
import torch
import yaml

import aimc
from aimc import sweep
from aimc._provenance import code_fingerprint
from aimc.cli import main
from aimc.sweep.cache import MAPPING_FILE
from aimc.sweep.store import STORE_FILE

from conftest import HAVE_CIFAR10

if not HAVE_CIFAR10:  # these tests need the real data set
    pytest.skip(
        "needs CIFAR-10: run `aimc data fetch cifar10` (or set AIMC_DATA=DIR) to enable", allow_module_level=True
    )

SPEC = {
    "name": "tiny",
    "network": "resnet9",
    "data": {"samples": 8, "calibration_samples": 16, "batch_size": 8},
    "grid": {"seeds": [0, 1], "times": [60, "1d"], "modes": ["four-phase"], "strategies": ["tdp"]},
}


def _with_cached_mapping(reference, folder):
    """A fresh output folder holding the reference run's compiled mapping (saves a compile per test)."""
    folder.mkdir()
    shutil.copy(reference[0] / MAPPING_FILE, folder / MAPPING_FILE)
    return folder


def _values(folder) -> dict[str, float]:
    with sweep.ResultStore(folder, None, create=False) as store:
        return {r.key: r.value for r in store.results()}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The in-process run: folder and {key: value}."""
    out = tmp_path_factory.mktemp("sweep") / "local"
    result = sweep.run(SPEC, out=out, threads=1, progress=False)
    assert result.complete and result.computed == 4 and result.done_before == 0
    return out, _values(out)


def test_in_process_sweep_stores_every_point_with_seed_versions_and_timings(reference):
    out, values = reference
    spec = sweep.parse_spec(SPEC)
    assert set(values) == {spec.key(p) for p in spec.points()}
    with sweep.ResultStore(out, None, create=False) as store:
        rows = store.results()
        ref = store.get_meta("reference")
    assert ref["samples"] == 8 and 0.5 <= ref["accuracy"] <= 1.0  # the trained network, in software
    for r in rows:
        assert r.metric == "accuracy" and r.details["samples"] == 8
        assert r.value == r.details["correct"] / 8
        assert 0.4 <= r.value <= 1.0  # the HWA network on the chip is far above chance (0.1)
        assert r.provenance["aimc"] == aimc.__version__ and r.provenance["torch"] == torch.__version__
        assert r.provenance["code"] == code_fingerprint()  # the code that computed the point, not just its version
        assert r.run_s > 0 and r.worker.endswith(f":{os.getpid()}")
    assert sorted(r.chip_reused for r in rows) == [False, False, True, True]  # one chip per seed, read twice
    assert all(r.program_s > 0 for r in rows if not r.chip_reused)
    assert (out / MAPPING_FILE).is_file()
    again = sweep.run(SPEC, out=out, threads=1, progress=False)  # nothing left: no point is run twice
    assert again.computed == 0 and again.done_before == 4 and _values(out) == values


def test_report_writes_tables_figure_csv_and_html(reference, capsys):
    out, _ = reference
    assert main(["report", str(out), "--html"]) == 0
    assert "report.md" in capsys.readouterr().out
    md = (out / "report.md").read_text()
    with sweep.ResultStore(out, None, create=False) as store:
        rows = store.results()
    for t in (60.0, 86400.0):
        v = [100 * r.value for r in rows if r.t_seconds == t]
        mean = sum(v) / 2
        std = abs(v[0] - v[1]) / 2**0.5  # sample std of two values
        assert f"{mean:.2f} ± {std:.2f} (n=2)" in md
    assert "| 1 min |" in md and "| 1 d |" in md and "4 stored of 4" in md
    assert f"(code {code_fingerprint()})" in md and "mixed versions" not in md
    assert (out / "figures" / "accuracy_vs_time.png").stat().st_size > 5000
    assert "<table>" in (out / "report.html").read_text()
    assert len((out / "points.csv").read_text().splitlines()) == 5


def test_killing_the_driver_and_resuming_loses_and_repeats_nothing(reference, tmp_path):
    _, values = reference
    out = _with_cached_mapping(reference, tmp_path / "killed")
    spec_file = tmp_path / "tiny.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC))
    cmd = [sys.executable, "-m", "aimc.cli", "sweep", str(spec_file), "--out", str(out), "--threads", "1", "--quiet"]
    child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stored = 0
    deadline = time.monotonic() + 120
    while stored < 1 and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.05)
        if (out / STORE_FILE).is_file():
            with sqlite3.connect(str(out / STORE_FILE), timeout=10) as db:
                try:
                    stored = db.execute("SELECT COUNT(*) FROM points").fetchone()[0]
                except sqlite3.OperationalError:  # the child is still creating the tables
                    stored = 0
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert child.returncode == -signal.SIGKILL, child.stderr.read().decode()
    before = _values(out)
    assert 1 <= len(before) < 4
    resumed = sweep.run(SPEC, out=out, threads=1, progress=False)
    assert resumed.done_before == len(before) and resumed.computed == 4 - len(before)
    assert torch.get_num_threads() == 2  # threads=1 held only while the sweep ran
    assert _values(out) == values  # every point once, with the reference's value


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster started in this process (Ray is in the test extra: pip install -e '.[test]')."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_sweep_equals_the_in_process_sweep_even_with_a_worker_killed_midway(reference, ray_cluster, tmp_path):
    """One Ray sweep shows both: its values equal the in-process run's, and a worker killed (kill -9) while it holds
    a point is restarted by Ray, the point retried, and every point stored exactly once."""
    _, values = reference
    killed: list[int] = []

    def kill_first_worker(result: sweep.PointResult) -> None:
        if not killed:  # the worker that sent the first point is now busy with its second one: kill -9 it
            pid = int(result.worker.rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = _with_cached_mapping(reference, tmp_path / "ray")
    result = sweep.run(SPEC, out=out, backend="ray", workers=2, progress=False, on_result=kill_first_worker)
    assert killed and result.complete and result.computed == 4 and "Ray" in result.executor
    assert _values(out) == values  # bit-equal to the in-process executor, point by point
    with sweep.ResultStore(out, None, create=False) as store:
        rows = store.results()
    by_worker = Counter(r.worker for r in rows)
    assert all(not w.endswith(f":{os.getpid()}") for w in by_worker)  # computed on the Ray workers
    killed_worker = next(w for w in by_worker if w.endswith(f":{killed[0]}"))
    # the killed worker stored 1 point; its second ran again on the restarted worker (a new process, which
    # programmed the chip again); the other worker programmed its chip once and read it at both times
    assert by_worker[killed_worker] == 1 and sorted(by_worker.values()) == [1, 1, 2]
    survivor = next(w for w, n in by_worker.items() if n == 2)
    assert sorted(r.chip_reused for r in rows if r.worker == survivor) == [False, True]
    assert sweep.run(SPEC, out=out, backend="ray", workers=2, progress=False).computed == 0


def test_report_flags_points_computed_by_different_code(reference, tmp_path):
    out, _ = reference
    copy = tmp_path / "sweep"
    shutil.copytree(out, copy)
    with sqlite3.connect(str(copy / STORE_FILE)) as db:  # one point as if an older commit had computed it
        key, prov = db.execute("SELECT key, provenance FROM points LIMIT 1").fetchone()
        db.execute("UPDATE points SET provenance = ? WHERE key = ?", (prov.replace(code_fingerprint(), "0" * 16), key))
    assert main(["report", str(copy)]) == 0
    md = (copy / "report.md").read_text()
    assert "(code 0000000000000000), torch" in md and "(3 points)" in md and "mixed versions" in md
