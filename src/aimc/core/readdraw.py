"""A readout's per-run draw in one compiled pass (simulation numerics, not physics).

Each run of a programmed core draws the quasi-static part of every device's 1/f read noise (:mod:`aimc.core.readnoise`)
around the drifted conductances, clamps the noisy conductances at zero, sums them per polarity (G+ and G-) and
writes the two matrices the MVM multiplies by: half the four-phase charge per PWM level of G+ - G- and of G+ + G-,
transposed to ``(n, m)``. As PyTorch operations that is a normal draw and six passes over memory, a fixed cost of
every run that a short run (a sequence model's batch of tokens) does not amortise. Here it is one pass that draws
each device's normal where it is used, with the counter-based normals of :mod:`aimc.core.philox` (row r of the
devices' ``(rows, n)`` view gets :func:`~aimc.core.philox.normal_row` (key, r)), on PyTorch's threads.

:func:`noisy_sums` computes exactly what :func:`noisy_sums_torch` does with the same normals: the same float32
operations in the same order, so the two give the same bits (``tests/test_readdraw.py``). Which runs is chosen by
measurement (:mod:`aimc.kernels`, operation ``readout_draw``).
"""

from __future__ import annotations

import numpy as np
import torch

from aimc.core.philox import fill_normal_rows_
from aimc.core.rowpar import run_rows

try:
    import numba
except ImportError:  # pragma: no cover - exercised only where numba is missing
    numba = None


def available() -> bool:
    """Whether the compiled pass can run here (numba importable)."""
    return numba is not None


