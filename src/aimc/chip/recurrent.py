"""Running an LSTM or GRU layer on the chip, step by step (docs/physics.md §11).

At each step the layer's cores multiply [x_t | h_{t-1}] by the stacked gate weights, the partial sums run down the
column chains (:func:`aimc.chip.analog.ldpu_rows`), the cell runs in the GDPUs in FP16 (:mod:`aimc.digital.gdpu`:
tanh table, sigmoid via tanh) and h goes back to the cores as INT8.
"""

from __future__ import annotations

import torch

from aimc.chip.analog import fused_registers, int8_values, ldpu_rows, mvm_rows
from aimc.compiler.mapping import MappedLayer
from aimc.core.analog import CoreReadout
from aimc.digital.gdpu import gru_cell, lstm_cell
from aimc.errors import ValidationError


def run_rnn(
    layer: MappedLayer,
    readout: CoreReadout,
    x: torch.Tensor,
    gen: torch.Generator,
    quantize: bool,
    chain: bool,
    reverse: bool = False,
    batch_first: bool = True,
) -> torch.Tensor:
    """An LSTM or GRU layer (one direction) step by step: gate MVMs on the cores (partial sums down the column
    chains), the cell in the GDPUs (FP16, tanh table), h back as INT8 (scale 1/127, |h| < 1). A ``reverse`` direction
    reads the sequence backwards; ``batch_first=False`` takes and returns ``(T, B, features)``."""
    if not batch_first:
        x = x.transpose(0, 1)
    if reverse:
        x = x.flip(1)
    batch, steps, features = x.shape
    hidden = layer.geometry["hidden_size"]
    if features + hidden != layer.tiling.inputs:
        raise ValidationError(
            f"{layer.kind.upper()} layer {layer.name!r} takes {layer.tiling.inputs - hidden} features per step; the "
            f"value reaching it has shape {tuple(x.shape)}: the input does not fit the mapping"
        )
    inverse = torch.argsort(torch.tensor(layer.geometry["gate_order"], device=x.device))
    h = torch.zeros(batch, hidden, device=x.device)
    c = torch.zeros(batch, hidden, device=x.device)
    registers = fused_registers(layer) if quantize and chain and x.device.type == "cpu" else None
    y_dtype = torch.float32 if registers is not None else None
    outs = []
    # the host scales the off-chip input to the PWM range of h; its weight columns were divided by the same factor
    x = x.float() * layer.geometry.get("input_scale", 1.0)
    for step in range(steps):
        rows = torch.cat([x[:, step], h], dim=-1)
        y = mvm_rows(layer, readout, rows, gen, quantize, output_dtype=y_dtype)
        gates = torch.empty(batch, layer.tiling.outputs, device=x.device)
        ldpu_rows(layer, y, None, quantize, gates, registers)
        if layer.kind == "lstm":
            h, c = lstm_cell(gates[:, inverse], c, fp16=quantize)
        else:
            h = gru_cell(gates[:, inverse], h, fp16=quantize)
        if quantize:
            h = int8_values(h, 1.0)
        outs.append(h)
    out = torch.stack(outs, dim=1)
    if reverse:
        out = out.flip(1)
    return out.transpose(0, 1) if not batch_first else out


__all__ = ["run_rnn"]
