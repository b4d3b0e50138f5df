"""Data layout of analog layers: im2col rows, row blocks, weight blocks and column blocks (pure reshaping)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aimc.compiler.mapping import MappedLayer


def conv_output_size(layer: MappedLayer, h: int, w: int) -> tuple[int, int]:
    """Output height and width of a conv layer for an ``h x w`` input."""
    g = layer.geometry
    sizes = []
    for i, n in enumerate((h, w)):
        sizes.append((n + 2 * g["padding"][i] - g["dilation"][i] * (g["kernel"][i] - 1) - 1) // g["stride"][i] + 1)
    return sizes[0], sizes[1]


def column_owners(layer: MappedLayer) -> torch.Tensor:
    """``(c, m)`` row block that holds each output column of a layer with :attr:`~MappedLayer.whole_columns`
    (padding columns: 0)."""
    t = layer.tiling
    groups_per_block = t.block_inputs // (t.inputs // layer.groups)
    column = torch.arange(t.col_blocks * t.block_outputs).clamp(max=t.outputs - 1)
    owner = torch.div(column // (t.outputs // layer.groups), groups_per_block, rounding_mode="floor")
    return owner.reshape(t.col_blocks, t.block_outputs)


def owned_outputs(layer: MappedLayer, y: torch.Tensor) -> torch.Tensor:
    """``(r, c, R, m)`` core outputs of a layer with :attr:`~MappedLayer.whole_columns` -> ``(1, c, R, m)``: each
    column from the core that holds its weights."""
    _, c, rows, m = y.shape
    index = column_owners(layer).to(y.device)[None, :, None, :].expand(1, c, rows, m)
    return y.gather(0, index)


def layer_rows(layer: MappedLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's input as matrix rows ``(rows, K)``: im2col patches for conv, flattened rows otherwise."""
    if layer.kind == "conv2d":
        g = layer.geometry
        cols = F.unfold(x, g["kernel"], dilation=g["dilation"], padding=g["padding"], stride=g["stride"])
        return cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return x.reshape(-1, x.shape[-1])


def block_view(layer: MappedLayer, rows: torch.Tensor) -> torch.Tensor:
    """``(R, K)`` rows -> ``(r, R, n)`` row blocks, zero-padded to the equal block size."""
    t = layer.tiling
    pad = t.row_blocks * t.block_inputs - rows.shape[-1]
    if pad:
        rows = F.pad(rows, (0, pad))
    return rows.reshape(rows.shape[0], t.row_blocks, t.block_inputs).permute(1, 0, 2)


def weight_blocks(layer: MappedLayer) -> torch.Tensor:
    """``(N, K)`` weight -> ``(r, c, m, n)`` blocks, zero-padded (core (i, j) holds block [i][j])."""
    t = layer.tiling
    w = F.pad(
        layer.weight, (0, t.row_blocks * t.block_inputs - t.inputs, 0, t.col_blocks * t.block_outputs - t.outputs)
    )
    return w.reshape(t.col_blocks, t.block_outputs, t.row_blocks, t.block_inputs).permute(2, 0, 1, 3).contiguous()


def output_rows(layer: MappedLayer, value: torch.Tensor) -> torch.Tensor:
    """A layer-output-shaped value -> ``(R, N)`` rows (conv: one row per output position, channels last)."""
    if layer.kind == "conv2d":
        return value.permute(0, 2, 3, 1).reshape(-1, layer.tiling.outputs)
    return value.reshape(-1, layer.tiling.outputs)


def column_blocks(layer: MappedLayer, rows: torch.Tensor) -> torch.Tensor:
    """``(R, N)`` rows -> ``(c, R, m)`` column blocks, zero-padded."""
    t = layer.tiling
    rows = F.pad(rows, (0, t.col_blocks * t.block_outputs - t.outputs))
    return rows.reshape(rows.shape[0], t.col_blocks, t.block_outputs).permute(1, 0, 2)


def from_column_blocks(layer: MappedLayer, cols: torch.Tensor) -> torch.Tensor:
    """``(c, R, m)`` -> ``(R, N)``."""
    return cols.permute(1, 0, 2).reshape(cols.shape[1], -1)[:, : layer.tiling.outputs]


def as_image(layer: MappedLayer, x: torch.Tensor) -> torch.Tensor:
    """A Conv1d layer's ``(B, C, L)`` input (or output-shaped value) as the ``(B, C, 1, L)`` image its conv2d
    matrix reads; any other value as it is."""
    return x.unsqueeze(2) if layer.geometry.get("conv1d") and x.dim() == 3 else x


def rnn_final_state(outputs: list[torch.Tensor], reverse: list[bool], batch_first: bool) -> torch.Tensor:
    """PyTorch's ``h_n`` ``(layers·directions, B, H)`` from each layer's and direction's output sequence: a forward
    direction's last step, a reverse direction's first (the step it finishes on)."""
    steps = 1 if batch_first else 0
    return torch.stack([out.select(steps, 0 if rev else -1) for out, rev in zip(outputs, reverse, strict=True)])
