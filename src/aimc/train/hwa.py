"""Hardware-aware (HWA) training: noise injection into the weights during training (docs/physics.md §11; Joshi et al.
2020; Rasch et al. 2023).

For every training step the weights of each Conv2d/Linear layer are perturbed with Gaussian noise whose std follows
the PCM device model's programming error, scaled by ``noise_scale`` (the chip paper: 2x the PCM programming-noise model
for ResNet-9), with each layer's largest |w| mapped to the device's G_max as the chip's per-core scaling does; the
gradient is taken at the noisy weights and applied to the clean ones. After each step the weights are clipped to
``clip_sigma`` standard deviations of their layer (a robust stand-in for the chip paper's "weights clipped to ±1",
whose scale is not given), so that a few outliers do not set W_max for a whole layer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from aimc.compiler.calibrate import INT8_LEVELS
from aimc.compiler.capture import DEPTHWISE
from aimc.compiler.observe import AbsHistogram
from aimc.core.analog import polarity_g_max
from aimc.devices.base import DeviceModel, DeviceState
from aimc.devices.registry import get as get_device
from aimc.errors import ValidationError

#: docs/physics.md §11: weight noise = 2x the PCM programming-noise model (ResNet-9 HWA training).
RESNET9_NOISE_SCALE = 2.0
#: Assumption: per-layer clipping of the weights at this many standard deviations after each step.
CLIP_SIGMA = 2.5
#: docs/physics.md §11 (PTB LSTM HWA): Gaussian weight noise of std 0.075·(W_max − W_min) per matrix ...
LSTM_NOISE_FRACTION = 0.075
#: ... and the weights clipped at 2 standard deviations.
LSTM_CLIP_SIGMA = 2.0


def analog_layers(model: nn.Module) -> list[nn.Module]:
    """The Conv1d, Conv2d and Linear layers that go onto the chip (less those :func:`on_digital_unit` marks)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear) and not getattr(m, "_aimc_digital", False)
    ]


def digital_layer_names(model: nn.Module, layers: Sequence[str] | str = ()) -> list[str]:
    """The names of the weight layers that ``aimc.compile(..., digital_layers=layers)`` runs on the digital unit
    (``layers``: module names, or ``"depthwise"`` for every depthwise convolution, or both).

    Raises:
        ValidationError: ``layers`` is a string other than ``"depthwise"``, or names no Conv/Linear layer.
    """
    if isinstance(layers, str) and layers != DEPTHWISE:
        raise ValidationError(f"digital_layers must be {DEPTHWISE!r} or a list of layer names; got {layers!r}")
    names = {layers} if isinstance(layers, str) else set(layers)
    weights = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear)}
    unknown = sorted(names - {DEPTHWISE} - set(weights))
    if unknown:
        raise ValidationError(
            f"digital_layers names {', '.join(map(repr, unknown))}, but the model has no Conv/Linear layer of that "
            f"name; its Conv/Linear layers: {', '.join(map(repr, weights)) or 'none'} (or {DEPTHWISE!r})"
        )
    return [
        name
        for name, m in weights.items()
        if name in names
        or (DEPTHWISE in names and isinstance(m, nn.Conv1d | nn.Conv2d) and 1 < m.groups == m.in_channels)
    ]


@contextmanager
def on_digital_unit(model: nn.Module, layers: Sequence[str] | str = ()) -> Iterator[list[str]]:
    """Within the block the weight layers that ``aimc.compile(..., digital_layers=layers)`` runs on the digital
    unit (:func:`digital_layer_names`) are no analog layers: they get no device noise, input quantisation or output
    noise. Yields the names of the layers so marked.

    Raises:
        ValidationError: as :func:`digital_layer_names`.
    """
    modules = dict(model.named_modules())
    marked = [(name, modules[name]) for name in digital_layer_names(model, layers)]
    for _, m in marked:
        m._aimc_digital = True  # type: ignore[assignment]
    try:
        yield [name for name, _ in marked]
    finally:
        for _, m in marked:
            del m._aimc_digital


