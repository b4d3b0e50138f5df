"""Graph capture and lowering: a PyTorch module -> analog layers + a list of ops (docs/design.md "Whole networks").

The module is captured with ``torch.export`` (an ATen graph; docs/design.md says why). Lowering is data-driven, not
a list of supported modules: every product of an activation with a constant matrix (``linear``, ``matmul``/``mm``/
``addmm`` with a weight, ``conv1d``/``conv2d`` with any groups) and every ``lstm``/``gru`` becomes an analog layer
(conv via im2col: K = in_channels·kh·kw rows, N = out_channels columns); the operations the chip's LDPUs run as in the
chip paper (batch-norm affine, ReLU, residual add, pooling) keep their own op kinds; every other operation is a
digital op run as PyTorch runs it (:mod:`aimc.digital.generic`), on the unit that does it. Values that depend on no
model input (weights, their transposes and slices, masks) are folded into constants at compile time.

A grouped or depthwise convolution (groups > 1) gets the matrix of the equivalent dense convolution, which is
block-diagonal: the column of an output channel holds its weights in the rows of its group's input channels and
zeros in all other rows (:func:`grouped_conv_matrix`). A fusion pass then folds into each analog layer what its LDPU
does after the MVM, in the LDPU's order (docs/physics.md §9.2): per-channel affine (bias and a following batch
norm), ReLU, one added input (residual), a second ReLU, INT8 output. Batch norm that follows an activation runs as
its own per-channel affine pass: folded into the next layer's weights, the scale of a channel that is never active
(a ReLU that is always 0 has a running variance near 0, so a scale near 1/sqrt(eps) ≈ 316) would set that layer's
largest weight and leave the real weights a few conductance levels.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn

from aimc.compiler.mapping import MappedLayer, Op
from aimc.compiler.tiling import Tiling, tile
from aimc.digital import generic
from aimc.errors import AimcError, ValidationError
from aimc.spec import ChipSpec


class UnsupportedLayerError(AimcError, TypeError):
    """A network, or one of its operations, cannot be captured or mapped onto the chip."""


@dataclass
class Captured:
    """The lowered network before placement."""

    layers: dict[str, MappedLayer]
    ops: list[Op]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


#: Modules that compile treats as a whole network of one layer (wrapped so that the layer is named ``"0"``).
SINGLE_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Linear, nn.LSTM, nn.GRU)

#: ``compile(digital_layers=DEPTHWISE)``, or this entry among layer names: every depthwise convolution
#: (groups = in_channels) on the digital unit.
DEPTHWISE = "depthwise"

_ZERO_STATES = ("zeros", "zeros_like", "new_zeros")
#: Products with a weight tensor in a form the cores do not take (a weight in any other product is an analog layer).
_WEIGHT_PRODUCTS = (
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "conv3d",
    "convolution",
    "_convolution",
    "einsum",
    "bilinear",
    "mm",
    "matmul",
    "bmm",
    "baddbmm",
    "addmm",
    "linear",
)
_PASS_THROUGH = ("alias", "detach", "lift_fresh_copy")


def required_inputs(model: nn.Module) -> int:
    """The number of model inputs a calibration batch gives: ``forward``'s positional parameters without a default
    (at least 1)."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover - a builtin forward
        return 1
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return max(1, sum(p.kind in kinds and p.default is inspect.Parameter.empty for p in params))


