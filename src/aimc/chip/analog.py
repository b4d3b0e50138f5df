"""Running one analog layer (a conv via im2col, or a linear layer) on its cores, and its LDPU chain.

The cores' MVMs of a batch slice (:meth:`aimc.core.CoreReadout.mvm`), then the LDPU work after them
(docs/physics.md §9.2): per-channel affine, ReLU, an added INT8 input (partial sums along a column chain,
residuals), a second ReLU, INT8 output. The chain runs as PyTorch float16 operations (:func:`ldpu_chain`, the
reference) or as one compiled pass (:mod:`aimc.digital.ldpu_fused`, the same numbers), chosen by the kernel
``ldpu_chain`` of :mod:`aimc.kernels`, which this module registers.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from collections.abc import Mapping as AbcMapping

import torch
import torch.nn.functional as F

from aimc import kernels
from aimc.compiler import compile as compile_model
from aimc.compiler.layout import (
    as_image,
    block_view,
    column_blocks,
    conv_output_size,
    from_column_blocks,
    layer_rows,
    owned_outputs,
)
from aimc.compiler.mapping import MappedLayer
from aimc.core.analog import BF16_EXACT_LEVELS, CoreReadout
from aimc.core.inputs import FourPhaseInputs, prepare_conv_four_phase, prepare_four_phase
from aimc.core.pwm import quantize_input
from aimc.digital import ldpu_fused
from aimc.digital.levels import pwm_levels_bf16
from aimc.errors import ValidationError

#: Matrix elements (rows x cores x block size) simulated at once per layer: small enough to keep memory bounded
#: (about 100 MB of work tensors), large enough that the per-call cost of the matmuls and kernels is amortised.
#: Measured on ResNet-9 (2 threads, 2026-11-29): 2^20 4.95 s, 2^21 4.34-4.53 s, 2^22 4.08-4.13 s, 2^23 4.22 s,
#: 2^24 4.53 s per 500 images.
ELEMENTS_PER_STEP = 2**22


#: A callback that sees each analog layer's core outputs ``(r, c, R, m)`` during a run.
Observer = Callable[[MappedLayer, torch.Tensor], None]


def ldpu_chain(layer: MappedLayer, y: torch.Tensor, addend: torch.Tensor | None, quantize: bool) -> torch.Tensor:
    """The LDPUs of a layer: partial sums along each column chain, affine, ReLU, add, ReLU, INT8 (docs/physics.md §9.2).

    Args:
        y: ``(r, c, R, m)`` MVM outputs of every core.
        addend: ``(c, R, m)`` value added in the LDPU (residual), or None.

    Returns:
        ``(c, R, m)`` layer output (INT8 values when ``quantize``).
    """
    t = layer.tiling
    pad = t.col_blocks * t.block_outputs - t.outputs
    s = F.pad(layer.scale, (0, pad)).reshape(t.col_blocks, 1, -1).to(y.device)
    b = F.pad(layer.bias, (0, pad)).reshape(t.col_blocks, 1, -1).to(y.device)
    relu_last = layer.relu or layer.relu2
    if not quantize:
        out = (y * s).sum(0) + b
        if y.shape[0] > 1 or layer.add_at_chain_head:
            out = out + (addend if addend is not None else 0.0)
            return F.relu(out) if relu_last else out
        out = F.relu(out) if layer.relu else out
        out = out + addend if addend is not None else out
        return F.relu(out) if layer.relu2 else out
    # FP16 arithmetic as the LDPUs do it: every operation below runs in torch.float16 and rounds like the hardware
    half = torch.float16
    y = y.to(half)
    s16, b16 = s.to(half), b.to(half)
    add16 = addend.to(half) if addend is not None else None
    if y.shape[0] == 1:
        out = torch.addcmul(b16, y[0], s16)
        out = out.clamp_min_(0.0) if layer.relu else out
        out = out.add_(add16) if add16 is not None else out
        out = out.clamp_min_(0.0) if layer.relu2 else out
        return int8_values(out.float(), layer.out_range)
    running = None
    for i in range(y.shape[0] - 1):  # each core adds what it receives and sends INT8 on (r <= 8 steps)
        v = y[i] * s16
        if i == 0 and add16 is not None:
            v.add_(add16)
        if running is not None:
            v.add_(running)
        running = int8_values(v, layer.psum_range)
    out = torch.addcmul(b16, y[-1], s16).add_(running)
    out = out.clamp_min_(0.0) if relu_last else out
    return int8_values(out.float(), layer.out_range)


def int8_values(v: torch.Tensor, full_scale: float) -> torch.Tensor:
    """INT8 conversion for the link (round, saturate at codes -128..127), in place; returns the values the
    receiving LDPU gets back in its own format (``v``'s dtype: FP16 in the LDPUs)."""
    q = full_scale / 127.0
    return v.div_(q).round_().clamp_(-128.0, 127.0).mul_(q)


def mvm_rows(
    layer: MappedLayer,
    readout: CoreReadout,
    rows: torch.Tensor,
    gen: torch.Generator,
    quantize: bool,
    levels: bool = False,
    output_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """All cores of a layer on matrix rows ``(R, K)`` (values, or PWM levels with ``levels``) -> ``(r, c, R, m)``
    MVM outputs (FP16 values when ``quantize``, as ``output_dtype``: default float16, float32 when not
    ``quantize``)."""
    xb = block_view(layer, rows).unsqueeze(1)  # (r, 1, R, n)
    if output_dtype is None:
        output_dtype = torch.float16 if quantize else torch.float32
    return readout.mvm(
        xb,
        gen,
        x_range=layer.x_range,
        quantize=quantize,
        output_dtype=output_dtype,
        levels=levels,
    )


def mvm_prepared(
    layer: MappedLayer,
    readout: CoreReadout,
    x: torch.Tensor,
    gen: torch.Generator,
    output_dtype: torch.dtype = torch.float16,
    padded: bool = False,
    level_scale: float | None = None,
) -> torch.Tensor:
    """:func:`mvm_rows` of PWM levels ``x`` (the layer's input; a conv layer's already zero-padded with
    ``padded``) through :func:`prepare_four_phase`, which gathers each core's block of the im2col matrix without
    transposing it first -> ``(r, c, R, m)``. With ``level_scale`` a linear layer's ``x`` holds its float32 values,
    quantised in the same pass as :func:`~aimc.core.pwm.quantize_input` does (levels = round(x·level_scale) clipped
    at full scale)."""
    t = layer.tiling
    if layer.kind == "conv2d":
        g = layer.geometry
        padding = (0, 0) if padded else g["padding"]
        inputs = prepare_conv_four_phase(
            x, g["kernel"], g["stride"], padding, g["dilation"], t.block_inputs, t.row_blocks, readout.aux_dtype
        )
    else:
        levels = readout.core.spec.input_levels
        inputs = prepare_four_phase(
            x.reshape(1, -1, x.shape[-1]), t.block_inputs, t.row_blocks, readout.aux_dtype, level_scale, levels
        )
    inputs = FourPhaseInputs(*(v.unsqueeze(1) for v in inputs))  # (r, 1, R, n)
    return readout.mvm_prepared(inputs, gen, x_range=layer.x_range, output_dtype=output_dtype)


def fused_registers(layer: MappedLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's affine registers as :func:`aimc.digital.ldpu_fused.ldpu_chain` takes them: ``(c, m)`` float32
    holding the FP16 values that :func:`ldpu_chain` computes with (rounded once from the stored dtype)."""
    t = layer.tiling
    pad = t.col_blocks * t.block_outputs - t.outputs
    return tuple(  # type: ignore[return-value]
        F.pad(v, (0, pad)).reshape(t.col_blocks, t.block_outputs).to(torch.float16).float()
        for v in (layer.scale, layer.bias)
    )


def ldpu_rows(
    layer: MappedLayer,
    y: torch.Tensor,
    addend: torch.Tensor | None,
    quantize: bool,
    out: torch.Tensor,
    registers: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """The layer's LDPU chain of core outputs ``y`` ``(r, c, R, m)`` into output rows ``out`` ``(R, N)``.

    ``addend``: ``(A, P, N)`` value added in the LDPUs for row ``a·P + p``, or None. With ``registers`` (from
    :func:`fused_registers`) the chain runs as one compiled pass (:mod:`aimc.digital.ldpu_fused`, same numbers),
    else as :func:`ldpu_chain`'s PyTorch operations.
    """
    if layer.whole_columns:
        y = owned_outputs(layer, y)  # each core's LDPUs finish the columns it holds: no chain
    if registers is not None:
        ldpu_fused.ldpu_chain(
            y.float(),
            *registers,
            addend,
            out,
            relu=layer.relu,
            relu2=layer.relu2,
            psum_range=layer.psum_range,
            out_range=layer.out_range,
        )
        return
    add_c = None if addend is None else column_blocks(layer, addend.reshape(-1, layer.tiling.outputs))
    out.copy_(from_column_blocks(layer, ldpu_chain(layer, y, add_c, quantize)))


def run_analog(
    layer: MappedLayer,
    readout: CoreReadout,
    x: torch.Tensor,
    addend: torch.Tensor | None,
    gen: torch.Generator,
    quantize: bool,
    observe: Observer | None = None,
    pool: tuple[tuple[int, int], tuple[int, int]] | None = None,
    chain: bool = False,
) -> torch.Tensor:
    """One analog layer (conv via im2col or linear) with its LDPU pipeline; ``chain``: the LDPU chain as the
    compiled pass (kernel ``ldpu_chain``, :mod:`aimc.digital.ldpu_fused`; the same numbers as the PyTorch chain).

    ``pool``: ``(kernel, stride)`` of a max-pooling without padding applied to a conv layer's output (the layer's
    output is then the pooled one); with the compiled LDPU chain it runs on each slice's rows, and the unpooled
    output is never stored.

    The batch is processed in slices of about ``ELEMENTS_PER_STEP`` matrix elements, so that the im2col patches
    and the work tensors of one slice stay small. A conv layer's output is written channels last (``(N, H, W, C)``
    in memory, returned as an ``(N, C, H, W)`` view): one output row per position, as the LDPUs produce it, and the
    layout PyTorch's max-pooling is fastest on.
    """
    one_d = bool(layer.geometry.get("conv1d")) and x.dim() == 3
    if one_d:  # a Conv1d runs as a conv2d over (1, L) images
        out = run_analog(
            layer,
            readout,
            as_image(layer, x),
            None if addend is None else as_image(layer, addend),
            gen,
            quantize,
            observe,
            None,
            chain,
        )
        return out.squeeze(2)
    x = x.float()
    t = layer.tiling
    conv = layer.kind == "conv2d"
    k = x.shape[-1] if not conv else x.shape[1] * math.prod(layer.geometry["kernel"])
    if k != t.inputs:
        raise ValidationError(
            f"layer {layer.name!r} takes {t.inputs} inputs per row (matrix {t.inputs}x{t.outputs}); the value "
            f"reaching it, shape {tuple(x.shape)}, gives {k}: the input does not fit the mapping"
        )
    prepared = quantize and readout.takes_prepared_inputs
    registers = fused_registers(layer) if quantize and chain and x.device.type == "cpu" else None
    y_dtype = torch.float32 if registers is not None else None  # the converters' FP16 values, no conversion pass
    if conv:
        h_out, w_out = conv_output_size(layer, x.shape[2], x.shape[3])
    padded = False
    level_scale = None  # with a value: the input pass quantises x itself (levels = round(x·level_scale), clipped)
    if quantize:
        # PWM quantisation is element-wise, so it commutes with im2col: quantise the (k·k times smaller) image once
        # and gather its levels in bfloat16 (exact for |level| <= 256, half the bytes of float32; float32 beyond)
        spec = readout.core.spec
        if prepared and not conv:
            level_scale = spec.input_levels / layer.x_range
        elif prepared and conv and x.dim() == 4 and spec.input_levels <= 255:
            # the same levels in one pass, written with the convolution's zero padding
            x = pwm_levels_bf16(x, layer.x_range, spec.input_levels, tuple(layer.geometry["padding"]))
            padded = True
        else:
            exact = torch.bfloat16 if spec.input_levels <= BF16_EXACT_LEVELS else torch.float32
            x = quantize_input(x, layer.x_range, spec).to(exact)
    step_rows = max(256, ELEMENTS_PER_STEP // (t.cores * max(t.block_inputs, t.block_outputs)))
    pooled = None
    if conv:
        per_item = h_out * w_out
        if pool is not None and registers is not None:
            pooled = ldpu_fused.pool_output_size((h_out, w_out), *pool)
            if min(pooled) < 1:
                raise ValidationError(
                    f"max-pooling with kernel {pool[0]} cannot follow layer {layer.name!r}: its output is only "
                    f"{h_out}x{w_out}"
                )
            out = torch.empty(x.shape[0], *pooled, t.outputs, device=x.device)  # channels last
        else:
            out = torch.empty(x.shape[0], h_out, w_out, t.outputs, device=x.device)  # channels last
    else:
        per_item = 1
        lead = x.shape[:-1]
        x = x.reshape(-1, x.shape[-1])
        out = torch.empty(x.shape[0], t.outputs, device=x.device)
    out_rows = out.view(-1, t.outputs)
    add_rows = None  # (A, P, N): row a·P + p of the output gets add_rows[a, p]
    if addend is not None:
        add_rows = addend.float()
        add_rows = (
            add_rows.permute(0, 2, 3, 1).reshape(add_rows.shape[0], -1, t.outputs)
            if conv
            else add_rows.reshape(-1, 1, t.outputs)
        )
    items = max(1, step_rows // per_item)
    scratch = torch.empty(min(items, x.shape[0]) * per_item, t.outputs) if pooled is not None else None
    for start in range(0, x.shape[0], items):
        sl = slice(start, start + items)
        if prepared:
            y = mvm_prepared(layer, readout, x[sl], gen, y_dtype or torch.float16, padded, level_scale)
        else:
            rows_in = layer_rows(layer, x[sl])
            y = mvm_rows(layer, readout, rows_in, gen, quantize, levels=quantize, output_dtype=y_dtype)
        if observe is not None:
            observe(layer, y)
        if scratch is not None and pool is not None:  # the slice's whole images, pooled from the cache
            images = min(items, x.shape[0] - start)
            rows = scratch[: images * per_item]
            ldpu_rows(layer, y, None if add_rows is None else add_rows[sl], quantize, rows, registers)
            ldpu_fused.max_pool_channels_last(rows.view(images, h_out, w_out, t.outputs), out[sl], *pool)
            continue
        rows = out_rows[start * per_item : (start + items) * per_item]
        ldpu_rows(layer, y, None if add_rows is None else add_rows[sl], quantize, rows, registers)
    if conv:
        out = out.permute(0, 3, 1, 2)
        return F.max_pool2d(out, *pool) if pool is not None and pooled is None else out
    return out.reshape(*lead, t.outputs)


# --- the candidates of the LDPU chain, registered in aimc.kernels ----------------------------------------------------

#: Representative LDPU chain timed to choose the kernel: a 512 x 512 linear layer (2 x 2 cores) with ReLU, 1,024
#: rows; the probe uses 16 rows.
CHAIN_BENCH_SIZE, CHAIN_BENCH_ROWS, CHAIN_PROBE_ROWS = 512, 1024, 16


def _chain_workloads(after: AbcMapping[str, str], names: tuple[str, ...]) -> dict[str, kernels.Workload]:
    """Timed LDPU chains of a layer's core outputs (FP16 values), one per candidate of ``ldpu_chain``; each runs once
    on a few rows first, so that compiling is not timed."""
    gen = torch.Generator().manual_seed(0)
    size = CHAIN_BENCH_SIZE
    model = torch.nn.Sequential(torch.nn.Linear(size, size), torch.nn.ReLU())
    layer = next(iter(compile_model(model, example_input=torch.randn(64, size, generator=gen)).layers.values()))
    t = layer.tiling

    def call(name: str, rows: int) -> functools.partial:
        y = torch.randn(t.row_blocks, t.col_blocks, rows, t.block_outputs, generator=gen).half().float()
        out = torch.empty(rows, t.outputs)
        registers = fused_registers(layer) if name == "numba" else None
        return functools.partial(ldpu_rows, layer, y, None, True, out, registers)

    loads = {}
    for name in names:
        call(name, 2)()  # compiles or loads the compiled kernel
        loads[name] = kernels.Workload(call(name, CHAIN_PROBE_ROWS), call(name, CHAIN_BENCH_ROWS))
    return loads


kernels.register(
    kernels.Operation(
        name="ldpu_chain",
        summary="a layer's LDPU chain after its MVM: partial sums, affine, ReLU, residual add, INT8 links",
        candidates=kernels.compiled_or_torch(
            "one compiled pass per output row, max-pooling fused where it follows (aimc.digital.ldpu_fused)",
            "PyTorch float16 operations (any device)",
            lambda device_type: device_type == "cpu" and ldpu_fused.available(),
        ),
        workloads=_chain_workloads,
    )
)


__all__ = [
    "ELEMENTS_PER_STEP",
    "Observer",
    "fused_registers",
    "int8_values",
    "ldpu_chain",
    "ldpu_rows",
    "mvm_rows",
    "run_analog",
]
