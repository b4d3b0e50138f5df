"""The input side of a four-phase MVM in one pass (simulation numerics, not physics).

The fast path's products (:mod:`aimc.core.analog`) take the PWM levels tau of the input three ways: as int8 for the
pos - neg product on int8 planes, |tau| for the pos + neg product and tau^2 for the fresh-noise variance, the last
two in the auxiliary dtype (bfloat16 on CPUs that multiply it natively). As PyTorch operations (quantise, convert,
absolute value, square, and the copies that gather each core's block of rows) these are about ten passes over the
input. :func:`prepare_four_phase` makes all three in one compiled pass (numba) straight from the input as the caller
has it: values to quantise (docs/physics.md §5: round half to even, clip at full scale, as
:func:`aimc.core.pwm.quantize_input` does), or PWM levels already, e.g. an im2col matrix viewed as (images,
positions, K) without transposing it first. The results equal the PyTorch operations' bit for bit (bfloat16 values
rounded to nearest even); ``tests/test_fused.py`` checks that.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from aimc.core.rowpar import run_rows

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


class FourPhaseInputs(NamedTuple):
    """The three forms of the PWM levels of ``(r, R, n)`` inputs (r row blocks, R rows, n inputs per core).

    levels: int8 tau; magnitude: |tau| and square: tau^2, both in ``aux_dtype``.
    """

    levels: torch.Tensor
    magnitude: torch.Tensor
    square: torch.Tensor


if numba is not None:
    from aimc.core.fused import _bf16_to_f32

    @numba.njit(inline="always", error_model="numpy")
    def _bf16_bits(v):  # pragma: no cover - compiled
        """bfloat16 bit pattern (as int16) of a float32, rounded to nearest even."""
        bits = np.float32(v).view(np.int32)
        return np.int16((bits + np.int32(0x7FFF) + ((bits >> 16) & 1)) >> 16)

    @numba.njit(inline="always", error_model="numpy")
    def _store_row(v, blk, row, out_i8, out_mag, out_sq, aux_bf16):  # pragma: no cover - compiled
        """The three forms of one block-row of levels ``v`` (float32, length n); simple loops that vectorise."""
        o_i8, o_mag, o_sq = out_i8[blk, row], out_mag[blk, row], out_sq[blk, row]
        for j in range(v.shape[0]):
            o_i8[j] = np.int8(v[j])
        if aux_bf16:
            for j in range(v.shape[0]):
                o_mag[j] = _bf16_bits(abs(v[j]))
            for j in range(v.shape[0]):
                o_sq[j] = _bf16_bits(v[j] * v[j])
        else:
            for j in range(v.shape[0]):
                o_mag[j] = abs(v[j])
            for j in range(v.shape[0]):
                o_sq[j] = v[j] * v[j]

    @numba.njit(inline="always", error_model="numpy")
    def _store_quantized(v, scale, limit, blk, row, out_i8, out_mag, out_sq, aux_bf16):  # pragma: no cover
        """:func:`_store_row` of the levels clip(round(v·scale), -limit, limit): rounded straight into the int8
        output, whose (integer) values the magnitude and square loops then read (faster loops, the same numbers)."""
        o_i8, o_mag, o_sq = out_i8[blk, row], out_mag[blk, row], out_sq[blk, row]
        for j in range(v.shape[0]):
            o_i8[j] = np.int8(min(max(np.float32(np.rint(v[j] * scale)), -limit), limit))
        if aux_bf16:
            for j in range(v.shape[0]):
                o_mag[j] = _bf16_bits(abs(np.float32(o_i8[j])))
            for j in range(v.shape[0]):
                q = np.float32(o_i8[j])
                o_sq[j] = _bf16_bits(q * q)
        else:
            for j in range(v.shape[0]):
                o_mag[j] = abs(np.float32(o_i8[j]))
            for j in range(v.shape[0]):
                q = np.float32(o_i8[j])
                o_sq[j] = q * q

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _prepare(src, is_bf16, scale, limit, quantize, n, nonfinite, out_i8, out_mag, out_sq, aux_bf16, r0, r1):
        # pragma: no cover - compiled
        """Rows r0..r1 of src ``(A, B, K)`` (row = a·B + b; int16 bfloat16 bits or float32) into the ``(r, A·B, n)``
        outputs; columns k >= K are zero (the padding of the last row block). When quantising, ``nonfinite[row]``
        gets the row's count of NaN/Inf values (all exponent bits set)."""
        n_b = src.shape[1]
        k_in = src.shape[2]
        blocks = out_i8.shape[0]
        v = np.zeros(n, dtype=np.float32)
        for row in range(r0, r1):
            a = row // n_b
            b = row - a * n_b
            s_row = src[a, b]
            for blk in range(blocks):
                k0 = blk * n
                width = min(n, k_in - k0)
                if is_bf16:
                    for j in range(width):
                        v[j] = _bf16_to_f32(s_row[k0 + j])
                else:
                    for j in range(width):
                        v[j] = np.float32(s_row[k0 + j])
                for j in range(width, n):
                    v[j] = np.float32(0.0)
                if quantize:
                    bad = np.int32(0)
                    for j in range(width):
                        bits = np.float32(v[j]).view(np.int32)
                        bad += np.int32((bits & np.int32(0x7F800000)) == np.int32(0x7F800000))
                    nonfinite[row] += bad
                    _store_quantized(v, scale, limit, blk, row, out_i8, out_mag, out_sq, aux_bf16)
                else:
                    _store_row(v, blk, row, out_i8, out_mag, out_sq, aux_bf16)

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _prepare_conv(img, offsets, h_out, w_out, w_pad, s_h, s_w, n, out_i8, out_mag, out_sq, aux_bf16, r0, r1):
        # pragma: no cover - compiled
        """Rows r0..r1 (row = (image, y, x) of the output) of the im2col matrix of ``img`` ``(N, C·Hp·Wp)`` (int16
        bfloat16 bits of PWM levels, zero-padded), column k at ``offsets[k]`` from the patch's corner."""
        k_in = offsets.shape[0]
        blocks = out_i8.shape[0]
        per_image = h_out * w_out
        v = np.zeros(n, dtype=np.float32)
        for row in range(r0, r1):
            image = row // per_image
            pos = row - image * per_image
            y = pos // w_out
            corner = y * s_h * w_pad + (pos - y * w_out) * s_w
            pixels = img[image]
            for blk in range(blocks):
                k0 = blk * n
                width = min(n, k_in - k0)
                for j in range(width):
                    v[j] = _bf16_to_f32(pixels[corner + offsets[k0 + j]])
                for j in range(width, n):
                    v[j] = np.float32(0.0)
                _store_row(v, blk, row, out_i8, out_mag, out_sq, aux_bf16)


