"""Graph capture and lowering: a PyTorch module -> analog layers + a list of ops (docs/design.md "Whole networks").

The module is traced with ``torch.fx``. Each node becomes one op; Conv2d, Linear and LSTM become analog layers
(conv via im2col: K = in_channels·kh·kw rows, N = out_channels columns). A grouped or depthwise Conv2d (groups > 1)
gets the matrix of the equivalent dense convolution, which is block-diagonal: the column of an output channel holds
its weights in the rows of its group's input channels and zeros in all other rows (:func:`grouped_conv_matrix`); the
zeros take crossbar cells like any weight. A fusion pass then folds into each analog layer what its LDPU does after
the MVM, in the LDPU's order (docs/physics.md §9.2): per-channel affine (bias and a following batch norm), ReLU, one
added input (residual), a second ReLU, INT8 output. Batch norm that follows an activation runs as its own
per-channel affine pass: folded into the next layer's weights, the scale of a channel that is never active (a ReLU
that is always 0 has a running variance near 0, so a scale near 1/sqrt(eps) ≈ 316) would set that layer's largest
weight and leave the real weights a few conductance levels.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from aimc.compiler.mapping import MappedLayer, Op
from aimc.compiler.tiling import Tiling, tile
from aimc.errors import AimcError, ValidationError
from aimc.spec import ChipSpec


class UnsupportedLayerError(AimcError, TypeError):
    """A module or function of the network has no mapping on the chip."""


#: Modules aimc maps, and where they run (error messages list these).
SUPPORTED_MODULES: tuple[str, ...] = (
    "Conv2d (any groups: grouped/depthwise placed block-diagonally)",
    "Linear",
    "LSTM (1 layer, batch_first)",
    "BatchNorm1d",
    "BatchNorm2d",
    "ReLU",
    "MaxPool2d",
    "AvgPool2d",
    "AdaptiveAvgPool2d",
    "Flatten",
    "Dropout",
    "Identity",
    "Embedding",
    "Softmax",
    "LogSoftmax",
    "Sigmoid",
    "Sequential",
    "Linear/BatchNorm named in the model's offchip_modules (run on the host)",
)

_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity)
_RELU_FUNCS = (F.relu, torch.relu)
_ADD_FUNCS = (operator.add, torch.add, operator.iadd)
_FLATTEN_FUNCS = (torch.flatten,)


@dataclass
class Captured:
    """The lowered network before placement."""

    layers: dict[str, MappedLayer]
    ops: list[Op]
    extra_tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _unsupported(name: str, what: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(
        f"{name!r} ({what}) cannot be mapped onto the chip; supported modules: {', '.join(SUPPORTED_MODULES)}; "
        "functions: relu, add (residual), flatten, max/avg pooling, softmax"
    )


def _conv_padding(conv: nn.Conv2d) -> tuple[int, int]:
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return (0, 0)
        # 'same' (stride 1): symmetric only for odd effective kernels
        pads = []
        for k, d in zip(conv.kernel_size, conv.dilation, strict=True):
            total = d * (k - 1)
            if total % 2:
                raise UnsupportedLayerError(f"Conv2d padding='same' with even kernel {conv.kernel_size} is asymmetric")
            pads.append(total // 2)
        return (pads[0], pads[1])
    return (int(conv.padding[0]), int(conv.padding[1]))


def _analog_from_module(name: str, mod: nn.Module, spec: ChipSpec) -> MappedLayer:
    """Lower one Conv2d / Linear / LSTM module to a layer matrix."""
    if isinstance(mod, nn.Conv2d):
        if mod.padding_mode != "zeros":
            raise _unsupported(name, f"Conv2d with padding_mode={mod.padding_mode!r}")
        w = grouped_conv_matrix(mod.weight.detach().float(), mod.groups)
        bias = mod.bias.detach().float().clone() if mod.bias is not None else torch.zeros(mod.out_channels)
        geometry = {
            "in_channels": mod.in_channels,
            "out_channels": mod.out_channels,
            "kernel": list(mod.kernel_size),
            "stride": list(mod.stride),
            "padding": list(_conv_padding(mod)),
            "dilation": list(mod.dilation),
            "groups": mod.groups,
        }
        kind = "conv2d"
    elif isinstance(mod, nn.Linear):
        w = mod.weight.detach().float().clone()
        bias = mod.bias.detach().float().clone() if mod.bias is not None else torch.zeros(mod.out_features)
        geometry = {"in_features": mod.in_features, "out_features": mod.out_features}
        kind = "linear"
    elif isinstance(mod, nn.LSTM):
        if mod.num_layers != 1 or mod.bidirectional or not mod.batch_first or mod.proj_size:
            raise _unsupported(name, "LSTM other than 1 layer, unidirectional, batch_first, no projection")
        h = mod.hidden_size
        w_cat = torch.cat([mod.weight_ih_l0.detach(), mod.weight_hh_l0.detach()], dim=1).float()  # (4H, I+H)
        b = torch.zeros(4 * h)
        if mod.bias:
            b = (mod.bias_ih_l0.detach() + mod.bias_hh_l0.detach()).float()
        tiling = Tiling.split(w_cat.shape[1], 4 * h, spec)
        order = gate_order(h, tiling.col_blocks)
        w, bias = w_cat[order].clone(), b[order].clone()
        geometry = {"input_size": mod.input_size, "hidden_size": h, "gate_order": order.tolist()}
        kind = "lstm"
    else:  # pragma: no cover - callers check the type
        raise _unsupported(name, type(mod).__name__)
    tiling = tile(w.shape[1], w.shape[0], spec, int(geometry.get("groups", 1)))
    return MappedLayer(
        name=name, kind=kind, weight=w, scale=torch.ones(w.shape[0]), bias=bias, tiling=tiling, geometry=geometry
    )


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


def _bn_affine(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (scale, shift) of an eval-mode batch norm."""
    inv = 1.0 / torch.sqrt(bn.running_var.float() + bn.eps)
    scale = bn.weight.detach().float() * inv if bn.affine else inv
    shift = (bn.bias.detach().float() if bn.affine else 0.0) - bn.running_mean.float() * scale
    return scale, shift


