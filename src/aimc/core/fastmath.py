"""Choice of the dtype of the auxiliary products of the core's fast path (not physics: simulation numerics).

The fast MVM path (:mod:`aimc.core.analog`) needs three products per batch: pos - neg (float32, it is the result),
pos + neg and the fresh-noise variance. An error in pos + neg shifts both counters by the same charge and cancels in
pos - neg to first order; the noise variance needs only a few significant bits. Both can therefore be computed in
bfloat16 (8-bit mantissa, float32 accumulation) where the CPU multiplies bfloat16 natively (Intel AMX or
AVX512-BF16), which is several times faster than float32 there. Elsewhere bfloat16 matmuls are emulated and slow,
so float32 is used.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

_AUX_DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@functools.lru_cache(maxsize=1)
def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def aux_dtype_for(device: torch.device) -> torch.dtype:
    """bfloat16 for CPU tensors on a CPU with native bfloat16 matmul (AMX/AVX512-BF16), float32 otherwise."""
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32
