"""Defects of a stack of cores: stuck conductance units and dead ADCs, applied when the cores are programmed.

A conductance unit stuck at SET sits at the device model's ``g_max_uS`` whatever its target and drifts like a SET
device (drift exponent drawn at g = 1, docs/physics.md §3.3); one stuck at RESET sits at 0 uS. A dead ADC's CCO
never oscillates: both its counters read 0, the per-ADC calibration finds a zero gain and the LDPU zeroes that output.
The chip-level description of a die's defects, and where each kind takes effect, is :mod:`aimc.faults`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aimc.core.adc import AdcState
from aimc.devices.base import DeviceModel, DeviceState
from aimc.errors import ValidationError

#: Codes of an explicit stuck-device map (``aimc.faults.Faults.device_map``).
HEALTHY, STUCK_SET, STUCK_RESET = 0, 1, 2


@dataclass
class CoreFaults:
    """The faults of one layer's stack of cores, applied by :func:`aimc.core.program_core` (made by
    :meth:`aimc.faults.Faults.for_layer`).

    Attributes:
        stuck_set, stuck_reset: rates (fractions of conductance units).
        device_map: ``(i, j)`` block index -> explicit codes ``(U, tile_cols, tile_rows)``.
        dead_adc: ``(r, c, m)`` True where the ADC of an output is dead, or None.
        generator: draws which units are stuck and the drift exponents of the stuck-at-SET ones.
    """

    stuck_set: float
    stuck_reset: float
    device_map: dict[tuple[int, int], torch.Tensor]
    dead_adc: torch.Tensor | None
    generator: torch.Generator

    def stuck_codes(self, shape: torch.Size) -> torch.Tensor | None:
        """Codes (int8, ``shape`` = ``(r, c, U, m, n)``) of every unit of the layer, or None if none is stuck."""
        rate = self.stuck_set + self.stuck_reset
        codes = None
        if rate > 0:
            u_stuck = torch.rand(shape, generator=self.generator)
            u_kind = torch.rand(shape, generator=self.generator)
            set_share = self.stuck_set / rate
            stuck = u_stuck < rate
            codes = torch.where(stuck & (u_kind < set_share), STUCK_SET, HEALTHY).to(torch.int8)
            codes[stuck & (u_kind >= set_share)] = STUCK_RESET
        if self.device_map:
            if len(shape) != 5:
                raise ValidationError(f"stuck-device maps need a (r, c, U, m, n) core stack, got {tuple(shape)}")
            codes = torch.zeros(shape, dtype=torch.int8) if codes is None else codes
            units, m, n = shape[-3:]
            for (i, j), block in self.device_map.items():
                if block.shape[0] != units:
                    raise ValidationError(
                        f"the explicit stuck-device map of block ({i}, {j}) has {block.shape[0]} units per weight; "
                        f"this device model and strategy use {units}"
                    )
                sub = block[:, :m, :n]
                codes[i, j] = torch.where(sub != HEALTHY, sub, codes[i, j])
        return codes

    def apply_to_states(self, states: DeviceState, model: DeviceModel) -> DeviceState:
        """Put stuck units at SET (``g_max``, drift exponent drawn at g = 1) or RESET (0 uS); marks ``stuck``."""
        codes = self.stuck_codes(states.g_target.shape)
        if codes is None:
            return states
        codes = codes.to(states.g_prog.device)
        normal = torch.randn(states.g_target.shape, generator=self.generator).to(states.g_prog.device)
        one = torch.ones((), dtype=states.g_prog.dtype, device=states.g_prog.device)
        # docs/physics.md §3.3: nu = |mu_nu(g) + sigma_nu(g) N|, here at the SET state g = 1
        nu_set = (model.drift_nu_mean(one) + model.drift_nu_std(one) * normal.to(states.nu.dtype)).abs()
        is_set, is_reset = codes == STUCK_SET, codes == STUCK_RESET
        g_prog = torch.where(is_set, torch.full_like(states.g_prog, model.g_max_uS), states.g_prog)
        g_prog = torch.where(is_reset, torch.zeros_like(g_prog), g_prog)
        return DeviceState(
            g_target=states.g_target,
            g_prog=g_prog,
            nu=torch.where(is_set, nu_set, states.nu),
            stuck=states.stuck | is_set | is_reset,
        )

    def apply_to_adc(self, adc: AdcState) -> AdcState:
        """Dead ADCs: gain and offset 0 (no count on either counter), correction 0 (the output reads zero)."""
        if self.dead_adc is None:
            return adc
        if (*adc.gain.shape[:-2], adc.gain.shape[-1]) != tuple(self.dead_adc.shape):
            raise ValidationError(
                f"dead-ADC mask of shape {tuple(self.dead_adc.shape)} does not match ADCs {tuple(adc.gain.shape)}"
            )
        dead = self.dead_adc.to(adc.gain.device).unsqueeze(-2)  # (r, c, 1, m): both counters
        return AdcState(**{k: v.masked_fill(dead, 0.0) for k, v in adc.tensors().items()})


__all__ = ["HEALTHY", "STUCK_RESET", "STUCK_SET", "CoreFaults"]