def trace(model: nn.Module) -> torch.fx.GraphModule:
    """``torch.fx.symbolic_trace`` with a clear error for untraceable models."""
    import inspect

    # Optional arguments left at None (e.g. an LSTM's initial state) are traced as constants.
    params = list(inspect.signature(model.forward).parameters.values())[1:]
    concrete = {p.name: None for p in params if p.default is None}
    try:
        return torch.fx.symbolic_trace(model, concrete_args=concrete or None)
    except Exception as err:  # fx raises many kinds of errors for data-dependent control flow
        raise UnsupportedLayerError(
            f"the model could not be traced with torch.fx ({type(err).__name__}: {err}); aimc maps nn.Sequential "
            "and torch.fx-traceable modules"
        ) from None


def lower(gm: torch.fx.GraphModule, spec: ChipSpec) -> Captured:
    """Turn a traced module into analog layers and ops (no fusion yet)."""
    modules = dict(gm.named_modules())
    layers: dict[str, MappedLayer] = {}
    ops: list[Op] = []
    extra: dict[str, torch.Tensor] = {}
    alias: dict[str, str] = {}  # fx node name -> op name producing its value

    def src(arg: Any) -> str:
        if not isinstance(arg, torch.fx.Node):
            raise UnsupportedLayerError(f"constant operand {arg!r} in the graph is not supported")
        return alias.get(arg.name, arg.name)

    offchip = set(getattr(gm, "offchip_modules", ()) or ())
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if any(getattr(u.target, "__name__", "") != "_assert_is_none" for u in node.users):
                ops.append(Op(node.name, "input", []))
        elif node.op == "output":
            out = node.args[0]
            if not isinstance(out, torch.fx.Node):
                raise UnsupportedLayerError("the model must return a single tensor")
            ops.append(Op("output", "output", [src(out)]))
        elif node.op == "call_module":
            mod = modules[node.target]
            name = str(node.target)
            if name in offchip and isinstance(mod, nn.Linear):
                # a layer the network runs in software, off-chip (e.g. the captioning model's image projection)
                extra[f"{node.name}.weight"] = mod.weight.detach().float().clone()
                if mod.bias is not None:
                    extra[f"{node.name}.bias"] = mod.bias.detach().float().clone()
                ops.append(Op(node.name, "host_linear", [src(node.args[0])], {"module": name}))
            elif isinstance(mod, nn.Conv2d | nn.Linear | nn.LSTM):
                layer = _analog_from_module(name, mod, spec)
                layers[name] = layer
                kind = "lstm" if isinstance(mod, nn.LSTM) else "analog"
                extra_args = [a for a in node.args[1:] if a is not None] + [
                    v for v in node.kwargs.values() if v is not None
                ]
                if not node.args or extra_args:
                    raise UnsupportedLayerError(
                        f"{name!r}: only a single input argument is supported (an LSTM starts from a zero state)"
                    )
                ops.append(Op(node.name, kind, [src(node.args[0])], {"layer": name}))
            elif isinstance(mod, _IDENTITY_MODULES):
                alias[node.name] = src(node.args[0])
            elif isinstance(mod, nn.BatchNorm1d | nn.BatchNorm2d):
                scale, shift = _bn_affine(mod)
                extra[f"{node.name}.scale"], extra[f"{node.name}.shift"] = scale, shift
                ops.append(Op(node.name, "affine", [src(node.args[0])], {"bn": name}))
            elif isinstance(mod, nn.ReLU):
                ops.append(Op(node.name, "relu", [src(node.args[0])]))
            elif isinstance(mod, nn.MaxPool2d | nn.AvgPool2d):
                kind = "maxpool2d" if isinstance(mod, nn.MaxPool2d) else "avgpool2d"
                attrs = {
                    "kernel": _pair(mod.kernel_size),
                    "stride": _pair(mod.stride or mod.kernel_size),
                    "padding": _pair(mod.padding),
                }
                if kind == "maxpool2d" and (_pair(mod.dilation) != [1, 1] or mod.ceil_mode):
                    raise _unsupported(name, "MaxPool2d with dilation or ceil_mode")
                ops.append(Op(node.name, kind, [src(node.args[0])], attrs))
            elif isinstance(mod, nn.AdaptiveAvgPool2d):
                ops.append(Op(node.name, "avgpool2d", [src(node.args[0])], {"adaptive": _pair(mod.output_size)}))
            elif isinstance(mod, nn.Flatten):
                ops.append(Op(node.name, "flatten", [src(node.args[0])], {"start_dim": mod.start_dim}))
            elif isinstance(mod, nn.Embedding):
                extra[f"{node.name}.weight"] = mod.weight.detach().float().clone()
                ops.append(Op(node.name, "embedding", [src(node.args[0])], {"module": name}))
            elif isinstance(mod, nn.Softmax | nn.LogSoftmax | nn.Sigmoid):
                kind = {nn.Softmax: "softmax", nn.LogSoftmax: "log_softmax", nn.Sigmoid: "sigmoid"}[type(mod)]
                ops.append(Op(node.name, kind, [src(node.args[0])], {"dim": getattr(mod, "dim", -1)}))
            else:
                raise _unsupported(name, type(mod).__name__)
        elif node.op == "call_function":
            _lower_function(node, ops, alias, src)
        elif node.op == "call_method":
            _lower_method(node, ops, alias, src)
        else:
            raise UnsupportedLayerError(f"graph node {node.name!r} of kind {node.op!r} is not supported")
    return Captured(layers=layers, ops=ops, extra_tensors=extra)


