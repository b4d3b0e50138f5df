"""The per-channel work of a local digital processing unit (LDPU) after the MVM, in FP16 (docs/physics.md §9.2).

Order of operations on the chip: per-channel affine scale and bias (batch norm folded in), optional ReLU, add an
INT8 input from a neighbour core or from off-chip (partial sums, residual adds), optional second ReLU, convert to
INT8 for the link. Every step is one FP16 operation per value (FMA for the affine step).
"""

from __future__ import annotations

import torch

from aimc.digital.numerics import fp16, fp16_fma, to_int8


def ldpu_postprocess(
    y: torch.Tensor,
    scale: torch.Tensor | float = 1.0,
    bias: torch.Tensor | float = 0.0,
    *,
    relu: bool = False,
    addend: torch.Tensor | None = None,
    relu2: bool = False,
    out_scale: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Apply the LDPU's post-MVM pipeline to outputs ``y``.

    Args:
        y: ``(..., B, m)`` MVM outputs (FP16 values).
        scale, bias: per-channel affine registers, broadcastable to ``(..., 1, m)``; stored in FP16.
        relu: ReLU after the affine step.
        addend: optional ``(..., B, m)`` value added after the first ReLU (a partial sum or residual, already
            dequantised from INT8).
        relu2: ReLU after the addition.
        out_scale: if given, the output is converted to INT8 codes with this scale and returned dequantised
            (``code * out_scale``), i.e. exactly the values the link carries.

    Returns:
        ``(..., B, m)`` float tensor.
    """
    scale_t = fp16(torch.as_tensor(scale, dtype=y.dtype, device=y.device))
    bias_t = fp16(torch.as_tensor(bias, dtype=y.dtype, device=y.device))
    out = fp16_fma(fp16(y), scale_t, bias_t)
    if relu:
        out = out.clamp_min(0.0)
    if addend is not None:
        out = fp16(out + fp16(addend))
    if relu2:
        out = out.clamp_min(0.0)
    if out_scale is not None:
        out = to_int8(out, out_scale).to(y.dtype) * out_scale
    return out
