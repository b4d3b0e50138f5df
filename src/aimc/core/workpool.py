"""Work tensors of the MVM kept between runs (simulation numerics, not physics).

An MVM of the fast path writes its products, normals and converter terms into work tensors of tens of MB. A fresh
tensor of that size is fresh memory from the operating system, and its first write costs a page fault per 4 KiB
page: measured on a 2-core AMD EPYC KVM guest, an int8 product written into a new 32 MB tensor took 15 ms, into a
reused one 5 ms. A chip run makes a new readout for every layer (it draws that run's read noise), so work tensors
kept per readout were fresh in every run. :func:`work_tensor` keeps them per thread across readouts and runs
instead, one per (name, shape, dtype), up to :data:`POOL_BYTES`; a work tensor is only ever used inside one MVM
call, so MVMs of different layers can share it.
"""

from __future__ import annotations

import threading

import torch

#: Our choice: the most bytes of work tensors a thread keeps (beyond it the pool is emptied and refilled, which costs
#: the page faults it saves). Measured: the 4-layer transformer encoder of docs/benchmarks.md keeps 136 MB (30
#: tensors), ResNet-9 in batches of 250 images about 260 MB.
POOL_BYTES = 512 << 20

_local = threading.local()


def work_tensor(
    name: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """An uninitialised tensor ``shape`` of ``dtype`` on ``device`` for the work named ``name``; the same tensor for
    the same arguments on the same thread until the pool is emptied (CPU only: on other devices a new tensor, their
    allocators cache memory themselves)."""
    shape = torch.Size(shape)
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    pool: dict[tuple, torch.Tensor] | None = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
        _local.bytes = 0
    key = (name, shape, dtype)
    buf = pool.get(key)
    if buf is None:
        size = shape.numel() * dtype.itemsize
        if _local.bytes + size > POOL_BYTES:
            pool.clear()
            _local.bytes = 0
        buf = pool[key] = torch.empty(shape, dtype=dtype)
        _local.bytes += size
    return buf


def clear() -> None:
    """Drop this thread's work tensors (their memory goes back to the allocator)."""
    pool = getattr(_local, "pool", None)
    if pool is not None:
        pool.clear()
        _local.bytes = 0


__all__ = ["POOL_BYTES", "clear", "work_tensor"]
