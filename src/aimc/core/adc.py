"""The current-controlled-oscillator (CCO) ADC of a core and its digital affine correction (docs/physics.md §6).

Each output has one CCO ADC with two counters, one for positive and one for negative bit-line current. A counter
integrating a charge Q (fC) over a window of ``T`` ns at mean current i = Q/T (uA) counts

    count = floor(T · f(i) · 1e-3),   f(i) = A·i / (1 + B·i) + C   [MHz],          (docs/physics.md §6)

with i clipped at the saturation current (~100 uA) and the count at the counter's 12-bit range. The CCO gain A has a
7% spread across ADCs (Le Gallo et al. 2023); B and C are assumptions (see :mod:`aimc.core.config`). Using the mean
current of the window is this model's approximation of a CCO integrating the PWM staircase current (documented in
docs/design.md).

Calibration ("affine correction", docs/physics.md §6): each counter's transfer is measured once at evenly spaced
currents and a least-squares line count ≈ α·Q + β fitted; the LDPU then estimates Q = count/α − β/α with one FMA per
counter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from aimc.core.config import CoreConfig
from aimc.errors import ValidationError
from aimc.spec import ChipSpec


@dataclass
class AdcState:
    """Per-counter CCO parameters and their calibrated correction.

    Shapes: ``(..., 2, m)`` — leading core dimensions, the counter (0 positive, 1 negative) and the output.

    Attributes:
        gain: CCO gain A (MHz/uA).
        offset: CCO offset C (MHz).
        inv_alpha: calibrated fC per count for one integration window.
        beta: calibrated offset (counts) of one integration window.
    """

    gain: torch.Tensor
    offset: torch.Tensor
    inv_alpha: torch.Tensor
    beta: torch.Tensor

    def to(self, device: torch.device | str) -> AdcState:
        """Move every tensor to ``device``."""
        return AdcState(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as a name -> tensor dict (for safetensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def cco_counts(
    charge_fC: torch.Tensor,
    window_ns: float,
    gain: torch.Tensor,
    offset: torch.Tensor,
    spec: ChipSpec,
    config: CoreConfig,
    phases: int = 1,
) -> torch.Tensor:
    """Counts of CCO counters integrating ``charge_fC`` over ``phases`` windows of ``window_ns`` each.

    Args:
        charge_fC: integrated charge per counter, shape ``(..., B, m)``; negative values (noise) count as 0 current.
        window_ns: duration of one integration window (one PWM phase).
        gain, offset: CCO parameters broadcastable to ``charge_fC`` (e.g. ``(..., 1, m)``).
        phases: number of phases the charge was collected over; the mean current is taken over all of them.

    Returns:
        Counts, shape of ``charge_fC`` (float, integer-valued when ``config.adc_quantization``).
    """
    shape = torch.broadcast_shapes(charge_fC.shape, gain.shape, offset.shape)
    return cco_counts_(charge_fC.expand(shape).clone(), window_ns, gain, offset, spec, config, phases)


def cco_counts_(
    charge_fC: torch.Tensor,
    window_ns: float,
    gain: torch.Tensor,
    offset: torch.Tensor,
    spec: ChipSpec,
    config: CoreConfig,
    phases: int = 1,
    work: torch.Tensor | None = None,
) -> torch.Tensor:
    """In-place :func:`cco_counts`: overwrites and returns ``charge_fC`` (``work``: optional scratch tensor of its
    shape). With T the total window, the count is T·1e-3·(A·i/(1 + B·i) + C) at i = Q/T, computed as
    (A·T·1e-3/B)·Q/(T/B + Q) + C·T·1e-3 so that the hot path makes few passes over the data.
    """
    total_ns = window_ns * phases
    k = total_ns * 1e-3  # MHz·ns -> counts
    q = charge_fC.clamp_(0.0, spec.adc_saturation_uA * total_ns if config.adc_saturation else None)
    b = config.cco_nonlinearity_per_uA
    if b:
        den = torch.add(q, total_ns / b, out=work) if work is not None else torch.add(q, total_ns / b)
        q.mul_(gain * (k / b)).div_(den)
    else:
        q.mul_(gain * (k / total_ns))
    counts = q.add_(offset * k)
    if config.adc_quantization:
        counts.floor_()
    return counts.clamp_(0.0, float(spec.adc_max_count * phases))


def sample_adc(
    cores_shape: tuple[int, ...],
    outputs: int,
    spec: ChipSpec,
    config: CoreConfig,
    generator: torch.Generator,
    dtype: torch.dtype = torch.float32,
    top_uA: torch.Tensor | None = None,
) -> AdcState:
    """Draw the CCO parameters of ``outputs`` ADCs (two counters each) per core and calibrate them.

    ``top_uA``: the largest calibration current of each core, shape ``cores_shape`` (see :func:`calibrate`).

    Returns an :class:`AdcState` whose tensors have shape ``(*cores_shape, 2, outputs)``.
    """
    shape = (*cores_shape, 2, outputs)
    spread = spec.cco_gain_spread if config.cco_gain_spread is None else config.cco_gain_spread
    gain = spec.cco_gain_MHz_per_uA * (1.0 + spread * torch.randn(shape, generator=generator, dtype=dtype))
    gain = gain.clamp_min(0.05 * spec.cco_gain_MHz_per_uA)
    offset = config.cco_offset_MHz + config.cco_offset_spread_MHz * torch.randn(shape, generator=generator, dtype=dtype)
    inv_alpha, beta = calibrate(gain, offset, spec, config, top_uA)
    return AdcState(gain=gain, offset=offset, inv_alpha=inv_alpha, beta=beta)


def calibrate(
    gain: torch.Tensor,
    offset: torch.Tensor,
    spec: ChipSpec,
    config: CoreConfig,
    top_uA: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit each counter's affine correction from its counts at currents evenly spaced over [0, top] (one window).

    Args:
        gain, offset: ``(*cores, 2, m)`` CCO parameters.
        top_uA: ``cores`` (or broadcastable) largest calibration current of each core, in (0, saturation]; default
            saturation x ``config.calibration_max_fraction`` for every core.

    Returns ``(inv_alpha, beta)`` of ``gain``'s shape; the LDPU estimates the charge as
    ``count*inv_alpha - beta*inv_alpha``.
    """
    window = spec.integration_time_ns
    if top_uA is None:  # one range for all cores, as linspace(0, top) (the per-core form rounds differently)
        top = spec.adc_saturation_uA * config.calibration_max_fraction
        currents = torch.linspace(0.0, top, config.calibration_points, dtype=gain.dtype, device=gain.device)
    else:
        top_t = torch.as_tensor(top_uA, dtype=gain.dtype)
        if not bool(torch.isfinite(top_t).all()) or bool((top_t <= 0).any()):
            raise ValidationError(f"top_uA must be finite and > 0 (uA), got {top_uA}")
        top_t = top_t.clamp(max=spec.adc_saturation_uA).to(gain.device)
        steps = torch.linspace(0.0, 1.0, config.calibration_points, dtype=gain.dtype, device=gain.device)
        currents = steps * top_t.reshape(*top_t.shape, 1, 1, 1)  # (*cores, 1, 1, P): counter, output, point
    charge = currents * window
    counts = cco_counts(charge, window, gain.unsqueeze(-1), offset.unsqueeze(-1), spec, config)
    q_mean = charge.mean(-1, keepdim=True)
    c_mean = counts.mean(-1, keepdim=True)
    dq = charge - q_mean
    alpha = ((dq * (counts - c_mean)).sum(-1) / (dq * dq).sum(-1)).clamp_min(1e-12)
    beta = c_mean.squeeze(-1) - alpha * q_mean.squeeze(-1)
    return 1.0 / alpha, beta
