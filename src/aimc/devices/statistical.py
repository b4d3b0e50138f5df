"""Sampling PCM devices from four statistics, and their time evolution (docs/physics.md §3.3).

A :class:`StatisticalDeviceModel` draws, per device and once at programming (docs/physics.md §3.3; Nandakumar et al.,
ICECS 2019; Rasch et al., Nat. Commun. 14:5282, 2023, Eqs. 7-13):

- the programmed conductance ``g_prog = max(g_T + sigma_prog(g) * N, 0)``,
- the drift exponent ``nu = |mu_nu(g) + sigma_nu(g) * N|``,
- whether the device is stuck (not programmable, with probability ``1 - yield_fraction``), and if so whether it is
  stuck at SET (``g_max``) or at RESET (0 uS),

where ``g = g_T / g_max`` is the normalised target. After programming, the conductance drifts as
``g_drift(t) = g_prog * (t_eff / t0) ** (-nu)`` and every read adds 1/f noise of std
``|g_drift| * Q_s(g) * sqrt(ln((t_eff + t_read) / (2 t_read)))`` (docs/physics.md §3.3). The two published models differ
in the time axis: the "standard" model reads ``t_eff = t`` and does not drift before ``t0``; the HERMES fit counts time
from the end of programming, ``t_eff = t + t0`` (docs/physics.md §3.2, aihwkit ``HermesNoiseModel``).

Subclasses supply only the four statistics ``prog_std``, ``drift_nu_mean``, ``drift_nu_std`` and ``read_noise_qs``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from aimc._validation import SeedLike, check_number, make_generator
from aimc.devices.base import DeviceModel, DeviceState, check_time
from aimc.errors import ArgumentTypeError

#: Of the stuck (non-programmable) devices, the fraction stuck at SET (``g_max``); the rest are stuck at RESET
#: (0 uS). Assumption: no paper gives this split (the chip paper only reports the yield, docs/physics.md §2.5), so we
#: take the two failure modes as equally likely.
DEFAULT_STUCK_SET_FRACTION = 0.5

#: Smallest normalised conductance fed to a logarithm, so that a target of 0 uS gives finite statistics
#: (numerical guard only; every published equation clips its logarithmic branch well above this).
LOG_FLOOR = 1e-12


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype random draws and statistics are computed in: float64 for float64 targets, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class StatisticalDeviceModel(DeviceModel):
    """A PCM model defined by four statistics of the normalised target, with the time evolution of docs/physics.md §3.3.

    Args:
        g_max_uS: conductance (uS) that a normalised target ``g = 1`` stands for.
        t0_s: drift reference time ``t0`` (s).
        t_read_s: read duration ``t_read`` of the 1/f noise fit (s).
        time_offset: if True (HERMES, docs/physics.md §3.2) the model time is ``t_eff = t + t0``; if False
            (standard model, docs/physics.md §3.1) ``t_eff = t`` and there is no drift for ``t < t0``.
        yield_fraction: probability that a device is programmable, in (0, 1]. The chip reaches > 99%
            (docs/physics.md §2.5).
        stuck_set_fraction: of the stuck devices, the fraction stuck at SET (``g_max``), in [0, 1]; the rest are
            stuck at RESET (0 uS). Default :data:`DEFAULT_STUCK_SET_FRACTION` (an assumption).

    Shape:
        ``program`` takes a target of any shape ``(*)``; every tensor of the returned :class:`DeviceState`, and
        every output of ``drift``, ``read_noise_std`` and ``conductance``, has that shape ``(*)``.
    """

    name: str = "statistical"
    devices_per_unit: int = 1

    def __init__(
        self,
        *,
        g_max_uS: float,
        t0_s: float,
        t_read_s: float,
        time_offset: bool,
        yield_fraction: float = 1.0,
        stuck_set_fraction: float = DEFAULT_STUCK_SET_FRACTION,
    ) -> None:
        self.g_max_uS = float(check_number(g_max_uS, "g_max_uS", low=0.0, low_inclusive=False))
        self.t0_s = float(check_number(t0_s, "t0_s", low=0.0, low_inclusive=False))
        self.t_read_s = float(check_number(t_read_s, "t_read_s", low=0.0, low_inclusive=False))
        if not isinstance(time_offset, bool):
            raise ArgumentTypeError(f"time_offset must be a bool, got {type(time_offset).__name__} {time_offset!r}")
        self.time_offset = time_offset
        self.yield_fraction = float(
            check_number(yield_fraction, "yield_fraction", low=0.0, high=1.0, low_inclusive=False)
        )
        self.stuck_set_fraction = float(check_number(stuck_set_fraction, "stuck_set_fraction", low=0.0, high=1.0))

    # ------------------------------------------------------------------ time axis (docs/physics.md §3)
    def effective_time(self, t_seconds: float) -> float:
        """Model time ``t_eff`` (s): ``t + t0`` with ``time_offset`` (docs/physics.md §3.2), else ``t`` (§3.1)."""
        t = check_time(t_seconds)
        return t + self.t0_s if self.time_offset else t

    def one_over_f_factor(self, elapsed_s: float) -> float:
        """``sqrt(max(ln((elapsed + t_read) / (2 t_read)), 0))``: the time factor of the 1/f noise (docs/physics.md
        §3.3).

        ``elapsed_s`` is a model time (already offset, if the model offsets time). The ``max(., 0)`` keeps reads
        within ``t_read`` of programming noise-free instead of taking the square root of a negative number.
        """
        elapsed = check_time(elapsed_s, "elapsed_s")
        return math.sqrt(max(math.log((elapsed + self.t_read_s) / (2.0 * self.t_read_s)), 0.0))

    def read_noise_time_factor(self, t_seconds: float) -> float:
        """The 1/f time factor at ``t_seconds`` after programming: ``one_over_f_factor(effective_time(t))``."""
        return self.one_over_f_factor(self.effective_time(t_seconds))

    # ------------------------------------------------------------------ programming
    def program(self, g_target_uS: torch.Tensor, generator: SeedLike = None) -> DeviceState:
        """Program devices to ``g_target_uS`` (uS), drawing programming error, drift exponents and stuck cells.

        Draws, in this fixed order, on the CPU with ``generator``: (1) programming noise, (2) drift-exponent
        noise, (3) a uniform for the yield, (4) a uniform for the stuck value. All four are drawn whatever the
        yield, so the same seed gives the same programming error and ``nu`` at any ``yield_fraction``.

        Args:
            g_target_uS: target conductances (uS), shape ``(*)``, finite, in ``[0, g_max_uS]``.
            generator: an int seed or a CPU ``torch.Generator``.

        Returns:
            A :class:`DeviceState` whose tensors have shape ``(*)``, on the target's device and dtype.
        """
        target = self.check_target(g_target_uS).detach()
        gen = make_generator(generator, "generator")
        wd = work_dtype(target.dtype)
        shape, device = target.shape, target.device

        def draw(kind: str) -> torch.Tensor:
            fn = torch.randn if kind == "normal" else torch.rand
            return fn(shape, generator=gen, dtype=wd).to(device)

        n_prog, n_nu, u_yield, u_stuck = draw("normal"), draw("normal"), draw("uniform"), draw("uniform")

        with torch.no_grad():
            g_t = target.to(wd)
            g = g_t / self.g_max_uS
            # docs/physics.md §3.3: g_prog = g_T + sigma_prog * N, clamped >= 0
            g_prog = (g_t + self.prog_std(g) * n_prog).clamp_min(0.0)
            # docs/physics.md §3.3: nu = |mu_nu + sigma_nu * N|, drawn once per device at programming
            nu = (self.drift_nu_mean(g) + self.drift_nu_std(g) * n_nu).abs()
            # docs/physics.md §2.5: a device is programmable with probability yield_fraction
            stuck = u_yield > self.yield_fraction
            stuck_value = torch.where(
                u_stuck < self.stuck_set_fraction, torch.full_like(g_prog, self.g_max_uS), torch.zeros_like(g_prog)
            )
            g_prog = torch.where(stuck, stuck_value, g_prog)

        return DeviceState(
            g_target=target.clone(),
            g_prog=g_prog.to(target.dtype),
            nu=nu.to(target.dtype),
            stuck=stuck,
        )

    # ------------------------------------------------------------------ time evolution
    def drift(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """Noise-free conductance (uS) at ``t_seconds`` after programming, shape ``(*)`` (docs/physics.md §3.3).

        ``g_drift = g_prog * (t_eff / t0) ** (-nu)`` for ``t_eff >= t0``, ``g_prog`` before; never above ``g_prog``
        because ``nu >= 0``.
        """
        t_eff = self.effective_time(t_seconds)
        if t_eff <= self.t0_s:
            return state.g_prog.clone()
        return state.g_prog * torch.exp(-state.nu * math.log(t_eff / self.t0_s))

    def read_noise_std(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """Std (uS) of one read's 1/f noise, shape ``(*)`` (docs/physics.md §3.3).

        ``sigma = |g_drift| * Q_s(g_T / g_max) * sqrt(max(ln((t_eff + t_read) / (2 t_read)), 0))``.
        """
        factor = self.read_noise_time_factor(t_seconds)
        g_drift = self.drift(state, t_seconds)
        qs = self.read_noise_qs(state.g_target / self.g_max_uS)
        return g_drift.abs() * qs * factor

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, Any]:
        """The model's parameters as a plain dict, for recording next to results."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "g_max_uS": self.g_max_uS,
            "devices_per_unit": self.devices_per_unit,
            "t0_s": self.t0_s,
            "t_read_s": self.t_read_s,
            "time_offset": self.time_offset,
            "yield_fraction": self.yield_fraction,
            "stuck_set_fraction": self.stuck_set_fraction,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, g_max_uS={self.g_max_uS:g}, t0_s={self.t0_s:g}, "
            f"yield_fraction={self.yield_fraction:g})"
        )


def log_g(g: torch.Tensor) -> torch.Tensor:
    """``ln(g)`` with ``g`` floored at :data:`LOG_FLOOR`, so that ``g = 0`` gives a finite value, not -inf/NaN."""
    return torch.log(g.clamp_min(LOG_FLOOR))
