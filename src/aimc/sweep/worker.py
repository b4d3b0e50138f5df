"""What runs points: a :class:`PointRunner` holds the mapping and the data once, keeps the chip it programmed last,
and turns a point into a :class:`~aimc.sweep.store.PointResult` with its timings and the versions of the process.

The in-process executor uses one PointRunner; the Ray executor makes one Ray actor of it per worker, so the mapping
and the data reach each worker once and a chip is programmed once per unit of work (see
:func:`~aimc.sweep.points.work_units`), however many times and modes it is read at.
"""

from __future__ import annotations

import datetime as _dt
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from aimc._provenance import code_fingerprint, provenance
from aimc.chip import program
from aimc.compiler.mapping import Mapping
from aimc.sweep.points import Point, batch_seed, read_seed
from aimc.sweep.store import PointResult
from aimc.tasks import Task, TaskData


@dataclass(frozen=True)
class Payload:
    """Everything a worker needs besides the points: shipped once per worker.

    Attributes:
        task: the task (:mod:`aimc.tasks`).
        mapping: the compiled network.
        data: the evaluation data.
        batch_size: samples per ``chip.run`` call.
    """

    task: Task
    mapping: Mapping
    data: TaskData
    batch_size: int


class ChipRunner:
    """What every runner of points shares: its torch threads, its worker name, the versions of its process, and the
    chip it programmed last (of :class:`PointRunner` and :class:`aimc.dse.runner.DesignRunner`).

    Args:
        payload: what the points need (kept as ``self.payload``).
        threads: torch intra-op threads of this worker, or None to leave the process's setting.
    """

    def __init__(self, payload: Any, threads: int | None = None) -> None:
        if threads is not None:
            torch.set_num_threads(threads)
        self.payload = payload
        self._chip_id: Any = None
        self._chip: Any = None
        self._code: str | None = None
        self.worker = f"{socket.gethostname()}:{os.getpid()}"

    def _provenance(self) -> dict[str, str]:
        """Versions of this process, with the fingerprint of the code that computed the point (hashed once)."""
        if self._code is None:
            self._code = code_fingerprint()
        return {**provenance(), "code": self._code}

    def _use_chip(self, chip_id: Any, program: Callable[[], Any]) -> bool:
        """Make ``self._chip`` the chip ``chip_id``: the last one if it matches (returns True), else ``program()``'s
        (the previous chip is freed first; returns False)."""
        reused = self._chip_id == chip_id
        if not reused:
            self._chip = None  # free the previous chip before programming the next
            self._chip = program()
            self._chip_id = chip_id
        return reused


class PointRunner(ChipRunner):
    """Runs points on a cached programmed chip.

    Args:
        payload: :class:`Payload`.
        threads: torch intra-op threads of this worker, or None to leave the process's setting.
    """

    payload: Payload

    def run(self, key: str, point: Point) -> PointResult:
        """Evaluate ``point`` (whose store key is ``key``), programming its chip unless the last one matches: the
        chip is read in runs of the payload's batch size, run ``b`` with the read-noise seed ``batch_seed(seed, b)``
        of the point's seed."""
        p = self.payload
        start = time.perf_counter()
        cpu_start = time.process_time()
        reused = self._use_chip(point.chip, lambda: program(p.mapping, point.device, point.strategy, seed=point.seed))
        programmed = time.perf_counter()
        seed = read_seed(key)
        scores = p.task.chip_scores(
            self._chip,
            p.data,
            t_seconds=point.t_seconds,
            mode=point.mode,
            seed=lambda b, _start: batch_seed(seed, b),
            batch_size=p.batch_size,
            drift_compensation=point.drift_compensation,
        )
        done = time.perf_counter()
        cpu = time.process_time() - cpu_start
        value = float(scores[p.task.metric])
        details = {k: v for k, v in scores.items() if k != p.task.metric}
        return PointResult(
            key=key,
            seed=point.seed,
            device=point.device,
            strategy=point.strategy,
            t_seconds=float(point.t_seconds),
            mode=point.mode,
            drift_compensation=point.drift_compensation,
            read=point.read,
            metric=p.task.metric,
            value=value,
            details=details,
            read_seed=seed,
            program_s=programmed - start,
            run_s=done - programmed,
            cpu_s=cpu,
            chip_reused=reused,
            worker=self.worker,
            provenance=self._provenance(),
            finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )
