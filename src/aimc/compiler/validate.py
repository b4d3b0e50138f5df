"""Structural checks of a :class:`~aimc.compiler.Mapping` that did not come from :func:`aimc.compile`.

A mapping read from a file (``aimc.load``) is plain data that anyone can edit. :func:`check_mapping` checks that it
is one the simulator can run: every layer's tiling is the one its matrix gets on the chip, its tensors have the
shapes and dtypes that tiling implies, its cores exist and are used once, every op is known, reads only values
defined before it, and carries the attributes the run needs with the right types. Raises
:class:`~aimc.errors.ValidationError` naming the layer or op and what is wrong.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from aimc.compiler.mapping import OP_KINDS, MappedLayer, Mapping
from aimc.compiler.tiling import tile
from aimc.errors import ValidationError
from aimc.spec import ChipSpec

#: Kinds of analog layer a mapping can hold.
LAYER_KINDS = ("conv2d", "linear", "lstm", "gru")


def _fail(where: str, what: str) -> ValidationError:
    return ValidationError(f"mapping {where}: {what}")


def _is_int(v: object, low: int | None = None) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and (low is None or v >= low)


def _pair(v: object, low: int) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_is_int(x, low) for x in v)


def _tensor(t: object, shape: tuple[int, ...], where: str, name: str) -> None:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise _fail(where, f"{name} must be a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if tuple(t.shape) != shape:
        raise _fail(where, f"{name} has shape {tuple(t.shape)}, expected {shape}")


def check_layer(layer: MappedLayer, spec: ChipSpec, total_cores: int) -> None:
    """Check one layer against its tiling and the chip (see the module docstring)."""
    where = f"layer {layer.name!r}"
    if layer.kind not in LAYER_KINDS:
        raise _fail(where, f"kind must be one of {LAYER_KINDS}, got {layer.kind!r}")
    t = layer.tiling
    groups = layer.geometry.get("groups", 1) if isinstance(layer.geometry, dict) else 1
    groups = groups if layer.kind == "conv2d" and _is_int(groups, 1) else 1
    if not (_is_int(t.inputs, 1) and _is_int(t.outputs, 1)) or t != tile(t.inputs, t.outputs, spec, groups):
        raise _fail(where, f"tiling {t.describe()} is not the chip's split of a {t.inputs}x{t.outputs} matrix")
    _tensor(layer.weight, (t.outputs, t.inputs), where, "weight")
    _tensor(layer.scale, (t.outputs,), where, "scale")
    _tensor(layer.bias, (t.outputs,), where, "bias")
    if layer.load is not None:
        _tensor(layer.load, (t.row_blocks, t.col_blocks), where, "load")
    cores = layer.cores
    if (
        not isinstance(cores, list)
        or len(cores) != t.row_blocks
        or not all(isinstance(row, list) and len(row) == t.col_blocks for row in cores)
        or not all(_is_int(c, 0) and c < total_cores for row in cores for c in row)
    ):
        raise _fail(where, f"cores must be a {t.row_blocks} x {t.col_blocks} grid of core ids < {total_cores}")
    for name in ("x_range", "psum_range", "out_range"):
        v = getattr(layer, name)
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or v <= 0:
            raise _fail(where, f"{name} must be a finite number > 0, got {v!r}")
    for name in ("relu", "relu2", "add_at_chain_head"):
        if not isinstance(getattr(layer, name), bool):
            raise _fail(where, f"{name} must be a bool")
    if layer.add is not None and not isinstance(layer.add, str):
        raise _fail(where, "add must name a value or be null")
    _check_geometry(layer, where)


def _check_geometry(layer: MappedLayer, where: str) -> None:
    g = layer.geometry
    if not isinstance(g, dict):
        raise _fail(where, "geometry must be an object")
    t = layer.tiling
    if layer.kind == "conv2d":
        ok = (
            _pair(g.get("kernel"), 1)
            and _pair(g.get("stride"), 1)
            and _pair(g.get("dilation"), 1)
            and _pair(g.get("padding"), 0)
            and _is_int(g.get("in_channels"), 1)
        )
        if not ok or g["in_channels"] * g["kernel"][0] * g["kernel"][1] != t.inputs:
            raise _fail(where, "conv geometry (kernel, stride, dilation, padding, in_channels) is malformed")
        groups = g.get("groups", 1)
        if not _is_int(groups, 1) or g["in_channels"] % groups or t.outputs % groups:
            raise _fail(where, "conv groups must be a positive integer that divides in_channels and out_channels")
    elif layer.kind in ("lstm", "gru"):
        h = g.get("hidden_size")
        order = g.get("gate_order")
        if not _is_int(h, 1) or 4 * h != t.outputs or not _is_int(g.get("input_size"), 1):
            raise _fail(where, "LSTM geometry (input_size, hidden_size) does not match the matrix")
        if g["input_size"] + h != t.inputs:
            raise _fail(where, "LSTM matrix rows must be input_size + hidden_size")
        if not isinstance(order, list) or sorted(order) != list(range(4 * h)):
            raise _fail(where, f"gate_order must be a permutation of 0..{4 * h - 1}")
        scale = g.get("input_scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, int | float) or not 1.0 <= scale < float("inf"):
            raise _fail(where, "LSTM input_scale must be a finite number >= 1")


#: Attributes every op kind needs, with their check.
def _op_attrs_ok(kind: str, a: dict[str, Any]) -> bool:
    if kind in ("maxpool2d", "avgpool2d"):
        if kind == "avgpool2d" and "adaptive" in a:
            return _pair(a["adaptive"], 1)
        return _pair(a.get("kernel"), 1) and _pair(a.get("stride"), 1) and _pair(a.get("padding"), 0)
    if kind == "flatten":
        return _is_int(a.get("start_dim"))
    if kind in ("cat", "unsqueeze"):
        return _is_int(a.get("dim"))
    if kind in ("softmax", "log_softmax"):
        return a.get("dim") is None or _is_int(a.get("dim"))
    if kind == "digital":
        return (
            isinstance(a.get("target"), str)
            and isinstance(a.get("args"), list)
            and isinstance(a.get("kwargs", {}), dict)
            and a.get("unit") in DIGITAL_UNITS
        )
    if kind in ("lstm", "gru"):
        return isinstance(a.get("reverse", False), bool) and isinstance(a.get("batch_first", True), bool)
    if kind == "rnn_state":
        return isinstance(a.get("reverse"), list) and isinstance(a.get("batch_first"), bool)
    return True


#: Where a digital op may run (:func:`aimc.digital.generic.unit_of`).
DIGITAL_UNITS = ("layout", "ldpu", "gdpu", "digital")


def _tensor_keys(value: Any) -> list[str]:
    """The constant tensors a digital op's stored arguments name."""
    if isinstance(value, list):
        return [k for v in value for k in _tensor_keys(v)]
    if isinstance(value, dict):
        if "tensor" in value:
            return [value["tensor"]]
        return [k for v in value.values() for k in _tensor_keys(v)]
    return []


#: Number of inputs each op kind takes (None: one or more).
_ARITY = {"input": 0, "add": 2, "cat": None, "output": None, "rnn_state": None, "digital": None}


def check_ops(mapping: Mapping) -> None:
    """Check the op list: known kinds, defined inputs, needed attributes and tensors, one output at the end."""
    ops = mapping.ops
    if not isinstance(ops, list) or not ops:
        raise _fail("ops", "must be a non-empty list")
    defined: set[str] = set()
    analog_layers: list[str] = []
    for i, op in enumerate(ops):
        where = f"op {i} ({getattr(op, 'name', '?')!r})"
        if not isinstance(op.name, str) or not isinstance(op.kind, str) or not isinstance(op.attrs, dict):
            raise _fail(where, "name and kind must be strings, attrs an object")
        if op.kind not in OP_KINDS:
            raise _fail(where, f"unknown op kind {op.kind!r}")
        if op.name in defined:
            raise _fail(where, "defines a value twice")
        if not isinstance(op.inputs, list) or not all(isinstance(n, str) and n in defined for n in op.inputs):
            raise _fail(where, f"reads values {op.inputs!r} that no earlier op defines")
        arity = _ARITY.get(op.kind, 1)
        if (arity is None and not op.inputs) or (arity is not None and len(op.inputs) != arity):
            raise _fail(where, f"a {op.kind!r} op takes {'one or more' if arity is None else arity} input(s)")
        if not _op_attrs_ok(op.kind, op.attrs):
            raise _fail(where, f"attributes {op.attrs!r} are malformed for a {op.kind!r} op")
        if op.kind in ("analog", "lstm", "gru"):
            ref = op.attrs.get("layer")
            layer = mapping.layers.get(ref) if isinstance(ref, str) else None
            recurrent = layer is not None and layer.kind in ("lstm", "gru")
            if layer is None or (layer.kind if recurrent else "analog") != op.kind:
                raise _fail(where, f"names no {op.kind} layer of the mapping: {op.attrs.get('layer')!r}")
            if layer.add is not None and layer.add not in defined:
                raise _fail(where, f"layer {layer.name!r} adds value {layer.add!r}, which is not defined before it")
            analog_layers.append(layer.name)
        needed = {
            "embedding": (".weight",),
            "host_linear": (".weight",),
            "affine": (".scale", ".shift"),
        }.get(op.kind, ())
        keys = [op.name + suffix for suffix in needed]
        if op.kind == "digital":
            keys += _tensor_keys([op.attrs["args"], op.attrs.get("kwargs", {})])
        for key in keys:
            if not isinstance(mapping.extra_tensors.get(key), torch.Tensor):
                raise _fail(where, f"needs the tensor {key!r}")
        if op.kind == "output" and i != len(ops) - 1:
            raise _fail(where, "the output op must be the last")
        defined.add(op.name)
    if ops[-1].kind != "output" or not any(op.kind == "input" for op in ops):
        raise _fail("ops", "must start from input ops and end with an output op")
    if sorted(analog_layers) != sorted(mapping.layers):
        raise _fail("ops", "every analog layer must be run by exactly one op")


