"""Counter-based standard normals for the fused MVM kernel (simulation numerics, not physics).

The fresh read noise of an MVM needs one standard normal per output and core. Drawn by PyTorch's CPU generator
(one sequential Mersenne-Twister stream) they cost more than the MVM's matmul. Here every normal is a pure function
of (key, nonce, row, column): the Philox4x32-10 counter-based generator (Salmon et al., "Parallel random numbers:
as easy as 1, 2, 3", SC 2011; checked against the Random123 known-answer vectors in the tests) turns the counter
(row, column // 4, nonce) and the key into four 32-bit words, and the Box–Muller transform turns each pair of words
into two normals. Being a function of the position, the draws can be made inside the fused kernel, in any order, on
any number of threads, and a row's normals are the same whoever computes them.

Box–Muller needs a logarithm, a cosine and a sine; they are computed here in float32 by polynomials (series in
(m - 1)/(m + 1) for ln on [sqrt(1/2), sqrt(2)), Taylor series on [-pi/2, pi/2] for sin and cos; truncation errors
below 1e-8, under float32 rounding), so that the compiler vectorises the loop (libm calls would keep it scalar).
The smallest uniform, 2^-33, caps |z| at 6.9 (float64 and 32-bit words would give the same cap).
"""

from __future__ import annotations

import numpy as np
import torch

from aimc.core.rowpar import run_rows

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None

#: Philox4x32 round multipliers and Weyl key increments (Salmon et al. 2011, Random123).
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
#: Rounds of Philox4x32 (the Random123 default, "Philox4x32-10").
PHILOX_ROUNDS = 10


def draw_key(generator: torch.Generator) -> np.ndarray:
    """Four 32-bit words (key 0-1, nonce 0-1) for one MVM's normals, drawn from ``generator``."""
    return torch.randint(0, 2**32, (4,), generator=generator, dtype=torch.int64).numpy().astype(np.uint32)


if numba is not None:
    _U32 = np.uint32
    _MASK = np.uint64(0xFFFFFFFF)

    @numba.njit(inline="always", error_model="numpy")
    def philox4x32(c0, c1, c2, c3, k0, k1):  # pragma: no cover - compiled
        """Philox4x32-10 of the counter (c0..c3) under the key (k0, k1): four uint32 words."""
        m0 = np.uint64(PHILOX_M0)
        m1 = np.uint64(PHILOX_M1)
        c0, c1, c2, c3, k0, k1 = _U32(c0), _U32(c1), _U32(c2), _U32(c3), _U32(k0), _U32(k1)
        for _ in range(PHILOX_ROUNDS):
            p0 = m0 * np.uint64(c0)
            p1 = m1 * np.uint64(c2)
            hi0, lo0 = _U32(p0 >> np.uint64(32)), _U32(p0 & _MASK)
            hi1, lo1 = _U32(p1 >> np.uint64(32)), _U32(p1 & _MASK)
            c0, c1, c2, c3 = _U32(hi1 ^ c1 ^ k0), lo1, _U32(hi0 ^ c3 ^ k1), lo0
            k0 = _U32(k0 + _U32(PHILOX_W0))
            k1 = _U32(k1 + _U32(PHILOX_W1))
        return c0, c1, c2, c3

    _F = np.float32

    @numba.njit(inline="always", error_model="numpy")
    def _log_unit(u):  # pragma: no cover - compiled
        """ln(u) for a float32 u in (0, 1] (series in s = (m - 1)/(m + 1), |s| < 0.172: error < 1e-8)."""
        bits = np.float32(u).view(np.int32)
        e = _F(((bits >> 23) & 0xFF) - 127)
        m = np.int32((bits & np.int32(0x007FFFFF)) | np.int32(0x3F800000)).view(np.float32)
        big = m > _F(1.4142135)
        m = m * _F(0.5) if big else m
        e = e + _F(1.0) if big else e
        s = (m - _F(1.0)) / (m + _F(1.0))
        s2 = s * s
        p = _F(1.0 / 9.0)
        p = p * s2 + _F(1.0 / 7.0)
        p = p * s2 + _F(1.0 / 5.0)
        p = p * s2 + _F(1.0 / 3.0)
        p = p * s2 + _F(1.0)
        return e * _F(0.6931472) + _F(2.0) * s * p

    @numba.njit(inline="always", error_model="numpy")
    def _cos_sin_turn(u):  # pragma: no cover - compiled
        """(cos 2πu, sin 2πu) for a float32 u in [0, 1] (Taylor series on [-pi/2, pi/2]: error < 1e-8)."""
        t = (u - _F(0.5)) * _F(6.2831855)  # in [-pi, pi]; cos/sin of 2πu are minus those of t
        fold = abs(t) > _F(1.5707964)
        half_turn = _F(3.1415927) if t > _F(0.0) else _F(-3.1415927)
        t = half_turn - t if fold else t  # now |t| <= pi/2: sin unchanged, cos changes sign
        t2 = t * t
        s = _F(1.0 / 6227020800.0)  # sin: Taylor series to t^13
        s = _F(-1.0 / 39916800.0) + t2 * s
        s = _F(1.0 / 362880.0) + t2 * s
        s = _F(-1.0 / 5040.0) + t2 * s
        s = _F(1.0 / 120.0) + t2 * s
        s = _F(-1.0 / 6.0) + t2 * s
        s = t + t * t2 * s
        c = _F(-1.0 / 87178291200.0)  # cos: Taylor series to t^14
        c = _F(1.0 / 479001600.0) + t2 * c
        c = _F(-1.0 / 3628800.0) + t2 * c
        c = _F(1.0 / 40320.0) + t2 * c
        c = _F(-1.0 / 720.0) + t2 * c
        c = _F(1.0 / 24.0) + t2 * c
        c = _F(-0.5) + t2 * c
        c = _F(1.0) + t2 * c
        return (c if fold else -c), -s

    @numba.njit(inline="always", error_model="numpy")
    def _unit(w):  # pragma: no cover - compiled
        """A uint32 word as a float32 in (0, 1]: (w + 1/2) / 2^32 (rounded to float32)."""
        return _F((np.float32(w) + _F(0.5)) * _F(2.3283064e-10))

    @numba.njit(inline="always", error_model="numpy")
    def normal_row(key, row, out):  # pragma: no cover - compiled
        """Standard normals of one row into ``out`` (float32, length a multiple of 4): element j from counter
        (row low, row high, j // 4 ^ nonce 0, nonce 1), lane j % 4 of the Box–Muller pairs of the four words."""
        k0, k1, n0, n1 = key[0], key[1], key[2], key[3]
        r0 = _U32(np.uint64(row) & _MASK)
        r1 = _U32(np.uint64(row) >> np.uint64(32))
        for g in range(out.shape[0] // 4):
            w0, w1, w2, w3 = philox4x32(r0, r1, _U32(g) ^ n0, n1, k0, k1)
            rad_a = np.sqrt(_F(-2.0) * _log_unit(_unit(w0)))
            rad_b = np.sqrt(_F(-2.0) * _log_unit(_unit(w2)))
            ca, sa = _cos_sin_turn(_unit(w1))
            cb, sb = _cos_sin_turn(_unit(w3))
            out[4 * g] = np.float32(rad_a * ca)
            out[4 * g + 1] = np.float32(rad_a * sa)
            out[4 * g + 2] = np.float32(rad_b * cb)
            out[4 * g + 3] = np.float32(rad_b * sb)

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _fill(key, out, r0, r1):  # pragma: no cover - compiled
        m = out.shape[1]
        row = np.empty(4 * ((m + 3) // 4), dtype=np.float32)
        for r in range(r0, r1):
            normal_row(key, r, row)
            out[r, :] = row[:m]

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _fill_par(key, out, rows, chunks):  # pragma: no cover - compiled
        for c in numba.prange(chunks):
            _fill(key, out, rows * c // chunks, rows * (c + 1) // chunks)


def fill_normal_rows_(out: torch.Tensor, key: np.ndarray) -> torch.Tensor:
    """Fill ``out`` ``(..., m)`` (contiguous CPU float32) with the normals the fused kernel draws for ``key``:
    row r of the flattened ``(rows, m)`` view gets :func:`normal_row` (key, r), on PyTorch's threads
    (:func:`~aimc.core.rowpar.run_rows`; the numbers do not depend on the thread count)."""
    flat = out.view(-1, out.shape[-1]).numpy()
    run_rows(_fill, _fill_par, (key, flat), flat.shape[0], flat.size)
    return out
