"""The global digital processing unit (GDPU): the LSTM cell in FP16 with a tanh look-up table (docs/physics.md §9.3).

A GDPU slice takes the i, f, g, o gate pre-activations (INT8) of up to 64 hidden units, keeps their cell states in
FP16 registers and returns h as INT8. tanh is a look-up table of 17 comparators (18 bins) with linear interpolation
by one FMA; sigmoid(x) = 1/2 + tanh(x/2)/2.
"""

from __future__ import annotations

import torch

from aimc.digital.numerics import check_float_tensor
from aimc.errors import ValidationError

#: Assumption: the 17 comparator thresholds of the tanh table are evenly spaced over [-4, 4] (not published); the
#: 16 inner bins interpolate tanh linearly between them, the 2 outer bins hold tanh(±4). Maximum error 0.024.
TANH_LUT_RANGE = 4.0
TANH_LUT_COMPARATORS = 17


def _lut(dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    x = torch.linspace(-TANH_LUT_RANGE, TANH_LUT_RANGE, TANH_LUT_COMPARATORS, dtype=torch.float64)
    y = torch.tanh(x)
    slope = (y[1:] - y[:-1]) / (x[1:] - x[:-1])
    intercept = y[:-1] - slope * x[:-1]
    # outer bins: constant tanh(±range)
    slope = torch.cat([torch.zeros(1, dtype=torch.float64), slope, torch.zeros(1, dtype=torch.float64)])
    intercept = torch.cat([y[:1], intercept, y[-1:]])
    return (
        x.to(dtype=dtype, device=device),
        slope.to(dtype=dtype, device=device),
        intercept.to(dtype=dtype, device=device),
    )


def tanh_lut(x: torch.Tensor) -> torch.Tensor:
    """tanh by the GDPU's 18-bin look-up table with linear interpolation, in ``x``'s dtype. Shape: any."""
    check_float_tensor(x)
    _, slope, intercept = _lut(x.dtype, x.device)
    # the bin is the number of thresholds below x; with evenly spaced thresholds that is
    # ceil((x + range) / step) clipped to 0 .. 17 (the table is continuous, so a value on a threshold may take
    # either neighbouring bin)
    step = 2 * TANH_LUT_RANGE / (TANH_LUT_COMPARATORS - 1)
    idx = ((x.float() + TANH_LUT_RANGE) / step).ceil_().clamp_(0, TANH_LUT_COMPARATORS).long()
    return torch.addcmul(intercept[idx], x, slope[idx])


def sigmoid_lut(x: torch.Tensor) -> torch.Tensor:
    """sigmoid(x) = 1/2 + tanh(x/2)/2 with the table tanh (docs/physics.md §9.3)."""
    return 0.5 + 0.5 * tanh_lut(0.5 * x)


def lstm_cell(gates: torch.Tensor, c: torch.Tensor, *, fp16: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM step from gate pre-activations, as a GDPU computes it.

    Args:
        gates: ``(B, 4H)`` pre-activations in PyTorch's order i, f, g, o.
        c: ``(B, H)`` cell state.
        fp16: compute in FP16 with the tanh table (the chip); False gives the exact float32 cell.

    Returns:
        ``(h, c)``, each ``(B, H)`` (float32 tensors; FP16 values when ``fp16``).
    """
    check_float_tensor(gates, "gates")
    check_float_tensor(c, "c")
    if gates.shape[-1] % 4 or tuple(c.shape) != (*gates.shape[:-1], gates.shape[-1] // 4):
        raise ValidationError(
            f"gates (B, 4H) and c (B, H) must match; got gates {tuple(gates.shape)}, c {tuple(c.shape)}"
        )
    if not fp16:
        i, f, g, o = gates.chunk(4, dim=-1)
        c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c_new), c_new
    gh = gates.to(torch.float16)
    i, f, g, o = gh.chunk(4, dim=-1)
    c_new = sigmoid_lut(f) * c.to(torch.float16) + sigmoid_lut(i) * tanh_lut(g)
    h = sigmoid_lut(o) * tanh_lut(c_new)
    return h.float(), c_new.float()


def gru_cell(gates: torch.Tensor, h: torch.Tensor, *, fp16: bool = True) -> torch.Tensor:
    """One GRU step from its four column groups of pre-activations, as a GDPU computes it (the LSTM cell's units:
    the tanh table, sigmoid from it, FP16 multiply-adds).

    PyTorch's GRU (Cho et al., 2014, as ``torch.nn.GRU`` documents it): r = σ(W_ir x + W_hr h + b_r),
    z = σ(W_iz x + W_hz h + b_z), n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h. The new
    gate's input and hidden parts are separate columns on the cores, since r multiplies only the hidden part.

    Args:
        gates: ``(B, 4H)`` pre-activations in the order r, z, n_x (= W_in x + b_in), n_h (= W_hn h + b_hn).
        h: ``(B, H)`` hidden state.
        fp16: compute in FP16 with the tanh table (the chip); False gives the exact float32 cell.

    Returns:
        h' ``(B, H)`` (float32; FP16 values when ``fp16``).
    """
    check_float_tensor(gates, "gates")
    check_float_tensor(h, "h")
    if gates.shape[-1] % 4 or tuple(h.shape) != (*gates.shape[:-1], gates.shape[-1] // 4):
        raise ValidationError(
            f"gates (B, 4H) and h (B, H) must match; got gates {tuple(gates.shape)}, h {tuple(h.shape)}"
        )
    if not fp16:
        r, z, nx, nh = gates.chunk(4, dim=-1)
        r, z = torch.sigmoid(r), torch.sigmoid(z)
        n = torch.tanh(nx + r * nh)
        return (1 - z) * n + z * h
    r, z, nx, nh = gates.to(torch.float16).chunk(4, dim=-1)
    r, z = sigmoid_lut(r), sigmoid_lut(z)
    n = tanh_lut(nx + r * nh)
    return ((1 - z) * n + z * h.to(torch.float16)).float()
