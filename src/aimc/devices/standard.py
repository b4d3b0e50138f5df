"""The "standard" PCM statistical model (docs/physics.md §3.1).

Fitted on doped-GST mushroom PCM devices by Nandakumar et al. (ICECS 2019) and Joshi et al. (Nat. Commun.
11:2473, 2020), and written out by Rasch et al. (Nat. Commun. 14:5282, 2023, Eqs. 7-13); it is aihwkit's
``PCMLikeNoiseModel``. All coefficients below are those published equations' numbers.
"""

from __future__ import annotations

import torch

from aimc.devices.statistical import DEFAULT_STUCK_SET_FRACTION, StatisticalDeviceModel, log_g

#: Conductance (uS) of a normalised target g = 1 (Rasch 2023).
G_MAX_US = 25.0
#: Drift reference time t0 (s) (Rasch 2023 Eqs. 7-13).
T0_S = 20.0
#: Read duration t_read (s) of the 1/f noise fit (Rasch 2023 Eqs. 7-13).
T_READ_S = 250e-9

#: sigma_prog = max(c0 + c1 g + c2 g^2, 0) uS (Nandakumar 2019; Rasch 2023 Eqs. 7-13), at g_max = 25 uS.
PROG_COEFFS_US = (0.26348, 1.9650, -1.1731)

#: mu_nu = clip(a ln g + b, lo, hi) (Joshi 2020; Rasch 2023 Eqs. 7-13).
NU_MEAN_LOG_COEFF = -0.0155
NU_MEAN_OFFSET = 0.0244
NU_MEAN_MIN = 0.049
NU_MEAN_MAX = 0.1

#: sigma_nu = clip(a ln g + b, lo, hi) (Joshi 2020; Rasch 2023 Eqs. 7-13).
NU_STD_LOG_COEFF = -0.0125
NU_STD_OFFSET = -0.0059
NU_STD_MIN = 0.008
NU_STD_MAX = 0.045

#: Q_s = min(a / max(g^p, floor), cap) (Nandakumar 2019; Rasch 2023 Eqs. 7-13).
QS_COEFF = 0.0088
QS_EXPONENT = 0.65
QS_G_FLOOR = 1e-3
QS_MAX = 0.2


class StandardPCM(StatisticalDeviceModel):
    """The "standard" PCM model of docs/physics.md §3.1: g_max 25 uS, t0 20 s, t_read 250 ns, no time offset.

    Args:
        g_max_uS: conductance of g = 1 (uS). The programming std scales with ``g_max_uS / 25`` (as in aihwkit),
            so the published figures hold at the default.
        t0_s, t_read_s: drift reference time and 1/f read time (s).
        yield_fraction, stuck_set_fraction: see :class:`StatisticalDeviceModel`.

    Examples:
        >>> import torch
        >>> model = StandardPCM()
        >>> state = model.program(torch.full((4,), 10.0), generator=0)
        >>> model.conductance(state, 3600.0, generator=1).shape
        torch.Size([4])
    """

    name = "standard"
    devices_per_unit = 1

    def __init__(
        self,
        *,
        g_max_uS: float = G_MAX_US,
        t0_s: float = T0_S,
        t_read_s: float = T_READ_S,
        yield_fraction: float = 1.0,
        stuck_set_fraction: float = DEFAULT_STUCK_SET_FRACTION,
    ) -> None:
        super().__init__(
            g_max_uS=g_max_uS,
            t0_s=t0_s,
            t_read_s=t_read_s,
            time_offset=False,
            yield_fraction=yield_fraction,
            stuck_set_fraction=stuck_set_fraction,
        )

    def prog_std(self, g: torch.Tensor) -> torch.Tensor:
        """sigma_prog (uS), shape of ``g`` (Nandakumar 2019; Rasch 2023 Eqs. 7-13)."""
        c0, c1, c2 = PROG_COEFFS_US
        sigma = (c0 + c1 * g + c2 * g * g).clamp_min(0.0)
        return sigma * (self.g_max_uS / G_MAX_US)

    def drift_nu_mean(self, g: torch.Tensor) -> torch.Tensor:
        """mu_nu = clip(-0.0155 ln g + 0.0244, 0.049, 0.1) (Joshi 2020; Rasch 2023 Eqs. 7-13)."""
        return (NU_MEAN_LOG_COEFF * log_g(g) + NU_MEAN_OFFSET).clamp(NU_MEAN_MIN, NU_MEAN_MAX)

    def drift_nu_std(self, g: torch.Tensor) -> torch.Tensor:
        """sigma_nu = clip(-0.0125 ln g - 0.0059, 0.008, 0.045) (Joshi 2020; Rasch 2023 Eqs. 7-13)."""
        return (NU_STD_LOG_COEFF * log_g(g) + NU_STD_OFFSET).clamp(NU_STD_MIN, NU_STD_MAX)

    def read_noise_qs(self, g: torch.Tensor) -> torch.Tensor:
        """Q_s = min(0.0088 / max(g^0.65, 1e-3), 0.2) (Nandakumar 2019; Rasch 2023 Eqs. 7-13)."""
        return (QS_COEFF / g.clamp_min(0.0).pow(QS_EXPONENT).clamp_min(QS_G_FLOOR)).clamp_max(QS_MAX)