@contextmanager
def _perturbed(
    weights: list[torch.nn.Parameter],
    stds: list[torch.Tensor | float],
    generator: torch.Generator,
    factors: list[torch.Tensor] | None = None,
) -> Iterator[None]:
    """Within the block each weight carries fresh Gaussian noise of its std (a tensor of its shape or a number),
    then is multiplied by its ``factors`` entry (a tensor of its shape), if given."""
    saved = []
    with torch.no_grad():
        for i, (w, std) in enumerate(zip(weights, stds, strict=True)):
            noise = torch.randn(w.shape, generator=generator).to(w.device) * std
            saved.append((w, w.detach().clone()))
            w.add_(noise.to(w.dtype))
            if factors is not None:
                w.mul_(factors[i].to(w.device, w.dtype))
    try:
        yield
    finally:
        with torch.no_grad():
            for w, clean in saved:
                w.copy_(clean)


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
    """Within the block every on-chip matrix W carries Gaussian noise of std fraction·(max W − min W) (docs/physics.md
    §11)."""
    matrices = analog_matrices(model)
    stds = [fraction * float(w.detach().max() - w.detach().min()) for w in matrices]
    with _perturbed(matrices, stds, generator):
        yield


def clip_matrices(model: nn.Module, clip_sigma: float) -> None:
    """Clip every on-chip matrix to ±clip_sigma x its std, in place."""
    with torch.no_grad():
        for w in analog_matrices(model):
            bound = float(w.std()) * clip_sigma
            w.clamp_(-bound, bound)


def _channel_max(w: torch.Tensor) -> torch.Tensor:
    """``(C, 1, ...)`` largest |w| of each output channel (row) of ``w``."""
    return w.abs().amax(dim=tuple(range(1, w.dim())), keepdim=True)


def weight_noise_std(
    w: torch.Tensor, device: DeviceModel, strategy: str, noise_scale: float, per_channel: bool = False
) -> torch.Tensor:
    """Std of the injected noise for each weight of ``w``: noise_scale x sigma_prog(|w|/w_max) in weight units.

    ``w_max``: the layer's largest |w| (one scale per layer, as the chip paper maps a core), or with ``per_channel``
    each output channel's own (as the compiler's column scaling maps each column to the full conductance range).
    """
    g_max = polarity_g_max(device, strategy)
    w_max = (_channel_max(w) if per_channel else w.abs().max()).clamp_min(1e-12)
    g = (w.abs() / w_max).clamp(0.0, 1.0)
    # the device model's statistics are per modelled conductance (a pair for TDP with a one-device model: the
    # pair's error is approximated by scaling one device's to the pair's range)
    sigma_uS = device.prog_std(g) * (g_max / device.g_max_uS)
    return noise_scale * sigma_uS * (w_max / g_max)


#: Our choice (drift-aware HWA, beyond the chip paper's recipe): during training the weights are read at a time after
#: programming drawn log-uniformly from this window (s), with the device model's drift and a global compensation.
DRIFT_WINDOW_S = (60.0, 86400.0)


def drift_factors(w: torch.Tensor, device: DeviceModel, t_seconds: float, generator: torch.Generator) -> torch.Tensor:
    """Multiplicative drift of every weight of ``w`` read ``t_seconds`` after programming, after a global drift
    compensation of the layer.

    Each weight drifts as a device at g = |w|/max|w| with nu = |nu_mean(g) + nu_std(g)·N| (docs/physics.md §3, the
    device model's statistics and its own ``drift``: (t_eff/t0)^(-nu) for the presets). The compensation (GDC,
    docs/physics.md §4.1) rescales the layer so that the mean |row sum| — the response to an all-equal calibration input
    — is what it was at programming.

    Returns:
        Factors of ``w``'s shape.
    """
    g = (w.abs() / w.abs().max().clamp_min(1e-12)).clamp(0.0, 1.0)
    n = torch.randn(w.shape, generator=generator).to(w.device)
    nu = (device.drift_nu_mean(g) + device.drift_nu_std(g) * n).abs()
    g_uS = (g * device.g_max_uS).clamp_min(1e-6)  # a zero weight stays zero whatever its factor
    state = DeviceState(g_target=g_uS, g_prog=g_uS, nu=nu, stuck=torch.zeros_like(g, dtype=torch.bool))
    factor = device.drift(state, t_seconds) / g_uS  # the model's own time axis (t0, offsets)
    rows = w.reshape(w.shape[0], -1)
    before = rows.sum(1).abs().mean()
    after = (rows * factor.reshape(rows.shape)).sum(1).abs().mean().clamp_min(1e-12)
    return factor * (before / after)


