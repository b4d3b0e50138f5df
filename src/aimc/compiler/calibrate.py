"""Ranges of the chip's number conversions, measured on example inputs (the compile step's calibration).

For each analog layer: the input value that maps to PWM full scale (``x_range``: the largest |input| seen), the
INT8 full scale of its output after the LDPU pipeline (``out_range``) and of the partial sums passed along its
column chains (``psum_range``), and the largest normalised bit-line load of each core (``load``), from which
``program`` limits each core's G_max below ADC saturation.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn.functional as F

from aimc.compiler.capture import Captured
from aimc.compiler.layout import block_view, column_blocks, layer_rows, output_rows, weight_blocks
from aimc.compiler.mapping import MappedLayer, Op
from aimc.digital.gdpu import TANH_LUT_RANGE

#: INT8 full scale limit of LSTM gate pre-activations: sigmoid(x) = 1/2 + tanh(x/2)/2 reaches the end of the
#: GDPU's tanh table (±TANH_LUT_RANGE, SPEC §2) at |x| = 2·TANH_LUT_RANGE, tanh itself at TANH_LUT_RANGE; larger
#: values give the same GDPU output.
GATE_RANGE_LIMIT = 2 * TANH_LUT_RANGE
#: The LSTM's h is sent back as INT8 of full scale 1 (|h| < 1, SPEC §2 GDPU).
H_RANGE = 1.0
#: Our choice: largest factor by which an LSTM input is scaled up to the PWM range of h.
MAX_INPUT_SCALE = 16.0

#: Floor of every range, so that an all-zero calibration value never gives a zero scale.
MIN_RANGE = 1e-6


class _Recorder(torch.fx.Interpreter):
    """Runs the traced float model and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def record(gm: torch.fx.GraphModule, example_input: torch.Tensor | tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Every node's value for ``example_input`` (float forward, no gradients)."""
    rec = _Recorder(gm)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    with torch.no_grad():
        rec.run(*args)
    return rec.values


def _value(values: dict[str, Any], ops_by_name: dict[str, Op], name: str) -> torch.Tensor:
    op = ops_by_name.get(name)
    node = op.attrs.get("value_node", name) if op is not None else name
    v = values[node]
    return v[0] if isinstance(v, tuple) else v


def _scale_lstm_input(layer: MappedLayer, x: torch.Tensor) -> None:
    """Give the LSTM's input x the PWM range of h (SPEC §1: one 8-bit PWM range per core row block).

    x (e.g. an off-chip embedding with entries of 0.1-0.3) and h (|h| < 1) share the rows of a core and so one PWM
    full scale; a small x would use a few of the 127 levels. The host multiplies x by ``input_scale`` =
    H_RANGE / max|x| (at most :data:`MAX_INPUT_SCALE`) and the input weight columns are divided by it — the same
    function, with x at full PWM resolution (at the price of smaller conductances for those weights).
    """
    k_in = layer.geometry["input_size"]
    peak = float(x.abs().max())
    scale = min(H_RANGE / peak, MAX_INPUT_SCALE) if peak > 0 else 1.0
    scale = max(scale, 1.0)
    layer.geometry["input_scale"] = scale
    layer.weight[:, :k_in] /= scale


def calibrate(
    gm: torch.fx.GraphModule, captured: Captured, example_input: torch.Tensor | tuple[torch.Tensor, ...]
) -> None:
    """Set ``x_range``, ``out_range``, ``psum_range`` and ``load`` of every analog layer; in place."""
    values = record(gm, example_input)
    ops_by_name = {op.name: op for op in captured.ops}
    for op in captured.ops:
        if op.kind not in ("analog", "lstm"):
            continue
        layer = captured.layers[op.attrs["layer"]]
        x = _value(values, ops_by_name, op.inputs[0]).float()
        if layer.kind == "lstm":
            h = values[op.name][0].float()  # (B, T, H): h_t for every step
            h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
            _scale_lstm_input(layer, x)
            x = x * layer.geometry["input_scale"]
            rows = torch.cat([x, h_prev], dim=-1).reshape(-1, x.shape[-1] + h.shape[-1])
            out = rows @ layer.weight.T + layer.bias
            # the GDPU's tables are flat beyond these pre-activations, so a wider INT8 range only loses resolution
            layer.out_range = max(min(float(out.abs().max()), GATE_RANGE_LIMIT), MIN_RANGE)
        else:
            if layer.kind == "conv2d":
                layer.geometry["input_hw"] = [int(x.shape[-2]), int(x.shape[-1])]
            rows = layer_rows(layer, x)
            out = _value(values, ops_by_name, op.attrs.get("value_node", op.name))
            layer.out_range = max(float(out.abs().max()), MIN_RANGE)
        layer.x_range = max(float(rows.abs().max()), MIN_RANGE)
        xb = block_view(layer, rows)  # (r, R, n)
        wb = weight_blocks(layer)  # (r, c, m, n)
        layer.load = bit_line_load(xb / layer.x_range, wb)
        layer.psum_range = _psum_range(layer, xb, wb, captured, values, ops_by_name)


def bit_line_load(xn: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """Max over rows and outputs of each one-phase counter's sum_j (|w|/w_max)(|x|/x_range), per core ``(r, c)``.

    Args:
        xn: ``(r, R, n)`` inputs of each row block, divided by the input range (so within [-1, 1]).
        wb: ``(r, c, m, n)`` weight blocks (w_max: each block's max |W|).
    """
    w_max = wb.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    wn = wb / w_max
    wp, wm = wn.clamp_min(0), (-wn).clamp_min(0)
    xp, xm = xn.clamp_min(0).unsqueeze(1), (-xn).clamp_min(0).unsqueeze(1)  # (r, 1, R, n)
    pos = xp @ wp.mT + xm @ wm.mT
    neg = xp @ wm.mT + xm @ wp.mT
    return torch.maximum(pos.amax(dim=(-2, -1)), neg.amax(dim=(-2, -1)))


def _psum_range(
    layer: MappedLayer,
    xb: torch.Tensor,
    wb: torch.Tensor,
    captured: Captured,
    values: dict[str, Any],
    ops_by_name: dict[str, Op],
) -> float:
    """Largest |running partial sum| sent along a column chain (affine scale applied, bias not yet)."""
    t = layer.tiling
    if t.row_blocks == 1:
        return 1.0
    y = xb.unsqueeze(1) @ wb.mT  # (r, c, R, m)
    scale = F.pad(layer.scale, (0, t.col_blocks * t.block_outputs - t.outputs)).reshape(t.col_blocks, 1, -1)
    running = torch.cumsum(y * scale, dim=0)[:-1]
    if layer.add is not None and layer.add_at_chain_head:
        addend = _value(values, ops_by_name, layer.add).float()
        running = running + column_blocks(layer, output_rows(layer, addend))
    return max(float(running.abs().max()), MIN_RANGE)