if numba is not None:

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _prepare_par(
        src, is_bf16, scale, limit, quantize, n, nonfinite, out_i8, out_mag, out_sq, aux_bf16, rows, chunks
    ):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            r0, r1 = rows * c // chunks, rows * (c + 1) // chunks
            _prepare(src, is_bf16, scale, limit, quantize, n, nonfinite, out_i8, out_mag, out_sq, aux_bf16, r0, r1)

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _prepare_conv_par(
        img, offsets, h_out, w_out, w_pad, s_h, s_w, n, out_i8, out_mag, out_sq, aux_bf16, rows, chunks
    ):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            r0, r1 = rows * c // chunks, rows * (c + 1) // chunks
            _prepare_conv(img, offsets, h_out, w_out, w_pad, s_h, s_w, n, out_i8, out_mag, out_sq, aux_bf16, r0, r1)


def _outputs(blocks: int, rows: int, n: int, aux_dtype: torch.dtype) -> tuple[FourPhaseInputs, tuple]:
    out = FourPhaseInputs(
        torch.empty((blocks, rows, n), dtype=torch.int8),
        torch.empty((blocks, rows, n), dtype=aux_dtype),
        torch.empty((blocks, rows, n), dtype=aux_dtype),
    )
    bf = aux_dtype == torch.bfloat16
    arrays = tuple((v.view(torch.int16) if bf and v.dtype == torch.bfloat16 else v).numpy() for v in out)
    return out, (*arrays, bf)


