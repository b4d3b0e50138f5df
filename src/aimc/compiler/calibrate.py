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
#: GDPU's tanh table (±TANH_LUT_RANGE, docs/physics.md §9.3) at |x| = 2·TANH_LUT_RANGE, tanh itself at TANH_LUT_RANGE;
#: larger values give the same GDPU output.
GATE_RANGE_LIMIT = 2 * TANH_LUT_RANGE
#: The LSTM's h is sent back as INT8 of full scale 1 (|h| < 1, docs/physics.md §9.3).
H_RANGE = 1.0
#: Our choice: largest factor by which an LSTM input is scaled up to the PWM range of h.
MAX_INPUT_SCALE = 16.0

#: Floor of every range, so that an all-zero calibration value never gives a zero scale.
MIN_RANGE = 1e-6
#: Calibration rows per step of the bit-line load and partial-sum computation (not physics: it bounds the work
#: tensors, about 64 MB for a layer of 4 x 2 cores, and keeps the time linear in the number of example inputs).
CHUNK_ROWS = 8192


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
    """Give the LSTM's input x the PWM range of h (docs/physics.md §5: one 8-bit PWM range per core row block).

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
        t = layer.tiling
        wb = weight_blocks(layer)  # (r, c, m, n)
        scale = None  # partial sums travel down the column chains where there are several row blocks
        if t.row_blocks > 1:
            scale = F.pad(layer.scale, (0, t.col_blocks * t.block_outputs - t.outputs)).reshape(t.col_blocks, 1, -1)
        if layer.kind == "lstm":
            h = values[op.name][0].float()  # (B, T, H): h_t for every step
            h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
            _scale_lstm_input(layer, x)
            x = x * layer.geometry["input_scale"]
            rows = torch.cat([x, h_prev], dim=-1).reshape(-1, x.shape[-1] + h.shape[-1])
            out = rows @ layer.weight.T + layer.bias
            # the GDPU's tables are flat beyond these pre-activations, so a wider INT8 range only loses resolution
            layer.out_range = max(min(float(out.abs().max()), GATE_RANGE_LIMIT), MIN_RANGE)
            layer.x_range = max(float(rows.abs().max()), MIN_RANGE)
            layer.load, psum = core_ranges(block_view(layer, rows), layer.x_range, wb, scale)
        else:
            if layer.kind == "conv2d":
                layer.geometry["input_hw"] = [int(x.shape[-2]), int(x.shape[-1])]
            out = _value(values, ops_by_name, op.attrs.get("value_node", op.name))
            layer.out_range = max(float(out.abs().max()), MIN_RANGE)
            addend = None
            if scale is not None and layer.add is not None and layer.add_at_chain_head:
                addend = _value(values, ops_by_name, layer.add).float()
            layer.x_range, layer.load, psum = _input_ranges(layer, x, wb, scale, addend)
        layer.psum_range = max(psum, MIN_RANGE) if scale is not None else 1.0


def _input_ranges(
    layer: MappedLayer, x: torch.Tensor, wb: torch.Tensor, scale: torch.Tensor | None, addend: torch.Tensor | None
) -> tuple[float, torch.Tensor, float]:
    """``x_range``, the cores' loads and the largest partial sum (:func:`core_ranges`) of a conv or linear layer's
    input ``x`` (its example batch), its im2col rows made for about :data:`CHUNK_ROWS` rows of items at a time."""
    per_item = max(1, layer_rows(layer, x[:1]).shape[0])
    step = max(1, CHUNK_ROWS // per_item)
    chunks = [slice(i, i + step) for i in range(0, x.shape[0], step)]
    g = layer.geometry
    if layer.kind == "conv2d" and all(v == 1 for v in (*g["stride"], *g["dilation"])):
        low, high = torch.aminmax(x)  # stride 1: every pixel is in some patch, so |x| has the rows' maximum
        x_range = max(float(high), -float(low))
    else:
        x_range = max(float(layer_rows(layer, x[sl]).abs().max()) for sl in chunks)
    x_range = max(x_range, MIN_RANGE)
    load, psum = torch.zeros(wb.shape[:2], dtype=wb.dtype), 0.0
    for sl in chunks:
        xb = block_view(layer, layer_rows(layer, x[sl]))  # (r, R', n)
        head = None if addend is None else column_blocks(layer, output_rows(layer, addend[sl]))
        chunk_load, chunk_psum = core_ranges(xb, x_range, wb, scale, head)
        load, psum = torch.maximum(load, chunk_load), max(psum, chunk_psum)
    return x_range, load, psum


def core_ranges(
    xb: torch.Tensor,
    x_range: float,
    wb: torch.Tensor,
    scale: torch.Tensor | None = None,
    addend: torch.Tensor | None = None,
) -> tuple[torch.Tensor, float]:
    """The bit-line load of each core and the largest partial sum of the column chains, over all input rows.

    The load is the max over rows and outputs of each one-phase counter's sum_j (|w_j|/w_max)(|x_j|/x_range) for
    the inputs of one sign and the weights of one sign (the positive counter: x+·w+ + x-·w-; the negative one:
    x+·w- + x-·w+). With pos + neg = |x|·|w| and pos - neg = x·w, max(pos, neg) = (|x|·|w| + |x·w|) / 2: two
    products per core instead of four. Rows are taken :data:`CHUNK_ROWS` at a time.

    Args:
        xb: ``(r, R, n)`` inputs of each row block.
        x_range: the input value at PWM full scale.
        wb: ``(r, c, m, n)`` weight blocks (w_max: each block's max |W|).
        scale: ``(c, 1, m)`` affine scale of the partial sums per column block, or None to skip the partial sums.
        addend: ``(c, R, m)`` value added at each column chain's head, or None.

    Returns:
        ``(r, c)`` loads and the largest |running partial sum| sent along a column chain (affine scale applied,
        bias not yet; 0.0 without ``scale``).
    """
    w_max = wb.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    wn = wb / w_max
    w_abs = wn.abs()
    load = torch.zeros(wb.shape[:2], dtype=wb.dtype)
    psum = 0.0
    for start in range(0, xb.shape[1], CHUNK_ROWS):
        x = xb[:, start : start + CHUNK_ROWS].unsqueeze(1) / x_range  # (r, 1, R', n) within [-1, 1]
        y = x @ wn.mT  # (r, c, R', m): pos - neg
        counters = (x.abs() @ w_abs.mT).add_(y.abs())  # 2·max(pos, neg)
        load = torch.maximum(load, counters.amax(dim=(-2, -1)) / 2)
        if scale is not None:
            running = torch.cumsum(y.mul_(w_max * x_range).mul_(scale), dim=0)[:-1]  # the partial sums sent on
            if addend is not None:
                running += addend[:, start : start + CHUNK_ROWS]
            psum = max(psum, float(running.abs().max()))
    return load, psum


def bit_line_load(xn: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """:func:`core_ranges`' loads of inputs already divided by their range: ``xn`` ``(r, R, n)`` within [-1, 1],
    ``wb`` ``(r, c, m, n)`` -> ``(r, c)``."""
    return core_ranges(xn, 1.0, wb)[0]
