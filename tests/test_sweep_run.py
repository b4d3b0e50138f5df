"""Sweeps end to end on ResNet-9 / CIFAR-10 (16 test images, 4 points): in-process, on a local Ray cluster started
in this process, with the driver killed (kill -9) and resumed, with a Ray worker killed (kill -9), and the report.

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

import pytest
import torch
import yaml

import aimc
from aimc import sweep
from aimc.cli import main
from aimc.sweep.cache import MAPPING_FILE
from aimc.sweep.store import STORE_FILE

pytest.importorskip("aimc.data")
try:
    from aimc.data import find_data_dir

    find_data_dir()
except Exception:  # no CIFAR-10 here: these tests need the real data set
    pytest.skip("CIFAR-10 not found (../shared/data or $AIMC_DATA)", allow_module_level=True)

SPEC = {
    "name": "tiny",
    "network": "resnet9",
    "data": {"samples": 16, "calibration_samples": 16, "batch_size": 16},
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
    assert ref["samples"] == 16 and 0.5 <= ref["accuracy"] <= 1.0  # the trained network, in software
    for r in rows:
        assert r.metric == "accuracy" and r.details["samples"] == 16
        assert r.value == r.details["correct"] / 16
        assert 0.4 <= r.value <= 1.0  # the HWA network on the chip is far above chance (0.1) on any 16 images
        assert r.provenance["aimc"] == aimc.__version__ and r.provenance["torch"] == torch.__version__
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
    assert _values(out) == values  # every point once, with the reference's value


ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_cluster():
    """A local 2-CPU Ray cluster started in this process."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_sweep_equals_the_in_process_sweep(reference, ray_cluster, tmp_path):
    _, values = reference
    out = _with_cached_mapping(reference, tmp_path / "ray")
    result = sweep.run(SPEC, out=out, backend="ray", workers=2, progress=False)
    assert result.complete and result.computed == 4 and "Ray" in result.executor
    assert _values(out) == values
    with sweep.ResultStore(out, None, create=False) as store:
        rows = store.results()
    assert len({r.worker for r in rows}) == 2 and all(not r.worker.endswith(f":{os.getpid()}") for r in rows)
    assert sorted(r.chip_reused for r in rows) == [False, False, True, True]  # each worker programmed its chip once


def test_killing_a_ray_worker_midway_finishes_every_point_exactly_once(reference, ray_cluster, tmp_path):
    _, values = reference
    killed: list[int] = []

    def kill_first_worker(result: sweep.PointResult) -> None:
        if not killed:  # the worker that sent the first point is now busy with its second one: kill -9 it
            pid = int(result.worker.rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)

    out = _with_cached_mapping(reference, tmp_path / "ray-killed")
    result = sweep.run(SPEC, out=out, backend="ray", workers=2, progress=False, on_result=kill_first_worker)
    assert killed and result.complete and result.computed == 4
    assert _values(out) == values
    with sweep.ResultStore(out, None, create=False) as store:
        rows = store.results()
    workers = [r.worker for r in rows]
    assert sum(w.endswith(f":{killed[0]}") for w in workers) == 1  # its unfinished point ran again elsewhere ...
    assert len(set(workers)) == 3  # ... on the restarted worker (a new process)
    assert sweep.run(SPEC, out=out, backend="ray", workers=2, progress=False).computed == 0
