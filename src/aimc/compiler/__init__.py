"""Compile a PyTorch network for the chip: capture, lower, fuse LDPU work, calibrate ranges, tile and place."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from aimc._validation import check_choice
from aimc.compiler.calibrate import calibrate
from aimc.compiler.capture import SUPPORTED_MODULES, UnsupportedLayerError, check_fits, fuse, lower, trace
from aimc.compiler.mapping import MappedLayer, Mapping, Op
from aimc.compiler.placement import place
from aimc.compiler.tiling import Tiling
from aimc.compiler.topology import Topology
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.spec import ChipSpec

__all__ = [
    "SUPPORTED_MODULES",
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
    example_input: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    *,
    chips: int = 1,
    avoid_cores: Iterable[int] = (),
    avoid_links: Iterable[tuple[int, int]] = (),
    pooling: str = "off-chip",
    name: str | None = None,
) -> Mapping:
    """Compile ``model`` for the chip.

    Args:
        model: an ``nn.Sequential`` or any torch.fx-traceable module of supported layers (``SUPPORTED_MODULES``).
            It is evaluated in eval mode (batch norm running statistics, no dropout).
        spec: the chip (default ``ChipSpec.hermes()``).
        example_input: a representative input batch; it calibrates the PWM input ranges, the INT8 output and
            partial-sum ranges and the per-core G_max limits. Image models: float ``(B, C, H, W)``; LSTM models:
            token ids ``(B, T)``.
        chips: number of chips to spread the network over (inter-chip transfers are marked as such).
        avoid_cores: global core ids not to use (dead cores); spare cores take their blocks.
        avoid_links: pairs of linked global core ids whose link is dead: no column chain sends its partial sums
            over them (it is placed elsewhere, or routed around them if no placement avoids them). See
            :mod:`aimc.faults` (``**faults.compile_kwargs()`` passes both).
        pooling: where pooling runs: ``"off-chip"`` (as in the chip paper, through the host) or ``"ldpu"`` (in the
            LDPU of the layer before it). The result is the same (max-pooling INT8 values is exact); the place
            matters to the latency and energy model.
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
    inputs = example_input if isinstance(example_input, tuple) else (example_input,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise ArgumentTypeError(
            "example_input must be a tensor batch of representative inputs, or a tuple of them for a model with "
            f"several inputs (it calibrates the chip's number conversions); got {type(example_input).__name__}"
        )
    if isinstance(chips, bool) or not isinstance(chips, int) or chips < 1:
        raise ValidationError(f"chips must be an int >= 1, got {chips!r}")
    if any(t.numel() == 0 for t in inputs):
        raise ValidationError(f"example_input must not be empty; got shapes {[tuple(t.shape) for t in inputs]}")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in inputs):
        raise ValidationError("example_input must be finite; it holds NaN/Inf values")
    was_training = model.training
    model.eval()
    try:
        # a bare layer is traced through its functional form; as the only child of a Sequential it stays a module
        gm = trace(nn.Sequential(model) if isinstance(model, nn.Conv2d | nn.Linear | nn.LSTM) else model)
        gm.offchip_modules = tuple(getattr(model, "offchip_modules", ()))
        captured = lower(gm, spec)
        if not captured.layers:
            raise UnsupportedLayerError("the model has no Conv2d, Linear or LSTM layer to put on the chip")
        fuse(captured)
        check_fits(captured.layers, spec, chips)
        try:
            calibrate(gm, captured, example_input)
        except (RuntimeError, IndexError, TypeError) as err:
            shapes = [f"{tuple(t.shape)} {t.dtype}" for t in inputs]
            raise ValidationError(
                f"the model cannot run example_input {', '.join(shapes)}: {str(err).splitlines()[0]}"
            ) from None
    finally:
        model.train(was_training)
    check_choice(pooling, "pooling", ("off-chip", "ldpu"))
    for op in captured.ops:
        if op.kind in ("maxpool2d", "avgpool2d"):
            op.attrs["where"] = pooling
    avoid_cores, avoid_links = _listed(avoid_cores, "avoid_cores"), _listed(avoid_links, "avoid_links")
    place(list(captured.layers.values()), spec, chips, avoid_cores, avoid_links)
    return Mapping(
        spec=spec,
        layers=captured.layers,
        ops=captured.ops,
        chips=chips,
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
            for t in inputs
        ),
    )


def _listed(items: object, name: str) -> list:
    """A one-shot iterable of ids or pairs as a list (it is read twice); other types fail in :func:`place`."""
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise ArgumentTypeError(f"{name} must be a sequence, got {type(items).__name__} {items!r}")
    return [tuple(i) if isinstance(i, list) else i for i in items]
