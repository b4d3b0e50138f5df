"""The HERMES-fitted PCM statistics (docs/physics.md §3.2).

Characterised on the devices of the 64-core chip (Le Gallo et al., Nat. Electron. 6, 2023; Khaddam-Aljameh et al.,
IEEE JSSC 57(4), 2022) and published as IBM aihwkit's ``HermesNoiseModel``
(``aihwkit/inference/noise/hermes.py``, MIT licence); the coefficients below are that fit's, as listed in
docs/physics.md §3.2. Two variants: one device per polarity (``"hermes-1dev"``) and the pair of devices of one polarity
treated as one conductance (``"hermes-2dev"``, ``devices_per_unit = 2``). Time counts from the end of programming: the
model time is ``t + t0``.

One difference from aihwkit: aihwkit evaluates Q_s at the programmed conductance ``g_prog / g_max``; here, as for
every statistic of the :class:`~aimc.devices.base.DeviceModel` protocol, Q_s is a function of the normalised
*target*, so that the conformance suite can compare samples with it.
"""

from __future__ import annotations

import torch

from aimc._validation import check_number
from aimc.devices.statistical import DEFAULT_STUCK_SET_FRACTION, StatisticalDeviceModel, log_g
from aimc.errors import ValidationError
from aimc.spec import ChipSpec

#: Drift reference time t0 (s) of the one- and two-device fits (aihwkit HermesNoiseModel).
T0_1DEV_S = 200.0
T0_2DEV_S = 300.0
#: Read duration t_read (s) of the 1/f fit (aihwkit HermesNoiseModel).
T_READ_S = 512e-9

#: sigma_prog = c0 + c1 g + c2 g^2 + c3 g^3 (uS at the variant's characterised g_max) (aihwkit).
PROG_COEFFS_1DEV_US = (0.15781817, 2.32443916, -2.16310839, 0.68841818)
PROG_COEFFS_2DEV_US = (0.16603222, 4.71806468, -8.48101252, 4.68961419)

#: Drift-exponent mean, both variants (aihwkit): g < break: clip(a ln g + b, lo, hi); else a2 g^2+a1 g+a0.
NU_MEAN_BREAK = 0.0945
NU_MEAN_LOW = (-0.0387, -0.0182, 0.0720, 0.13)  # (a, b, lo, hi)
NU_MEAN_HIGH = (-0.0436, -0.0126, 0.0736)  # (a2, a1, a0)

#: Drift-exponent std (aihwkit): (break, (a, b, lo, hi) of the log branch, (a2, a1, a0) of the quadratic).
NU_STD_1DEV = (0.3039, (-0.0120, -0.0023, 0.0124, 0.04), (-0.0165, 0.0116, 0.0104))
NU_STD_2DEV = (0.3055, (-0.0117, -0.0057, 0.0091, 0.04), (-0.0118, 0.0093, 0.0073))

#: Read-noise Q_s (aihwkit): (break, (a, b, lo, hi) of the log branch, (a3, a2, a1, a0) of the cubic).
QS_1DEV = (0.1591, (-0.0078, 0.0038, 0.0179, 0.04), (0.0664, -0.1352, 0.0768, 0.0088))
QS_2DEV = (0.16, (-0.0117, -0.0069, 0.015, 0.04), (0.0069, -0.0280, 0.0211, 0.0123))


def _poly(g: torch.Tensor, coeffs_high_first: tuple[float, ...]) -> torch.Tensor:
    """Horner evaluation of ``sum_i c_i g^(n-i)`` with the coefficients highest power first."""
    out = torch.full_like(g, coeffs_high_first[0])
    for c in coeffs_high_first[1:]:
        out = out * g + c
    return out


def _piecewise(
    g: torch.Tensor, brk: float, log_branch: tuple[float, float, float, float], poly_high_first: tuple[float, ...]
) -> torch.Tensor:
    """The branch functions of docs/physics.md §3.2: ``clip(a ln g + b, lo, hi)`` below ``brk``, a polynomial at and
    above it."""
    a, b, lo, hi = log_branch
    low = (a * log_g(g) + b).clamp(lo, hi)
    return torch.where(g < brk, low, _poly(g, poly_high_first))


