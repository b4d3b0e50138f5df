"""Digital operations of any kind: an ATen operation of the captured graph that is not an analog layer, stored by name
with its arguments and run as PyTorch runs it, at the precision of the unit that does it (docs/design.md "Digital
operations").

An op is stored as plain JSON (no pickle): ``target`` (``"aten.gelu.default"``, or a Python ``operator`` function
on sizes), ``args`` and ``kwargs`` in which ``{"value": i}`` is the op's i-th input, ``{"tensor": key}`` a constant
tensor of the mapping, and ``{"dtype": ...}``, ``{"device": null}``, ``{"float": "inf"}``... encode what JSON lacks.
Only ATen operations and the listed ``operator`` functions are resolved, so a mapping file cannot name arbitrary code.

Where it runs (:func:`unit_of`):

- ``"layout"``: views, reshapes, concatenation, splitting, indexing, dtype changes and tensor creation: data movement,
  exact.
- ``"ldpu"``: element-wise additions, subtractions, multiplications by a scalar or tensor, ReLU-like clamps: what the
  LDPU's FP16 affine/ReLU/add pipeline does (docs/physics.md §9.2).
- ``"gdpu"``: element-wise functions the GDPU's tanh table and FP16 multiply-adds give (tanh, sigmoid, and the
  functions built from them or from a clamp: GELU, SiLU, Hardswish...; docs/physics.md §9.3).
- ``"digital"``: everything else (products of two activations, softmax, normalisation, reductions, exp, division...):
  a digital unit beside the cores.

Precision: with the chip's conversions on (``quantize=True``) every floating-point result of a non-layout op is
rounded to FP16 (:data:`DIGITAL_DTYPE`), as the chip's digital units compute in FP16; the op itself runs in float32
(FP16 storage, FP32 arithmetic inside one op). With ``quantize=False`` it runs in float32.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from typing import Any

import torch

from aimc.digital.fp16round import round_fp16_
from aimc.errors import ValidationError

#: The precision of the digital units (the chip's LDPUs and GDPUs compute in FP16, docs/physics.md §9); a parameter
#: of :func:`run`.
DIGITAL_DTYPE = torch.float16

#: ``operator`` functions a graph may use on sizes (torch.export writes ``batch * 4`` as ``operator.mul``).
_OPERATORS = frozenset(
    [
        "getitem",
        "add",
        "sub",
        "mul",
        "truediv",
        "floordiv",
        "mod",
        "neg",
        "pos",
        "pow",
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "and_",
        "or_",
        "not_",
        "abs",
    ]
)
_MATH = frozenset(["ceil", "floor", "sqrt", "trunc"])

#: Layout ops that copy their values (the others are views and move nothing).
COPY_OPS = frozenset(
    [
        "cat",
        "stack",
        "contiguous",
        "clone",
        "_to_copy",
        "to",
        "repeat",
        "tile",
        "index_select",
        "gather",
        "flip",
        "roll",
        "pad",
        "constant_pad_nd",
        "embedding",
        "index",
        "copy",
    ]
)
#: ATen operations that only move or create data (no arithmetic).
LAYOUT_OPS = COPY_OPS | frozenset(
    [
        "view",
        "reshape",
        "_unsafe_view",
        "transpose",
        "permute",
        "t",
        "expand",
        "expand_as",
        "unsqueeze",
        "squeeze",
        "flatten",
        "unflatten",
        "select",
        "slice",
        "split",
        "split_with_sizes",
        "chunk",
        "unbind",
        "alias",
        "detach",
        "type_as",
        "narrow",
        "zeros",
        "zeros_like",
        "ones",
        "ones_like",
        "full",
        "full_like",
        "new_zeros",
        "new_ones",
        "new_full",
        "empty",
        "empty_like",
        "arange",
        "scalar_tensor",
        "lift_fresh_copy",
        "sym_size",
        "sym_numel",
        "sym_stride",
        "movedim",
        "swapaxes",
        "masked_select",
        "where_self",
        "diagonal",
        "triu",
        "tril",
        "lift_fresh",
        "_assert_tensor_metadata",
        "dropout",
        "feature_dropout",
    ]
)
#: Element-wise ATen operations of the LDPU pipeline (affine, ReLU, add).
LDPU_OPS = frozenset(
    [
        "add",
        "sub",
        "rsub",
        "mul",
        "neg",
        "relu",
        "relu_",
        "clamp",
        "clamp_min",
        "clamp_max",
        "hardtanh",
        "relu6",
        "threshold",
        "maximum",
        "minimum",
    ]
)
#: Element-wise functions the GDPU's table and multiply-adds give.
GDPU_OPS = frozenset(
    [
        "tanh",
        "sigmoid",
        "gelu",
        "silu",
        "hardswish",
        "hardsigmoid",
        "mish",
        "softplus",
        "elu",
        "leaky_relu",
        "logsigmoid",
        "glu",
    ]
)
#: Our estimate of FLOPs per output element of element-wise and row-wise operations (PyTorch's FLOP counter counts
#: only products of matrices and convolutions): 1 for arithmetic, this many for the named ones.
ELEMENT_FLOPS: dict[str, int] = {
    "softmax": 5,  # max, subtract, exp, sum, divide
    "_softmax": 5,
    "log_softmax": 5,
    "_log_softmax": 5,
    "layer_norm": 8,  # mean, variance (2), subtract, divide, sqrt share, affine (2)
    "native_layer_norm": 8,
    "group_norm": 8,
    "native_group_norm": 8,
    "rms_norm": 6,
    "gelu": 8,
    "silu": 4,
    "mish": 6,
    "hardswish": 3,
    "tanh": 2,  # table look-up and one FMA (docs/physics.md §9.3)
    "sigmoid": 3,
    "exp": 2,
    "erf": 4,
}


def target_name(target: Any) -> str:
    """The stored name of a graph node's function: ``"aten.gelu.default"``, ``"operator.mul"``."""
    if isinstance(target, torch._ops.OpOverload):
        ns = target.namespace
        packet, overload = target._schema.name.split("::")[1], target._overloadname
        return f"{ns}.{packet}.{overload}"
    module = getattr(target, "__module__", None)
    name = getattr(target, "__name__", str(target))
    if module in ("_operator", "operator") and name in _OPERATORS:
        return f"operator.{name}"
    if module == "math" and name in _MATH:
        return f"math.{name}"
    raise ValidationError(f"graph function {target!r} is not an ATen operation or a size arithmetic function")


