"""Closed-loop iterative program-and-verify around a statistical device model (docs/physics.md §2.4).

The chip programs each weight by RESETting its devices, SETting the device(s) of the weight's polarity, then
iterating on one device with a current proportional to the error, until the error is below 5 ADC counts or 30
iterations have passed (docs/physics.md §2.4). :class:`ProgramVerify` simulates that loop for every modelled conductance
at once (vectorised over devices; the Python loop runs over iterations only, and converged devices are masked):

1. RESET: ``g = 0``. Targets of 0 uS stay there.
2. SET: ``g = g_set``, the device's SET conductance, drawn per device as
   ``g_max * SET_CONDUCTANCE_RATIO * (1 + SET_CONDUCTANCE_SPREAD * N)``.
3. Up to ``max_iterations`` times: a verify read ``r = g + sigma_v * N`` (the base model's 1/f read noise a short
   ``VERIFY_READ_DELAY_S`` after the pulse), error ``e = g_T - r``; devices with ``|e| < tolerance_uS`` stop; the
   others get a pulse ``step = PV_GAIN * e`` with write noise ``N(0, (PV_WRITE_NOISE_REL |step| +
   PV_WRITE_NOISE_ABS_uS)^2)``, and ``g`` is clamped to ``[0, g_set]``.

Drift exponents, stuck cells, drift and read noise are the base model's. The chip paper publishes none of the loop's
device-level constants; each one below is a named assumption and a constructor parameter.
"""

from __future__ import annotations

from typing import Any

import torch

from aimc._validation import SeedLike, check_number, make_generator
from aimc.devices.base import DeviceModel, DeviceState
from aimc.devices.statistical import DEFAULT_STUCK_SET_FRACTION, StatisticalDeviceModel, work_dtype
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.spec import ChipSpec

#: Mean SET conductance of a device, as a multiple of g_max. Assumption: the chip paper gives no value; it only says
#: g_max is chosen so that programmed weights stay reachable (docs/physics.md §2.2), so SET lies a little above.
SET_CONDUCTANCE_RATIO = 1.1
#: Relative device-to-device spread (std) of the SET conductance. Assumption: no paper gives a value.
SET_CONDUCTANCE_SPREAD = 0.05
#: Delay (s) between a programming pulse and its verify read, which sets the verify read's 1/f noise (docs/physics.md
#: §3.3 time factor). Assumption: the chip paper gives no value; a read follows its pulse within about a microsecond.
VERIFY_READ_DELAY_S = 1e-6
#: Fraction of the measured error that one pulse corrects ("current proportional to error", docs/physics.md §2.4).
#: Assumption: no paper gives the loop gain. With 1 each pulse aims at the target, which leaves the final error
#: unbiased; a gain below 1 approaches from the SET side and stops near +tolerance (gain 0.8: mean error +0.18 uS on
#: hermes-1dev).
PV_GAIN = 1.0
#: Write noise of one pulse, relative to the intended conductance step. Assumption: no paper gives a value.
PV_WRITE_NOISE_REL = 0.2
#: Step-independent write noise (uS) of one pulse. Assumption: no paper gives a value.
PV_WRITE_NOISE_ABS_uS = 0.05