@contextmanager
def noisy_weights(
    model: nn.Module,
    generator: torch.Generator,
    device: DeviceModel | str = "hermes-2dev",
    strategy: str = "tdp",
    noise_scale: float = RESNET9_NOISE_SCALE,
    drift_window: tuple[float, float] | None = None,
    per_channel: bool = False,
) -> Iterator[None]:
    """Within the block, every analog layer's weights carry fresh programming-like noise; restored on exit.

    With ``drift_window`` (t_min, t_max) in seconds, the noisy weights also drift to one read time per step drawn
    log-uniformly from the window (:func:`drift_factors`; drift-aware HWA, see :data:`DRIFT_WINDOW_S`).
    """
    model_device = get_device(device) if isinstance(device, str) else device
    weights = [layer.weight for layer in analog_layers(model)]
    factors = None
    with torch.no_grad():
        stds = [weight_noise_std(w.detach().float(), model_device, strategy, noise_scale, per_channel) for w in weights]
        if drift_window is not None:
            lo, hi = (math.log(t) for t in drift_window)
            t = math.exp(lo + (hi - lo) * float(torch.rand((), generator=generator)))
            factors = [drift_factors(w.detach().float(), model_device, t, generator) for w in weights]
    with _perturbed(weights, stds, generator, factors):
        yield


#: docs/physics.md §11: additive Gaussian output noise of std 10% (0.1) during HWA training. We read "of the output
#: range" as aihwkit's convention: 0.1 in units of the largest weight times the largest input of each 256-row tile, the
#: partial sums of a layer's row tiles adding their noises.
OUTPUT_NOISE = 0.1
#: docs/physics.md §11: 8-bit DAC/ADC during HWA training; inputs are rounded to 8-bit signed codes of their batch
#: maximum.
IO_BITS = 8
#: docs/physics.md §10: a core holds at most this many rows; a layer with more is split into row tiles.
TILE_ROWS = 256


def _fake_quantize(x: torch.Tensor, bits: int, full_scale: float | None = None) -> torch.Tensor:
    """x rounded to ``bits``-bit signed codes of ``full_scale`` (default: max|x|), saturating beyond it, in the
    forward pass; identity in the backward pass."""
    levels = 2 ** (bits - 1) - 1
    top = x.detach().abs().amax().clamp_min(1e-12) if full_scale is None else max(full_scale, 1e-12)
    scale = top / levels
    return x + ((x.detach() / scale).round().clamp(-levels, levels) * scale - x.detach())


#: Our choice: training batches whose Conv2d/Linear inputs set the 8-bit input ranges of HWA fine-tuning (at the start
#: of each epoch).
CALIBRATION_BATCHES = 8


def input_ranges(model: nn.Module, batches: Iterable[torch.Tensor], method: str = "mae") -> list[float]:
    """The input full scale of every analog layer (:func:`analog_layers` order), chosen as the compiler chooses a
    layer's PWM range (docs/design.md "Calibration": a streaming |value| histogram and ``method``'s least-error
    clipping point for the 127 levels of a signed 8-bit code), from the model's float forward passes (eval mode, no
    noise) on ``batches`` of model inputs.

    With a range that a few outliers do not set, the injected output noise (in units of the range) and the input
    rounding match what the calibrated chip does; a batch maximum instead lets one outlier activation (common after
    a batch norm that follows a ReLU) scale the noise of a whole layer.
    """
    layers = analog_layers(model)
    hists = [AbsHistogram() for _ in layers]
    handles = [
        layer.register_forward_pre_hook(lambda _m, args, h=h: h.add(args[0].detach().float()))
        for layer, h in zip(layers, hists, strict=True)
    ]
    modes = [(m, m.training) for m in model.modules()]  # restored module by module (frozen batch norms stay so)
    model.eval()
    try:
        with torch.no_grad():
            for x in batches:
                model(x)
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes:
            m.training = training
    # a layer whose inputs were all zero keeps full scale 1 (any range converts zeros exactly)
    return [float(h.full_scale(method, INT8_LEVELS)[0]) or 1.0 for h in hists]


def _rows(layer: nn.Module) -> int:
    """Rows of the layer's matrix on the chip: ``in_channels·kh·kw`` for a Conv2d, ``in_features`` for a Linear.

    A grouped or depthwise Conv2d is placed block-diagonally, as the equivalent dense convolution, so its matrix has
    the dense convolution's rows, not the ``(in_channels / groups)·kh·kw`` of one filter.
    """
    if isinstance(layer, nn.Conv1d | nn.Conv2d):
        return int(layer.in_channels * math.prod(layer.kernel_size))
    return int(layer.weight.shape[1])


