"""The converter and LDPU arithmetic of a core's MVM as one fused pass (simulation numerics, not physics).

After its products, an MVM of the fast path (:mod:`aimc.core.analog`) does about thirty element-wise steps per
output: fresh read noise, the two counters' charges, the CCO transfer with its clipping and flooring (SPEC §1
"output ADC"), and the LDPU's FP16 affine correction, subtraction and scaling (SPEC §1 "LDPU"). As separate PyTorch
operations each step is a pass over memory, and together they cost several times the matmul. This module does all
of them in one pass, compiled by numba (no C compiler needed), with the same float32 operations in the same order
and FP16 rounding (round to nearest even, subnormals and overflow included) done on the bits, so that its results
equal the PyTorch path's; ``tests/test_fused.py`` checks that.

The kernel treats each output row on its own; :func:`adc_ldpu` runs the rows on PyTorch's threads where numba's
parallel runtime is safe to use (:func:`aimc.core.rowpar.run_rows`), serially elsewhere, with the same results.

Without numba (or with the environment variable ``AIMC_FUSED=0``) :func:`available` is False and the core uses its
PyTorch path.
"""

from __future__ import annotations

import os

import numpy as np
import torch

from aimc.core.philox import normal_row
from aimc.core.rowpar import run_rows

try:  # numba is a dependency, but a platform without its wheels still runs (on the PyTorch path)
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def available() -> bool:
    """Whether the fused kernel can be used (numba importable and ``AIMC_FUSED`` not set to ``0``)."""
    return numba is not None and os.environ.get("AIMC_FUSED", "1") != "0"


