"""What one inference asks of the chip, read off a Mapping: MVMs, values through LDPUs, links and GDPUs per layer."""

from __future__ import annotations

from dataclasses import dataclass

from aimc.compiler.layout import conv_output_size
from aimc.compiler.mapping import MappedLayer, Mapping
from aimc.errors import ArgumentTypeError, ValidationError


@dataclass(frozen=True)
class LayerWork:
    """One analog layer's work for one inference (one image, or one LSTM time step).

    Attributes:
        name: layer name.
        cores: cores the layer occupies.
        weights: weights it holds (K x N).
        core_equivalents: cores x utilisation (active crossbar share: sum over cores of occupied / 256 x 256).
        mvms: MVMs per inference on every core of the layer (output positions of a conv; 1 for a linear layer or an
            LSTM step).
        values_out: values each column chain streams out of its last core per MVM (its block outputs).
        ldpu_values: values all the layer's LDPUs process per MVM (every core handles its block outputs).
        hops: partial-sum hops of the longest column chain (row blocks - 1).
        gdpu_outputs: hidden values the GDPUs produce per MVM (LSTM), else 0.
        input_values: values entering the layer per MVM (its matrix rows K).
    """

    name: str
    cores: int
    weights: int
    core_equivalents: float
    mvms: int
    values_out: int
    ldpu_values: int
    hops: int
    gdpu_outputs: int
    input_values: int


def _mvms(layer: MappedLayer, input_shape: tuple[int, ...] | None) -> int:
    if layer.kind != "conv2d":
        return 1
    if input_shape is None:
        raise ValidationError(f"conv layer {layer.name!r} needs its input size to count its MVMs")
    ho, wo = conv_output_size(layer, input_shape[-2], input_shape[-1])
    return ho * wo


def layer_work(layer: MappedLayer, mvms: int) -> LayerWork:
    """The work of ``layer`` for ``mvms`` MVMs."""
    t = layer.tiling
    k, n = layer.shape
    return LayerWork(
        name=layer.name,
        cores=t.cores,
        weights=k * n,
        core_equivalents=k * n / (t.tile_rows * t.tile_cols),
        mvms=mvms,
        values_out=t.block_outputs,
        ldpu_values=t.cores * t.block_outputs,
        hops=t.row_blocks - 1 if layer.chained else 0,
        gdpu_outputs=int(layer.geometry.get("hidden_size", 0)) if layer.kind in ("lstm", "gru") else 0,
        input_values=k,
    )


def network_work(mapping: Mapping, input_shapes: dict[str, tuple[int, ...]] | None = None) -> list[LayerWork]:
    """Every layer's work for one inference.

    Args:
        mapping: the compiled network.
        input_shapes: per conv layer, the shape of its input (at least (H, W)); read from
            ``layer.geometry["input_hw"]`` when the compiler recorded it.
    """
    if not isinstance(mapping, Mapping):
        raise ArgumentTypeError(f"mapping must be an aimc Mapping (from aimc.compile), got {type(mapping).__name__}")
    shapes = input_shapes or {}
    out = []
    for layer in mapping.layers.values():
        shape = shapes.get(layer.name) or (tuple(layer.geometry["input_hw"]) if "input_hw" in layer.geometry else None)
        out.append(layer_work(layer, _mvms(layer, shape)))
    return out
