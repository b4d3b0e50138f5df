"""The SQLite result store: one row per point key, whatever happens (duplicates, concurrent writers, kill -9)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from aimc.sweep import PointResult, ResultStore
from aimc.sweep.errors import StoreError
from aimc.sweep.store import STORE_FILE

CONTEXT = {"network": "resnet9", "weights_sha256": "00", "samples": 8, "calibration_samples": 8, "batch_size": 8}


def result(i: int, value: float = 0.5) -> PointResult:
    return PointResult(
        key=f"k{i:06d}",
        seed=i,
        device="hermes-2dev",
        strategy="tdp",
        t_seconds=60.0,
        mode="four-phase",
        drift_compensation=True,
        read=0,
        metric="accuracy",
        value=value,
        details={"correct": 4, "samples": 8},
        read_seed=123,
        program_s=0.1,
        run_s=0.2,
        cpu_s=0.25,
        chip_reused=False,
        worker="host:1",
        provenance={"aimc": "0.1.0"},
        finished_utc="2026-01-01T00:00:00+00:00",
    )


def test_a_point_is_stored_once_and_reads_back_equal(tmp_path):
    with ResultStore(tmp_path, CONTEXT) as store:
        assert store.add(result(1)) is True
        assert store.add(result(1, value=0.9)) is False  # a second result for the same key changes nothing
        assert store.count() == 1
        assert store.results() == [result(1)]
        assert store.finished_keys() == {"k000001"}
    with ResultStore(tmp_path, CONTEXT) as store:  # reopened: the row is durable
        assert store.results()[0].value == 0.5
        assert store.get_meta("context") == CONTEXT
        assert store._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_folder_of_another_sweep_or_a_foreign_file_is_refused(tmp_path):
    ResultStore(tmp_path, CONTEXT).close()
    with pytest.raises(StoreError, match=r"different sweep \(weights_sha256: stored '00', now '11'\)"):
        ResultStore(tmp_path, CONTEXT | {"weights_sha256": "11"})
    with pytest.raises(StoreError, match="holds no sweep results"):
        ResultStore(tmp_path / "empty", None, create=False)
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / STORE_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a usable SQLite store"):
        ResultStore(tmp_path / "junk", CONTEXT)


WRITER = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    from test_sweep_store import CONTEXT, result
    from aimc.sweep import ResultStore
    store = ResultStore({folder!r}, CONTEXT)
    print("ready", flush=True)
    for i in range({start}, {stop}):
        store.add(result(i))
    """
)


def _writer(folder, start, stop):
    code = WRITER.format(tests=os.path.dirname(__file__), folder=str(folder), start=start, stop=stop)
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def test_concurrent_writers_of_overlapping_points_store_each_exactly_once(tmp_path):
    ResultStore(tmp_path, CONTEXT).close()
    added: list[int] = []

    def write(start: int, stop: int) -> None:
        with ResultStore(tmp_path, CONTEXT) as store:  # its own connection: SQLite's file locks arbitrate
            added.append(sum(store.add(result(i)) for i in range(start, stop)))

    threads = [threading.Thread(target=write, args=(0, 60)), threading.Thread(target=write, args=(30, 90))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    with ResultStore(tmp_path, CONTEXT) as store:
        keys = [r.key for r in store.results()]
    assert sorted(keys) == [f"k{i:06d}" for i in range(90)]
    assert sum(added) == 90  # the 30 overlapping points were stored by exactly one of the writers


def test_kill_9_of_a_writer_leaves_whole_rows_and_a_rerun_completes_exactly_once(tmp_path):
    p = _writer(tmp_path, 0, 100_000)
    assert p.stdout.readline().strip() == "ready"
    db = sqlite3.connect(str(tmp_path / STORE_FILE))
    deadline = time.monotonic() + 30
    while db.execute("SELECT COUNT(*) FROM points").fetchone()[0] < 50 and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    db.close()
    with ResultStore(tmp_path, CONTEXT) as store:
        assert store._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = store.results()
        n = len(stored)
        assert 50 <= n < 100_000
        assert all(r == result(int(r.key[1:])) for r in stored)  # every row whole, none torn
        assert [r.key for r in stored] == [f"k{i:06d}" for i in range(n)]  # in order, no gap
    with ResultStore(tmp_path, CONTEXT) as store:  # the "resume": writes every point again
        assert sum(store.add(result(i)) for i in range(n + 20)) == 20
        keys = [r.key for r in store.results()]
    assert keys == [f"k{i:06d}" for i in range(n + 20)]
