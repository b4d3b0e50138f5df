"""The non-analog ops of a mapping: what each op kind computes, by a table from kind to function.

The analog layers (``analog``, ``lstm``, ``gru``) run on the cores (:mod:`aimc.chip.analog`,
:mod:`aimc.chip.recurrent`); every other kind of :data:`aimc.compiler.mapping.OP_KINDS` except the network's
``input`` and ``output`` is here: the ATen operations lowered to ``digital`` ops (:mod:`aimc.digital.generic`, on
the LDPU, GDPU or digital unit), the ops the chip paper's LDPUs run when they are not fused into a layer (affine,
ReLU, add), pooling, embeddings, off-chip linear layers and data layout (flatten, cat, unsqueeze, an RNN's final
state). They run in float32 on the host, the ``digital`` ops in FP16 when ``quantize``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aimc.compiler.layout import rnn_final_state
from aimc.compiler.mapping import Op
from aimc.digital import generic
from aimc.errors import ValidationError


@dataclass(frozen=True)
class OpContext:
    """What a run gives every op besides its inputs.

    Attributes:
        extra: the mapping's constant tensors by name (``mapping.extra_tensors``: weights of embeddings and off-chip
            layers, affine registers, the constants of ``digital`` ops).
        device: the torch device the chip's tensors are on.
        quantize: whether the digital units round as the hardware does (False: float32, ideal converters).
        rounding: the ``fp16_round`` kernel that rounds the ``digital`` ops' results (:mod:`aimc.digital.fp16round`).
    """

    extra: Mapping[str, torch.Tensor]
    device: torch.device
    quantize: bool
    rounding: str = "torch"


#: An op's computation: ``(op, input values, context) -> output value``.
OpFunction = Callable[[Op, list[torch.Tensor], OpContext], torch.Tensor]


def _digital(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    """An ATen operation on its digital unit (:func:`aimc.digital.generic.run`)."""
    return generic.run(op.attrs, args, ctx.extra, ctx.device, quantize=ctx.quantize, rounding=ctx.rounding)


def _rnn_state(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    """An RNN's final hidden state ``h_n`` from its output sequences."""
    return rnn_final_state(args, op.attrs["reverse"], op.attrs["batch_first"])


def _embedding(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    """A table lookup of integer token ids (off-chip)."""
    table = ctx.extra[f"{op.name}.weight"]
    ids = args[0]
    if ids.is_floating_point() or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(table))):
        raise ValidationError(
            f"op {op.name!r}: token ids must be integers in [0, {len(table) - 1}]; got "
            f"{ids.dtype} values in [{ids.min().item():g}, {ids.max().item():g}]"
        )
    return F.embedding(ids.long(), table.to(ids.device))


def _host_linear(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    """A linear layer kept off the chip (a model's ``offchip_modules``), in float32."""
    b = ctx.extra.get(f"{op.name}.bias")
    x = args[0]
    return F.linear(x.float(), ctx.extra[f"{op.name}.weight"].to(x.device), None if b is None else b.to(x.device))


def _affine(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    """A per-channel scale and shift (a batch norm that could not be folded into a layer's LDPU registers)."""
    x = args[0]
    shape = [1, -1] + [1] * (x.dim() - 2)
    s, sh = ctx.extra[f"{op.name}.scale"], ctx.extra[f"{op.name}.shift"]
    return x * s.view(shape).to(x.device) + sh.view(shape).to(x.device)


def _maxpool2d(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    a = op.attrs
    return F.max_pool2d(args[0], a["kernel"], a["stride"], a["padding"])


def _avgpool2d(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    a = op.attrs
    if "adaptive" in a:
        return F.adaptive_avg_pool2d(args[0], a["adaptive"])
    return F.avg_pool2d(args[0], a["kernel"], a["stride"], a["padding"])


#: Every op kind computed here, with its function.
OPS: dict[str, OpFunction] = {
    "rnn_state": _rnn_state,
    "digital": _digital,
    "embedding": _embedding,
    "host_linear": _host_linear,
    "affine": _affine,
    "maxpool2d": _maxpool2d,
    "avgpool2d": _avgpool2d,
    "flatten": lambda op, args, ctx: torch.flatten(args[0], op.attrs["start_dim"]),
    "relu": lambda op, args, ctx: F.relu(args[0]),
    "add": lambda op, args, ctx: args[0] + args[1],
    "cat": lambda op, args, ctx: torch.cat(args, dim=op.attrs["dim"]),
    "unsqueeze": lambda op, args, ctx: args[0].unsqueeze(op.attrs["dim"]),
    "softmax": lambda op, args, ctx: torch.softmax(args[0], op.attrs["dim"]),
    "log_softmax": lambda op, args, ctx: torch.log_softmax(args[0], op.attrs["dim"]),
    "sigmoid": lambda op, args, ctx: torch.sigmoid(args[0]),
}


def run_op(op: Op, args: list[torch.Tensor], ctx: OpContext) -> torch.Tensor:
    """The output of the non-analog ``op`` on its input values ``args``."""
    function = OPS.get(op.kind)
    if function is None:
        raise ValidationError(f"unknown op kind {op.kind!r} in the mapping")
    return function(op, args, ctx)


__all__ = ["OPS", "OpContext", "OpFunction", "run_op"]
