"""Ranges of the chip's number conversions, measured on calibration inputs (the compile step's calibration).

For each analog layer: the input value that maps to PWM full scale (``x_range``), the INT8 full scale of its output
after the LDPU pipeline (``out_range``) and of the partial sums passed along its column chains (``psum_range``), and
the normalised bit-line load of each core (``load``), from which ``program`` sets each core's ADC range and limits its
G_max below ADC saturation.

The calibration inputs stream through the float model batch by batch (:class:`Calibrator`). Each range's values go
into a histogram (:mod:`aimc.compiler.observe`), and at the end the full scale of each conversion is chosen from it by
the calibration method: ``"max"`` (the largest value seen), ``"percentile"``, ``"mse"`` (least expected squared
conversion error) or ``"mae"`` (least expected absolute error, the default). Memory is bounded by one batch and the
histograms; time is linear in the number of inputs.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx
import torch.nn.functional as F

from aimc._validation import check_choice, check_number
from aimc.compiler.capture import Captured
from aimc.compiler.layout import (
    as_image,
    block_view,
    column_blocks,
    layer_rows,
    output_rows,
    rnn_final_state,
    weight_blocks,
)
from aimc.compiler.mapping import MappedLayer, Op
from aimc.compiler.observe import DEFAULT_PERCENTILE, METHODS, AbsHistogram
from aimc.digital import generic
from aimc.digital.gdpu import TANH_LUT_RANGE, gru_cell, lstm_cell
from aimc.spec import ChipSpec

#: INT8 full scale limit of LSTM gate pre-activations: sigmoid(x) = 1/2 + tanh(x/2)/2 reaches the end of the
#: GDPU's tanh table (±TANH_LUT_RANGE, docs/physics.md §9.3) at |x| = 2·TANH_LUT_RANGE, tanh itself at TANH_LUT_RANGE;
#: larger values give the same GDPU output.
GATE_RANGE_LIMIT = 2 * TANH_LUT_RANGE
#: The LSTM's h is sent back as INT8 of full scale 1 (|h| < 1, docs/physics.md §9.3).
H_RANGE = 1.0
#: Our choice: largest factor by which an LSTM input is scaled up to the PWM range of h.
MAX_INPUT_SCALE = 16.0
#: INT8 links (outputs, partial sums): codes -128..127, full scale at 127 (docs/physics.md §9.2).
INT8_LEVELS = 127

#: Floor of every range, so that an all-zero calibration value never gives a zero scale.
MIN_RANGE = 1e-6
#: Calibration rows per step of the bit-line load and partial-sum computation (not physics: it bounds the work
#: tensors, about 64 MB for a layer of 4 x 2 cores, and keeps the time linear in the number of calibration inputs).
CHUNK_ROWS = 8192
#: The default calibration method (the one that kept the most accuracy in docs/validation.md's measurements).
DEFAULT_METHOD = "mae"


class _Recorder(torch.fx.Interpreter):
    """Runs the traced float model and keeps every node's value."""

    def __init__(self, gm: torch.fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[str, Any] = {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = out
        return out


def record(gm: torch.fx.GraphModule, inputs: tuple[torch.Tensor, ...]) -> dict[str, Any]:
    """Every node's value for the model inputs ``inputs`` (float forward, no gradients)."""
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*inputs)
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
    H_RANGE / max|x| (at most :data:`MAX_INPUT_SCALE`; max|x| of the first calibration batch) and the input weight
    columns are divided by it — the same function, with x at full PWM resolution (at the price of smaller
    conductances for those weights).
    """
    k_in = layer.geometry["input_size"]
    peak = float(x.abs().max())
    scale = min(H_RANGE / peak, MAX_INPUT_SCALE) if peak > 0 else 1.0
    scale = max(scale, 1.0)
    layer.geometry["input_scale"] = scale
    layer.weight[:, :k_in] /= scale


class _LayerStats:
    """The histograms of one analog layer's conversions."""

    def __init__(self, layer: MappedLayer) -> None:
        t = layer.tiling
        self.x = AbsHistogram()
        self.out = AbsHistogram()
        self.psum = AbsHistogram() if layer.chained else None
        self.load = AbsHistogram(t.row_blocks * t.col_blocks)
        self.wb: torch.Tensor | None = None  # (r, c, m, n) weight blocks, once the layer's weight is final
        self.scale: torch.Tensor | None = None  # (c, 1, m) affine scale of the partial sums

    def blocks(self, layer: MappedLayer) -> torch.Tensor:
        if self.wb is None:
            t = layer.tiling
            self.wb = weight_blocks(layer)
            if self.psum is not None:
                pad = (0, t.col_blocks * t.block_outputs - t.outputs)
                self.scale = F.pad(layer.scale, pad).reshape(t.col_blocks, 1, -1)
        return self.wb


class Calibrator:
    """Streams calibration batches through the float model and sets every analog layer's ranges from them.

    Usage: ``cal = Calibrator(gm, captured, spec)``, ``cal.add(inputs)`` for each batch (a tuple of the model's input
    tensors), then ``cal.finish()`` sets ``x_range``, ``out_range``, ``psum_range`` and ``load`` in place.
    """

    def __init__(
        self,
        gm: torch.fx.GraphModule,
        captured: Captured,
        spec: ChipSpec,
        method: str = DEFAULT_METHOD,
        percentile: float = DEFAULT_PERCENTILE,
    ) -> None:
        check_choice(method, "calibration method", METHODS)
        check_number(percentile, "percentile", low=0.0, high=100.0, low_inclusive=False)
        self.gm, self.captured, self.spec = gm, captured, spec
        self.method, self.percentile = method, percentile
        self.ops_by_name = {op.name: op for op in captured.ops}
        self.analog = [op for op in captured.ops if op.kind in ("analog", "lstm", "gru")]
        self.stats = {op.name: _LayerStats(captured.layers[op.attrs["layer"]]) for op in self.analog}
        self.batches = 0
        self.items = 0
        #: Positions per input item of a sequence model (the rows per item of a Linear layer on a (B, T, D) value,
        #: the largest over the layers: T), else 1: the perf model counts one inference per position.
        self.positions = 1

    def add(self, inputs: tuple[torch.Tensor, ...]) -> None:
        """Observe one batch of model inputs."""
        values = record(self.gm, inputs)
        for op in self.captured.ops:
            if op.kind in ("analog", "lstm", "gru"):
                layer = self.captured.layers[op.attrs["layer"]]
                stats = self.stats[op.name]
                x = _value(values, self.ops_by_name, op.inputs[0]).float()
                if layer.kind in ("lstm", "gru"):
                    self._observe_rnn(op, layer, stats, x, values)
                else:
                    self._observe_layer(op, layer, stats, x, values)
            elif op.kind == "cat" and op.name not in values:  # a bidirectional RNN's two directions
                values[op.name] = torch.cat([_value(values, self.ops_by_name, i) for i in op.inputs], op.attrs["dim"])
            elif op.kind == "rnn_state" and op.name not in values:
                outs = [_value(values, self.ops_by_name, i) for i in op.inputs]
                values[op.name] = rnn_final_state(outs, op.attrs["reverse"], op.attrs["batch_first"])
            elif op.kind == "digital" and self.batches == 0:
                self._cost(op, values, int(inputs[0].shape[0]))
        self.batches += 1
        self.items += int(inputs[0].shape[0])

    def _cost(self, op: Op, values: dict[str, Any], items: int) -> None:
        """Record a digital op's FLOPs and bytes per input item (for the perf model), from the first batch;
        :meth:`finish` divides them by the positions of a sequence."""
        args_in = [_value(values, self.ops_by_name, i) for i in op.inputs]
        device = torch.device("cpu")
        tensors = self.captured.extra_tensors
        args = generic.decode(op.attrs["args"], args_in, tensors, device)
        kwargs = {k: generic.decode(v, args_in, tensors, device) for k, v in op.attrs.get("kwargs", {}).items()}
        out = values.get(op.name)
        if out is None:
            out = generic.run(op.attrs, args_in, tensors, device, quantize=False)
        op.attrs.update(generic.cost(op.attrs["target"], args, kwargs, out, items))

    def _observe_rnn(
        self, op: Op, layer: MappedLayer, stats: _LayerStats, x: torch.Tensor, values: dict[str, Any]
    ) -> None:
        """An LSTM/GRU layer: its input rows [x_t, h_(t-1)] for every step, their gate pre-activations and bit-line
        loads. h is the float layer's own output: the traced one for a one-layer RNN, else this layer's float
        recurrence (:func:`rnn_reference`), which becomes the op's value for the layers after it."""
        batch_first, reverse = op.attrs.get("batch_first", True), op.attrs.get("reverse", False)
        if stats.wb is None:
            _scale_lstm_input(layer, x)  # before the weight blocks are taken
        traced = values.get(op.name)
        if isinstance(traced, tuple) and layer.kind == "lstm" and not reverse:
            h = traced[0].float()
        else:
            h = rnn_reference(layer, x, reverse, batch_first)
            values[op.name] = h
        if not batch_first:
            x, h = x.transpose(0, 1), h.transpose(0, 1)
        if reverse:
            x, h = x.flip(1), h.flip(1)
        x = x * layer.geometry["input_scale"]
        h_prev = torch.cat([torch.zeros_like(h[:, :1]), h[:, :-1]], dim=1)
        rows = torch.cat([x, h_prev], dim=-1).reshape(-1, x.shape[-1] + h.shape[-1])
        stats.out.add(rows @ layer.weight.T + layer.bias)
        stats.x.add(rows)
        _observe_cores(stats, block_view(layer, rows), stats.blocks(layer))

    def _observe_layer(
        self, op: Op, layer: MappedLayer, stats: _LayerStats, x: torch.Tensor, values: dict[str, Any]
    ) -> None:
        g = layer.geometry
        x = as_image(layer, x)
        if layer.kind == "conv2d":
            g["input_hw"] = [int(x.shape[-2]), int(x.shape[-1])]
        stats.out.add(_value(values, self.ops_by_name, op.attrs.get("value_node", op.name)))
        wb = stats.blocks(layer)
        addend = None
        if stats.psum is not None and layer.add is not None and layer.add_at_chain_head:
            addend = as_image(layer, _value(values, self.ops_by_name, layer.add).float())
        # stride 1: every pixel is in some patch, so the pixels have the rows' values (less the padding's zeros)
        pixels = layer.kind == "conv2d" and all(v == 1 for v in (*g["stride"], *g["dilation"]))
        if pixels:
            stats.x.add(x)
        per_item = max(1, layer_rows(layer, x[:1]).shape[0])
        if layer.kind == "linear" and x.dim() >= 3:
            self.positions = max(self.positions, per_item)
        step = max(1, CHUNK_ROWS // per_item)
        for i in range(0, x.shape[0], step):
            rows = layer_rows(layer, x[i : i + step])
            if not pixels:
                stats.x.add(rows)
            head = None if addend is None else column_blocks(layer, output_rows(layer, addend[i : i + step]))
            _observe_cores(stats, block_view(layer, rows), wb, head)

    def finish(self) -> dict[str, Any]:
        """Set every analog layer's ranges from the histograms; returns what was done (method, batches, items)."""
        if self.batches == 0:
            raise ValueError("no calibration batch was observed")
        for op in self.analog:
            layer = self.captured.layers[op.attrs["layer"]]
            stats = self.stats[op.name]
            layer.x_range = max(self._full_scale(stats.x, self.spec.input_levels), MIN_RANGE)
            out_range = self._full_scale(stats.out, INT8_LEVELS)
            if layer.kind == "lstm":  # the GDPU's tables are flat beyond this: a wider range only loses resolution
                out_range = min(out_range, GATE_RANGE_LIMIT)
            layer.out_range = max(out_range, MIN_RANGE)
            layer.psum_range = 1.0 if stats.psum is None else max(self._full_scale(stats.psum, INT8_LEVELS), MIN_RANGE)
            t = layer.tiling
            load = stats.load.full_scale(self.method, self.spec.adc_max_count, self.percentile) / layer.x_range
            layer.load = load.reshape(t.row_blocks, t.col_blocks).to(layer.weight.dtype)
        for op in self.captured.ops:  # per position of a sequence, as the layers' MVMs are counted
            if op.kind == "digital" and "flops" in op.attrs:
                op.attrs["flops"] /= self.positions
                op.attrs["bytes"] /= self.positions
        info: dict[str, Any] = {"method": self.method, "batches": self.batches, "inputs": self.items}
        if self.positions > 1:
            info["positions"] = self.positions
        if self.method == "percentile":
            info["percentile"] = self.percentile
        return info

    def _full_scale(self, hist: AbsHistogram, levels: int) -> float:
        return float(hist.full_scale(self.method, levels, self.percentile)[0])


def rnn_reference(layer: MappedLayer, x: torch.Tensor, reverse: bool = False, batch_first: bool = True) -> torch.Tensor:
    """The float output sequence of one LSTM/GRU layer (one direction) from its mapped matrix: ``x`` ``(B, T, I)``
    (``(T, B, I)`` unless ``batch_first``) -> h for every step, in the same layout; a ``reverse`` direction reads the
    sequence backwards and writes each h at its own step, as PyTorch does."""
    if not batch_first:
        x = x.transpose(0, 1)
    if reverse:
        x = x.flip(1)
    hidden = layer.geometry["hidden_size"]
    inverse = torch.argsort(torch.tensor(layer.geometry["gate_order"]))
    w, b = layer.weight[inverse], layer.bias[inverse]
    x = x.float() * layer.geometry.get("input_scale", 1.0)
    h = x.new_zeros(x.shape[0], hidden)
    c = torch.zeros_like(h)
    outs = []
    for step in range(x.shape[1]):
        gates = torch.cat([x[:, step], h], dim=-1) @ w.T + b
        if layer.kind == "lstm":
            h, c = lstm_cell(gates, c, fp16=False)
        else:
            h = gru_cell(gates, h, fp16=False)
        outs.append(h)
    out = torch.stack(outs, dim=1)
    if reverse:
        out = out.flip(1)
    return out.transpose(0, 1) if not batch_first else out


def _observe_cores(stats: _LayerStats, xb: torch.Tensor, wb: torch.Tensor, addend: torch.Tensor | None = None) -> None:
    """Count the bit-line load of each core and the partial sums of the column chains for input rows ``xb``.

    A core's load for one input row is its largest one-phase counter over the outputs: sum_j (|w_j|/w_max)·|x_j| over
    the inputs of one sign and the weights of one sign (positive counter: x+·w+ + x-·w-; negative: x+·w- + x-·w+), in
    units of the input (divided by ``x_range`` once it is chosen). With pos + neg = |x|·|w| and pos - neg = x·w,
    max(pos, neg) = (|x|·|w| + |x·w|) / 2: two products per core. One value per row and core goes into the
    histogram, so that a clipped load is the load that a given share of the rows stays within. Rows are taken
    :data:`CHUNK_ROWS` at a time.

    Args:
        stats: the layer's histograms (``load``: one row per core; ``psum``: the running partial sums).
        xb: ``(r, R, n)`` inputs of each row block.
        wb: ``(r, c, m, n)`` weight blocks (w_max: each block's max |W|).
        addend: ``(c, R, m)`` value added at each column chain's head, or None.
    """
    r, c = wb.shape[:2]
    w_max = wb.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    wn = wb / w_max
    w_abs = wn.abs()
    for start in range(0, xb.shape[1], CHUNK_ROWS):
        x = xb[:, start : start + CHUNK_ROWS].unsqueeze(1)  # (r, 1, R', n)
        y = x @ wn.mT  # (r, c, R', m): pos - neg
        if stats.psum is not None:
            running = torch.cumsum(y * (w_max * stats.scale), dim=0)[:-1]  # the partial sums sent on
            if addend is not None:
                running += addend[:, start : start + CHUNK_ROWS]
            stats.psum.add(running)
        counters = (x.abs() @ w_abs.mT).add_(y.abs_())  # 2·max(pos, neg)
        stats.load.add(counters.amax(dim=-1).mul_(0.5).reshape(r * c, -1))


def bit_line_load(xn: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """The largest bit-line load of each core: ``xn`` ``(r, R, n)`` inputs already divided by their range (within
    [-1, 1]), ``wb`` ``(r, c, m, n)`` weight blocks -> ``(r, c)``, the max over rows and outputs of the larger
    one-phase counter (see :func:`_observe_cores`), max(pos, neg) = (|x|·|w| + |x·w|) / 2."""
    w_max = wb.abs().amax(dim=(-2, -1), keepdim=True).clamp_min(1e-30)
    wn = wb / w_max
    load = torch.zeros(wb.shape[:2], dtype=wb.dtype)
    for start in range(0, xn.shape[1], CHUNK_ROWS):
        x = xn[:, start : start + CHUNK_ROWS].unsqueeze(1)
        counters = (x.abs() @ wn.abs().mT).add_((x @ wn.mT).abs_())
        load = torch.maximum(load, counters.amax(dim=(-2, -1)) / 2)
    return load