if numba is not None:

    @numba.njit(inline="always", error_model="numpy")
    def _round_f16(x: np.float32) -> np.float32:  # pragma: no cover - compiled
        """Nearest FP16 value of a float32 (ties to even), as float32; overflow gives +-inf. Branch-free, so that
        the loops using it vectorise."""
        bits = np.float32(x).view(np.int32)
        normal = np.int32((bits + np.int32(0x0FFF) + ((bits >> 13) & 1)) & np.int32(-8192)).view(np.float32)
        subnormal = np.float32(np.rint(x * np.float32(16777216.0)) * np.float32(5.9604644775390625e-08))
        ax = abs(x)
        r = normal if ax >= np.float32(6.103515625e-05) else subnormal  # FP16 subnormals: a fixed quantum 2^-24
        inf = np.float32(np.inf) if x > np.float32(0.0) else np.float32(-np.inf)
        return inf if ax >= np.float32(65520.0) else r  # beyond the midpoint of 65504 and 2^16: infinity

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
        y_hi,
        y_lo,
        y_step,
        y_int,
        a,
        a_bf16,
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
        r0,
        r1,
    ):  # pragma: no cover - compiled
        """Rows r0..r1 of the flattened (C*B) outputs; see :func:`adc_ldpu` for the arguments. Each row runs as
        three simple loops (charge pos + neg, noisy pos - neg, the rest) that the compiler vectorises."""
        n_b = out.shape[1]
        m = out.shape[2]
        s_a = np.empty(m, dtype=np.float32)
        s_y = np.empty(m, dtype=np.float32)
        s_p = np.empty(m, dtype=np.float32)
        s_n = np.empty(m, dtype=np.float32)
        s_z = np.empty(4 * ((m + 3) // 4), dtype=np.float32)
        for r in range(r0, r1):
            c = r // n_b
            b = r - c * n_b
            a_row = a[c, b]
            if y_int:
                s1 = y_step[c]
                s256 = s1 * np.float32(256.0)
                h_row = y_hi[c, b]
                l_row = y_lo[c, b]
                for j in range(m):
                    s_y[j] = np.float32(h_row[j]) * s256
                for j in range(m):
                    s_y[j] = s_y[j] + np.float32(l_row[j]) * s1
            else:
                y_row = y[c, b]
                for j in range(m):
                    s_y[j] = y_row[j]
            if a_bf16:
                for j in range(m):
                    s_a[j] = _bf16_to_f32(a_row[j])
            else:
                for j in range(m):
                    s_a[j] = a_row[j]
            if noise:
                v_row = var[c, b]
                normal_row(key, r, s_z)
                z_row = s_z
                # noise = z·sqrt(var), then y + noise, in two loops: the product is rounded before the sum (as
                # on the PyTorch path), never fused into one multiply-add by the compiler
                if var_bf16:
                    for j in range(m):
                        z_row[j] = z_row[j] * np.float32(np.sqrt(max(_bf16_to_f32(v_row[j]), np.float32(0.0))))
                else:
                    for j in range(m):
                        z_row[j] = z_row[j] * np.float32(np.sqrt(max(np.float32(v_row[j]), np.float32(0.0))))
                for j in range(m):
                    s_y[j] = s_y[j] + z_row[j]
            o_row = out[c, b]
            s = scale[c]
            _counter(s_a, s_y, np.float32(1.0), gk[c, 0], ok[c, 0], den_c, q_max, c_max, floor_counts, s_p)
            _counter(s_a, s_y, np.float32(-1.0), gk[c, 1], ok[c, 1], den_c, q_max, c_max, floor_counts, s_n)
            _correct(s_p, ia[c, 0], bias[c, 0])
            _correct(s_n, ia[c, 1], bias[c, 1])
            for j in range(m):
                o_row[j] = _round_f16(_round_f16(s_p[j] - s_n[j]) * s)

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _kernel_par(
        y, y_hi, y_lo, y_step, y_int, a, a_bf16, var, var_bf16, key, noise,
        gk, ok, ia, bias, scale, den_c, q_max, c_max, floor_counts, out, rows, chunks,
    ):  # fmt: skip  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            _kernel(
                y, y_hi, y_lo, y_step, y_int, a, a_bf16, var, var_bf16, key, noise, gk, ok, ia, bias, scale,
                den_c, q_max, c_max, floor_counts, out, rows * c // chunks, rows * (c + 1) // chunks,
            )  # fmt: skip

    @numba.njit(inline="always", error_model="numpy")
    def _counter(s_a, s_y, sign, gk, ok, den_c, q_max, c_max, floor_counts, out):  # pragma: no cover - compiled
        """Counts of one counter of a row: charge a + sign·y (each loop touches few arrays, so it vectorises)."""
        for j in range(out.shape[0]):
            out[j] = _count(s_a[j] + sign * s_y[j], gk[j], ok[j], den_c, q_max, c_max, floor_counts)

    @numba.njit(inline="always", error_model="numpy")
    def _correct(counts, inv_alpha, bias):  # pragma: no cover - compiled
        """The LDPU's FP16 affine correction of a row of counts, in place: bias + FP16(count)·inv_alpha."""
        for j in range(counts.shape[0]):
            counts[j] = _round_f16(bias[j] + _round_f16(counts[j]) * inv_alpha[j])


def _as_numpy(t: torch.Tensor) -> np.ndarray:
    """A float32 tensor as numpy, a bfloat16 one as its int16 bit patterns (numba has no bfloat16)."""
    return t.view(torch.int16).numpy() if t.dtype == torch.bfloat16 else t.numpy()


def adc_ldpu(
    y: torch.Tensor,
    y_lo: torch.Tensor | None,
    y_step: torch.Tensor | None,
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
) -> torch.Tensor:
    """Fresh noise, both counters, the CCO and the FP16 LDPU for every output, in one pass.

    Args:
        y: ``(C, B, m)`` float32 half (pos - neg) charge (fC) without fresh noise; or, with ``y_lo`` and
            ``y_step`` ``(C,)``, its int32 high plane: the charge is (256·step)·y + step·y_lo
            (:func:`aimc.core.fastmath.int8_planes`).
        a: ``(C, B, m)`` half (pos + neg) charge, float32 or bfloat16.
        var: ``(C, B, m)`` fresh-noise variance of ``y`` (float32 or bfloat16), or None without fresh noise.
        key: the four words of this MVM's normals (:func:`aimc.core.philox.draw_key`): output (c, b, j) gets
            element j of :func:`~aimc.core.philox.normal_row` (key, c·B + b), as
            :func:`~aimc.core.philox.fill_normal_rows_` gives them.
        gk, ok: ``(C, 2, m)`` float32 CCO slope and offset terms of each counter (as in ``cco_counts_``: counts =
            gk·q/(q + den_c) + ok, or gk·q + ok when ``den_c`` is 0).
        inv_alpha, bias: ``(C, 2, m)`` float32 values of the LDPU's FP16 correction registers.
        scale: ``(C,)`` float32 value of the FP16 output scale.
        q_max: charge at saturation (``inf`` without saturation); c_max: largest count.
        floor_counts: count whole CCO cycles.

    Returns:
        ``(C, B, m)`` float32 holding the LDPU's FP16 results.
    """
    cores, rows, m = y.shape
    out = torch.empty((cores, rows, m), dtype=torch.float32)
    noise = var is not None and key is not None
    dummy = np.zeros((1, 1, 1), dtype=np.float32)
    y_int = y_lo is not None and y_step is not None
    dummy_i = np.zeros((1, 1, 1), dtype=np.int32)
    args = (
        dummy if y_int else y.numpy(),
        y.numpy() if y_int else dummy_i,
        y_lo.numpy() if y_int else dummy_i,
        y_step.numpy() if y_int else np.zeros(1, dtype=np.float32),
        y_int,
        _as_numpy(a),
        a.dtype == torch.bfloat16,
        _as_numpy(var) if noise else dummy,
        noise and var.dtype == torch.bfloat16,
        key if noise else np.zeros(4, dtype=np.uint32),
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
    )
    run_rows(_kernel, _kernel_par, args, cores * rows, cores * rows * m)
    return out
