"""Split of 1/f read noise into a per-run (quasi-static) part and a per-MVM (fresh) part.

PCM read noise has a 1/f spectrum; its variance over the band [f_lo, f_hi] grows as ln(f_hi/f_lo). That is where
the published σ_read = Q_s·sqrt(ln((t + t_read)/(2·t_read))) (docs/physics.md §3.3) comes from: the band runs from
1/(t + t_read) (the time since programming) up to 1/(2·t_read) (the read bandwidth). Fluctuations slower than one run
of the simulated chip (``run_duration_s``) do not change during the run: they are drawn once per run. The faster ones
differ from MVM to MVM. Their shares of σ_read² are their log-frequency widths:

    fresh share = ln(T_run / (2·t_read)) / ln((t + t_read)/(2·t_read)),   clipped to [0, 1].
"""

from __future__ import annotations

import math

from aimc.devices.base import DeviceModel


def fresh_noise_fraction(model: DeviceModel, t_seconds: float, run_duration_s: float) -> float:
    """Fraction of the read-noise variance at ``t_seconds`` after programming that is fresh on every MVM.

    Models without the timing attributes of docs/physics.md §3 (``t_read_s``; ``t0_s`` and ``time_offset`` for the
    HERMES time shift) are treated as white: all of their read noise is fresh.
    """
    t_read = getattr(model, "t_read_s", None)
    if t_read is None:
        return 1.0
    t_eff = t_seconds + (model.t0_s if getattr(model, "time_offset", False) else 0.0)
    total = math.log((t_eff + t_read) / (2.0 * t_read))
    if total <= 0.0:
        return 1.0
    fresh = math.log(run_duration_s / (2.0 * t_read))
    return min(max(fresh / total, 0.0), 1.0)
