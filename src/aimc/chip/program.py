"""Programming a compiled network into the chip: per-core weight scales (W_max -> G_max, the per-core G_max limit),
each core's ADC calibration range, and the devices' programming draws.

``program(mapping, device, strategy, seed)`` is the only step that draws programming randomness; every core of a
layer is programmed in one batched call of :func:`aimc.core.program_core`. Hardware faults (stuck devices, dead
ADCs) take effect here (:mod:`aimc.faults`).
"""

from __future__ import annotations

import torch

from aimc import kernels
from aimc._validation import SeedLike, check_choice, make_generator
from aimc.chip.runtime import ProgrammedChip
from aimc.compiler.layout import weight_blocks
from aimc.compiler.mapping import MappedLayer, Mapping
from aimc.core.analog import STRATEGIES, polarity_g_max, program_core
from aimc.core.config import CoreConfig
from aimc.devices.base import DeviceModel
from aimc.devices.registry import get as get_device
from aimc.errors import ArgumentTypeError
from aimc.faults import Faults, fault_generator
from aimc.spec import ChipSpec

#: Assumption: the per-core G_max limit keeps the largest calibration bit-line current at this fraction of the ADC
#: saturation current (the chip paper limits G_max per core so that every bit-line current stays below it;
#: docs/physics.md §2.2).
CURRENT_HEADROOM = 0.9


def core_w_max(
    layer: MappedLayer, device: DeviceModel, strategy: str, config: CoreConfig, spec: ChipSpec
) -> torch.Tensor:
    """Weight mapped to G_max on each core ``(r, c)``: the block's max |W|, raised where the calibration bit-line
    current would exceed ``CURRENT_HEADROOM`` x saturation (which lowers that core's G_max)."""
    return _core_scales(layer, weight_blocks(layer), device, strategy, config, spec)[0]


def core_adc_range(
    layer: MappedLayer,
    device: DeviceModel,
    strategy: str,
    config: CoreConfig,
    spec: ChipSpec,
    w_max: torch.Tensor,
) -> torch.Tensor | None:
    """Top of each core's ADC calibration currents ``(r, c)`` in uA, or None for the fixed range.

    With ``config.adc_calibration == "operating"`` and a compiled ``load``: the largest bit-line current the core
    carries on the compile step's calibration inputs at its programmed scale ``w_max``, at least
    ``config.calibration_min_fraction`` x saturation (see :data:`aimc.core.config.ADC_CALIBRATION`).
    """
    return _adc_range(layer, _block_w_max(weight_blocks(layer)), w_max, device, strategy, config, spec)


