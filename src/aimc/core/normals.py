"""Fresh standard-normal draws for the MVM hot path (simulation numerics, not physics).

Drawing the per-MVM read noise is the largest single cost of a simulated MVM on a CPU: PyTorch's CPU normal
generator runs on one thread (one Mersenne-Twister stream) at about 2.5 ns per number, which for a 1024 x 256 output
is longer than the float32 matmul itself. :func:`fill_normal_` therefore splits a large draw into two halves, each
from its own generator seeded from the caller's, and draws the halves on two threads at once.

The numbers depend only on the caller's generator state and the tensor's size, never on the thread count: with one
thread (``torch.get_num_threads() == 1``) the two halves are drawn one after the other from the same two seeds.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import torch

#: Draws smaller than this many numbers come straight from the caller's generator (a second thread would cost more
#: than it saves; measured break-even on a 2-core Xeon is around 2^14).
PARALLEL_MIN_NUMEL = 2**16

_pool: ThreadPoolExecutor | None = None
_pool_pid = -1
_local = threading.local()


def _executor() -> ThreadPoolExecutor:
    """One worker thread per process (re-created after a fork, whose child does not inherit the thread)."""
    global _pool, _pool_pid
    if _pool is None or _pool_pid != os.getpid():
        _pool, _pool_pid = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aimc-normals"), os.getpid()
    return _pool


def _generators() -> tuple[torch.Generator, torch.Generator]:
    """Two CPU generators reused by this thread (re-seeded on every draw)."""
    gens = getattr(_local, "gens", None)
    if gens is None:
        gens = _local.gens = (torch.Generator(), torch.Generator())
    return gens


def fill_normal_(out: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Fill the contiguous CPU float tensor ``out`` with independent N(0, 1) draws determined by ``generator``.

    Args:
        out: any shape, contiguous, on the CPU.
        generator: the caller's CPU generator; it advances by one draw of two 62-bit seeds for a large ``out``.

    Returns:
        ``out``.
    """
    n = out.numel()
    if n < PARALLEL_MIN_NUMEL or not out.is_contiguous():
        return out.normal_(generator=generator)
    seeds = torch.randint(0, 2**62, (2,), generator=generator).tolist()
    g1, g2 = _generators()
    g1.manual_seed(seeds[0])
    g2.manual_seed(seeds[1])
    flat = out.view(-1)
    half = n // 2
    first, second = flat[:half], flat[half:]
    if torch.get_num_threads() < 2:
        first.normal_(generator=g1)
        second.normal_(generator=g2)
        return out
    pending = _executor().submit(second.normal_, generator=g2)
    first.normal_(generator=g1)
    pending.result()
    return out
