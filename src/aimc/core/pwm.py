"""PWM input encoding of one core (docs/physics.md §5).

An input is sign + (pwm_bits-1)-bit magnitude; the magnitude sets the pulse duration at ``pwm_ns_per_lsb`` per LSB
(1 ns, so at most 127 ns inside the 128 ns integration window of the 8-bit chip) and the sign selects which
source-line voltage is applied.
"""

from __future__ import annotations

import torch

from aimc.spec import ChipSpec


def quantize_input(x: torch.Tensor, x_range: torch.Tensor | float, spec: ChipSpec) -> torch.Tensor:
    """Quantise ``x`` to signed PWM levels.

    Args:
        x: inputs, shape ``(..., B, n)``.
        x_range: the input value that maps to full scale (127 LSB for 8 bits); scalar or broadcastable to ``x``.
        spec: the chip, for ``pwm_bits``.

    Returns:
        Integer-valued float tensor of ``x``'s shape with values in [-L, L], L = 2**(pwm_bits-1) - 1. Inputs beyond
        ``x_range`` saturate at full scale, as the hardware's INT8 inputs do.
    """
    levels = spec.input_levels
    return torch.mul(x, levels / x_range).round_().clamp_(-levels, levels)
