"""A layer's LDPU chain as one compiled pass (simulation numerics, not physics).

After the MVM of a layer's r x c cores, the LDPUs (docs/physics.md §9.2) add the partial sums along each column chain
(every core scales its output, adds the INT8 value it receives and sends INT8 on), apply the per-channel affine
registers, the ReLU, an added INT8 input (residual), a second ReLU, and convert to INT8 for the link. As PyTorch
operations in ``torch.float16`` (``aimc.chip.analog.ldpu_chain``, the reference, used on GPUs and without numba) that
is a dozen passes over memory per core plus the copies that put the column blocks back into the output layout. This
module does the whole chain in one pass, compiled by numba, and writes each output row straight to its place in the
layer's output.

Numerics: PyTorch's FP16 CPU element-wise operations compute in float32 and round the result once to FP16; a
Python scalar operand is taken as float32 (``half.div_(q)`` is ``fp16(float(a) / float32(q))``). The kernel does
the same float32 operations in the same order and rounds after each with :data:`aimc.core.fused._round_f16`
(nearest even, subnormals and overflow included; the CPU's conversion instructions where it has them, else the
bit emulation), so its results equal the PyTorch chain's bit for bit
(``tests/test_ldpu_fused.py``). ReLU keeps a -0.0 and NaN as ``clamp_min`` does; the INT8 conversion rounds half to
even and saturates at codes -128..127 as :func:`aimc.chip.analog.int8_values` does.

Rows are independent; :func:`ldpu_chain` runs them on PyTorch's threads through :func:`aimc.core.rowpar.run_rows`
(the same numbers on any thread count).
"""

from __future__ import annotations

import numpy as np
import torch

from aimc.core.rowpar import run_rows
from aimc.errors import ArgumentTypeError, ValidationError

try:  # numba is a dependency, but a platform without its wheels still runs (on the PyTorch chain)
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def available() -> bool:
    """Whether the fused chain can run here (numba importable); whether it runs is the ``ldpu_chain`` kernel's choice
    (:mod:`aimc.kernels`)."""
    return numba is not None