def _pair(v: Any) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(v[0]), int(v[1])]


def _lower_function(node: torch.fx.Node, ops: list[Op], alias: dict[str, str], src: Any) -> None:
    fn = node.target
    if fn in _RELU_FUNCS:
        ops.append(Op(node.name, "relu", [src(node.args[0])]))
    elif fn in _ADD_FUNCS:
        if len(node.args) != 2 or node.kwargs:
            raise UnsupportedLayerError(f"add node {node.name!r}: only two tensor operands are supported")
        ops.append(Op(node.name, "add", [src(node.args[0]), src(node.args[1])]))
    elif fn is torch.cat:
        tensors = node.args[0]
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        ops.append(Op(node.name, "cat", [src(a) for a in tensors], {"dim": int(dim)}))
    elif fn in _FLATTEN_FUNCS:
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        ops.append(Op(node.name, "flatten", [src(node.args[0])], {"start_dim": int(start)}))
    elif fn is F.max_pool2d:
        k = _pair(node.args[1] if len(node.args) > 1 else node.kwargs["kernel_size"])
        stride = node.args[2] if len(node.args) > 2 else node.kwargs.get("stride") or k
        ops.append(
            Op(node.name, "maxpool2d", [src(node.args[0])], {"kernel": k, "stride": _pair(stride), "padding": [0, 0]})
        )
    elif fn is operator.getitem and isinstance(node.args[0], torch.fx.Node) and node.args[1] == 0:
        alias[node.name] = src(node.args[0])  # LSTM output sequence
    elif (fn is operator.getitem and not node.users) or getattr(fn, "__name__", "") == "_assert_is_none":
        pass  # an unused part of a result (e.g. an LSTM's final state); fx's check of a None constant argument
    else:
        raise UnsupportedLayerError(
            f"function {getattr(fn, '__name__', fn)!r} (node {node.name!r}) cannot be mapped onto the chip; supported "
            f"modules: {', '.join(SUPPORTED_MODULES)}; functions: relu, add (residual), flatten, max_pool2d"
        )


def _lower_method(node: torch.fx.Node, ops: list[Op], alias: dict[str, str], src: Any) -> None:
    if node.target == "relu":
        ops.append(Op(node.name, "relu", [src(node.args[0])]))
    elif node.target in ("flatten",):
        start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
        ops.append(Op(node.name, "flatten", [src(node.args[0])], {"start_dim": int(start)}))
    elif node.target in ("view", "reshape") and len(node.args) == 3 and node.args[2] == -1:
        ops.append(Op(node.name, "flatten", [src(node.args[0])], {"start_dim": 1}))
    elif node.target == "unsqueeze":
        dim = node.args[1] if len(node.args) > 1 else node.kwargs["dim"]
        ops.append(Op(node.name, "unsqueeze", [src(node.args[0])], {"dim": int(dim)}))
    elif node.target == "size":
        alias[node.name] = src(node.args[0])  # only feeds view(x.size(0), -1)
    else:
        raise UnsupportedLayerError(
            f"tensor method {node.target!r} (node {node.name!r}) cannot be mapped onto the chip"
        )


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
