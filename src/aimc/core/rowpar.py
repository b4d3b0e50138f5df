"""Running a compiled row kernel, or a whole MVM, on all of PyTorch's threads (simulation numerics, not physics).

The fused kernels of the MVM (:mod:`aimc.core.inputs`, :mod:`aimc.core.fused`, :mod:`aimc.core.philox`) treat
each row independently. :func:`run_rows` runs such a kernel either serially or, through a ``numba.prange`` driver,
on ``torch.get_num_threads()`` threads. Rows never depend on which thread computes them, so the results are the
same either way.

:func:`run_parts` runs the parts of a larger job (e.g. an MVM split by batch rows: input pass, products and fused
pass of each part) on that many Python threads at once, PyTorch set to one thread meanwhile. PyTorch's OpenMP
threads and numba's (a second OpenMP runtime) each keep spinning for milliseconds after their parallel regions and
take a core from the other's next region; with one thread per part neither runtime starts a parallel region.

numba's parallel runtime is used only where it is safe: with a thread-safe threading layer (OpenMP or TBB; numba is
asked for one, ``"threadsafe"``), one launch at a time, and not in a process forked after a launch (a forked GNU
OpenMP runtime can hang): there, and wherever the runtime cannot start, the serial kernel runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import torch

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

#: Work (elements) below which a kernel runs serially: a parallel launch costs tens of microseconds.
PARALLEL_MIN_ELEMENTS = 2**15
#: Row chunks per thread of a parallel launch (balances rows of unequal cost).
CHUNKS_PER_THREAD = 4

_lock = threading.Lock()
_state: dict[str, object] = {"pid": None, "usable": True}
_parts_lock = threading.Lock()
_pool: dict[str, object] = {"pid": None, "workers": 0, "executor": None}


def _parallel_usable() -> bool:
    if numba is None or not _state["usable"]:
        return False
    if _state["pid"] is None:
        from numba.np.ufunc import parallel as numba_parallel

        if not getattr(numba_parallel, "_is_initialized", False):
            numba.config.THREADING_LAYER = "threadsafe"
        _state["pid"] = os.getpid()
    return _state["pid"] == os.getpid()


def run_rows(
    serial: Callable[..., None], parallel: Callable[..., None] | None, args: tuple, rows: int, elements: int
) -> None:
    """Run a row kernel over rows [0, rows).

    Args:
        serial: ``serial(*args, r0, r1)`` computes rows r0..r1.
        parallel: ``parallel(*args, rows, chunks)`` computes all rows in ``chunks`` parallel chunks, or None.
        elements: the work's size, to decide whether a parallel launch pays.
    """
    threads = torch.get_num_threads()
    if parallel is None or threads < 2 or rows < 2 or elements < PARALLEL_MIN_ELEMENTS or not _parallel_usable():
        serial(*args, 0, rows)
        return
    threads = min(threads, numba.config.NUMBA_NUM_THREADS)
    with _lock:
        try:
            numba.set_num_threads(threads)
            parallel(*args, rows, min(rows, threads * CHUNKS_PER_THREAD))
            return
        except (ValueError, RuntimeError, numba.core.errors.NumbaError):  # no thread-safe layer here
            _state["usable"] = False
    serial(*args, 0, rows)


def _executor(workers: int) -> ThreadPoolExecutor:
    """A pool of ``workers`` threads for :func:`run_parts` (re-created after a fork or for another size)."""
    if _pool["pid"] != os.getpid() or _pool["workers"] != workers:
        _pool.update(
            pid=os.getpid(),
            workers=workers,
            executor=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aimc-part"),
        )
    return _pool["executor"]  # type: ignore[return-value]


def run_parts(jobs: Sequence[Callable[[], None]]) -> None:
    """Run ``jobs`` at once, ``jobs[0]`` on the calling thread and the others on worker threads, with PyTorch's
    thread count set to 1 meanwhile (restored after; one such run at a time in a process). The jobs must not
    depend on each other; an exception of any job is raised after all have finished."""
    if len(jobs) == 1:
        jobs[0]()
        return
    with _parts_lock:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            pending = [_executor(len(jobs) - 1).submit(job) for job in jobs[1:]]
            try:
                jobs[0]()
            finally:
                errors = [f.exception() for f in pending]
            for error in errors:
                if error is not None:
                    raise error
        finally:
            torch.set_num_threads(threads)