def check_mapping(mapping: Mapping) -> None:
    """Check a mapping's layers, cores and ops (see the module docstring); ValidationError if anything is off."""
    if not isinstance(mapping.spec, ChipSpec):
        raise _fail("spec", "must be a ChipSpec")
    if not _is_int(mapping.chips, 1) or mapping.chips > 1024:
        raise _fail("chips", f"must be an int in [1, 1024], got {mapping.chips!r}")
    total = mapping.spec.cores * mapping.chips
    seen: set[int] = set()
    for name, layer in mapping.layers.items():
        if name != layer.name:
            raise _fail(f"layer {name!r}", "is stored under another name")
        check_layer(layer, mapping.spec, total)
        cores = set(layer.core_list())
        if cores & seen or len(cores) != layer.tiling.cores:
            raise _fail(f"layer {name!r}", "shares cores with another block")
        seen |= cores
    for name, t in mapping.extra_tensors.items():
        if not isinstance(t, torch.Tensor):
            raise _fail(f"tensor {name!r}", "must be a tensor")
    check_ops(mapping)
    sig = mapping.input_signature
    n_inputs = sum(op.kind == "input" for op in mapping.ops)
    if sig and (
        len(sig) != n_inputs
        or not all(
            isinstance(s, dict)
            and _is_int(s.get("ndim"), 1)
            and s.get("dtype") in ("float", "int")
            and (s.get("features") is None or _is_int(s.get("features"), 1))
            for s in sig
        )
    ):
        raise _fail("input_signature", f"must describe the {n_inputs} input(s) (ndim, dtype, features)")
