"""A noise-free device: exact programming, no drift, no read noise, no stuck cells.

Not a physical model: it is the noise-free limit used to test that the rest of the simulated chip (DAC, ADC,
digital units) reproduces an exact matrix-vector product when the devices are perfect.
"""

from __future__ import annotations

from typing import Any

import torch

from aimc._validation import SeedLike, check_number, make_generator
from aimc.devices.base import DeviceModel, DeviceState, check_time
from aimc.spec import ChipSpec


class IdealDevice(DeviceModel):
    """Perfect devices: ``g_prog = g_target``, ``nu = 0``, no read noise, no stuck cells.

    Args:
        g_max_uS: conductance of g = 1 (uS); default ``ChipSpec.hermes().g_max_1dev_uS`` (docs/physics.md §2.2).

    Shape:
        Every output has the target's shape ``(*)``.
    """

    name = "ideal"
    devices_per_unit = 1

    def __init__(self, *, g_max_uS: float | None = None) -> None:
        g_max = ChipSpec.hermes().g_max_1dev_uS if g_max_uS is None else g_max_uS
        self.g_max_uS = float(check_number(g_max, "g_max_uS", low=0.0, low_inclusive=False))

    def prog_std(self, g: torch.Tensor) -> torch.Tensor:
        """Zero: no programming error."""
        return torch.zeros_like(g)

    def drift_nu_mean(self, g: torch.Tensor) -> torch.Tensor:
        """Zero: no drift."""
        return torch.zeros_like(g)

    def drift_nu_std(self, g: torch.Tensor) -> torch.Tensor:
        """Zero: no drift."""
        return torch.zeros_like(g)

    def read_noise_qs(self, g: torch.Tensor) -> torch.Tensor:
        """Zero: no read noise."""
        return torch.zeros_like(g)

    def program(self, g_target_uS: torch.Tensor, generator: SeedLike = None) -> DeviceState:
        """Program exactly: ``g_prog = g_target``; the generator is validated but not drawn from."""
        target = self.check_target(g_target_uS).detach()
        make_generator(generator, "generator")
        return DeviceState(
            g_target=target.clone(),
            g_prog=target.clone(),
            nu=torch.zeros_like(target),
            stuck=torch.zeros(target.shape, dtype=torch.bool, device=target.device),
        )

    def drift(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """``g_prog`` at any time (no drift)."""
        check_time(t_seconds)
        return state.g_prog.clone()

    def read_noise_std(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """Zero at any time."""
        check_time(t_seconds)
        return torch.zeros_like(state.g_prog)

    def conductance(self, state: DeviceState, t_seconds: float, generator: SeedLike = None) -> torch.Tensor:
        """One read: exactly ``g_prog`` (the generator is validated but not drawn from)."""
        make_generator(generator, "generator")
        return self.drift(state, t_seconds).clamp_min(0.0)

    def describe(self) -> dict[str, Any]:
        """The model's parameters as a plain dict."""
        return {
            "name": self.name,
            "class": type(self).__name__,
            "g_max_uS": self.g_max_uS,
            "devices_per_unit": self.devices_per_unit,
            "yield_fraction": 1.0,
        }
