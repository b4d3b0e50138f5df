"""The converter and LDPU arithmetic of a core's MVM as one fused pass (simulation numerics, not physics).

After its products, an MVM of the fast path (:mod:`aimc.core.analog`) does about thirty element-wise steps per
output: fresh read noise, the two counters' charges, the CCO transfer with its clipping and flooring
(docs/physics.md §6), and the LDPU's FP16 affine correction, subtraction and scaling (docs/physics.md §9.2). As separate
PyTorch operations each step is a pass over memory, and together they cost several times the matmul. This module does
all of them in one pass, compiled by numba (no C compiler needed), with the same float32 operations in the same order
and FP16 rounding (round to nearest even, subnormals and overflow included) done on the bits, so that its results
equal the PyTorch path's; ``tests/test_fused.py`` checks that.

The kernel treats each output row on its own; :func:`adc_ldpu` runs the rows on PyTorch's threads where numba's
parallel runtime is safe to use (:func:`aimc.core.rowpar.run_rows`), serially elsewhere, with the same results.

Without numba :func:`available` is False and the core uses its PyTorch path; with numba, which of the two runs is
chosen by measurement (:mod:`aimc.kernels`, operation ``mvm_tail``).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import numpy as np
import torch

from aimc.core.philox import normal_row
from aimc.core.rowpar import run_rows

try:  # numba is a dependency, but a platform without its wheels still runs (on the PyTorch path)
    import numba
    from llvmlite import ir as llvm_ir
    from numba.extending import intrinsic
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def _has_f16_conversions() -> bool:
    """Whether LLVM can convert float32 <-> float16 in hardware on this CPU (x86 F16C; every 64-bit ARM)."""
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:  # numba compiles for a CPU named by the user
        return "+f16c" in (numba.config.CPU_FEATURES or "")
    if platform.machine().lower() in ("aarch64", "arm64"):
        return True
    import llvmlite.binding as llvm

    try:
        return bool(llvm.get_host_cpu_features().get("f16c", False))
    except RuntimeError:  # pragma: no cover - features unavailable: take the portable emulation
        return False


def available() -> bool:
    """Whether the fused kernel can run here (numba importable); whether it runs is the ``mvm_tail`` kernel's choice
    (:mod:`aimc.kernels`)."""
    return numba is not None


if numba is not None:

    @numba.njit(inline="always", error_model="numpy")
    def _round_f16_bits(x: np.float32) -> np.float32:  # pragma: no cover - compiled
        """Nearest FP16 value of a float32 (ties to even), as float32; overflow gives +-inf. Integer operations on
        the bits, branch-free (so that the loops using it vectorise): for CPUs without float16 conversions."""
        bits = np.float32(x).view(np.int32)
        normal = np.int32((bits + np.int32(0x0FFF) + ((bits >> 13) & 1)) & np.int32(-8192)).view(np.float32)
        subnormal = np.float32(np.rint(x * np.float32(16777216.0)) * np.float32(5.9604644775390625e-08))
        ax = abs(x)
        r = normal if ax >= np.float32(6.103515625e-05) else subnormal  # FP16 subnormals: a fixed quantum 2^-24
        inf = np.float32(np.inf) if x > np.float32(0.0) else np.float32(-np.inf)
        return inf if ax >= np.float32(65520.0) else r  # beyond the midpoint of 65504 and 2^16: infinity

    @intrinsic
    def _f16_convert(typingctx, x):  # pragma: no cover - compiled
        """float32 -> float16 -> float32 as two LLVM conversions (one vcvtps2ph/vcvtph2ps pair with F16C)."""

        def codegen(context, builder, signature, args):
            return builder.fpext(builder.fptrunc(args[0], llvm_ir.HalfType()), llvm_ir.FloatType())

        return numba.types.float32(numba.types.float32), codegen

    @numba.njit(inline="always", error_model="numpy")
    def _round_f16_hw(x: np.float32) -> np.float32:  # pragma: no cover - compiled
        """:func:`_round_f16_bits` by the CPU's float16 conversion instructions (IEEE round to nearest even)."""
        return _f16_convert(np.float32(x))

    #: The FP16 rounding the kernels use: the CPU's conversion instructions where it has them (x86 F16C, any
    #: 64-bit ARM), otherwise the integer emulation (a library call for the conversion might not be linked).
    _round_f16 = _round_f16_hw if _has_f16_conversions() else _round_f16_bits

    @numba.njit(inline="always", error_model="numpy")
    def _bf16_to_f32(bits: np.int16) -> np.float32:  # pragma: no cover - compiled
        return np.int32(np.int32(bits) << 16).view(np.float32)

    @numba.njit(inline="always", error_model="numpy")
    def _count(q, gk, ok, den_c, q_max, c_max, floor_counts):  # pragma: no cover - compiled
        """One counter: clip the charge, CCO transfer (:func:`aimc.core.adc.cco_counts_`), floor, clip the count."""
        q = min(max(q, np.float32(0.0)), q_max)
        # one unconditional division, so that the loop vectorises: gk·q/(q + den_c) + ok, or gk·q/1 + ok when
        # the CCO is linear (den_c = 0), which equals gk·q + ok exactly
        lin = den_c > np.float32(0.0)
        c = (q * gk) / ((q if lin else np.float32(0.0)) + (den_c if lin else np.float32(1.0))) + ok
        c = np.float32(np.floor(c)) if floor_counts else c
        return min(max(c, np.float32(0.0)), c_max)

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _kernel(
        y,
        y_pair,
        y_scale,
        y_scaled,
        a,
        a_bf16,
        a_scale,
        a_int,
        var,
        var_bf16,
        key,
        noise,
        gk,
        ok,
        ia,
        bias,
        scale,
        den_c,
        q_max,
        c_max,
        floor_counts,
        out,
        b_off,
        core_off,
        r0,
        r1,
    ):  # pragma: no cover - compiled
        """Rows r0..r1 of the flattened (cores of y x B) outputs; see :func:`adc_ldpu` for the arguments. Each row
        runs as a few simple loops (the charges, the noise, then both counters and the LDPU) that the compiler
        vectorises."""
        n_b = a.shape[1]  # rows of this part: batch rows b_off .. b_off + n_b of every core
        n_total = out.shape[1]
        m = out.shape[2]
        shared = y.shape[2]
        s_a = np.empty(m, dtype=np.float32)
        s_y = np.empty(m, dtype=np.float32)
        s_z = np.empty(4 * ((m + 3) // 4), dtype=np.float32)
        for r in range(r0, r1):
            c_y = r // n_b  # the core's index in y
            b = r - c_y * n_b
            y_row = y[c_y // shared, b, c_y - (c_y // shared) * shared]
            c = c_y + core_off  # and among all the MVM's cores
            if y_pair and y_scaled:  # int32 plane products: fl(256·step·Y_hi) + fl(step·Y_lo), each product rounded
                s_hi, s_lo = y_scale[c, 0], y_scale[c, 1]
                for j in range(m):
                    s_y[j] = np.float32(y_row[j]) * s_hi
                for j in range(m):
                    s_z[j] = np.float32(y_row[m + j]) * s_lo
                for j in range(m):
                    s_y[j] = s_y[j] + s_z[j]
            elif y_pair:
                for j in range(m):
                    s_y[j] = y_row[j] + y_row[m + j]
            else:
                for j in range(m):
                    s_y[j] = y_row[j]
            a_row = a[c, b]
            if a_int:  # int32 plane product: fl(step·a)
                s_c = a_scale[c]
                for j in range(m):
                    s_a[j] = np.float32(a_row[j]) * s_c
            elif a_bf16:
                for j in range(m):
                    s_a[j] = _bf16_to_f32(a_row[j])
            else:
                for j in range(m):
                    s_a[j] = a_row[j]
            if noise:
                v_row = var[c, b]
                normal_row(key, c * n_total + b_off + b, s_z)
                # noise = z·sqrt(var), then y + noise, in two loops: the product is rounded before the sum (as
                # on the PyTorch path), never fused into one multiply-add by the compiler
                if var_bf16:
                    for j in range(m):
                        s_z[j] = s_z[j] * np.float32(np.sqrt(max(_bf16_to_f32(v_row[j]), np.float32(0.0))))
                else:
                    for j in range(m):
                        s_z[j] = s_z[j] * np.float32(np.sqrt(max(np.float32(v_row[j]), np.float32(0.0))))
                for j in range(m):
                    s_y[j] = s_y[j] + s_z[j]
            o_row = out[c, b_off + b]
            s = scale[c]
            gk_p, gk_n, ok_p, ok_n = gk[c, 0], gk[c, 1], ok[c, 0], ok[c, 1]
            ia_p, ia_n, bias_p, bias_n = ia[c, 0], ia[c, 1], bias[c, 0], bias[c, 1]
            for j in range(m):
                cnt_p = _count(s_a[j] + s_y[j], gk_p[j], ok_p[j], den_c, q_max, c_max, floor_counts)
                cnt_n = _count(s_a[j] - s_y[j], gk_n[j], ok_n[j], den_c, q_max, c_max, floor_counts)
                # the LDPU: FP16 counts, affine correction bias + count·(1/alpha), subtraction, scale
                q_p = _round_f16(bias_p[j] + _round_f16(cnt_p) * ia_p[j])
                q_n = _round_f16(bias_n[j] + _round_f16(cnt_n) * ia_n[j])
                o_row[j] = _round_f16(_round_f16(q_p - q_n) * s)

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _kernel_par(
        y, y_pair, y_scale, y_scaled, a, a_bf16, a_scale, a_int, var, var_bf16, key, noise,
        gk, ok, ia, bias, scale, den_c, q_max, c_max, floor_counts, out, b_off, core_off, rows, chunks,
    ):  # fmt: skip  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            _kernel(
                y, y_pair, y_scale, y_scaled, a, a_bf16, a_scale, a_int, var, var_bf16, key, noise, gk, ok, ia, bias,
                scale, den_c,
                q_max, c_max,
                floor_counts, out, b_off, core_off, rows * c // chunks, rows * (c + 1) // chunks,
            )  # fmt: skip


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 tensor as numpy, a bfloat16 one as its int16 bit patterns (numba has no bfloat16)."""
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def adc_ldpu(
    y: torch.Tensor | Sequence[torch.Tensor],
    y_pair: bool,
    a: torch.Tensor,
    var: torch.Tensor | None,
    key: np.ndarray | None,
    gk: torch.Tensor,
    ok: torch.Tensor,
    inv_alpha: torch.Tensor,
    bias: torch.Tensor,
    scale: torch.Tensor,
    den_c: float,
    q_max: float,
    c_max: float,
    floor_counts: bool,
    out: torch.Tensor | None = None,
    batch_offset: int = 0,
    y_scale: torch.Tensor | None = None,
    a_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fresh noise, both counters, the CCO and the FP16 LDPU for every output, in one pass.

    Args:
        y: ``(G, B, S, W)`` float32 half (pos - neg) charge (fC) without fresh noise of the C = G·S cores (core c is
            ``y[c // S, :, c % S]``): W = m, or with ``y_pair`` W = 2m and the charge is the sum of the two halves
            (the scaled int8 plane products of :func:`aimc.core.fastmath.scaled_plane_products`). A sequence of
            such tensors holds consecutive cores (e.g. one ``(1, B, S, W)`` per group): each is passed on as it
            is, without copying them into one. With ``y_scale``, ``y`` holds the int32 plane products Y_hi, Y_lo
            (:func:`aimc.core.fastmath.int_plane_products`) and the charge is fl(s_hi·Y_hi) + fl(s_lo·Y_lo).
        a: ``(C, B, m)`` half (pos + neg) charge, float32 or bfloat16; with ``a_scale`` int32, the charge being
            fl(a_scale[c]·a) (the product of an int8 plane, :func:`aimc.core.fastmath.int8_plane`).
        var: ``(C, B, m)`` fresh-noise variance of ``y`` (float32 or bfloat16), or None without fresh noise.
        key: the four words of this MVM's normals (:func:`aimc.core.philox.draw_key`): output (c, b, j) gets
            element j of :func:`~aimc.core.philox.normal_row` (key, c·B_out + b) for output row b of ``out``, as
            :func:`~aimc.core.philox.fill_normal_rows_` gives them.
        gk, ok: ``(C, 2, m)`` float32 CCO slope and offset terms of each counter (as in ``cco_counts_``: counts =
            gk·q/(q + den_c) + ok, or gk·q + ok when ``den_c`` is 0).
        inv_alpha, bias: ``(C, 2, m)`` float32 values of the LDPU's FP16 correction registers.
        scale: ``(C,)`` float32 value of the FP16 output scale.
        q_max: charge at saturation (``inf`` without saturation); c_max: largest count.
        floor_counts: count whole CCO cycles.
        out: optional ``(C, B_out, m)`` float32 result tensor (contiguous).
        batch_offset: the rows given (``y``, ``a``, ``var``) are rows ``batch_offset`` .. ``batch_offset + B`` of
            ``out``'s batch (a part of a larger MVM): their results and their normals are those of these rows.
        y_scale: ``(C, 2)`` float32 scales (s_hi, s_lo) of int32 plane products in ``y`` (with ``y_pair``), or None.
        a_scale: ``(C,)`` float32 steps of an int32 ``a``, or None.

    Returns:
        ``out``: ``(C, B_out, m)`` float32 holding the LDPU's FP16 results.
    """
    cores, rows, m = a.shape
    if out is None:
        out = torch.empty((cores, rows, m), dtype=torch.float32)
    if out.shape[0] != cores or out.shape[2] != m or not 0 <= batch_offset <= out.shape[1] - rows:
        raise ValueError(
            f"out {tuple(out.shape)} cannot take rows {batch_offset}..{batch_offset + rows} of {cores} cores"
        )
    noise = var is not None and key is not None
    parts = (y,) if isinstance(y, torch.Tensor) else tuple(y)
    offsets = [0]
    for part in parts:
        offsets.append(offsets[-1] + part.shape[0] * part.shape[2])
    if offsets[-1] != cores:
        raise ValueError(f"y holds {offsets[-1]} cores, a holds {cores}")
    if y_scale is not None and (not y_pair or tuple(y_scale.shape) != (cores, 2)):
        raise ValueError(f"y_scale must be ({cores}, 2) with y_pair; got {tuple(y_scale.shape)}")
    if (a_scale is not None) != (a.dtype == torch.int32) or (a_scale is not None and tuple(a_scale.shape) != (cores,)):
        raise ValueError(f"an int32 a needs a_scale ({cores},) and only it; got a {a.dtype}, a_scale {a_scale}")
    args = (
        y_pair,
        _DUMMY_SCALE if y_scale is None else y_scale.numpy(),
        y_scale is not None,
        _as_numpy(a),
        a.dtype == torch.bfloat16,
        _DUMMY_STEP if a_scale is None else a_scale.numpy(),
        a_scale is not None,
        _as_numpy(var) if noise else _DUMMY_F32,
        noise and var.dtype == torch.bfloat16,
        key if noise else _DUMMY_KEY,
        noise,
        gk.numpy(),
        ok.numpy(),
        inv_alpha.numpy(),
        bias.numpy(),
        scale.numpy(),
        np.float32(den_c),
        np.float32(q_max),
        np.float32(c_max),
        floor_counts,
        out.numpy(),
        batch_offset,
    )
    for part, core_off in zip(parts, offsets[:-1], strict=True):
        part_cores = part.shape[0] * part.shape[2]
        run_rows(_kernel, _kernel_par, (part.numpy(), *args, core_off), part_cores * rows, part_cores * rows * m)
    return out


_DUMMY_F32 = np.zeros((1, 1, 1), dtype=np.float32)
_DUMMY_SCALE = np.zeros((1, 2), dtype=np.float32)
_DUMMY_STEP = np.zeros(1, dtype=np.float32)
_DUMMY_KEY = np.zeros(4, dtype=np.uint32)