class HermesPCM(StatisticalDeviceModel):
    """HERMES-fitted PCM statistics (docs/physics.md §3.2), one device (``devices=1``) or a device pair (``devices=2``).

    Args:
        devices: 1 (``"hermes-1dev"``: g_max 10.35 uS, t0 200 s) or 2 (``"hermes-2dev"``: g_max 20.7 uS, t0 300 s).
            The g_max values are ``ChipSpec.hermes().g_max_1dev_uS`` / ``g_max_2dev_uS``.
        g_max_uS: conductance of g = 1 (uS); default the variant's characterised g_max. The programming std scales
            with ``g_max_uS / g_ref``, ``g_ref`` the characterised g_max, as in aihwkit.
        t0_s, t_read_s: drift reference time and 1/f read time (s); defaults from docs/physics.md §3.2.
        yield_fraction, stuck_set_fraction: see :class:`StatisticalDeviceModel`.

    Examples:
        >>> import torch
        >>> model = HermesPCM(devices=2)
        >>> model.name, model.devices_per_unit
        ('hermes-2dev', 2)
    """

    def __init__(
        self,
        devices: int = 2,
        *,
        g_max_uS: float | None = None,
        t0_s: float | None = None,
        t_read_s: float = T_READ_S,
        yield_fraction: float = 1.0,
        stuck_set_fraction: float = DEFAULT_STUCK_SET_FRACTION,
    ) -> None:
        check_number(devices, "devices", integer=True)
        if devices not in (1, 2):
            raise ValidationError(f"devices must be 1 or 2 (devices per polarity of the HERMES fit), got {devices}")
        spec = ChipSpec.hermes()
        self.devices = devices
        self.devices_per_unit = devices
        self.name = f"hermes-{devices}dev"
        #: the characterised g_max the programming polynomial refers to (docs/physics.md §3.2)
        self.g_ref_uS = spec.g_max_1dev_uS if devices == 1 else spec.g_max_2dev_uS
        self._prog_coeffs = PROG_COEFFS_1DEV_US if devices == 1 else PROG_COEFFS_2DEV_US
        self._nu_std = NU_STD_1DEV if devices == 1 else NU_STD_2DEV
        self._qs = QS_1DEV if devices == 1 else QS_2DEV
        super().__init__(
            g_max_uS=self.g_ref_uS if g_max_uS is None else g_max_uS,
            t0_s=(T0_1DEV_S if devices == 1 else T0_2DEV_S) if t0_s is None else t0_s,
            t_read_s=t_read_s,
            time_offset=True,
            yield_fraction=yield_fraction,
            stuck_set_fraction=stuck_set_fraction,
        )

    def prog_std(self, g: torch.Tensor) -> torch.Tensor:
        """sigma_prog = (c0 + c1 g + c2 g^2 + c3 g^3) * g_max / g_ref uS (aihwkit HermesNoiseModel).

        The cubic is positive on [0, 1]; the clamp at 0 only guards targets marginally above g_max.
        """
        sigma = _poly(g, self._prog_coeffs[::-1]).clamp_min(0.0)
        return sigma * (self.g_max_uS / self.g_ref_uS)

    def drift_nu_mean(self, g: torch.Tensor) -> torch.Tensor:
        """Drift mean (aihwkit): g < 0.0945: clip(-0.0387 ln g - 0.0182, 0.072, 0.13); else quadratic."""
        return _piecewise(g, NU_MEAN_BREAK, NU_MEAN_LOW, NU_MEAN_HIGH)

    def drift_nu_std(self, g: torch.Tensor) -> torch.Tensor:
        """Drift std (aihwkit): log branch below 0.3039 (1 dev) / 0.3055 (2 dev), quadratic above."""
        brk, low, high = self._nu_std
        return _piecewise(g, brk, low, high)

    def read_noise_qs(self, g: torch.Tensor) -> torch.Tensor:
        """Q_s (aihwkit): log branch below 0.1591 (1 dev) / 0.16 (2 dev), cubic above."""
        brk, low, high = self._qs
        return _piecewise(g, brk, low, high)

    def describe(self) -> dict[str, object]:
        """The model's parameters as a plain dict (adds ``devices`` and ``g_ref_uS``)."""
        return {**super().describe(), "devices": self.devices, "g_ref_uS": self.g_ref_uS}