def _core_scales(
    layer: MappedLayer,
    blocks: torch.Tensor,
    device: DeviceModel,
    strategy: str,
    config: CoreConfig,
    spec: ChipSpec,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`core_w_max` and :func:`core_adc_range` of the layer's weight ``blocks`` ``(r, c, m, n)``, together."""
    block_max = _block_w_max(blocks)
    current = _calibration_current(layer, device, strategy, config, spec)
    w_max = block_max if current is None else limited_w_max(block_max, current, spec)
    return w_max, _adc_range(layer, block_max, w_max, device, strategy, config, spec)


def peak_current(
    load: torch.Tensor, device: DeviceModel, strategy: str, config: CoreConfig, spec: ChipSpec
) -> torch.Tensor:
    """Largest one-phase counter current (uA) of each core with its max |W| at G_max, given its bit-line ``load``
    (:func:`aimc.compiler.calibrate.bit_line_load` of its inputs): read voltage x G_max x load, at full PWM scale."""
    full_scale = spec.input_levels * spec.pwm_ns_per_lsb / spec.integration_time_ns
    return config.read_voltage_V * polarity_g_max(device, strategy) * load * full_scale


def limited_w_max(block_max: torch.Tensor, current: torch.Tensor, spec: ChipSpec) -> torch.Tensor:
    """The per-core G_max limit (docs/physics.md §2.2): the weight mapped to G_max is each core's max |W|
    ``block_max``, raised by the factor its peak bit-line ``current`` (uA, at max |W| = G_max) exceeds
    ``CURRENT_HEADROOM`` x saturation, which lowers that core's conductances and currents by the same factor."""
    return block_max * torch.clamp(current / (CURRENT_HEADROOM * spec.adc_saturation_uA), min=1.0)


def _adc_range(
    layer: MappedLayer,
    block_max: torch.Tensor,
    w_max: torch.Tensor,
    device: DeviceModel,
    strategy: str,
    config: CoreConfig,
    spec: ChipSpec,
) -> torch.Tensor | None:
    """:func:`core_adc_range` given the blocks' max |W|."""
    current = _calibration_current(layer, device, strategy, config, spec)
    if config.adc_calibration != "operating" or current is None:
        return None
    peak = current * (block_max / w_max)  # a raised w_max lowers the core's conductances
    return peak.clamp(min=config.calibration_min_fraction * spec.adc_saturation_uA, max=spec.adc_saturation_uA)


def _block_w_max(blocks: torch.Tensor) -> torch.Tensor:
    """Max |W| of each core's block ``(r, c)`` of weight ``blocks`` ``(r, c, m, n)`` (1 for an all-zero block)."""
    w_max = blocks.abs().amax(dim=(-2, -1))
    return torch.where(w_max > 0, w_max, torch.ones_like(w_max))


def _calibration_current(
    layer: MappedLayer, device: DeviceModel, strategy: str, config: CoreConfig, spec: ChipSpec
) -> torch.Tensor | None:
    """Largest one-phase counter current (uA) of each core ``(r, c)`` on the calibration inputs with the block's max
    |W| at G_max, or None where the mapping has no measured ``load``."""
    return None if layer.load is None else peak_current(layer.load, device, strategy, config, spec)


def program(
    mapping: Mapping,
    device: DeviceModel | str = "hermes-2dev",
    strategy: str = "tdp",
    seed: SeedLike = 0,
    *,
    config: CoreConfig | None = None,
    faults: Faults | None = None,
    backend: kernels.Backend | None = None,
) -> ProgrammedChip:
    """Program a compiled network into the chip's PCM devices (the only step drawing programming randomness).

    Args:
        mapping: from :func:`aimc.compile`.
        device: device model or preset name (``aimc.devices.available()``; ``"ideal"`` for no device noise).
        strategy: ``"odp"`` or ``"tdp"`` (docs/physics.md §2.3).
        seed: int or ``torch.Generator``.
        config: unpublished core parameters (default :class:`CoreConfig`).
        faults: hardware defects (:class:`aimc.faults.Faults`): stuck devices and dead ADCs take effect here; a
            mapping that puts a block on a dead core, or whose partial sums cannot be routed around dead links, is
            refused (compile with ``**faults.compile_kwargs()``).
        backend: the kernels of the chip's drift-compensation reference reads and, by default, of its runs
            (:class:`aimc.kernels.Backend`; None: chosen by measurement on this machine).

    Returns:
        A :class:`ProgrammedChip`.
    """
    if not isinstance(mapping, Mapping):
        raise ArgumentTypeError(f"mapping must be an aimc Mapping (from aimc.compile), got {type(mapping).__name__}")
    model = get_device(device) if isinstance(device, str) else device
    if not isinstance(model, DeviceModel):
        raise ArgumentTypeError(f"device must be a preset name or an aimc.devices.DeviceModel, got {type(device)}")
    check_choice(strategy, "strategy", STRATEGIES)
    config = CoreConfig() if config is None else config
    if not isinstance(config, CoreConfig):
        raise ArgumentTypeError(f"config must be an aimc CoreConfig, got {type(config).__name__}")
    chosen = kernels.resolve(backend)
    gen = make_generator(seed, "seed")
    fault_gen = None
    if faults is not None:
        if not isinstance(faults, Faults):
            raise ArgumentTypeError(f"faults must be an aimc.faults.Faults (or None), got {type(faults).__name__}")
        faults.check_spec(mapping.spec, mapping.chips)
        faults.check_mapping(mapping)
        fault_gen = fault_generator(faults, gen if isinstance(seed, torch.Generator) else seed)
    chip = ProgrammedChip(
        mapping=mapping,
        device=model,
        strategy=strategy,
        seed=seed if isinstance(seed, int) else None,
        config=config,
        faults=faults,
        backend=backend,
    )
    for layer in mapping.layers.values():
        blocks = weight_blocks(layer)
        w_max, adc_range = _core_scales(layer, blocks, model, strategy, config, mapping.spec)
        layer_faults = faults.for_layer(layer, fault_gen) if faults is not None and fault_gen is not None else None
        chip.cores[layer.name] = program_core(
            blocks,
            model,
            strategy,
            gen,
            spec=mapping.spec,
            config=config,
            w_max=w_max,
            faults=layer_faults,
            adc_range_uA=adc_range,
            backend=chosen,
        )
    return chip


__all__ = [
    "CURRENT_HEADROOM",
    "core_adc_range",
    "core_w_max",
    "limited_w_max",
    "peak_current",
    "program",
]