class ProgramVerify(DeviceModel):
    """Iterative program-and-verify (docs/physics.md §2.4) around a base device model.

    Args:
        base: the device model whose drift exponents, stuck cells (``yield_fraction``, ``stuck_set_fraction``),
            drift and read noise are used; ``name`` becomes ``f"{base.name}+verify"``.
        tolerance_uS: stop when the verify-read error is below this (uS). Default
            ``spec.pv_tolerance_counts * spec.conductance_per_count_uS`` (5 ADC counts, docs/physics.md §2.4).
        max_iterations: at most this many verify/pulse iterations; default ``spec.pv_max_iterations`` (30).
        spec: the chip whose programming figures give the defaults; ``ChipSpec.hermes()`` if None.
        set_conductance_ratio, set_conductance_spread, verify_read_delay_s, gain, write_noise_rel,
            write_noise_abs_uS: the loop's assumed constants (module constants of the same names).

    Attributes:
        last_iterations: iterations (verify reads) each device took in the last :meth:`program` call, shape of
            that call's target, int64; 0 for zero targets and stuck devices. None before the first call.

    ``prog_std`` returns the base model's open-loop programming std so that the statistics hooks stay the base
    model's; the programming error this loop actually leaves differs (about uniform within ``tolerance_uS`` plus
    verify-read noise), so ``prog_std_is_exact`` is False and the conformance suite does not compare them.
    """

    #: the loop's programming error is not described by ``prog_std`` (see the class docstring)
    prog_std_is_exact = False

    def __init__(
        self,
        base: DeviceModel,
        *,
        tolerance_uS: float | None = None,
        max_iterations: int | None = None,
        spec: ChipSpec | None = None,
        set_conductance_ratio: float = SET_CONDUCTANCE_RATIO,
        set_conductance_spread: float = SET_CONDUCTANCE_SPREAD,
        verify_read_delay_s: float = VERIFY_READ_DELAY_S,
        gain: float = PV_GAIN,
        write_noise_rel: float = PV_WRITE_NOISE_REL,
        write_noise_abs_uS: float = PV_WRITE_NOISE_ABS_uS,
    ) -> None:
        if not isinstance(base, DeviceModel):
            raise ArgumentTypeError(f"base must be a DeviceModel, got {type(base).__name__}")
        if isinstance(base, ProgramVerify):
            raise ValidationError(f"base must not itself be a ProgramVerify model, got {base.name!r}")
        if spec is None:
            spec = ChipSpec.hermes()
        elif not isinstance(spec, ChipSpec):
            raise ArgumentTypeError(f"spec must be a ChipSpec, got {type(spec).__name__}")
        self.base = base
        self.name = f"{base.name}+verify"
        self.g_max_uS = base.g_max_uS
        self.devices_per_unit = base.devices_per_unit
        tol = spec.pv_tolerance_counts * spec.conductance_per_count_uS if tolerance_uS is None else tolerance_uS
        self.tolerance_uS = float(check_number(tol, "tolerance_uS", low=0.0, low_inclusive=False))
        iters = spec.pv_max_iterations if max_iterations is None else max_iterations
        self.max_iterations = int(check_number(iters, "max_iterations", low=1, integer=True))
        self.set_conductance_ratio = float(
            check_number(set_conductance_ratio, "set_conductance_ratio", low=0.0, low_inclusive=False)
        )
        self.set_conductance_spread = float(check_number(set_conductance_spread, "set_conductance_spread", low=0.0))
        self.verify_read_delay_s = float(check_number(verify_read_delay_s, "verify_read_delay_s", low=0.0))
        self.gain = float(check_number(gain, "gain", low=0.0, high=2.0, low_inclusive=False, high_inclusive=False))
        self.write_noise_rel = float(check_number(write_noise_rel, "write_noise_rel", low=0.0))
        self.write_noise_abs_uS = float(check_number(write_noise_abs_uS, "write_noise_abs_uS", low=0.0))
        self.yield_fraction = float(getattr(base, "yield_fraction", 1.0))
        self.stuck_set_fraction = float(getattr(base, "stuck_set_fraction", DEFAULT_STUCK_SET_FRACTION))
        self.last_iterations: torch.Tensor | None = None

    # ------------------------------------------------------------------ statistics: the base model's
    def prog_std(self, g: torch.Tensor) -> torch.Tensor:
        """The base model's open-loop programming std (uS); NOT the error the verify loop leaves (see class doc)."""
        return self.base.prog_std(g)

    def drift_nu_mean(self, g: torch.Tensor) -> torch.Tensor:
        """The base model's drift-exponent mean."""
        return self.base.drift_nu_mean(g)

    def drift_nu_std(self, g: torch.Tensor) -> torch.Tensor:
        """The base model's drift-exponent std."""
        return self.base.drift_nu_std(g)

    def read_noise_qs(self, g: torch.Tensor) -> torch.Tensor:
        """The base model's 1/f read-noise amplitude Q_s."""
        return self.base.read_noise_qs(g)

    # ------------------------------------------------------------------ time evolution: the base model's
    def drift(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """The base model's drift (uS), shape ``(*)``."""
        return self.base.drift(state, t_seconds)

    def read_noise_std(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """The base model's read-noise std (uS), shape ``(*)``."""
        return self.base.read_noise_std(state, t_seconds)

    def read_noise_time_factor(self, t_seconds: float) -> float:
        """The base model's 1/f time factor (only for a :class:`StatisticalDeviceModel` base)."""
        if not isinstance(self.base, StatisticalDeviceModel):
            raise ArgumentTypeError(f"base model {self.base.name!r} is not a StatisticalDeviceModel")
        return self.base.read_noise_time_factor(t_seconds)

    def verify_read_std(self, g_uS: torch.Tensor, g_target_uS: torch.Tensor) -> torch.Tensor:
        """Std (uS) of a verify read of devices at conductance ``g_uS`` aiming at ``g_target_uS`` (same shape).

        For a :class:`StatisticalDeviceModel` base it is the 1/f noise of docs/physics.md §3.3, ``|g| Q_s(g_T/g_max) *
        sqrt(ln((d + t_read) / (2 t_read)))`` at the physical delay ``d = verify_read_delay_s`` after the pulse,
        without the HERMES time offset (which counts from the end of programming the whole array). For any other
        base it is ``base.read_noise_std`` of a drift-free state at ``verify_read_delay_s``.
        """
        if isinstance(self.base, StatisticalDeviceModel):
            factor = self.base.one_over_f_factor(self.verify_read_delay_s)
            return g_uS.abs() * self.base.read_noise_qs(g_target_uS / self.g_max_uS) * factor
        state = DeviceState(
            g_target=g_target_uS,
            g_prog=g_uS,
            nu=torch.zeros_like(g_uS),
            stuck=torch.zeros(g_uS.shape, dtype=torch.bool, device=g_uS.device),
        )
        return self.base.read_noise_std(state, self.verify_read_delay_s)

    # ------------------------------------------------------------------ programming
    def program(self, g_target_uS: torch.Tensor, generator: SeedLike = None) -> DeviceState:
        """Program ``g_target_uS`` (uS, shape ``(*)``) with the program-and-verify loop; sets ``last_iterations``.

        Draws, in this fixed order, on the CPU with ``generator``: (1) SET-conductance spread, (2) drift-exponent
        noise, (3) a uniform for the yield, (4) a uniform for the stuck value; then per iteration (5) verify-read
        noise and (6) write noise, for every device (converged ones ignore theirs), so the draws do not depend on
        which devices converged. The loop ends early once every device has converged.

        Returns:
            A :class:`DeviceState` of shape ``(*)`` on the target's device and dtype.
        """
        target = self.check_target(g_target_uS).detach()
        gen = make_generator(generator, "generator")
        wd = work_dtype(target.dtype)
        shape, device = target.shape, target.device

        def normal() -> torch.Tensor:
            return torch.randn(shape, generator=gen, dtype=wd).to(device)

        def uniform() -> torch.Tensor:
            return torch.rand(shape, generator=gen, dtype=wd).to(device)

        n_set, n_nu, u_yield, u_stuck = normal(), normal(), uniform(), uniform()

        with torch.no_grad():
            g_t = target.to(wd)
            g_norm = g_t / self.g_max_uS
            # SET conductance of each device (assumed distribution, see SET_CONDUCTANCE_RATIO / _SPREAD)
            g_set = (
                self.g_max_uS * self.set_conductance_ratio * (1.0 + self.set_conductance_spread * n_set)
            ).clamp_min(0.0)
            # drift exponent from the base statistics (docs/physics.md §3.3): nu = |mu_nu + sigma_nu * N|
            nu = (self.base.drift_nu_mean(g_norm) + self.base.drift_nu_std(g_norm) * n_nu).abs()
            # stuck cells as in the base model (docs/physics.md §2.5)
            stuck = u_yield > self.yield_fraction
            stuck_value = torch.where(
                u_stuck < self.stuck_set_fraction, torch.full_like(g_t, self.g_max_uS), torch.zeros_like(g_t)
            )

            # RESET everything, then SET the devices with a non-zero target (docs/physics.md §2.4)
            g = torch.where(g_t > 0, g_set, torch.zeros_like(g_t))
            active = (g_t > 0) & ~stuck
            iterations = torch.zeros(shape, dtype=torch.int64, device=device)
            for _ in range(self.max_iterations):
                if not bool(active.any()):
                    break
                n_read, n_write = normal(), normal()
                read = g + self.verify_read_std(g, g_t) * n_read
                error = g_t - read
                iterations += active.to(torch.int64)
                active = active & (error.abs() >= self.tolerance_uS)
                step = self.gain * error
                write_std = self.write_noise_rel * step.abs() + self.write_noise_abs_uS
                g_new = torch.minimum((g + step + write_std * n_write).clamp_min(0.0), g_set)
                g = torch.where(active, g_new, g)

            g = torch.where(stuck, stuck_value, g)

        self.last_iterations = iterations
        return DeviceState(g_target=target.clone(), g_prog=g.to(target.dtype), nu=nu.to(target.dtype), stuck=stuck)

    def describe(self) -> dict[str, Any]:
        """The loop's parameters and the base model's description (under ``"base"``)."""
        base_desc = self.base.describe() if hasattr(self.base, "describe") else {"name": self.base.name}
        return {
            "name": self.name,
            "class": type(self).__name__,
            "g_max_uS": self.g_max_uS,
            "devices_per_unit": self.devices_per_unit,
            "yield_fraction": self.yield_fraction,
            "tolerance_uS": self.tolerance_uS,
            "max_iterations": self.max_iterations,
            "set_conductance_ratio": self.set_conductance_ratio,
            "set_conductance_spread": self.set_conductance_spread,
            "verify_read_delay_s": self.verify_read_delay_s,
            "gain": self.gain,
            "write_noise_rel": self.write_noise_rel,
            "write_noise_abs_uS": self.write_noise_abs_uS,
            "base": base_desc,
        }

    def __repr__(self) -> str:
        return (
            f"ProgramVerify(base={self.base!r}, tolerance_uS={self.tolerance_uS:g}, "
            f"max_iterations={self.max_iterations})"
        )