def resolve(name: str) -> Callable[..., Any]:
    """The function a stored ``target`` names; only ATen operations and the listed size functions."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "aten":
        try:
            return getattr(getattr(torch.ops.aten, parts[1]), parts[2])
        except AttributeError:
            pass
    elif len(parts) == 2 and parts[0] == "operator" and parts[1] in _OPERATORS:
        return getattr(operator, parts[1])
    elif len(parts) == 2 and parts[0] == "math" and parts[1] in _MATH:
        return getattr(math, parts[1])
    raise ValidationError(
        f"the mapping names the operation {name!r}, which is not an ATen operation of this PyTorch nor an allowed "
        "size function"
    )


def op_family(name: str) -> str:
    """``"aten.gelu.default"`` -> ``"gelu"``; ``"operator.mul"`` -> ``"operator"``."""
    parts = name.split(".")
    return parts[1] if parts[0] == "aten" else parts[0]


def unit_of(name: str, n_tensor_inputs: int = 1) -> str:
    """Where a stored op runs: ``"layout"``, ``"ldpu"``, ``"gdpu"`` or ``"digital"`` (module docstring).

    ``n_tensor_inputs``: activation tensors the op reads; a product of two activations (``mul`` of two tensors is
    element-wise, but ``bmm``/``matmul`` are not listed) is digital work.
    """
    family = op_family(name)
    if family in ("operator", "math", "getitem") or family in LAYOUT_OPS:
        return "layout"
    if family in LDPU_OPS:
        return "ldpu"
    if family in GDPU_OPS:
        return "gdpu"
    return "digital"


def encode(value: Any, tensor_key: Callable[[torch.Tensor], str], input_index: Callable[[Any], int | None]) -> Any:
    """JSON form of one argument: graph values by input index, tensors by key (``tensor_key`` stores them)."""
    index = input_index(value)
    if index is not None:
        return {"value": index}
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_key(value)}
    if isinstance(value, list | tuple):
        return [encode(v, tensor_key, input_index) for v in value]
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if isinstance(value, torch.device):
        return {"device": None}  # the tensors' device at run time
    if isinstance(value, torch.layout):
        return {"layout": str(value).removeprefix("torch.")}
    if isinstance(value, torch.memory_format):
        return {"memory_format": str(value).removeprefix("torch.")}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": str(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise ValidationError(f"an operation argument of type {type(value).__name__} ({value!r}) cannot be stored")


def decode(value: Any, inputs: list[Any], tensors: dict[str, torch.Tensor], device: torch.device) -> Any:
    """Inverse of :func:`encode`, with the op's input values and the mapping's tensors on ``device``."""
    if isinstance(value, list):
        return [decode(v, inputs, tensors, device) for v in value]
    if not isinstance(value, dict):
        return value
    if "value" in value:
        return inputs[value["value"]]
    if "tensor" in value:
        return tensors[value["tensor"]].to(device)
    if "dtype" in value:
        return _torch_attr(value["dtype"], torch.dtype)
    if "device" in value:
        return device
    if "layout" in value:
        return _torch_attr(value["layout"], torch.layout)
    if "memory_format" in value:
        return _torch_attr(value["memory_format"], torch.memory_format)
    if "float" in value:
        return float(value["float"])
    raise ValidationError(f"malformed operation argument {value!r}")


def _torch_attr(name: str, kind: type) -> Any:
    attr = getattr(torch, str(name), None)
    if not isinstance(attr, kind):
        raise ValidationError(f"{name!r} is not a torch {kind.__name__}")
    return attr


def _round(value: Any, dtype: torch.dtype, kernel: str = "torch", inputs: frozenset[int] = frozenset()) -> Any:
    """``value``'s floating-point tensors rounded to ``dtype``'s values (kept in their own dtype). FP16 rounding of a
    float32 tensor is done in place by the ``fp16_round`` kernel ``kernel``, unless the tensor shares memory with
    one of the op's ``inputs`` (their storages' addresses)."""
    if isinstance(value, torch.Tensor):
        if not value.is_floating_point() or value.dtype == dtype:
            return value
        if (
            kernel == "numba"
            and dtype == torch.float16
            and value.dtype == torch.float32
            and value.untyped_storage().data_ptr() not in inputs
        ):
            return round_fp16_(value, kernel)
        return value.to(dtype).to(value.dtype)
    if isinstance(value, list | tuple):
        return type(value)(_round(v, dtype, kernel, inputs) for v in value)
    return value


#: Views run as reshapes: the same values, whatever the strides of the chip's tensors.
_AS_RESHAPE = {"aten.view.default": "aten.reshape.default", "aten._unsafe_view.default": "aten.reshape.default"}


def run(
    attrs: dict[str, Any],
    inputs: list[Any],
    tensors: dict[str, torch.Tensor],
    device: torch.device,
    *,
    quantize: bool = True,
    dtype: torch.dtype = DIGITAL_DTYPE,
    rounding: str = "torch",
) -> Any:
    """Run one stored op on its input values; a non-layout op's float results rounded to ``dtype`` when
    ``quantize``, by the ``fp16_round`` kernel ``rounding`` (:mod:`aimc.digital.fp16round`)."""
    # a view of a value the chip laid out differently (e.g. a conv output channels last) is the same reshape
    fn = resolve(_AS_RESHAPE.get(attrs["target"], attrs["target"]))
    args = decode(attrs.get("args", []), inputs, tensors, device)
    kwargs = {k: decode(v, inputs, tensors, device) for k, v in attrs.get("kwargs", {}).items()}
    out = fn(*args, **kwargs)
    if quantize and attrs.get("unit", "digital") != "layout":
        given = _flat(list(args)) + _flat(list(kwargs.values()))
        storages = frozenset(v.untyped_storage().data_ptr() for v in given if isinstance(v, torch.Tensor))
        out = _round(out, dtype, rounding, storages)
    return out


def cost(name: str, args: list[Any], kwargs: dict[str, Any], out: Any, items: int) -> dict[str, float]:
    """FLOPs and bytes moved per inference item of one op, measured on its recorded values (a batch of ``items``).

    FLOPs: PyTorch's FLOP counter (products of matrices, attention) where it counts the op, else
    :data:`ELEMENT_FLOPS` (default 1) per output element; layout ops count none. Bytes: the FP16 values read and
    written (2 bytes each); a view (no copy) moves none.
    """
    from torch.utils.flop_counter import FlopCounterMode

    family = op_family(name)
    unit = unit_of(name)
    tensors_in = [a for a in _flat(args) + _flat(list(kwargs.values())) if isinstance(a, torch.Tensor)]
    tensors_out = [o for o in _flat([out]) if isinstance(o, torch.Tensor)]
    numel_out = sum(t.numel() for t in tensors_out)
    if unit == "layout":
        copies = family in COPY_OPS
        moved = 2 * numel_out * 2 if copies else 0  # read and write each value
        return {"flops": 0.0, "bytes": moved / items}
    flops = 0.0
    if family == "scaled_dot_product_attention":
        flops = _attention_flops(args)
    elif family in (
        "mm",
        "bmm",
        "matmul",
        "addmm",
        "baddbmm",
        "linear",
        "einsum",
        "scaled_dot_product_attention",
        "convolution",
        "conv1d",
        "conv2d",
        "_scaled_dot_product_flash_attention_for_cpu",
    ):
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            resolve(name)(*args, **kwargs)
        flops = float(counter.get_total_flops())
    if flops == 0.0:
        flops = float(numel_out * ELEMENT_FLOPS.get(family, 1))
    moved = 2 * (sum(t.numel() for t in tensors_in) + numel_out)
    return {"flops": flops / items, "bytes": moved / items}


def _attention_flops(args: list[Any]) -> float:
    """FLOPs of ``scaled_dot_product_attention(q, k, v, ...)``: q·kᵀ and the weights·v products (2 per multiply-add)
    and the softmax (:data:`ELEMENT_FLOPS`) over the (..., L, S) scores. PyTorch's FLOP counter does not count the
    CPU kernel this op dispatches to."""
    q, k, v = args[:3]
    batch = math.prod(q.shape[:-2])
    length, source = q.shape[-2], k.shape[-2]
    scores = batch * length * source
    return float(2 * scores * q.shape[-1] + 2 * scores * v.shape[-1] + ELEMENT_FLOPS["softmax"] * scores)


def _flat(values: list[Any]) -> list[Any]:
    out: list[Any] = []
    for v in values:
        if isinstance(v, list | tuple):
            out.extend(_flat(list(v)))
        else:
            out.append(v)
    return out
