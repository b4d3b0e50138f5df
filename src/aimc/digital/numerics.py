"""Number formats of the chip's digital units: FP16 inside the LDPU/GDPU, INT8 on the links (docs/physics.md §9.1).

FP16 is emulated by computing each operation in float32 and rounding its result to the nearest IEEE half value:
for a single add or multiply of FP16 operands this equals the correctly rounded FP16 result, and it runs at float32
speed on CPUs without native half arithmetic. A fused multiply-add is rounded once (as an FMA unit does).
"""

from __future__ import annotations

import torch

from aimc.errors import ArgumentTypeError, ValidationError


def check_float_tensor(x: object, name: str = "x") -> torch.Tensor:
    """A floating-point tensor (type and dtype only: these functions run on the hot path, values are not scanned)."""
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ArgumentTypeError(f"{name} must have a floating-point dtype, got {x.dtype}")
    return x


def fp16(x: torch.Tensor) -> torch.Tensor:
    """Round ``x`` to the nearest FP16 value, returned in ``x``'s dtype. Shape: any."""
    check_float_tensor(x)
    return x.to(torch.float16).to(x.dtype)


def fp16_fma(x: torch.Tensor, a: torch.Tensor | float, b: torch.Tensor | float) -> torch.Tensor:
    """FP16 fused multiply-add ``x*a + b`` rounded once to FP16 (an LDPU FMA unit, docs/physics.md §9.2). Shapes
    broadcast."""
    return fp16(
        torch.addcmul(
            torch.as_tensor(b, dtype=x.dtype, device=x.device),
            x,
            torch.as_tensor(a, dtype=x.dtype, device=x.device),
        )
    )


def to_int8(x: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """Convert to the INT8 link format: ``round(x / scale)`` saturated to [-128, 127] (the last LDPU step,
    docs/physics.md §9.2).

    Returns the integer codes as an ``int8`` tensor of ``x``'s shape; the value they stand for is ``code * scale``.
    """
    check_float_tensor(x)
    s = torch.as_tensor(scale)
    if s.is_complex() or not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValidationError(f"scale must be finite and > 0, got {scale!r}")
    return torch.clamp(torch.round(x / scale), -128, 127).to(torch.int8)
