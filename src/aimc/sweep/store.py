"""The result store of a sweep: one SQLite file in the output folder, one row per finished point.

Why SQLite (and not Parquet): it is in Python's standard library (no dependency); each point is appended in its own
transaction, which is atomic and, with ``synchronous=FULL``, durable once ``add`` returns, so a ``kill -9`` at any
moment leaves either the whole row or nothing; the PRIMARY KEY on the point's configuration hash makes "exactly
once" a property of the file itself (``INSERT OR IGNORE``: a retried or duplicated result cannot add a second row);
WAL mode lets ``aimc report`` read while a sweep is writing. Parquet files are immutable: appending a point means a
new file per point or rewriting the table, with no transaction and no uniqueness, and it needs pyarrow. For
analysis, ``aimc report`` also writes the rows as CSV.

Only the driver process writes; workers return their results to it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimc.sweep.errors import StoreError

#: File name of the store inside the output folder.
STORE_FILE = "results.sqlite"
#: Schema version written into the store; a store from a newer aimc is refused rather than misread.
SCHEMA_VERSION = 1
#: Seconds a writer waits for a lock held by another process (e.g. a report reading) before failing.
BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points (
    key TEXT PRIMARY KEY,
    seed INTEGER NOT NULL,
    device TEXT NOT NULL,
    strategy TEXT NOT NULL,
    t_seconds REAL NOT NULL,
    mode TEXT NOT NULL,
    drift_compensation INTEGER NOT NULL,
    read INTEGER NOT NULL,
    metric TEXT NOT NULL,
    value REAL NOT NULL,
    details TEXT NOT NULL,
    read_seed INTEGER NOT NULL,
    program_s REAL NOT NULL,
    run_s REAL NOT NULL,
    cpu_s REAL NOT NULL,
    chip_reused INTEGER NOT NULL,
    worker TEXT NOT NULL,
    provenance TEXT NOT NULL,
    finished_utc TEXT NOT NULL
);
"""

_COLUMNS = (
    "key",
    "seed",
    "device",
    "strategy",
    "t_seconds",
    "mode",
    "drift_compensation",
    "read",
    "metric",
    "value",
    "details",
    "read_seed",
    "program_s",
    "run_s",
    "cpu_s",
    "chip_reused",
    "worker",
    "provenance",
    "finished_utc",
)


@dataclass(frozen=True)
class PointResult:
    """The record of one finished point (one row of the store).

    Attributes:
        key: the point's configuration hash (:func:`~aimc.sweep.points.point_key`).
        seed, device, strategy, t_seconds, mode, drift_compensation, read: the point.
        metric: the metric's name; value: its value.
        details: other numbers the task returned (e.g. ``correct``, ``samples``).
        read_seed: the read-noise seed used.
        program_s: seconds spent programming the chip for this point (0 when the worker's chip was reused).
        run_s: seconds spent evaluating the point.
        cpu_s: CPU seconds the worker process used for the point (programming and evaluation); ``cpu_s`` well
            below ``program_s + run_s`` x threads means the worker waited for a CPU (a busy machine).
        chip_reused: whether the worker reused a chip it had programmed for an earlier point.
        worker: ``host:pid`` of the process that ran it.
        provenance: versions and platform of that process (:func:`aimc._provenance.provenance`).
        finished_utc: when it finished.
    """

    key: str
    seed: int
    device: str
    strategy: str
    t_seconds: float
    mode: str
    drift_compensation: bool
    read: int
    metric: str
    value: float
    details: dict[str, Any]
    read_seed: int
    program_s: float
    run_s: float
    cpu_s: float
    chip_reused: bool
    worker: str
    provenance: dict[str, str]
    finished_utc: str

    def row(self) -> tuple[Any, ...]:
        """The values in column order."""
        d = {c: getattr(self, c) for c in _COLUMNS}
        d["details"] = json.dumps(self.details, sort_keys=True)
        d["provenance"] = json.dumps(self.provenance, sort_keys=True)
        d["drift_compensation"] = int(self.drift_compensation)
        d["chip_reused"] = int(self.chip_reused)
        return tuple(d[c] for c in _COLUMNS)

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> PointResult:
        """Inverse of :meth:`row`."""
        d = {c: row[c] for c in _COLUMNS}
        d["details"] = json.loads(d["details"])
        d["provenance"] = json.loads(d["provenance"])
        d["drift_compensation"] = bool(d["drift_compensation"])
        d["chip_reused"] = bool(d["chip_reused"])
        return cls(**d)


class ResultStore:
    """The SQLite store of one sweep folder.

    Args:
        folder: the output folder (created if missing).
        context: the sweep context (:meth:`SweepSpec.context`); a folder holding another context is refused, so
            results of different weights or data never mix. None opens an existing store as it is (reports).
        create: create the store if it does not exist (False: raise StoreError).
    """

    def __init__(self, folder: str | Path, context: dict[str, Any] | None = None, *, create: bool = True) -> None:
        self.folder = Path(folder)
        self.path = self.folder / STORE_FILE
        if not self.path.is_file():
            if not create:
                raise StoreError(f"{str(self.folder)!r} holds no sweep results ({STORE_FILE} not found)")
            self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(str(self.path), timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{str(self.path)!r} is not a usable SQLite store: {err}") from None
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version > SCHEMA_VERSION:
            raise StoreError(
                f"{str(self.path)!r} has store schema {version}; this aimc reads up to {SCHEMA_VERSION}: upgrade aimc"
            )
        if context is not None:
            self._check_context(context)

    def _check_context(self, context: dict[str, Any]) -> None:
        stored = self.get_meta("context")
        if stored is None:
            self.set_meta("context", context)
            return
        if stored != context:
            diff = ", ".join(
                f"{k}: stored {stored.get(k)!r}, now {context.get(k)!r}"
                for k in sorted(set(stored) | set(context))
                if stored.get(k) != context.get(k)
            )
            raise StoreError(
                f"{str(self.folder)!r} holds results of a different sweep ({diff}); use another output folder "
                "(--out) or delete this one"
            )

    def get_meta(self, name: str) -> Any:
        """A JSON value recorded under ``name``, or None."""
        row = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else json.loads(row["value"])

    def set_meta(self, name: str, value: Any) -> None:
        """Record a JSON value under ``name`` (replacing an earlier one), atomically."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO meta(name, value) VALUES(?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value",
                (name, json.dumps(value, sort_keys=True)),
            )

    def finished_keys(self) -> set[str]:
        """Keys of every stored point."""
        return {r["key"] for r in self._db.execute("SELECT key FROM points")}

    def add(self, result: PointResult) -> bool:
        """Append one finished point in its own transaction.

        Returns:
            True if stored, False if a row with the same key was already there (the store is unchanged).
        """
        marks = ", ".join("?" * len(_COLUMNS))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                f"INSERT OR IGNORE INTO points({', '.join(_COLUMNS)}) VALUES({marks})",
                result.row(),
            )
        return cur.rowcount == 1

    def count(self) -> int:
        """Number of stored points."""
        return int(self._db.execute("SELECT COUNT(*) FROM points").fetchone()[0])

    def results(self, keys: Iterable[str] | None = None) -> list[PointResult]:
        """Stored points (all, or those with the given keys), in the order they finished."""
        rows = self._db.execute(f"SELECT {', '.join(_COLUMNS)} FROM points ORDER BY rowid").fetchall()
        wanted = None if keys is None else set(keys)
        return [PointResult.from_row(r) for r in rows if wanted is None or r["key"] in wanted]

    def close(self) -> None:
        """Close the connection (the file stays consistent whether or not this is called)."""
        self._db.close()

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
