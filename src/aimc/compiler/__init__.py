"""Compile a PyTorch network for the chip: capture, lower, fuse LDPU work, calibrate ranges, tile and place."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from aimc._progress import progress as _progress
from aimc._validation import check_choice, check_number
from aimc.compiler import batches as _batches
from aimc.compiler.calibrate import DEFAULT_METHOD, Calibrator
from aimc.compiler.capture import (
    DEPTHWISE,
    SINGLE_LAYERS,
    Captured,
    UnsupportedLayerError,
    check_fits,
    export_graph,
    fuse,
    lower,
    required_inputs,
    scale_columns,
)
from aimc.compiler.mapping import MappedLayer, Mapping, Op
from aimc.compiler.observe import DEFAULT_PERCENTILE, METHODS
from aimc.compiler.placement import AUTO_CHIPS, check_chips, chips_needed, place
from aimc.compiler.tiling import Tiling
from aimc.compiler.topology import Topology
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.spec import ChipSpec

__all__ = [
    "MappedLayer",
    "Mapping",
    "Op",
    "Tiling",
    "Topology",
    "UnsupportedLayerError",
    "compile",
]


def compile(
    model: nn.Module,
    spec: ChipSpec | None = None,
    example_input: _batches.CalibrationData | None = None,
    *,
    calibration: _batches.CalibrationData | None = None,
    calibration_method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    progress: bool = True,
    column_scaling: bool = True,
    chips: int | str = 1,
    avoid_cores: Iterable[int] = (),
    avoid_links: Iterable[tuple[int, int]] = (),
    pooling: str = "off-chip",
    digital_layers: Iterable[str] | str = (),
    name: str | None = None,
) -> Mapping:
    """Compile ``model`` for the chip.

    Args:
        model: any module that ``torch.export`` can capture (its forward pass does not branch on tensor values).
            It is evaluated in eval mode (batch norm running statistics, no dropout). Every product with a weight
            matrix (Linear on inputs of any rank, Conv1d/Conv2d with any groups, matmul with a parameter, LSTM and
            GRU of any depth and direction, attention projections) goes on the cores; every other operation runs
            in the chip's digital units or a digital unit beside the cores (docs/design.md "Digital operations").
        spec: the chip (default ``ChipSpec.hermes()``).
        example_input: the calibration data (an older name of ``calibration``; give one of the two).
        calibration: representative model inputs; they calibrate the PWM input ranges, the INT8 output and
            partial-sum ranges, and each core's ADC range and G_max limit. A tensor (image models: float
            ``(B, C, H, W)``; LSTM models: token ids ``(B, T)``), a tuple of tensors (one per model input), or an
            iterable of batches such as a ``DataLoader`` (a batch's first elements are the model inputs, so an
            ``(images, labels)`` loader works). It streams through the float model a batch at a time.
        calibration_method: how each conversion's full scale is chosen from the values it sees (docs/design.md
            "Calibration"): ``"mae"`` (least expected absolute conversion error, rounding plus saturation; the
            default), ``"mse"`` (least squared error), ``"percentile"`` (the ``percentile`` of |value|) or ``"max"``
            (the largest value: nothing saturates).
        percentile: the percentile of the ``"percentile"`` method, in (0, 100].
        progress: show the calibration's progress on stderr when it has several batches.
        column_scaling: scale each output column of a Conv2d/Linear layer to the layer's largest |weight| and divide
            its LDPU affine scale by the same factor (exact), so that every channel uses the full conductance range
            (:func:`aimc.compiler.capture.scale_columns`). False maps the weights as they are, with one scale per core.
        chips: number of chips to spread the network over (inter-chip transfers are marked as such), or ``"auto"``:
            as many chips as the network's cores need (at least 1; ``aimc.compiler.placement.chips_needed``).
        avoid_cores: global core ids not to use (dead cores); spare cores take their blocks.
        avoid_links: pairs of linked global core ids whose link is dead: no column chain sends its partial sums
            over them (it is placed elsewhere, or routed around them if no placement avoids them). See
            :mod:`aimc.faults` (``**faults.compile_kwargs()`` passes both).
        pooling: where pooling runs: ``"off-chip"`` (as in the chip paper, through the host) or ``"ldpu"`` (in the
            LDPU of the layer before it). The result is the same (max-pooling INT8 values is exact); the place
            matters to the latency and energy model.
        digital_layers: weight layers to run on the digital unit beside the cores (FP16, as a digital op) instead
            of on the cores: layer names as ``aimc map`` lists them, or ``"depthwise"`` for every depthwise
            convolution, or both (``["depthwise", "0"]``: the depthwise convolutions and layer ``"0"``); a name
            that is no Conv/Linear layer of the model is refused. Such a layer keeps its weights exact at the
            digital unit's cost in latency and energy (:mod:`aimc.perf`); a depthwise convolution's columns sum
            only its kernel's few weights, so on the cores its device noise is large against its signal
            (docs/validation.md).
        name: name of the network in reports (default: the model's class name).

    Returns:
        The :class:`Mapping`.
    """
    spec = ChipSpec.hermes() if spec is None else spec
    if not isinstance(spec, ChipSpec):
        raise ArgumentTypeError(f"spec must be an aimc ChipSpec (e.g. ChipSpec.hermes()), got {type(spec).__name__}")
    if name is not None and not isinstance(name, str):
        raise ArgumentTypeError(f"name must be a str or None, got {type(name).__name__} {name!r}")
    if not isinstance(model, nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    chips_arg = check_chips(chips)
    check_choice(calibration_method, "calibration_method", METHODS)
    check_number(percentile, "percentile", low=0.0, high=100.0, low_inclusive=False)
    if example_input is not None and calibration is not None:
        raise ArgumentTypeError("give the calibration data once: calibration= or example_input=, not both")
    data = calibration if calibration is not None else example_input
    if data is None:
        raise ArgumentTypeError(
            "compile needs calibration data: calibration= a tensor of representative model inputs or a DataLoader "
            "of them (it calibrates the chip's number conversions)"
        )
    avoid_cores, avoid_links = _listed(avoid_cores, "avoid_cores"), _listed(avoid_links, "avoid_links")
    was_training = model.training
    model.eval()
    try:
        # a bare layer is captured as the only child of a Sequential (its layer is named "0")
        net = nn.Sequential(model) if isinstance(model, SINGLE_LAYERS) else model
        n_inputs = required_inputs(net)
        stream = _batches.batches(data, n_inputs)
        first = next(stream, None)
        if first is None:
            raise ValidationError("the calibration data is empty: it gave no batch of model inputs")
        try:
            with torch.no_grad():
                net(*first)
        except Exception as err:  # the model's own error: wrong shapes or types of the calibration data
            shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in first)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValidationError(f"the model cannot run calibration batch 0 ({shapes}): {reason}") from None
        gm = export_graph(net, first)
        captured = lower(gm, spec, tuple(getattr(model, "offchip_modules", ()) or ()), _digital(digital_layers))
        if not captured.layers:
            raise UnsupportedLayerError(
                "the model has no layer with a weight matrix (Linear, Conv1d/Conv2d, LSTM, GRU, matmul with a "
                "parameter) to put on the chip"
            )
        fuse(captured)
        if column_scaling:
            scale_columns(captured)
        n_chips = chips_needed(captured.layers, spec, avoid=avoid_cores) if chips_arg == AUTO_CHIPS else int(chips_arg)
        check_fits(captured.layers, spec, n_chips)
        calibration_info = _calibrate(
            gm,
            captured,
            spec,
            itertools.chain([first], stream),
            _batches.count(data),
            calibration_method,
            percentile,
            progress,
        )
    finally:
        model.train(was_training)
    check_choice(pooling, "pooling", ("off-chip", "ldpu"))
    for op in captured.ops:
        if op.kind in ("maxpool2d", "avgpool2d"):
            op.attrs["where"] = pooling
    place(list(captured.layers.values()), spec, n_chips, avoid_cores, avoid_links)
    return Mapping(
        spec=spec,
        layers=captured.layers,
        ops=captured.ops,
        chips=n_chips,
        model_name=name or type(model).__name__,
        extra_tensors=captured.extra_tensors,
        avoid_cores=tuple(sorted(set(avoid_cores))),
        avoid_links=tuple(sorted({(min(a, b), max(a, b)) for a, b in avoid_links})),
        input_signature=tuple(
            {
                "ndim": t.dim(),
                "dtype": "float" if t.is_floating_point() else "int",
                "features": int(t.shape[1]) if t.is_floating_point() and t.dim() >= 2 else None,
            }
            for t in first
        ),
        calibration=calibration_info,
    )


def _calibrate(
    gm: torch.fx.GraphModule,
    captured: Captured,
    spec: ChipSpec,
    batches: Iterable[tuple[torch.Tensor, ...]],
    total: int | None,
    method: str,
    percentile: float,
    progress: bool,
) -> dict[str, Any]:
    """Stream the checked ``batches`` through the model and set the layers' ranges; returns the calibration's record
    (method, batches, inputs)."""
    cal = Calibrator(gm, captured, spec, method, percentile)
    with _progress(
        total=total, desc="calibrate", unit="batches", enabled=progress and (total is None or total > 1)
    ) as bar:
        for index, inputs in enumerate(batches):
            try:
                cal.add(inputs)
            except (RuntimeError, IndexError, TypeError, ValueError) as err:
                shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in inputs)
                raise ValidationError(
                    f"the model cannot run calibration batch {index} ({shapes}): {str(err).splitlines()[0]}"
                ) from None
            bar.update(1)
    return cal.finish()


def _digital(layers: Iterable[str] | str) -> frozenset[str]:
    """``digital_layers`` checked: ``"depthwise"``, or a collection of layer names that may hold ``"depthwise"``."""
    if isinstance(layers, str):
        if layers != DEPTHWISE:
            raise ValidationError(
                f"digital_layers must be {DEPTHWISE!r} or a list of layer names (as aimc map lists them); got "
                f"{layers!r}"
            )
        return frozenset({DEPTHWISE})
    names = list(layers) if isinstance(layers, Iterable) else None
    if names is None or not all(isinstance(n, str) for n in names):
        raise ArgumentTypeError(f"digital_layers must be {DEPTHWISE!r} or a list of layer names; got {layers!r}")
    return frozenset(names)


def _listed(items: object, name: str) -> list:
    """A one-shot iterable of ids or pairs as a list (it is read twice); other types fail in :func:`place`."""
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ArgumentTypeError(f"{name} must be a sequence, got {type(items).__name__} {items!r}")
    return [tuple(i) if isinstance(i, list) else i for i in items]
