"""Choice of the dtype of the auxiliary products of the core's fast path (not physics: simulation numerics).

The fast MVM path (:mod:`aimc.core.analog`) needs three products per batch: pos - neg (float32, it is the result),
pos + neg and the fresh-noise variance. An error in pos + neg shifts both counters by the same charge and cancels in
pos - neg to first order; the noise variance needs only a few significant bits. Both can therefore be computed in
bfloat16 (8-bit mantissa, float32 accumulation) where the CPU multiplies bfloat16 natively (Intel AMX or
AVX512-BF16), which is several times faster than float32 there. Elsewhere bfloat16 matmuls are emulated and slow,
so float32 is used.

The pos - neg product itself can run on the CPU's int8 units (Intel VNNI/AMX), several times faster than float32:
the PWM input levels are integers in [-127, 127], exactly int8, and the matrix is written per core as
step·(256·hi + lo) with int8 planes hi and lo (:func:`int8_planes`), i.e. rounded to 1/32,639 of the core's largest
entry (15 bits; the conductances it encodes carry percent-level programming and read noise). The int32 sums are
exact, so y = step·(256·Y_hi + Y_lo) differs from the float32 product only by that rounding of the matrix.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_AUX_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@functools.lru_cache(maxsize=1)
def _cpu_flags() -> str:
    """The CPU feature flags (Linux /proc/cpuinfo; empty elsewhere, which selects the portable float32 paths)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


def _cpu_has_native_bf16() -> bool:
    return any(f in _cpu_flags() for f in ("amx_bf16", "avx512_bf16"))


def _cpu_has_fast_int8() -> bool:
    return any(f in _cpu_flags() for f in ("amx_int8", "avx512_vnni", "avx_vnni")) and hasattr(torch, "_int_mm")


def aux_dtype_for(device: torch.device) -> torch.dtype:
    """bfloat16 for CPU tensors on a CPU with native bfloat16 matmul (AMX/AVX512-BF16), float32 otherwise."""
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def int8_products_for(device: torch.device) -> bool:
    """Whether the pos - neg product runs on int8 planes: CPU tensors on a CPU with VNNI or AMX int8."""
    return device.type == "cpu" and _cpu_has_fast_int8()


#: Largest |256·hi + lo| of :func:`int8_planes`: hi = floor((v + 128) / 256) stays within int8 for |v| <= 32,639.
PLANE_LEVELS = 127 * 256 + 127


def int8_planes(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Write each core's matrix ``(..., K, m)`` as step·(256·hi + lo) with int8 ``hi``, ``lo``.

    Returns:
        ``hi``, ``lo`` ``(..., K, m)`` int8 and ``step`` ``(..., 1, 1)`` float32 (the core's largest |entry| / 32,639).
    """
    step = (matrix.abs().amax(dim=(-2, -1), keepdim=True) / PLANE_LEVELS).clamp_min(1e-30)
    v = torch.round(matrix / step).clamp_(-PLANE_LEVELS, PLANE_LEVELS).to(torch.int32)
    hi = torch.div(v + 128, 256, rounding_mode="floor")
    lo = v - 256 * hi  # in [-128, 127]
    return hi.to(torch.int8).contiguous(), lo.to(torch.int8).contiguous(), step.float()


def int8_product(
    x: torch.Tensor, hi: torch.Tensor, lo: torch.Tensor, out_hi: torch.Tensor, out_lo: torch.Tensor
) -> None:
    """Y_hi = x @ hi and Y_lo = x @ lo in int32 for ``x`` ``(..., B, K)`` int8 (or integer-valued in [-127, 127]).

    Leading dims of ``x`` and the planes ``(..., K, m)`` broadcast; ``out_hi``, ``out_lo`` ``(L, B, m)`` int32 with
    L the product of the broadcast leading dims (one int8 matmul per core and plane).
    """
    lead = torch.broadcast_shapes(x.shape[:-2], hi.shape[:-2])
    xi = (x if x.dtype == torch.int8 else x.to(torch.int8)).expand(*lead, *x.shape[-2:]).reshape(-1, *x.shape[-2:])
    hi = hi.expand(*lead, *hi.shape[-2:]).reshape(-1, *hi.shape[-2:])
    lo = lo.expand(*lead, *lo.shape[-2:]).reshape(-1, *lo.shape[-2:])
    for i in range(xi.shape[0]):
        torch._int_mm(xi[i], hi[i], out=out_hi[i])
        torch._int_mm(xi[i], lo[i], out=out_lo[i])