if numba is not None:
    from aimc.core.philox import normal_row

    @numba.njit(nogil=True, cache=True, error_model="numpy")
    def _rows(key, g, std, pol, half_charge, g_pos, g_neg, y, a, r0, r1):  # pragma: no cover - compiled
        """Rows r0..r1 of the (core, output) rows r = c·m + i: the noisy conductances of the U units of output i of
        core c, their polarity sums into ``g_pos``/``g_neg`` ``(C, m, n)`` and the half charges into ``y``/``a``
        ``(C, n, m)``."""
        units, m, n = g.shape[1], g.shape[2], g.shape[3]
        z = np.empty(4 * ((n + 3) // 4), dtype=np.float32)
        gp = np.empty(n, dtype=np.float32)
        gn = np.empty(n, dtype=np.float32)
        hc = np.float32(half_charge)
        zero = np.float32(0.0)
        for r in range(r0, r1):
            c, i = r // m, r % m
            first_p, first_n = True, True
            for u in range(units):
                normal_row(key, (c * units + u) * m + i, z)
                positive = pol[u] > 0
                acc = gp if positive else gn
                first = first_p if positive else first_n
                for j in range(n):
                    v = np.float32(np.float32(z[j] * std[c, u, i, j]) + g[c, u, i, j])
                    v = v if v > zero else zero
                    acc[j] = v if first else np.float32(acc[j] + v)
                if positive:
                    first_p = False
                else:
                    first_n = False
            for j in range(n):
                p, q = gp[j], gn[j]
                g_pos[c, i, j] = p
                g_neg[c, i, j] = q
                y[c, j, i] = np.float32(np.float32(p - q) * hc)
                a[c, j, i] = np.float32(np.float32(p + q) * hc)

    @numba.njit(nogil=True, parallel=True, cache=True, error_model="numpy")
    def _rows_par(key, g, std, pol, half_charge, g_pos, g_neg, y, a, rows, chunks):  # pragma: no cover - compiled
        for k in numba.prange(chunks):
            _rows(key, g, std, pol, half_charge, g_pos, g_neg, y, a, rows * k // chunks, rows * (k + 1) // chunks)


def _check(g: torch.Tensor, std: torch.Tensor, polarity: torch.Tensor) -> None:
    if g.shape != std.shape or g.dim() < 3 or polarity.shape != (g.shape[-3],):
        raise ValueError(f"g {tuple(g.shape)}, std {tuple(std.shape)} and polarity {tuple(polarity.shape)} disagree")
    if not bool((polarity > 0).any()) or not bool((polarity < 0).any()):
        raise ValueError("polarity needs at least one positive and one negative unit")


def noisy_sums(
    g: torch.Tensor, std: torch.Tensor, key: np.ndarray, polarity: torch.Tensor, half_charge: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The compiled pass (needs numba; CPU tensors).

    Args:
        g: ``(..., U, m, n)`` float32 drifted conductances (uS) of the U units of each weight.
        std: the same shape: the std of each device's quasi-static read-noise draw (uS).
        key: :func:`~aimc.core.philox.draw_key` words of this run's normals.
        polarity: ``(U,)`` +1 / -1 of each unit.
        half_charge: the factor from conductance to half the charge per PWM level (fC / (uS · level) / 2).

    Returns:
        ``g_pos``, ``g_neg`` ``(..., m, n)``: the noisy polarity conductances; ``y``, ``a`` ``(..., n, m)``:
        (G+ - G-)ᵀ·half_charge and (G+ + G-)ᵀ·half_charge; all float32.
    """
    _check(g, std, polarity)
    lead, (units, m, n) = g.shape[:-3], g.shape[-3:]
    gf = g.detach().float().contiguous().view(-1, units, m, n)
    sf = std.detach().float().contiguous().view(-1, units, m, n)
    cores = gf.shape[0]
    g_pos, g_neg = torch.empty((cores, m, n)), torch.empty((cores, m, n))
    y, a = torch.empty((cores, n, m)), torch.empty((cores, n, m))
    pol = polarity.detach().cpu().to(torch.int8).numpy()
    args = (key, gf.numpy(), sf.numpy(), pol, float(half_charge), g_pos.numpy(), g_neg.numpy(), y.numpy(), a.numpy())
    run_rows(_rows, _rows_par, args, cores * m, gf.numel())
    return tuple(t.view(*lead, *t.shape[1:]) for t in (g_pos, g_neg, y, a))  # type: ignore[return-value]


def noisy_conductances(
    g: torch.Tensor, std: torch.Tensor, generator: torch.Generator, key: np.ndarray | None
) -> torch.Tensor:
    """g + std·z clamped at 0, ``z`` standard normals: with ``key``, those of :mod:`aimc.core.philox` (what
    :func:`noisy_sums` draws); else PyTorch's from ``generator`` (where numba is missing)."""
    if key is not None:
        z = fill_normal_rows_(torch.empty(g.shape, dtype=torch.float32), key).to(g.device, g.dtype)
    else:
        z = torch.randn(g.shape, generator=generator, dtype=g.dtype).to(g.device)
    return z.mul_(std).add_(g).clamp_min_(0.0)  # the same numbers as noisy_sums, computed in z's buffer


def noisy_sums_torch(
    g: torch.Tensor, std: torch.Tensor, key: np.ndarray, polarity: torch.Tensor, half_charge: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`noisy_sums` as PyTorch operations (the reference; any device)."""
    _check(g, std, polarity)
    noisy = noisy_conductances(g, std, None, key)  # type: ignore[arg-type]
    g_pos, g_neg = polarity_sums(noisy, polarity)
    return g_pos, g_neg, ((g_pos - g_neg).mT * half_charge).contiguous(), ((g_pos + g_neg).mT * half_charge)


def polarity_sums(g: torch.Tensor, polarity: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """G+ and G- ``(..., m, n)``: the sums of the units ``(..., U, m, n)`` of each polarity, in unit order."""
    pol = polarity.to(g.device)
    pos, neg = torch.nonzero(pol > 0).flatten(), torch.nonzero(pol < 0).flatten()
    return g.index_select(-3, pos).sum(-3), g.index_select(-3, neg).sum(-3)
