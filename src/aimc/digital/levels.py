"""A layer's input as the PWM levels of its cores, in one compiled pass (simulation numerics, not physics).

Before a layer's cores read it, its input is quantised to signed PWM levels (docs/physics.md §5:
:func:`aimc.core.pwm.quantize_input`, round half to even and saturate at full scale) and handed to the input pass
as bfloat16 (exact for |level| <= 255). As PyTorch operations that is four passes over the image (scale, round,
clip, convert) and a fifth for the convolution's zero padding; :func:`pwm_levels_bf16` does them in one, reading
the image with any strides (NCHW or channels last) and writing a contiguous, zero-padded NCHW bfloat16 tensor. The
float32 operations are the same as ``quantize_input``'s (the scale is a float32 scalar, as PyTorch takes a Python
number for a float32 tensor), so the levels are equal bit for bit (``tests/test_ldpu_fused.py``).
"""

from __future__ import annotations

import numpy as np
import torch

from aimc.core.rowpar import run_rows
from aimc.errors import ArgumentTypeError, ValidationError

try:  # numba is a dependency, but a platform without its wheels still runs (on the PyTorch path)
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


if numba is not None:

    @numba.njit(inline="always", error_model="numpy")
    def _level_bits(v, scale, limit):  # pragma: no cover - compiled
        """bfloat16 bits of the PWM level of ``v``: an integer of at most 8 bits, whose bfloat16 is the upper half
        of its float32, exactly."""
        q = np.float32(np.rint(v * scale))
        q = -limit if q < -limit else q
        q = limit if q > limit else q
        return np.int16(np.float32(q).view(np.int32) >> 16)

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _levels_planes(x, scale, limit, ph, pw, out, r0, r1):  # pragma: no cover - compiled
        """Planes r0..r1 (plane = image·C + channel) of ``x`` ``(N, C, H, W)`` (rows along W in memory) into
        ``out`` ``(N, C, H + 2·ph, W + 2·pw)`` (bfloat16 bits, NCHW, zero borders)."""
        channels = x.shape[1]
        height = x.shape[2]
        width = x.shape[3]
        for plane in range(r0, r1):
            img = plane // channels
            ch = plane - img * channels
            src = x[img, ch]
            dst = out[img, ch]
            for i in range(ph):
                dst[i, :] = 0
                dst[ph + height + i, :] = 0
            for i in range(height):
                s_row = src[i]
                d_row = dst[ph + i]
                for j in range(pw):
                    d_row[j] = 0
                    d_row[pw + width + j] = 0
                for j in range(width):
                    d_row[pw + j] = _level_bits(s_row[j], scale, limit)

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _levels_lines(x, scale, limit, ph, pw, out, r0, r1):  # pragma: no cover - compiled
        """Image lines r0..r1 (line = image·H + y) of ``x`` ``(N, H, W, C)`` (channels last) into ``out``
        ``(N, C, H + 2·ph, W + 2·pw)`` (bfloat16 bits, NCHW, zero borders): each line's (W, C) block is converted
        along C, then transposed."""
        height = x.shape[1]
        width = x.shape[2]
        channels = x.shape[3]
        tmp = np.empty((width, channels), dtype=np.int16)
        for line in range(r0, r1):
            img = line // height
            y = line - img * height
            src = x[img, y]
            for j in range(width):
                s_row = src[j]
                t_row = tmp[j]
                for ch in range(channels):
                    t_row[ch] = _level_bits(s_row[ch], scale, limit)
            for ch in range(channels):
                dst = out[img, ch]
                if y == 0:  # the first line writes the top border, the last the bottom one
                    for i in range(ph):
                        dst[i, :] = 0
                if y == height - 1:
                    for i in range(ph):
                        dst[ph + height + i, :] = 0
                d_row = dst[ph + y]
                for j in range(pw):
                    d_row[j] = 0
                    d_row[pw + width + j] = 0
                for j in range(width):
                    d_row[pw + j] = tmp[j, ch]

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _levels_planes_par(x, scale, limit, ph, pw, out, rows, chunks):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            _levels_planes(x, scale, limit, ph, pw, out, rows * c // chunks, rows * (c + 1) // chunks)

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _levels_lines_par(x, scale, limit, ph, pw, out, rows, chunks):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            _levels_lines(x, scale, limit, ph, pw, out, rows * c // chunks, rows * (c + 1) // chunks)


def pwm_levels_bf16(
    x: torch.Tensor, x_range: float, levels: int = 127, padding: tuple[int, int] = (0, 0)
) -> torch.Tensor:
    """``quantize_input(x, x_range)`` as a contiguous bfloat16 tensor, optionally zero-padded.

    Args:
        x: ``(N, C, H, W)`` float32 CPU tensor, any strides.
        x_range: input value mapped to full scale (> 0).
        levels: full-scale level L (127 for the chip's 8-bit PWM); levels are clipped to [-L, L], L <= 255.
        padding: ``(ph, pw)`` zero rows above and below, zero columns left and right (a convolution's padding,
            as ``F.pad(levels, (pw, pw, ph, ph))`` adds it).

    Returns:
        ``(N, C, H + 2·ph, W + 2·pw)`` contiguous bfloat16 levels round(x·L/x_range) clipped to [-L, L] (NaN stays
        NaN).
    """
    if not isinstance(x, torch.Tensor):
        raise ArgumentTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype != torch.float32 or x.device.type != "cpu" or x.dim() != 4:
        raise ArgumentTypeError(
            f"x must be a 4-d float32 CPU tensor, got {x.dim()}-d {x.dtype} on {x.device} (shape {tuple(x.shape)})"
        )
    if isinstance(x_range, bool) or not isinstance(x_range, int | float) or not np.isfinite(x_range) or x_range <= 0:
        raise ValidationError(f"x_range must be a finite number > 0, got {x_range!r}")
    if isinstance(levels, bool) or not isinstance(levels, int) or not 0 < levels <= 255:
        raise ValidationError(f"levels must be an int in [1, 255], got {levels!r}")
    if (
        not isinstance(padding, tuple | list)
        or len(padding) != 2
        or not all(isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding)
    ):
        raise ValidationError(f"padding must be two ints >= 0 (rows, columns), got {padding!r}")
    if numba is None:
        raise ValidationError("pwm_levels_bf16 needs numba; use aimc.core.pwm.quantize_input")
    ph, pw = int(padding[0]), int(padding[1])
    n, c, h, w = x.shape
    out = torch.empty((n, c, h + 2 * ph, w + 2 * pw), dtype=torch.bfloat16)
    scale, limit, dst = np.float32(levels / x_range), np.float32(levels), out.view(torch.int16).numpy()
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():  # line by line
        args = (x.permute(0, 2, 3, 1).numpy(), scale, limit, ph, pw, dst)
        run_rows(_levels_lines, _levels_lines_par, args, n * h, out.numel())
    else:
        args = (x.contiguous().numpy(), scale, limit, ph, pw, dst)
        run_rows(_levels_planes, _levels_planes_par, args, n * c, out.numel())
    return out


__all__ = ["pwm_levels_bf16"]