if numba is not None:
    from aimc.core.fused import _round_f16

    @numba.njit(inline="always", error_model="numpy")
    def _code(v):  # pragma: no cover - compiled
        """The INT8 code of ``v`` (in steps) as float32: round half to even, saturate at -128 and 127 (NaN passes,
        as in ``clamp``)."""
        c = np.float32(np.rint(v))
        c = np.float32(-128.0) if c < np.float32(-128.0) else c
        return np.float32(127.0) if c > np.float32(127.0) else c

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _chain(y, scale, bias, add, has_add, relu, relu2, q_psum, q_out, out, r0, r1):  # pragma: no cover - compiled
        """Rows r0..r1 of the output; see :func:`ldpu_chain` for the arguments. Per row and column block, one loop
        over the block's channels per core of the chain (the compiler vectorises each)."""
        r_blocks = y.shape[0]
        c_blocks = y.shape[1]
        m = y.shape[3]
        n_out = out.shape[1]
        per = add.shape[1]
        run = np.empty(m, dtype=np.float32)  # the INT8 partial sum a core receives, in its FP16
        last = r_blocks - 1
        relu_last = relu or relu2
        zero = np.float32(0.0)
        for row in range(r0, r1):
            img = row // per
            pos = row - img * per
            o_row = out[row]
            a_row = add[img, pos]
            for cb in range(c_blocks):
                c0 = cb * m
                w = min(m, n_out - c0)
                s = scale[cb]
                b = bias[cb]
                y_row = y[0, cb, row]
                if last == 0:
                    # affine (one FMA: the product of two FP16 values is exact in float32), ReLU, add, ReLU, INT8
                    if has_add:
                        for j in range(w):
                            v = _round_f16(b[j] + _round_f16(y_row[j]) * s[j])
                            v = zero if relu and v < zero else v
                            v = _round_f16(v + _round_f16(np.float32(a_row[c0 + j])))
                            v = zero if relu2 and v < zero else v
                            o_row[c0 + j] = _code(v / q_out) * q_out
                    else:
                        for j in range(w):
                            v = _round_f16(b[j] + _round_f16(y_row[j]) * s[j])
                            v = zero if relu_last and v < zero else v
                            o_row[c0 + j] = _code(v / q_out) * q_out
                    continue
                # the column chain: each core scales its output, adds what it receives (the first: the residual,
                # if any) and sends it on as INT8, which the next core gets back in FP16
                if has_add:
                    for j in range(w):
                        v = _round_f16(_round_f16(y_row[j]) * s[j])
                        v = _round_f16(v + _round_f16(np.float32(a_row[c0 + j])))
                        run[j] = _round_f16(_code(_round_f16(v / q_psum)) * q_psum)
                else:
                    for j in range(w):
                        v = _round_f16(_round_f16(y_row[j]) * s[j])
                        run[j] = _round_f16(_code(_round_f16(v / q_psum)) * q_psum)
                for i in range(1, last):
                    y_row = y[i, cb, row]
                    for j in range(w):
                        v = _round_f16(_round_f16(y_row[j]) * s[j])
                        v = _round_f16(v + run[j])
                        run[j] = _round_f16(_code(_round_f16(v / q_psum)) * q_psum)
                y_row = y[last, cb, row]
                for j in range(w):  # the last core: affine, the received sum, one ReLU, INT8 (in float32)
                    v = _round_f16(b[j] + _round_f16(y_row[j]) * s[j])
                    v = _round_f16(v + run[j])
                    v = zero if relu_last and v < zero else v
                    o_row[c0 + j] = _code(v / q_out) * q_out

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _chain_par(
        y, scale, bias, add, has_add, relu, relu2, q_psum, q_out, out, rows, chunks
    ):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            r0, r1 = rows * c // chunks, rows * (c + 1) // chunks
            _chain(y, scale, bias, add, has_add, relu, relu2, q_psum, q_out, out, r0, r1)

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _pool(src, kh, kw, sh, sw, out, r0, r1):  # pragma: no cover - compiled
        """Output lines r0..r1 (line = image·H_out + y) of the max-pooling of ``src`` ``(N, H, W, C)`` into ``out``
        ``(N, H_out, W_out, C)``: the window in row-major order, a larger value or a NaN replacing the maximum (as
        PyTorch's ``max_pool2d``; equal values keep the first, so the sign of a zero is PyTorch's too)."""
        h_out = out.shape[1]
        w_out = out.shape[2]
        channels = out.shape[3]
        for line in range(r0, r1):
            img = line // h_out
            oy = line - img * h_out
            for ox in range(w_out):
                o = out[img, oy, ox]
                first = src[img, oy * sh, ox * sw]
                for c in range(channels):
                    o[c] = first[c]
                for dy in range(kh):
                    for dx in range(kw):
                        if dy == 0 and dx == 0:
                            continue
                        s_row = src[img, oy * sh + dy, ox * sw + dx]
                        for c in range(channels):
                            v = s_row[c]
                            m = o[c]
                            o[c] = v if (v > m or v != v) else m

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _pool_par(src, kh, kw, sh, sw, out, rows, chunks):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            _pool(src, kh, kw, sh, sw, out, rows * c // chunks, rows * (c + 1) // chunks)


def _check_tensor(v: object, name: str, ndim: int, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(v, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype != dtype or v.device.type != "cpu":
        raise ArgumentTypeError(f"{name} must be a {dtype} CPU tensor, got {v.dtype} on {v.device}")
    if v.dim() != ndim:
        raise ValidationError(f"{name} must have {ndim} dimensions, got shape {tuple(v.shape)}")
    return v


def _check_step(v: object, name: str) -> np.float32:
    if isinstance(v, bool) or not isinstance(v, int | float) or not np.isfinite(v) or v <= 0:
        raise ValidationError(f"{name} must be a finite number > 0, got {v!r}")
    return np.float32(v / 127.0)


def ldpu_chain(
    y: torch.Tensor,
    scale: torch.Tensor,
    bias: torch.Tensor,
    addend: torch.Tensor | None,
    out: torch.Tensor,
    *,
    relu: bool,
    relu2: bool,
    psum_range: float,
    out_range: float,
) -> torch.Tensor:
    """The LDPU chain of a layer (quantised mode), written into ``out``.

    Args:
        y: ``(r, c, R, m)`` float32 MVM outputs of the r x c cores (FP16 values; other values are rounded to FP16
            first, as ``y.to(torch.float16)`` does).
        scale, bias: ``(c, m)`` float32 values of the FP16 affine registers of each column block (padded channels
            are never read).
        addend: ``(A, P, N)`` float32 value added in the LDPU (residual) for output row ``a·P + p`` (any strides:
            e.g. an NCHW or channels-last image viewed as ``(images, H·W, channels)``), or None.
        out: ``(R, N)`` float32 output, N <= c·m: row ``R`` holds channel ``k`` of column block ``k // m``.
        relu, relu2: ReLU after the affine step / after the addition; with r > 1 the residual is added at the
            head of the chain and one ReLU (either flag) comes last (the LDPU's order, docs/physics.md §9.2, as the
            compiler fuses it).
        psum_range: full scale of the INT8 partial sums on the chain's links; out_range: of the layer's output.

    Returns:
        ``out``, holding the INT8 values of the layer's output (code x ``out_range`` / 127, float32).
    """
    _check_tensor(y, "y", 4, torch.float32)
    _check_tensor(scale, "scale", 2, torch.float32)
    _check_tensor(bias, "bias", 2, torch.float32)
    _check_tensor(out, "out", 2, torch.float32)
    r_blocks, c_blocks, rows, m = y.shape
    if tuple(scale.shape) != (c_blocks, m) or tuple(bias.shape) != (c_blocks, m):
        raise ValidationError(
            f"scale and bias must have shape ({c_blocks}, {m}) for y of shape {tuple(y.shape)}; got "
            f"{tuple(scale.shape)} and {tuple(bias.shape)}"
        )
    if out.shape[0] != rows or not 0 < out.shape[1] <= c_blocks * m or out.stride(1) != 1:
        raise ValidationError(
            f"out must have shape ({rows}, N) with 0 < N <= {c_blocks * m} and unit stride along N for y of shape "
            f"{tuple(y.shape)}; got shape {tuple(out.shape)}, strides {out.stride()}"
        )
    if addend is not None:
        _check_tensor(addend, "addend", 3, torch.float32)
        if addend.shape[0] * addend.shape[1] != rows or addend.shape[2] != out.shape[1]:
            raise ValidationError(
                f"addend must have shape (A, P, {out.shape[1]}) with A·P = {rows}; got {tuple(addend.shape)}"
            )
    for flag, name in ((relu, "relu"), (relu2, "relu2")):
        if not isinstance(flag, bool):
            raise ArgumentTypeError(f"{name} must be a bool, got {type(flag).__name__} {flag!r}")
    q_psum, q_out = _check_step(psum_range, "psum_range"), _check_step(out_range, "out_range")
    if numba is None:
        raise ValidationError("the fused LDPU chain needs numba; use aimc.chip's PyTorch chain")
    add_np = addend.numpy() if addend is not None else np.zeros((1, max(rows, 1), 1), dtype=np.float32)
    args = (
        y.contiguous().numpy(),
        scale.contiguous().numpy(),
        bias.contiguous().numpy(),
        add_np,
        addend is not None,
        relu,
        relu2,
        q_psum,
        q_out,
        out.numpy(),
    )
    run_rows(_chain, _chain_par, args, rows, rows * out.shape[1] * r_blocks)
    return out


def pool_output_size(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """``(H_out, W_out)`` of a max-pooling without padding (floor mode) of an ``(H, W)`` image."""
    return tuple((n - k) // s + 1 for n, k, s in zip(size, kernel, stride, strict=True))  # type: ignore[return-value]


def max_pool_channels_last(
    src: torch.Tensor, out: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """``F.max_pool2d`` without padding (the host's pooling after an LDPU chain), channels last, into ``out``.

    Args:
        src: ``(N, H, W, C)`` contiguous float32 CPU tensor (an LDPU chain's output rows of N whole images).
        out: ``(N, H_out, W_out, C)`` contiguous float32 (:func:`pool_output_size`).
        kernel, stride: window and step (rows, columns), each >= 1.

    Returns:
        ``out``, equal to ``F.max_pool2d(src.permute(0, 3, 1, 2), kernel, stride)`` (channels last), NaN included.
    """
    _check_tensor(src, "src", 4, torch.float32)
    _check_tensor(out, "out", 4, torch.float32)
    pairs = (kernel, stride)
    if not all(
        isinstance(p, tuple | list)
        and len(p) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in p)
        for p in pairs
    ):
        raise ValidationError(f"kernel and stride must be two ints >= 1; got {kernel!r} and {stride!r}")
    size = pool_output_size((src.shape[1], src.shape[2]), kernel, stride)
    if min(size) < 1 or tuple(out.shape) != (src.shape[0], *size, src.shape[3]):
        raise ValidationError(
            f"pooling {tuple(src.shape)} (N, H, W, C) with kernel {tuple(kernel)} and stride {tuple(stride)} gives "
            f"(N, H_out, W_out, C) = {(src.shape[0], *size, src.shape[3])}; out has shape {tuple(out.shape)}"
        )
    if not (src.is_contiguous() and out.is_contiguous()):
        raise ValidationError("src and out must be contiguous (N, H, W, C) tensors")
    if numba is None:
        raise ValidationError("max_pool_channels_last needs numba; use torch.nn.functional.max_pool2d")
    args = (src.numpy(), kernel[0], kernel[1], stride[0], stride[1], out.numpy())
    run_rows(_pool, _pool_par, args, out.shape[0] * out.shape[1], src.numel())
    return out


__all__ = ["available", "ldpu_chain", "max_pool_channels_last", "pool_output_size"]
