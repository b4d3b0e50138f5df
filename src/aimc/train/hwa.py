"""Hardware-aware (HWA) training: noise injection into the weights during training (SPEC §3, Joshi et al. 2020;
Rasch et al. 2023).

For every training step the weights of each Conv2d/Linear layer are perturbed with Gaussian noise whose std follows
the PCM device model's programming error, scaled by ``noise_scale`` (SPEC §3: 2x the PCM programming-noise model
for ResNet-9), with each layer's largest |w| mapped to the device's G_max as the chip's per-core scaling does; the
gradient is taken at the noisy weights and applied to the clean ones. After each step the weights are clipped to
``clip_sigma`` standard deviations of their layer (a robust stand-in for SPEC §3's "weights clipped to ±1",
whose scale is not given), so that a few outliers do not set W_max for a whole layer.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from aimc.core.analog import polarity_g_max
from aimc.devices.base import DeviceModel
from aimc.devices.registry import get as get_device

#: SPEC §3: weight noise = 2x the PCM programming-noise model (ResNet-9 HWA training).
RESNET9_NOISE_SCALE = 2.0
#: Assumption: per-layer clipping of the weights at this many standard deviations after each step.
CLIP_SIGMA = 2.5
#: SPEC §3 (PTB LSTM HWA): Gaussian weight noise of std 0.075·(W_max − W_min) per matrix ...
LSTM_NOISE_FRACTION = 0.075
#: ... and the weights clipped at 2 standard deviations.
LSTM_CLIP_SIGMA = 2.0


def analog_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv2d and Linear layers that go onto the chip."""
    return [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def analog_matrices(model: nn.Module) -> list[torch.nn.Parameter]:
    """The weight matrices that go onto the chip: Conv2d/Linear weights and LSTM input/hidden gate matrices."""
    out: list[torch.nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            out.append(m.weight)
        elif isinstance(m, nn.LSTM):
            out += [p for name, p in m.named_parameters() if name.startswith("weight_")]
    return out


@contextmanager
def range_noise(model: nn.Module, generator: torch.Generator, fraction: float = LSTM_NOISE_FRACTION) -> Iterator[None]:
    """Within the block every on-chip matrix W carries Gaussian noise of std fraction·(max W − min W) (SPEC §3)."""
    saved = []
    with torch.no_grad():
        for w in analog_matrices(model):
            std = fraction * float(w.max() - w.min())
            noise = torch.randn(w.shape, generator=generator).to(w.device, w.dtype) * std
            saved.append((w, w.detach().clone()))
            w.add_(noise)
    try:
        yield
    finally:
        with torch.no_grad():
            for w, clean in saved:
                w.copy_(clean)


def clip_matrices(model: nn.Module, clip_sigma: float) -> None:
    """Clip every on-chip matrix to ±clip_sigma x its std, in place."""
    with torch.no_grad():
        for w in analog_matrices(model):
            bound = float(w.std()) * clip_sigma
            w.clamp_(-bound, bound)


def weight_noise_std(w: torch.Tensor, device: DeviceModel, strategy: str, noise_scale: float) -> torch.Tensor:
    """Std of the injected noise for each weight of ``w``: noise_scale x sigma_prog(|w|/w_max) in weight units."""
    g_max = polarity_g_max(device, strategy)
    w_max = w.abs().max().clamp_min(1e-12)
    g = (w.abs() / w_max).clamp(0.0, 1.0)
    # the device model's statistics are per modelled conductance (a pair for TDP with a one-device model: the
    # pair's error is approximated by scaling one device's to the pair's range)
    sigma_uS = device.prog_std(g) * (g_max / device.g_max_uS)
    return noise_scale * sigma_uS * (w_max / g_max)


@contextmanager
def noisy_weights(
    model: nn.Module,
    generator: torch.Generator,
    device: DeviceModel | str = "hermes-2dev",
    strategy: str = "tdp",
    noise_scale: float = RESNET9_NOISE_SCALE,
) -> Iterator[None]:
    """Within the block, every analog layer's weights carry fresh programming-like noise; restored on exit."""
    model_device = get_device(device) if isinstance(device, str) else device
    saved = []
    with torch.no_grad():
        for layer in analog_layers(model):
            w = layer.weight
            std = weight_noise_std(w.detach().float(), model_device, strategy, noise_scale)
            noise = torch.randn(w.shape, generator=generator).to(w.device) * std
            saved.append((w, w.detach().clone()))
            w.add_(noise.to(w.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for w, clean in saved:
                w.copy_(clean)


def clip_weights(model: nn.Module, clip_sigma: float = CLIP_SIGMA) -> None:
    """Clip each analog layer's weights to ±clip_sigma x their std, in place."""
    with torch.no_grad():
        for layer in analog_layers(model):
            bound = float(layer.weight.std()) * clip_sigma
            layer.weight.clamp_(-bound, bound)
