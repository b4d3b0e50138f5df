"""Running a compiled row kernel on all of PyTorch's threads (simulation numerics, not physics).

The fused kernels of the MVM (:mod:`aimc.core.inputs`, :mod:`aimc.core.fused`, :mod:`aimc.core.philox`) treat
each row independently. :func:`run_rows` runs such a kernel either serially or, through a ``numba.prange`` driver,
on ``torch.get_num_threads()`` threads. Rows never depend on which thread computes them, so the results are the
same either way.

numba's parallel runtime is used only where it is safe: with a thread-safe threading layer (OpenMP or TBB; numba is
asked for one, ``"threadsafe"``), one launch at a time, and not in a process forked after a launch (a forked GNU
OpenMP runtime can hang): there, and wherever the runtime cannot start, the serial kernel runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

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