def prepare_conv_four_phase(
    levels: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    n: int,
    blocks: int,
    aux_dtype: torch.dtype,
) -> FourPhaseInputs:
    """:func:`prepare_four_phase` of the im2col matrix of a convolution's input, gathered straight from the image.

    Args:
        levels: ``(N, C, H, W)`` bfloat16 PWM levels of the layer's input.
        kernel, stride, padding, dilation: the convolution's geometry (as ``torch.nn.functional.unfold``'s); the
            columns follow unfold's (channel, kernel row, kernel column) order.

    Returns:
        :class:`FourPhaseInputs`, each ``(blocks, N·H_out·W_out, n)``.
    """
    # the chip hands over levels already padded (padding 0): no copy then
    pads = (padding[1], padding[1], padding[0], padding[0])
    img = torch.nn.functional.pad(levels, pads) if any(padding) else levels
    images, channels, h_pad, w_pad = img.shape
    h_out = (h_pad - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    w_out = (w_pad - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    c = torch.arange(channels).view(-1, 1, 1) * (h_pad * w_pad)
    i = torch.arange(kernel[0]).view(1, -1, 1) * (dilation[0] * w_pad)
    j = torch.arange(kernel[1]).view(1, 1, -1) * dilation[1]
    offsets = (c + i + j).flatten().numpy()
    if offsets.shape[0] > blocks * n:
        raise ValueError(f"{offsets.shape[0]} columns do not fit {blocks} blocks of {n}")
    rows = images * h_out * w_out
    out, arrays = _outputs(blocks, rows, n, aux_dtype)
    flat = img.reshape(images, -1).contiguous().view(torch.int16).numpy()
    args = (flat, offsets, h_out, w_out, w_pad, stride[0], stride[1], n, *arrays)
    run_rows(_prepare_conv, _prepare_conv_par, args, rows, rows * blocks * n)
    return out


def prepare_four_phase(
    src: torch.Tensor,
    n: int,
    blocks: int,
    aux_dtype: torch.dtype,
    scale: float | None = None,
    limit: int = 127,
    nonfinite: np.ndarray | None = None,
) -> FourPhaseInputs:
    """The int8 levels, |levels| and levels^2 of ``src`` in row blocks of ``n`` inputs.

    Args:
        src: ``(A, B, K)`` float32 values (with ``scale``) or bfloat16/float32 PWM levels (``scale`` None), any
            strides; its rows are the A·B pairs (a, b), its K columns are split into ``blocks`` blocks of ``n``
            (zero-padded).
        aux_dtype: ``torch.bfloat16`` or ``torch.float32``, the dtype of magnitude and square.
        scale: quantise ``src`` as levels = clip(round(src·scale), -limit, limit) (``quantize_input``'s
            ``levels / x_range``); None takes ``src`` as levels already.
        nonfinite: with ``scale``, an optional ``(A·B,)`` int32 array of zeros that receives each row's count of
            NaN/Inf values of ``src`` (whose levels are then meaningless): the caller's finiteness check, made
            in the same pass.

    Returns:
        :class:`FourPhaseInputs`, each ``(blocks, A·B, n)``.
    """
    a_dim, b_dim, k_in = src.shape
    if k_in > blocks * n:
        raise ValueError(f"{k_in} columns do not fit {blocks} blocks of {n}")
    rows = a_dim * b_dim
    out, arrays = _outputs(blocks, rows, n, aux_dtype)
    is_bf16 = src.dtype == torch.bfloat16
    src_np = src.view(torch.int16).numpy() if is_bf16 else src.float().numpy()
    scale_f = np.float32(scale if scale is not None else 1.0)
    counts = nonfinite if nonfinite is not None else np.zeros(rows if scale is not None else 1, dtype=np.int32)
    args = (src_np, is_bf16, scale_f, np.float32(limit), scale is not None, n, counts, *arrays)
    run_rows(_prepare, _prepare_par, args, rows, rows * blocks * n)
    return out