def export_graph(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    """Capture ``model`` (in eval mode) on example ``inputs`` with ``torch.export``; the batch dimension (dim 0 of
    every input) stays free, so the mapping runs any batch size. Returns the graph with parameters as attributes.

    Raises:
        UnsupportedLayerError: the tracer's reason, and what to change.
    """
    from torch.export import Dim, export

    # a batch of 1 would be specialised (torch.export treats sizes 0 and 1 as constants): trace with 2
    traced = tuple(torch.cat([t, t]) if t.dim() and t.shape[0] == 1 else t for t in inputs)
    dynamic = tuple({0: Dim.AUTO} if t.dim() else None for t in traced)
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused attention kernel hides the projections' weights
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nn.LSTM's "_flat_weights were assigned during export"
            program = export(model, traced, dynamic_shapes=dynamic, strict=False)
    except Exception as err:  # torch.export raises many kinds of errors
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UnsupportedLayerError(
            f"the model could not be captured with torch.export ({type(err).__name__}: {reason}). aimc captures any "
            "model whose forward pass does not branch on tensor values: replace Python control flow on tensor "
            "values (if/while on a tensor, .item(), data-dependent shapes) by tensor operations (torch.where, masks) "
            "or torch.cond; loops over a fixed range and branches on Python settings are fine"
        ) from None
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return program.module()


def _arg(node: torch.fx.Node, index: int, key: str, default: Any = None) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(key, default)


def _pair(v: Any) -> list[int]:
    if isinstance(v, int):
        return [int(v), int(v)]
    v = list(v)
    return [int(v[0]), int(v[0])] if len(v) == 1 else [int(v[0]), int(v[1])]


class _Lowering:
    """State of one lowering pass over an exported graph (see :func:`lower`)."""

    def __init__(
        self, gm: torch.fx.GraphModule, spec: ChipSpec, offchip: tuple[str, ...], digital: frozenset[str]
    ) -> None:
        self.gm, self.spec, self.offchip, self.digital = gm, spec, offchip, digital
        self.candidates: list[str] = []  # the Conv/Linear layers that could run on the digital unit, by name
        self.layers: dict[str, MappedLayer] = {}
        self.ops: list[Op] = []
        self.extra: dict[str, torch.Tensor] = {}
        self.alias: dict[str, str] = {}
        self.rnn: dict[str, dict[str, Any]] = {}
        self.consts: dict[str, Any] = {}
        self.live: set[str] = set()  # nodes whose value depends on a model input
        for node in gm.graph.nodes:
            if node.op == "placeholder" or any(a.name in self.live for a in node.all_input_nodes):
                self.live.add(node.name)

    # --- values ----------------------------------------------------------------------------------------------------
    def is_const(self, v: Any) -> bool:
        return not isinstance(v, torch.fx.Node) or v.name not in self.live

    def const(self, v: Any) -> Any:
        """The compile-time value of a constant argument (a node that depends on no model input, or a literal)."""
        if not isinstance(v, torch.fx.Node):
            return torch.fx.node.map_aggregate(v, lambda a: self.const(a) if isinstance(a, torch.fx.Node) else a)
        if v.name not in self.consts:
            if v.op == "get_attr":
                obj: Any = self.gm
                for part in str(v.target).split("."):
                    obj = getattr(obj, part)
                value = obj.detach() if isinstance(obj, torch.Tensor) else obj
            else:
                with torch.no_grad():
                    value = v.target(*self.const(v.args), **self.const(v.kwargs))
            self.consts[v.name] = value
        return self.consts[v.name]

    def src(self, v: Any) -> str:
        if not isinstance(v, torch.fx.Node) or v.name not in self.live:
            raise UnsupportedLayerError(
                f"a constant {v!r} stands where the graph needs a value computed from the input"
            )
        return self.alias.get(v.name, v.name)

    def param_name(self, v: Any, node: torch.fx.Node) -> str:
        """A layer name for the weight ``v``: its parameter's module path (``"blocks.0.fc1"``), unique."""
        seen, stack, param = set(), [v], None
        while stack and param is None:
            n = stack.pop(0)
            if isinstance(n, torch.fx.Node) and n.name not in seen:
                seen.add(n.name)
                if n.op == "get_attr":
                    param = str(n.target)
                stack.extend(n.all_input_nodes)
        base = node.name if param is None else param
        for suffix in (".weight", "_weight", ".weight_ih_l0"):
            if base.endswith(suffix) and len(base) > len(suffix):
                base = base[: -len(suffix)]
                break
        name, k = base, 2
        while name in self.layers:
            name, k = f"{base}@{k}", k + 1
        return name

    # --- ops -------------------------------------------------------------------------------------------------------
    def add_layer(self, node: torch.fx.Node, layer: MappedLayer, kind: str = "analog") -> None:
        self.layers[layer.name] = layer
        self.ops.append(
            Op(node.name, kind, [self.src(node.args[0] if kind == "analog" else node)], {"layer": layer.name})
        )

    def generic(self, node: torch.fx.Node) -> None:
        """A digital op: the node's ATen function with its arguments stored (:mod:`aimc.digital.generic`)."""
        name = generic.target_name(node.target)
        inputs: list[str] = []

        def index(v: Any) -> int | None:
            if isinstance(v, torch.fx.Node):
                key = self.src(v)
                if key not in inputs:
                    inputs.append(key)
                return inputs.index(key)
            return None

        def tensor_key(t: torch.Tensor) -> str:
            key = f"{node.name}.c{sum(k.startswith(node.name + '.c') for k in self.extra)}"
            self.extra[key] = t.detach().clone()
            return key

        def fold(v: Any) -> Any:
            return torch.fx.node.map_aggregate(v, lambda a: a if not self.is_const(a) else self.const(a))

        args = generic.encode(list(fold(node.args)), tensor_key, index)
        kwargs = {k: generic.encode(fold(v), tensor_key, index) for k, v in node.kwargs.items()}
        unit = generic.unit_of(name)
        self.ops.append(
            Op(node.name, "digital", inputs, {"target": name, "args": args, "kwargs": kwargs, "unit": unit})
        )

    def lower_node(self, node: torch.fx.Node) -> None:
        fn = node.target
        name = generic.target_name(fn)
        family = generic.op_family(name)
        a0 = node.args[0] if node.args else None
        if fn is operator.getitem and isinstance(a0, torch.fx.Node) and a0.name in self.rnn:
            self.rnn_output(node, self.rnn[a0.name], int(node.args[1]))
        elif family == "linear" and self.is_const(node.args[1]) and not self.is_const(a0):
            weight = self.const(node.args[1]).float()
            bias = self.const(_arg(node, 2, "bias"))
            name = self.param_name(node.args[1], node)
            if any(name == o or name.startswith(o + ".") for o in self.offchip):
                self.extra[f"{node.name}.weight"] = weight.clone()
                if bias is not None:
                    self.extra[f"{node.name}.bias"] = bias.float().clone()
                self.ops.append(Op(node.name, "host_linear", [self.src(a0)], {"module": name}))
            else:
                layer = _linear_layer(name, weight, bias, self.spec)
                if self.runs_digital(layer):
                    self.generic(node)
                else:
                    self.add_layer(node, layer)
        elif family in ("mm", "matmul") and self.is_const(node.args[1]) and not self.is_const(a0):
            weight = self.const(node.args[1])
            if weight.dim() != 2:
                raise UnsupportedLayerError(
                    f"{node.name!r}: a matmul with a {weight.dim()}-D weight tensor is not mapped onto the cores; use "
                    "a 2-D weight (matmul(x, W) with W of shape (in, out))"
                )
            self.add_layer(node, _linear_layer(self.param_name(node.args[1], node), weight.float().T, None, self.spec))
        elif (
            family == "addmm"
            and self.is_const(node.args[0])
            and self.is_const(node.args[2])
            and not self.is_const(node.args[1])
            and node.kwargs.get("beta", 1) == 1
            and node.kwargs.get("alpha", 1) == 1
        ):
            weight, bias = self.const(node.args[2]).float().T, self.const(node.args[0]).float()
            layer = _linear_layer(self.param_name(node.args[2], node), weight, bias.expand(weight.shape[0]), self.spec)
            self.layers[layer.name] = layer
            self.ops.append(Op(node.name, "analog", [self.src(node.args[1])], {"layer": layer.name}))
        elif family in ("conv1d", "conv2d", "convolution") and self.is_const(node.args[1]) and not self.is_const(a0):
            layer = self.conv_layer(node, family)
            if layer is None:
                raise UnsupportedLayerError(
                    f"{node.name!r}: transposed convolutions and convolutions over 3 or more dimensions are not "
                    "mapped onto the chip's cores yet; the cores take Linear, Conv1d/Conv2d (any groups), LSTM, GRU "
                    "and matmul(x, W)"
                )
            if self.runs_digital(layer):
                self.generic(node)
            else:
                self.add_layer(node, layer)
        elif family in ("lstm", "gru") and all(self.is_const(p) for p in node.args[2]):
            self.lower_rnn(node, family)
        elif family == "embedding" and self.is_const(a0) and not self.is_const(node.args[1]):
            self.extra[f"{node.name}.weight"] = self.const(a0).float().clone()
            self.ops.append(Op(node.name, "embedding", [self.src(node.args[1])], {"module": self.param_name(a0, node)}))
        elif (
            family == "batch_norm"
            and not _arg(node, 5, "training", False)
            and all(self.is_const(v) for v in node.args[1:5])
        ):
            w, b, mean, var = (self.const(v) for v in node.args[1:5])
            inv = 1.0 / torch.sqrt(var.float() + float(_arg(node, 7, "eps", 1e-5)))
            scale = w.float() * inv if w is not None else inv
            shift = (b.float() if b is not None else 0.0) - mean.float() * scale
            self.extra[f"{node.name}.scale"], self.extra[f"{node.name}.shift"] = scale, shift
            self.ops.append(Op(node.name, "affine", [self.src(a0)], {"bn": self.param_name(node.args[1], node)}))
        elif family in ("relu",) and len(node.args) == 1:
            self.ops.append(Op(node.name, "relu", [self.src(a0)]))
        elif (
            name == "aten.add.Tensor"
            and len(node.args) == 2
            and not node.kwargs
            and not self.is_const(node.args[0])
            and not self.is_const(node.args[1])
        ):
            self.ops.append(Op(node.name, "add", [self.src(node.args[0]), self.src(node.args[1])]))
        elif (
            family == "max_pool2d" and _pair(_arg(node, 4, "dilation", 1)) == [1, 1] and not _arg(node, 5, "ceil_mode")
        ):
            k = _pair(node.args[1])
            stride = _arg(node, 2, "stride", []) or k
            attrs = {"kernel": k, "stride": _pair(stride), "padding": _pair(_arg(node, 3, "padding", 0))}
            self.ops.append(Op(node.name, "maxpool2d", [self.src(a0)], attrs))
        elif (
            family == "avg_pool2d"
            and not _arg(node, 4, "ceil_mode", False)
            and _arg(node, 5, "count_include_pad", True)
            and _arg(node, 6, "divisor_override") is None
        ):
            k = _pair(node.args[1])
            stride = _arg(node, 2, "stride", []) or k
            attrs = {"kernel": k, "stride": _pair(stride), "padding": _pair(_arg(node, 3, "padding", 0))}
            self.ops.append(Op(node.name, "avgpool2d", [self.src(a0)], attrs))
        elif family == "adaptive_avg_pool2d":
            self.ops.append(Op(node.name, "avgpool2d", [self.src(a0)], {"adaptive": _pair(node.args[1])}))
        elif name == "aten.flatten.using_ints" and _arg(node, 2, "end_dim", -1) == -1:
            start = int(_arg(node, 1, "start_dim", 0))
            self.ops.append(Op(node.name, "flatten", [self.src(a0)], {"start_dim": start}))
        elif name == "aten.unsqueeze.default":
            self.ops.append(Op(node.name, "unsqueeze", [self.src(a0)], {"dim": int(node.args[1])}))
        elif name == "aten.cat.default" and not any(self.is_const(t) for t in a0):
            dim = int(_arg(node, 1, "dim", 0))
            self.ops.append(Op(node.name, "cat", [self.src(t) for t in a0], {"dim": dim}))
        elif family in _PASS_THROUGH or (family == "dropout" and not _arg(node, 2, "train", False)):
            self.alias[node.name] = self.src(a0)
        elif family in _WEIGHT_PRODUCTS and any(
            self.is_const(v) and isinstance(self.const(v), torch.Tensor) and self.const(v).dim() >= 2
            for v in node.all_input_nodes
        ):
            what = "transposed convolutions" if "transpose" in family else name
            raise UnsupportedLayerError(
                f"{node.name!r}: {what} with a weight tensor are not mapped onto the chip's cores yet; the cores take "
                "Linear, Conv1d/Conv2d (any groups), LSTM, GRU and matmul(x, W) with the weight on the right"
            )
        else:
            self.generic(node)
        return None

    def runs_digital(self, layer: MappedLayer) -> bool:
        """True where the user put this weight layer on the digital unit (``compile(digital_layers=...)``)."""
        self.candidates.append(layer.name)
        if layer.name in self.digital:
            return True
        depthwise = layer.kind == "conv2d" and 1 < layer.groups == layer.geometry["in_channels"]
        return DEPTHWISE in self.digital and depthwise

    def conv_layer(self, node: torch.fx.Node, family: str) -> MappedLayer | None:
        weight = self.const(node.args[1]).float()
        bias = self.const(_arg(node, 2, "bias"))
        if family == "convolution":
            if _arg(node, 6, "transposed", False):
                return None
            groups = int(_arg(node, 8, "groups", 1))
        else:
            groups = int(_arg(node, 6, "groups", 1))
        dims = weight.dim() - 2
        if dims not in (1, 2):
            return None
        one = [1] * dims
        stride = list(_arg(node, 3, "stride", one) or one)
        padding = _arg(node, 4, "padding", [0] * dims)
        dilation = list(_arg(node, 5, "dilation", one) or one)
        kernel = list(weight.shape[2:])
        if isinstance(padding, str):
            padding = _string_padding(padding, kernel, dilation, stride, node.name)
        padding = list(padding) * (dims if len(list(padding)) == 1 else 1)
        stride, dilation = stride * (dims if len(stride) == 1 else 1), dilation * (dims if len(dilation) == 1 else 1)
        if dims == 1:  # a Conv1d is a Conv2d over a (1, L) image
            weight = weight.unsqueeze(2)
            kernel, stride, padding, dilation = [1, *kernel], [1, *stride], [0, *padding], [1, *dilation]
        out_channels = weight.shape[0]
        geometry = {
            "in_channels": weight.shape[1] * groups,
            "out_channels": out_channels,
            "kernel": [int(k) for k in kernel],
            "stride": [int(v) for v in stride],
            "padding": [int(v) for v in padding],
            "dilation": [int(v) for v in dilation],
            "groups": groups,
        }
        if dims == 1:
            geometry["conv1d"] = True
        w = grouped_conv_matrix(weight, groups)
        b = bias.float().clone() if bias is not None else torch.zeros(out_channels)
        return MappedLayer(
            name=self.param_name(node.args[1], node),
            kind="conv2d",
            weight=w,
            scale=torch.ones(out_channels),
            bias=b,
            tiling=tile(w.shape[1], w.shape[0], self.spec, groups),
            geometry=geometry,
        )

    def lower_rnn(self, node: torch.fx.Node, mode: str) -> None:
        """An ``aten.lstm``/``aten.gru`` node -> one analog layer and op per layer and direction (a bidirectional
        layer's two outputs concatenated), each running its sequence step by step through the GDPUs."""
        x, hx, params, has_biases, num_layers, _dropout, _train, bidirectional, batch_first = node.args[:9]
        for h in hx if isinstance(hx, list | tuple) else [hx]:
            zero = (
                bool((self.const(h) == 0).all())
                if self.is_const(h)
                else generic.op_family(generic.target_name(h.target)) in _ZERO_STATES
            )
            if not zero:
                raise UnsupportedLayerError(
                    f"{node.name!r}: the {mode.upper()} starts from a given state; on the chip it starts from zeros "
                    "(call it without an initial state, or carry the state outside the compiled model)"
                )
        values = [self.const(p).float() for p in params]
        per = 4 if has_biases else 2
        dirs = 2 if bidirectional else 1
        base = self.param_name(params[0], node)
        single = num_layers == 1 and dirs == 1
        prev, finals = self.src(x), []
        for k in range(num_layers):
            outs = []
            for d in range(dirs):
                w_ih, w_hh, *b = values[(k * dirs + d) * per : (k * dirs + d + 1) * per]
                suffix = "" if single else f".l{k}{'_reverse' if d else ''}"
                layer = _rnn_layer(mode, base + suffix, w_ih, w_hh, b, self.spec)
                self.layers[layer.name] = layer
                op_name = node.name if single else f"{node.name}_l{k}{'_reverse' if d else ''}"
                attrs = {"layer": layer.name, "reverse": bool(d), "batch_first": bool(batch_first)}
                self.ops.append(Op(op_name, mode, [prev], attrs))
                outs.append(op_name)
            if dirs == 2:
                self.ops.append(Op(f"{node.name}_l{k}_cat", "cat", outs, {"dim": -1}))
                prev = f"{node.name}_l{k}_cat"
            else:
                prev = outs[0]
            finals.extend(outs)
        self.rnn[node.name] = {"out": prev, "finals": finals, "mode": mode, "batch_first": bool(batch_first)}

    def rnn_output(self, node: torch.fx.Node, info: dict[str, Any], index: int) -> None:
        if index == 0:
            self.alias[node.name] = info["out"]
        elif index == 1:
            reverse = [f.endswith("_reverse") for f in info["finals"]]
            attrs = {"batch_first": info["batch_first"], "reverse": reverse}
            self.ops.append(Op(node.name, "rnn_state", list(info["finals"]), attrs))
        else:
            raise UnsupportedLayerError(
                f"{node.name!r}: the LSTM's final cell state c_n is kept inside the chip's GDPUs; a network on the "
                "chip can read the output sequence and the final hidden state h_n"
            )


def _string_padding(padding: str, kernel: list[int], dilation: list[int], stride: list[int], where: str) -> list[int]:
    if padding == "valid":
        return [0] * len(kernel)
    pads = []
    for k, d in zip(kernel, dilation * (len(kernel) if len(dilation) == 1 else 1), strict=True):
        total = d * (k - 1)
        if total % 2:
            raise UnsupportedLayerError(f"{where!r}: padding='same' with the even kernel {kernel} is asymmetric")
        pads.append(total // 2)
    return pads


def _linear_layer(name: str, weight: torch.Tensor, bias: Any, spec: ChipSpec) -> MappedLayer:
    out_features, in_features = weight.shape
    b = bias.float().clone() if bias is not None else torch.zeros(out_features)
    return MappedLayer(
        name=name,
        kind="linear",
        weight=weight.clone().contiguous(),
        scale=torch.ones(out_features),
        bias=b,
        tiling=tile(in_features, out_features, spec, 1),
        geometry={"in_features": int(in_features), "out_features": int(out_features)},
    )


def _rnn_layer(mode: str, name: str, w_ih: torch.Tensor, w_hh: torch.Tensor, b: list, spec: ChipSpec) -> MappedLayer:
    """One LSTM or GRU layer (one direction) as a ``(I + H) x 4H`` matrix with its gate columns grouped per GDPU.

    LSTM: columns i, f, g, o over [W_ih | W_hh], one bias per gate row (b_ih + b_hh). GRU: columns r, z over
    [W_ih | W_hh] with b_ih + b_hh, then n_x = [W_in | 0] with b_in and n_h = [0 | W_hn] with b_hn, since the reset
    gate multiplies only the hidden part of the new gate (:func:`aimc.digital.gdpu.gru_cell`).
    """
    hidden, inputs = w_hh.shape[1], w_ih.shape[1]
    b_ih, b_hh = (b[0], b[1]) if b else (torch.zeros(w_ih.shape[0]), torch.zeros(w_hh.shape[0]))
    if mode == "lstm":
        w_cat = torch.cat([w_ih, w_hh], dim=1)
        bias = b_ih + b_hh
    else:
        h = hidden
        zeros_x, zeros_h = torch.zeros(h, inputs), torch.zeros(h, hidden)
        w_cat = torch.cat(
            [
                torch.cat([w_ih[: 2 * h], w_hh[: 2 * h]], dim=1),
                torch.cat([w_ih[2 * h :], zeros_h], dim=1),
                torch.cat([zeros_x, w_hh[2 * h :]], dim=1),
            ]
        )
        bias = torch.cat([b_ih[: 2 * h] + b_hh[: 2 * h], b_ih[2 * h :], b_hh[2 * h :]])
    tiling = Tiling.split(inputs + hidden, 4 * hidden, spec)
    order = gate_order(hidden, tiling.col_blocks)
    return MappedLayer(
        name=name,
        kind=mode,
        weight=w_cat[order].clone(),
        scale=torch.ones(4 * hidden),
        bias=bias[order].clone(),
        tiling=tiling,
        geometry={"input_size": int(inputs), "hidden_size": int(hidden), "gate_order": order.tolist()},
    )


def lower(
    gm: torch.fx.GraphModule,
    spec: ChipSpec,
    offchip: tuple[str, ...] = (),
    digital_layers: frozenset[str] = frozenset(),
) -> Captured:
    """Turn an exported graph (:func:`export_graph`) into analog layers and ops (no fusion yet). ``offchip``: module
    paths whose Linear layers run in software on the host (e.g. the captioning model's image projection).
    ``digital_layers``: weight layers (by layer name, and :data:`DEPTHWISE` for every depthwise convolution) that run
    as digital ops in FP16 on the digital unit instead of on the cores; a name that is no Conv/Linear layer of the
    model is refused."""
    state = _Lowering(gm, spec, tuple(offchip), digital_layers)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            state.ops.append(Op(node.name, "input", []))
        elif node.op == "output":
            outs: list[torch.fx.Node] = []
            torch.fx.node.map_arg(node.args[0], outs.append)
            if not outs:
                raise UnsupportedLayerError("the model returns no tensor computed from its input")
            state.ops.append(Op("output", "output", [state.src(v) for v in outs]))
        elif node.op == "call_function" and node.name in state.live and node.users:
            state.lower_node(node)
        elif node.op == "call_module" and not str(node.target).startswith("_guards"):
            raise UnsupportedLayerError(f"graph node {node.name!r} calls a module, which torch.export should inline")
    unknown = sorted(digital_layers - {DEPTHWISE} - set(state.candidates))
    if unknown:
        raise ValidationError(
            f"digital_layers names {', '.join(map(repr, unknown))}, but the model has no Conv/Linear layer of that "
            f"name; its layers that can run on the digital unit: {', '.join(map(repr, state.candidates)) or 'none'}"
            f" (or {DEPTHWISE!r} for every depthwise convolution)"
        )
    # drop what nothing reads (e.g. the sizes of an RNN's zero initial state, which the chip does not need)
    needed: set[str] = set()
    kept: list[Op] = []
    for op in reversed(state.ops):
        if op.kind in ("input", "output") or op.name in needed:
            kept.append(op)
            needed.update(op.inputs)
    kept.reverse()
    used = {op.attrs["layer"] for op in kept if "layer" in op.attrs}
    layers = {name: layer for name, layer in state.layers.items() if name in used}
    tensors = {k: v for k, v in state.extra.items() if k.split(".")[0] in {op.name for op in kept}}
    return Captured(layers=layers, ops=kept, extra_tensors=tensors)


def grouped_conv_matrix(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The ``(out_channels, in_channels·kh·kw)`` layer matrix of a convolution weight ``(out_channels,
    in_channels / groups, kh, kw)``: the weight of the dense convolution that computes the same thing, in im2col
    order (in_channels, kh, kw), as for groups=1.

    Output channel o belongs to group g = o // (out_channels / groups) and reads input channels
    g·(in_channels / groups) ... (g + 1)·(in_channels / groups) - 1; its weights for all other input channels are
    zero. The matrix is block-diagonal: ``groups`` blocks of (out_channels / groups) x (in_channels / groups)·kh·kw.
    With groups=1 it is ``weight.reshape(out_channels, -1)``.
    """
    out_channels, per_group, kh, kw = weight.shape
    if groups == 1:
        return weight.reshape(out_channels, -1).clone()
    out_per_group = out_channels // groups
    dense = weight.new_zeros(groups, out_per_group, groups, per_group * kh * kw)
    diagonal = torch.arange(groups)
    dense[diagonal, :, diagonal] = weight.reshape(groups, out_per_group, -1)
    return dense.reshape(out_channels, groups * per_group * kh * kw)


def gate_order(hidden: int, col_blocks: int) -> torch.Tensor:
    """Permutation of the 4H gate rows (PyTorch order i, f, g, o) so that each column block holds the i, f, g, o
    pre-activations of the same hidden units: a GDPU takes 4 x 64 gate inputs of 64 units from the core above it
    (docs/physics.md §9.3), so each block's outputs must be complete gate groups.
    """
    per_block = -(-hidden // col_blocks)
    order = []
    for j in range(col_blocks):
        units = range(j * per_block, min((j + 1) * per_block, hidden))
        for gate in range(4):
            order.extend(gate * hidden + u for u in units)
    return torch.tensor(order, dtype=torch.long)


def fuse(captured: Captured) -> None:
    """Fold into each analog layer the LDPU work that follows it, in the LDPU's order; in place.

    Pipeline per layer (docs/physics.md §9.2): affine (bias + batch norm) -> ReLU -> add one input -> ReLU -> INT8. An
    op is folded when it is the only consumer of the layer's current output. With more than one row block the add
    slot of the last core carries the partial sums; a residual can then still be folded if it comes before any
    ReLU (it is added at the head of the partial-sum chain, which is exact since everything before the ReLU is
    linear), otherwise it stays a separate LDPU pass. A batch norm that follows an activation stays its own
    per-channel affine pass (see the module docstring).
    """
    ops = captured.ops
    users: dict[str, int] = {}
    for op in ops:
        for i in op.inputs:
            users[i] = users.get(i, 0) + 1
    rename: dict[str, str] = {}
    removed: set[str] = set()
    for op in list(ops):
        if op.kind != "analog" or op.name in removed:
            continue
        layer = captured.layers[op.attrs["layer"]]
        stage = 0  # 0 mvm, 1 affine, 2 relu, 3 add, 4 relu2
        current = op.name
        while users.get(current, 0) == 1:
            nxt = next(o for o in ops if current in o.inputs and o.name not in removed)
            if nxt.kind == "affine" and stage == 0:
                a = captured.extra_tensors.pop(f"{nxt.name}.scale")
                b = captured.extra_tensors.pop(f"{nxt.name}.shift")
                layer.scale, layer.bias = layer.scale * a, layer.bias * a + b
                stage = 1
            elif nxt.kind == "relu" and stage < 2:
                layer.relu, stage = True, 2
            elif nxt.kind == "add" and stage < 3 and nxt.inputs.count(current) == 1:
                other = nxt.inputs[1] if nxt.inputs[0] == current else nxt.inputs[0]
                chain = layer.chained
                if chain and layer.relu:
                    break
                if _defined_after(ops, other, op.name):
                    break  # the addend must exist before the layer runs
                layer.add, layer.add_at_chain_head, stage = other, chain, 3
            elif nxt.kind == "relu" and stage == 3:
                layer.relu2, stage = True, 4
            else:
                break
            removed.add(nxt.name)
            rename[nxt.name] = op.name
            current = nxt.name
        op.attrs["value_node"] = current  # the fx node whose value this fused op produces
    captured.ops = [o for o in ops if o.name not in removed]
    for o in captured.ops:
        o.inputs = [_resolve(rename, i) for i in o.inputs]
    for layer in captured.layers.values():
        if layer.add is not None:
            layer.add = _resolve(rename, layer.add)


def scale_columns(captured: Captured) -> None:
    """Give every output column of each Conv2d/Linear layer the layer's largest |weight|, in place: column j is
    multiplied by c_j = max|W| / max_i |W_ji| and its LDPU affine scale divided by c_j, which is exact (the LDPU
    applies the scale per output channel after the MVM, docs/physics.md §9.2). Each weight then uses the conductance
    range of its column's largest weight rather than of the core's: a channel of small weights (common after batch
    norm, and in a depthwise convolution, whose channels share a core block-diagonally) otherwise gets a few
    conductance levels and ADC counts, and its errors are multiplied by its large scale. aihwkit offers the same
    mapping (``MappingParameter.weight_scaling_columnwise``). LSTM layers are left as they are (their gate
    pre-activations go to the GDPU without a per-channel scale)."""
    for layer in captured.layers.values():
        if layer.kind not in ("conv2d", "linear"):
            continue
        col_max = layer.weight.abs().amax(dim=1)
        top = col_max.max()
        if float(top) == 0.0:
            continue
        c = torch.where(col_max > 0, top / col_max.clamp_min(1e-30), torch.ones_like(col_max))
        layer.weight = layer.weight * c[:, None]
        layer.scale = layer.scale / c


def _resolve(rename: dict[str, str], name: str) -> str:
    while name in rename:
        name = rename[name]
    return name


def _defined_after(ops: list[Op], value: str, op_name: str) -> bool:
    order = {o.name: i for i, o in enumerate(ops)}
    return order.get(value, -1) > order[op_name]


def check_fits(layers: dict[str, MappedLayer], spec: ChipSpec, chips: int) -> None:
    """Raise a clear error if the layers need more cores than ``chips`` chips have."""
    need = sum(layer.tiling.cores for layer in layers.values())
    have = spec.cores * chips
    if need > have:
        import math

        grouped = [layer.name for layer in layers.values() if layer.groups > 1]
        note = (
            f" (grouped convolutions {', '.join(map(repr, grouped))} take the cells of their block-diagonal "
            "matrix's zeros too)"
            if grouped
            else ""
        )
        raise ValidationError(
            f"the network needs {need} cores ({sum(layer.weight_count for layer in layers.values()):,} weights) "
            f"but {chips} chip(s) have {have}; map it across at least {math.ceil(need / spec.cores)} chips with "
            f"chips={math.ceil(need / spec.cores)}{note}"
        )