def _row_tiles(layer: nn.Module) -> int:
    """Row tiles whose partial sums add up in one output of the layer: ``ceil(rows / 256)`` of its matrix
    (:func:`_rows`), but 1 for a grouped convolution whose groups fit in a tile, which the compiler splits at group
    boundaries so that each output column lies in one core (:meth:`aimc.compiler.tiling.Tiling.split_groups`)."""
    grouped = isinstance(layer, nn.Conv1d | nn.Conv2d) and layer.groups > 1
    if grouped and (layer.in_channels // layer.groups) * math.prod(layer.kernel_size) <= TILE_ROWS:
        return 1
    return -(-_rows(layer) // TILE_ROWS)


@contextmanager
def analog_io(
    model: nn.Module,
    generator: torch.Generator,
    output_noise: float = OUTPUT_NOISE,
    bits: int = IO_BITS,
    ranges: Sequence[float] | None = None,
    per_channel: bool = False,
) -> Iterator[None]:
    """Within the block every Conv2d/Linear layer sees 8-bit inputs and adds Gaussian output noise (docs/physics.md
    §11).

    Output noise std per layer: ``output_noise · sqrt(row tiles) · max|W| · x_range`` (``max|W|``: the layer's, or
    with ``per_channel`` each output channel's, as column scaling maps it), one draw per output element
    (the layer's output shape without the batch), shared by the batch and fresh at every step. The row tiles are
    ``ceil(rows / 256)`` of the layer's matrix on the chip (:func:`_row_tiles`; 1 for a grouped convolution whose
    groups fit in a tile). ``x_range`` is the layer's entry of ``ranges`` (:func:`input_ranges`, in
    :func:`analog_layers` order; inputs beyond it saturate), or else the batch's max|x|.
    """
    handles = []
    layers = analog_layers(model)
    if ranges is not None and len(ranges) != len(layers):
        raise ValidationError(f"ranges has {len(ranges)} entries; the model has {len(layers)} Conv2d/Linear layers")
    fixed = {id(layer): float(r) for layer, r in zip(layers, ranges, strict=True)} if ranges is not None else {}

    def pre(layer: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        full_scale = fixed.get(id(layer))
        x = _fake_quantize(args[0], bits, full_scale)
        layer._aimc_x_max = (  # type: ignore[assignment]
            float(x.detach().abs().amax()) if full_scale is None else full_scale
        )
        return (x, *args[1:])

    def post(layer: nn.Module, args: tuple[torch.Tensor, ...], y: torch.Tensor) -> torch.Tensor:
        tiles = _row_tiles(layer)
        w = layer.weight.detach()
        # with per_channel, each output channel's column at its own full scale (column scaling)
        if not per_channel:
            w_max: torch.Tensor | float = float(w.abs().max())
        elif isinstance(layer, nn.Linear):  # (..., out_features): the channels are the last dimension
            w_max = _channel_max(w).reshape(-1).to(y.dtype)
        else:  # a convolution's (B, C, ...): the channels are dimension 1
            w_max = _channel_max(w).reshape(-1, *([1] * (y.dim() - 2))).to(y.dtype)
        std = output_noise * tiles**0.5 * w_max * layer._aimc_x_max
        # one draw per output element shared by the batch (fresh every step): drawing one per sample would cost
        # more than the training step itself on a CPU
        noise = torch.randn(y.shape[1:], generator=generator, dtype=y.dtype).to(y.device)
        return y + noise * std

    for layer in layers:
        handles += [layer.register_forward_pre_hook(pre), layer.register_forward_hook(post)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


#: Our choice: per-channel clipping leaves channels of fewer weights than this alone. Clipping at a multiple of a
#: channel's own spread, step after step, shrinks a channel whose few weights are dominated by one (a depthwise 3x3
#: kernel close to a delta) towards zero; a statistic of 9 weights is no guide to what an outlier is.
MIN_CLIP_WEIGHTS = 64


def clip_weights(model: nn.Module, clip_sigma: float = CLIP_SIGMA, per_channel: bool = False) -> None:
    """Clip each analog layer's weights to ±clip_sigma x their std, in place. With ``per_channel`` each output
    channel of at least :data:`MIN_CLIP_WEIGHTS` weights is clipped to ±clip_sigma x its own root mean square (about
    zero, as its conductances are: a channel of equal-magnitude weights is left as it is), and smaller channels are
    not clipped."""
    with torch.no_grad():
        for layer in analog_layers(model):
            w = layer.weight
            if per_channel:
                if w[0].numel() >= MIN_CLIP_WEIGHTS:
                    rows = w.reshape(w.shape[0], -1)
                    bound = rows.pow(2).mean(dim=1).sqrt().reshape(-1, *([1] * (w.dim() - 1))) * clip_sigma
                    w.copy_(torch.maximum(torch.minimum(w, bound), -bound))
            else:
                bound = float(w.std()) * clip_sigma
                w.clamp_(-bound, bound)
