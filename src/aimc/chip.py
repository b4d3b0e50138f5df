"""A programmed chip: every layer's cores in PCM conductances, and the whole network's forward pass on them.

``program(mapping, device, strategy, seed)`` is the only step that draws programming randomness; ``run(x, t, mode,
seed)`` reads the chip at ``t`` seconds after programming with fresh read noise. Each analog layer's cores form one
stack of :class:`~aimc.core.ProgrammedCore` (leading dims = row blocks x column blocks), simulated in one batched
tensor operation. The LDPU work after each MVM follows docs/physics.md §9.2: per-channel affine, ReLU, an added INT8
input (partial sums along a column chain, residuals), a second ReLU, INT8 output; the LSTM cell runs in the GDPUs in
FP16.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from collections.abc import Mapping as AbcMapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from aimc import kernels
from aimc._validation import SeedLike, check_choice, make_generator
from aimc.compiler.layout import (
    as_image,
    block_view,
    column_blocks,
    conv_output_size,
    from_column_blocks,
    layer_rows,
    owned_outputs,
    rnn_final_state,
    weight_blocks,
)
from aimc.compiler.mapping import MappedLayer, Mapping, Op
from aimc.core.analog import (
    BF16_EXACT_LEVELS,
    STRATEGIES,
    CoreReadout,
    ProgrammedCore,
    polarity_g_max,
    program_core,
)
from aimc.core.config import CoreConfig
from aimc.core.inputs import FourPhaseInputs, prepare_conv_four_phase, prepare_four_phase
from aimc.core.pwm import quantize_input
from aimc.devices.base import DeviceModel, check_time
from aimc.devices.registry import get as get_device
from aimc.digital import generic, ldpu_fused
from aimc.digital.gdpu import gru_cell, lstm_cell
from aimc.digital.levels import pwm_levels_bf16
from aimc.errors import AimcError, ArgumentTypeError, ValidationError
from aimc.faults import Faults, check_mapping_faults, fault_generator
from aimc.spec import READ_MODES, ChipSpec

if TYPE_CHECKING:
    from aimc.module import AnalogModule

#: Assumption: the per-core G_max limit keeps the largest calibration bit-line current at this fraction of the ADC
#: saturation current (the chip paper limits G_max per core so that every bit-line current stays below it;
#: docs/physics.md §2.2).
CURRENT_HEADROOM = 0.9

#: Matrix elements (rows x cores x block size) simulated at once per layer: small enough to keep memory bounded
#: (about 100 MB of work tensors), large enough that the per-call cost of the matmuls and kernels is amortised.
#: Measured on ResNet-9 (2 threads, 2026-11-29): 2^20 4.95 s, 2^21 4.34-4.53 s, 2^22 4.08-4.13 s, 2^23 4.22 s,
#: 2^24 4.53 s per 500 images.
ELEMENTS_PER_STEP = 2**22


def core_w_max(
    layer: MappedLayer, device: DeviceModel, strategy: str, config: CoreConfig, spec: ChipSpec
) -> torch.Tensor:
    """Weight mapped to G_max on each core ``(r, c)``: the block's max |W|, raised where the calibration bit-line
    current would exceed ``CURRENT_HEADROOM`` x saturation (which lowers that core's G_max)."""
    return _core_scales(layer, weight_blocks(layer), device, strategy, config, spec)[0]


def core_adc_range(
    layer: MappedLayer,
    device: DeviceModel,
    strategy: str,
    config: CoreConfig,
    spec: ChipSpec,
    w_max: torch.Tensor,
) -> torch.Tensor | None:
    """Top of each core's ADC calibration currents ``(r, c)`` in uA, or None for the fixed range.

    With ``config.adc_calibration == "operating"`` and a compiled ``load``: the largest bit-line current the core
    carries on the compile step's calibration inputs at its programmed scale ``w_max``, at least
    ``config.calibration_min_fraction`` x saturation (see :data:`aimc.core.config.ADC_CALIBRATION`).
    """
    return _adc_range(layer, _block_w_max(weight_blocks(layer)), w_max, device, strategy, config, spec)


def _core_scales(
    layer: MappedLayer,
    blocks: torch.Tensor,
    device: DeviceModel,
    strategy: str,
    config: CoreConfig,
    spec: ChipSpec,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """:func:`core_w_max` and :func:`core_adc_range` of the layer's weight ``blocks`` ``(r, c, m, n)``, together."""
    block_max = _block_w_max(blocks)
    current = _calibration_current(layer, device, strategy, config, spec)
    w_max = block_max if current is None else limited_w_max(block_max, current, spec)
    return w_max, _adc_range(layer, block_max, w_max, device, strategy, config, spec)


def peak_current(
    load: torch.Tensor, device: DeviceModel, strategy: str, config: CoreConfig, spec: ChipSpec
) -> torch.Tensor:
    """Largest one-phase counter current (uA) of each core with its max |W| at G_max, given its bit-line ``load``
    (:func:`aimc.compiler.calibrate.bit_line_load` of its inputs): read voltage x G_max x load, at full PWM scale."""
    full_scale = spec.input_levels * spec.pwm_ns_per_lsb / spec.integration_time_ns
    return config.read_voltage_V * polarity_g_max(device, strategy) * load * full_scale


def limited_w_max(block_max: torch.Tensor, current: torch.Tensor, spec: ChipSpec) -> torch.Tensor:
    """The per-core G_max limit (docs/physics.md §2.2): the weight mapped to G_max is each core's max |W|
    ``block_max``, raised by the factor its peak bit-line ``current`` (uA, at max |W| = G_max) exceeds
    ``CURRENT_HEADROOM`` x saturation, which lowers that core's conductances and currents by the same factor."""
    return block_max * torch.clamp(current / (CURRENT_HEADROOM * spec.adc_saturation_uA), min=1.0)


def _adc_range(
    layer: MappedLayer,
    block_max: torch.Tensor,
    w_max: torch.Tensor,
    device: DeviceModel,
    strategy: str,
    config: CoreConfig,
    spec: ChipSpec,
) -> torch.Tensor | None:
    """:func:`core_adc_range` given the blocks' max |W|."""
    current = _calibration_current(layer, device, strategy, config, spec)
    if config.adc_calibration != "operating" or current is None:
        return None
    peak = current * (block_max / w_max)  # a raised w_max lowers the core's conductances
    return peak.clamp(min=config.calibration_min_fraction * spec.adc_saturation_uA, max=spec.adc_saturation_uA)


def _block_w_max(blocks: torch.Tensor) -> torch.Tensor:
    """Max |W| of each core's block ``(r, c)`` of weight ``blocks`` ``(r, c, m, n)`` (1 for an all-zero block)."""
    w_max = blocks.abs().amax(dim=(-2, -1))
    return torch.where(w_max > 0, w_max, torch.ones_like(w_max))


def _calibration_current(
    layer: MappedLayer, device: DeviceModel, strategy: str, config: CoreConfig, spec: ChipSpec
) -> torch.Tensor | None:
    """Largest one-phase counter current (uA) of each core ``(r, c)`` on the calibration inputs with the block's max
    |W| at G_max, or None where the mapping has no measured ``load``."""
    return None if layer.load is None else peak_current(layer.load, device, strategy, config, spec)


#: A callback that sees each analog layer's core outputs ``(r, c, R, m)`` during a run.
Observer = Callable[[MappedLayer, torch.Tensor], None]
#: ``recalibrate(layer, measure) -> layer``: see :meth:`ProgrammedChip.run`.
Recalibrator = Callable[[MappedLayer, Callable[[Observer], None]], MappedLayer]


@dataclass
class ProgrammedChip:
    """A mapping programmed into PCM devices.

    Attributes:
        mapping: the compiled network.
        device: the device model.
        strategy: ``"odp"`` or ``"tdp"``.
        seed: the programming seed (recorded, not reused).
        config: unpublished core parameters.
        cores: one stacked :class:`ProgrammedCore` per analog layer, by layer name.
        faults: the chip's hardware defects (:class:`aimc.faults.Faults`), or None for a perfect chip.
        backend: the kernels its runs use by default (:class:`aimc.kernels.Backend`; None: chosen by measurement).
    """

    mapping: Mapping
    device: DeviceModel
    strategy: str
    seed: int | None
    config: CoreConfig
    cores: dict[str, ProgrammedCore] = field(default_factory=dict)
    faults: Faults | None = None
    backend: kernels.Backend | None = None

    def to(self, device: torch.device | str) -> ProgrammedChip:
        """A copy with every core on ``device`` (``chip.to("cuda")``); inputs must then be on it too."""
        return ProgrammedChip(
            mapping=self.mapping,
            device=self.device,
            strategy=self.strategy,
            seed=self.seed,
            config=self.config,
            cores={k: c.to(device) for k, c in self.cores.items()},
            faults=self.faults,
            backend=self.backend,
        )

    def as_module(
        self, t: float = 3600.0, mode: str = "four-phase", seed: int = 0, **run_kwargs: object
    ) -> AnalogModule:
        """This chip as a ``torch.nn.Module`` (:class:`aimc.AnalogModule`): ``module(x)`` runs ``self.run(x, t, mode,
        ..., **run_kwargs)``; the first call with ``seed``, each later one with fresh read noise derived from it
        (reproducible: ``module.reset()`` starts again; see :mod:`aimc.module`)."""
        from aimc.module import AnalogModule

        return AnalogModule(self, t=t, mode=mode, seed=seed, **run_kwargs)

    @property
    def tensor_device(self) -> torch.device:
        """The torch device the chip's tensors are on."""
        return next(iter(self.cores.values())).states.g_prog.device

    def run(
        self,
        x: torch.Tensor | tuple[torch.Tensor, ...],
        t: float = 3600.0,
        mode: str = "four-phase",
        seed: SeedLike = 0,
        *,
        quantize: bool = True,
        drift_compensation: bool = True,
        read_noise: bool = True,
        recalibrate: Recalibrator | None = None,
        backend: kernels.Backend | None = None,
    ) -> torch.Tensor:
        """The network's forward pass on the chip, ``t`` seconds after programming.

        Args:
            x: the network's input batch (as for the PyTorch model), or a tuple for several inputs.
            t: seconds after programming (>= 0).
            mode: ``"four-phase"`` or ``"one-phase"`` (docs/physics.md §7).
            seed: seeds this run's read noise (frozen part and per-MVM part).
            quantize: False makes the converters ideal (no PWM/ADC/INT8 rounding, float32 digital units).
            drift_compensation: global drift compensation per core (docs/physics.md §4.1).
            read_noise: False switches 1/f read noise off.
            recalibrate: called as ``recalibrate(layer, measure)`` before every conv/linear layer runs; it may
                call ``measure(observer)`` to run the layer's cores on this layer's actual inputs, the observer
                seeing the core outputs ``(r, c, R, m)``, and returns the layer to run (e.g. with new LDPU
                registers, :mod:`aimc.adabs`).
            backend: the kernels of this run (:class:`aimc.kernels.Backend`); default the chip's ``backend``.
                What neither fixes is chosen by measurement on this machine. Kernels change the numbers slightly
                (e.g. int8 product planes round each core's matrix to 15 bits); results record them.

        Returns:
            The network's output.
        """
        t = check_time(t, "t")
        check_choice(mode, "mode", READ_MODES)
        gen = make_generator(seed, "seed")
        _check_bool(quantize, "quantize")
        _check_bool(drift_compensation, "drift_compensation")
        _check_bool(read_noise, "read_noise")
        if self.faults is not None:
            check_mapping_faults(self.mapping, self.faults)
        inputs = x if isinstance(x, tuple) else (x,)
        input_ops = [op for op in self.mapping.ops if op.kind == "input"]
        if len(inputs) != len(input_ops):
            raise ValidationError(f"the network takes {len(input_ops)} input(s); got {len(inputs)}")
        signature = self.mapping.input_signature
        for k, (name, v) in enumerate(zip((op.name for op in input_ops), inputs, strict=True)):
            _check_input(v, name, signature[k] if len(signature) == len(input_ops) else None)
        chosen = kernels.resolve(backend if backend is not None else self.backend)
        readouts = {
            name: core.prepare(
                t, mode, gen, read_noise=read_noise, drift_compensation=drift_compensation, backend=chosen
            )
            for name, core in self.cores.items()
        }
        device_type = self.tensor_device.type
        chain = quantize and device_type == "cpu" and chosen.kernel("ldpu_chain", device_type) == "numba"
        env: dict[str, torch.Tensor] = {}
        last_use, pools = self._last_uses(), self._fusable_pools(chain)
        it = iter(inputs)
        with torch.no_grad():
            for i, op in enumerate(self.mapping.ops):
                if i - 1 in pools:  # this max-pooling ran with the layer before it
                    continue
                if op.kind == "input":
                    env[op.name] = next(it).to(self.tensor_device)
                elif op.kind == "output":
                    outs = [env[name] for name in op.inputs]
                    for out in outs:
                        if (
                            isinstance(out, torch.Tensor)
                            and out.is_floating_point()
                            and not bool(torch.isfinite(out).all())
                        ):
                            raise ValidationError(
                                "the chip's output holds NaN/Inf values: an input, weight or stored chip value is out "
                                "of the range the chip can represent"
                            )
                    return outs[0] if len(outs) == 1 else tuple(outs)
                else:
                    try:
                        pool = pools.get(i)
                        value = self._run_op(op, env, readouts, gen, quantize, chain, recalibrate, pool)
                        env[op.name if pool is None else pool.name] = value
                    except AimcError:
                        raise
                    except (RuntimeError, IndexError, ValueError, TypeError) as err:
                        shapes = ", ".join(str(tuple(v.shape)) for v in inputs)
                        raise ValidationError(
                            f"the input (shape {shapes}) does not fit the mapping: op {op.name!r} ({op.kind}) "
                            f"failed: {str(err).splitlines()[0] if str(err) else type(err).__name__}"
                        ) from None
                    for name in [n for n in env if last_use.get(n, -1) == i]:  # values no later op reads
                        del env[name]
        raise ValidationError("the mapping has no output op")

    def _last_uses(self) -> dict[str, int]:
        """Index of the last op reading each value (an op's inputs, an analog layer's LDPU addend), so that a run
        frees intermediate values as soon as they are dead (peak memory; freed memory is reused)."""
        last: dict[str, int] = {}
        for i, op in enumerate(self.mapping.ops):
            names = list(op.inputs)
            layer = self.mapping.layers.get(op.attrs.get("layer")) if op.kind == "analog" else None
            if layer is not None and layer.add is not None:
                names.append(layer.add)
            for name in names:
                last[name] = i
        return last

    def _fusable_pools(self, chain: bool) -> dict[int, Op]:
        """Max-poolings (no padding) that can run in the compiled pass after the LDPU chain of the conv layer
        before them, by that layer's op index: where the layer's output has no other reader and the chain runs
        compiled (``chain``, :mod:`aimc.digital.ldpu_fused`). The result is the same; the layer's unpooled output
        is then never stored."""
        if not chain:
            return {}
        ops = self.mapping.ops
        readers: dict[str, int] = {}
        for op in ops:
            layer = self.mapping.layers.get(op.attrs.get("layer")) if op.kind == "analog" else None
            for name in [*op.inputs, *([layer.add] if layer is not None and layer.add is not None else [])]:
                readers[name] = readers.get(name, 0) + 1
        fusable = {}
        for i, (op, nxt) in enumerate(pairwise(ops)):
            layer = self.mapping.layers.get(op.attrs.get("layer")) if op.kind == "analog" else None
            if (
                layer is not None
                and layer.kind == "conv2d"
                and nxt.kind == "maxpool2d"
                and list(nxt.inputs) == [op.name]
                and readers.get(op.name) == 1
                and not any(nxt.attrs.get("padding", [0, 0]))
            ):
                fusable[i] = nxt
        return fusable

    def _run_op(
        self,
        op: Op,
        env: dict[str, torch.Tensor],
        readouts: dict[str, CoreReadout],
        gen: torch.Generator,
        quantize: bool,
        chain: bool,
        recalibrate: Recalibrator | None = None,
        pool: Op | None = None,
    ) -> torch.Tensor:
        """One op of the mapping; ``chain``: the LDPU chains run compiled (kernel ``ldpu_chain``)."""
        args = [env[i] for i in op.inputs]
        a = op.attrs
        extra = self.mapping.extra_tensors
        if op.kind == "analog":
            layer = self.mapping.layers[a["layer"]]
            addend = env[layer.add] if layer.add is not None else None
            readout = readouts[layer.name]
            if recalibrate is not None:
                current = layer

                def measure(obs: Observer) -> None:
                    _run_analog(current, readout, args[0], addend, gen, quantize, obs, chain=chain)

                layer = recalibrate(layer, measure)
            window = None if pool is None else (tuple(pool.attrs["kernel"]), tuple(pool.attrs["stride"]))
            return _run_analog(layer, readout, args[0], addend, gen, quantize, pool=window, chain=chain)
        if op.kind in ("lstm", "gru"):
            layer = self.mapping.layers[a["layer"]]
            reverse, batch_first = a.get("reverse", False), a.get("batch_first", True)
            return _run_rnn(layer, readouts[layer.name], args[0], gen, quantize, chain, reverse, batch_first)
        if op.kind == "rnn_state":
            return rnn_final_state(args, a["reverse"], a["batch_first"])
        if op.kind == "digital":
            return generic.run(a, args, extra, self.tensor_device, quantize=quantize)
        if op.kind == "embedding":
            table = extra[f"{op.name}.weight"]
            ids = args[0]
            if ids.is_floating_point() or (ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(table))):
                raise ValidationError(
                    f"op {op.name!r}: token ids must be integers in [0, {len(table) - 1}]; got "
                    f"{ids.dtype} values in [{ids.min().item():g}, {ids.max().item():g}]"
                )
            return F.embedding(ids.long(), table.to(ids.device))
        if op.kind == "host_linear":
            b = extra.get(f"{op.name}.bias")
            return F.linear(
                args[0].float(),
                extra[f"{op.name}.weight"].to(args[0].device),
                None if b is None else b.to(args[0].device),
            )
        if op.kind == "affine":
            shape = [1, -1] + [1] * (args[0].dim() - 2)
            s, sh = extra[f"{op.name}.scale"], extra[f"{op.name}.shift"]
            return args[0] * s.view(shape).to(args[0].device) + sh.view(shape).to(args[0].device)
        if op.kind == "maxpool2d":
            return F.max_pool2d(args[0], a["kernel"], a["stride"], a["padding"])
        if op.kind == "avgpool2d":
            if "adaptive" in a:
                return F.adaptive_avg_pool2d(args[0], a["adaptive"])
            return F.avg_pool2d(args[0], a["kernel"], a["stride"], a["padding"])
        if op.kind == "flatten":
            return torch.flatten(args[0], a["start_dim"])
        if op.kind == "relu":
            return F.relu(args[0])
        if op.kind == "add":
            return args[0] + args[1]
        if op.kind == "cat":
            return torch.cat(args, dim=a["dim"])
        if op.kind == "unsqueeze":
            return args[0].unsqueeze(a["dim"])
        if op.kind == "softmax":
            return torch.softmax(args[0], a["dim"])
        if op.kind == "log_softmax":
            return torch.log_softmax(args[0], a["dim"])
        if op.kind == "sigmoid":
            return torch.sigmoid(args[0])
        raise ValidationError(f"unknown op kind {op.kind!r} in the mapping")

    def save(self, path: str) -> None:
        """Save the programmed chip (safetensors + JSON metadata; see :mod:`aimc.storage`)."""
        from aimc.storage import save_chip

        save_chip(self, path)


def _check_bool(value: object, name: str) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def _check_input(v: object, name: str, signature: dict | None = None) -> None:
    """An input batch: a non-empty, finite tensor like the example input the mapping was compiled with."""
    if not isinstance(v, torch.Tensor):
        raise ArgumentTypeError(f"input {name!r} must be a torch.Tensor, got {type(v).__name__}")
    if v.numel() == 0:
        raise ValidationError(f"input {name!r} must not be empty, got shape {tuple(v.shape)}")
    if v.is_complex() or v.dtype == torch.bool:
        raise ArgumentTypeError(f"input {name!r} must be a real float or integer tensor, got {v.dtype}")
    if v.is_floating_point() and not bool(torch.isfinite(v).all()):
        raise ValidationError(f"input {name!r} must be finite; it holds NaN/Inf values")
    if signature is None:
        return
    kind = "float" if v.is_floating_point() else "int"
    if kind != signature.get("dtype"):
        want = "floating-point values" if signature.get("dtype") == "float" else "integer token ids"
        raise ArgumentTypeError(f"input {name!r} must hold {want}, like the example input; got {v.dtype}")
    if v.dim() != signature.get("ndim"):
        raise ValidationError(
            f"input {name!r} must have {signature.get('ndim')} dimensions (batch first), like the example input "
            f"the mapping was compiled with; got shape {tuple(v.shape)}"
        )
    features = signature.get("features")
    if features is not None and v.dim() >= 2 and v.shape[1] != features:
        raise ValidationError(
            f"input {name!r} must have {features} channels/features in dimension 1, like the example input; got "
            f"shape {tuple(v.shape)}"
        )


def _ldpu_chain(layer: MappedLayer, y: torch.Tensor, addend: torch.Tensor | None, quantize: bool) -> torch.Tensor:
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
        return _int8_values(out.float(), layer.out_range)
    running = None
    for i in range(y.shape[0] - 1):  # each core adds what it receives and sends INT8 on (r <= 8 steps)
        v = y[i] * s16
        if i == 0 and add16 is not None:
            v.add_(add16)
        if running is not None:
            v.add_(running)
        running = _int8_values(v, layer.psum_range)
    out = torch.addcmul(b16, y[-1], s16).add_(running)
    out = out.clamp_min_(0.0) if relu_last else out
    return _int8_values(out.float(), layer.out_range)


def _int8_values(v: torch.Tensor, full_scale: float) -> torch.Tensor:
    """INT8 conversion for the link (round, saturate at codes -128..127), in place; returns the values the
    receiving LDPU gets back in its own format (``v``'s dtype: FP16 in the LDPUs)."""
    q = full_scale / 127.0
    return v.div_(q).round_().clamp_(-128.0, 127.0).mul_(q)


def _mvm_rows(
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


def _mvm_prepared(
    layer: MappedLayer,
    readout: CoreReadout,
    x: torch.Tensor,
    gen: torch.Generator,
    output_dtype: torch.dtype = torch.float16,
    padded: bool = False,
) -> torch.Tensor:
    """:func:`_mvm_rows` of PWM levels ``x`` (the layer's input; a conv layer's already zero-padded with
    ``padded``) through :func:`prepare_four_phase`, which gathers each core's block of the im2col matrix without
    transposing it first -> ``(r, c, R, m)``."""
    t = layer.tiling
    if layer.kind == "conv2d":
        g = layer.geometry
        padding = (0, 0) if padded else g["padding"]
        inputs = prepare_conv_four_phase(
            x, g["kernel"], g["stride"], padding, g["dilation"], t.block_inputs, t.row_blocks, readout.aux_dtype
        )
    else:
        inputs = prepare_four_phase(x.reshape(1, -1, x.shape[-1]), t.block_inputs, t.row_blocks, readout.aux_dtype)
    inputs = FourPhaseInputs(*(v.unsqueeze(1) for v in inputs))  # (r, 1, R, n)
    return readout.mvm_prepared(inputs, gen, x_range=layer.x_range, output_dtype=output_dtype)


def _fused_registers(layer: MappedLayer) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's affine registers as :func:`aimc.digital.ldpu_fused.ldpu_chain` takes them: ``(c, m)`` float32
    holding the FP16 values that :func:`_ldpu_chain` computes with (rounded once from the stored dtype)."""
    t = layer.tiling
    pad = t.col_blocks * t.block_outputs - t.outputs
    return tuple(  # type: ignore[return-value]
        F.pad(v, (0, pad)).reshape(t.col_blocks, t.block_outputs).to(torch.float16).float()
        for v in (layer.scale, layer.bias)
    )


def _ldpu_rows(
    layer: MappedLayer,
    y: torch.Tensor,
    addend: torch.Tensor | None,
    quantize: bool,
    out: torch.Tensor,
    registers: tuple[torch.Tensor, torch.Tensor] | None,
) -> None:
    """The layer's LDPU chain of core outputs ``y`` ``(r, c, R, m)`` into output rows ``out`` ``(R, N)``.

    ``addend``: ``(A, P, N)`` value added in the LDPUs for row ``a·P + p``, or None. With ``registers`` (from
    :func:`_fused_registers`) the chain runs as one compiled pass (:mod:`aimc.digital.ldpu_fused`, same numbers),
    else as :func:`_ldpu_chain`'s PyTorch operations.
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
    out.copy_(from_column_blocks(layer, _ldpu_chain(layer, y, add_c, quantize)))


def _run_analog(
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
        out = _run_analog(
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
    registers = _fused_registers(layer) if quantize and chain and x.device.type == "cpu" else None
    y_dtype = torch.float32 if registers is not None else None  # the converters' FP16 values, no conversion pass
    if conv:
        h_out, w_out = conv_output_size(layer, x.shape[2], x.shape[3])
    padded = False
    if quantize:
        # PWM quantisation is element-wise, so it commutes with im2col: quantise the (k·k times smaller) image once
        # and gather its levels in bfloat16 (exact for |level| <= 256, half the bytes of float32; float32 beyond)
        spec = readout.core.spec
        if prepared and conv and x.dim() == 4 and spec.input_levels <= 255:
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
            y = _mvm_prepared(layer, readout, x[sl], gen, y_dtype or torch.float16, padded)
        else:
            rows_in = layer_rows(layer, x[sl])
            y = _mvm_rows(layer, readout, rows_in, gen, quantize, levels=quantize, output_dtype=y_dtype)
        if observe is not None:
            observe(layer, y)
        if scratch is not None and pool is not None:  # the slice's whole images, pooled from the cache
            images = min(items, x.shape[0] - start)
            rows = scratch[: images * per_item]
            _ldpu_rows(layer, y, None if add_rows is None else add_rows[sl], quantize, rows, registers)
            ldpu_fused.max_pool_channels_last(rows.view(images, h_out, w_out, t.outputs), out[sl], *pool)
            continue
        rows = out_rows[start * per_item : (start + items) * per_item]
        _ldpu_rows(layer, y, None if add_rows is None else add_rows[sl], quantize, rows, registers)
    if conv:
        out = out.permute(0, 3, 1, 2)
        return F.max_pool2d(out, *pool) if pool is not None and pooled is None else out
    return out.reshape(*lead, t.outputs)


def _run_rnn(
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
    registers = _fused_registers(layer) if quantize and chain and x.device.type == "cpu" else None
    y_dtype = torch.float32 if registers is not None else None
    outs = []
    # the host scales the off-chip input to the PWM range of h; its weight columns were divided by the same factor
    x = x.float() * layer.geometry.get("input_scale", 1.0)
    for step in range(steps):
        rows = torch.cat([x[:, step], h], dim=-1)
        y = _mvm_rows(layer, readout, rows, gen, quantize, output_dtype=y_dtype)
        gates = torch.empty(batch, layer.tiling.outputs, device=x.device)
        _ldpu_rows(layer, y, None, quantize, gates, registers)
        if layer.kind == "lstm":
            h, c = lstm_cell(gates[:, inverse], c, fp16=quantize)
        else:
            h = gru_cell(gates[:, inverse], h, fp16=quantize)
        if quantize:
            h = _int8_values(h, 1.0)
        outs.append(h)
    out = torch.stack(outs, dim=1)
    if reverse:
        out = out.flip(1)
    return out.transpose(0, 1) if not batch_first else out


def program(
    mapping: Mapping,
    device: DeviceModel | str = "hermes-2dev",
    strategy: str = "tdp",
    seed: SeedLike = 0,
    *,
    config: CoreConfig | None = None,
    faults: Faults | None = None,
    backend: kernels.Backend | None = None,
) -> ProgrammedChip:
    """Program a compiled network into the chip's PCM devices (the only step drawing programming randomness).

    Args:
        mapping: from :func:`aimc.compile`.
        device: device model or preset name (``aimc.devices.available()``; ``"ideal"`` for no device noise).
        strategy: ``"odp"`` or ``"tdp"`` (docs/physics.md §2.3).
        seed: int or ``torch.Generator``.
        config: unpublished core parameters (default :class:`CoreConfig`).
        faults: hardware defects (:class:`aimc.faults.Faults`): stuck devices and dead ADCs take effect here; a
            mapping that puts a block on a dead core, or whose partial sums cannot be routed around dead links, is
            refused (compile with ``**faults.compile_kwargs()``).
        backend: the kernels of the chip's drift-compensation reference reads and, by default, of its runs
            (:class:`aimc.kernels.Backend`; None: chosen by measurement on this machine).

    Returns:
        A :class:`ProgrammedChip`.
    """
    if not isinstance(mapping, Mapping):
        raise ArgumentTypeError(f"mapping must be an aimc Mapping (from aimc.compile), got {type(mapping).__name__}")
    model = get_device(device) if isinstance(device, str) else device
    if not isinstance(model, DeviceModel):
        raise ArgumentTypeError(f"device must be a preset name or an aimc.devices.DeviceModel, got {type(device)}")
    check_choice(strategy, "strategy", STRATEGIES)
    config = CoreConfig() if config is None else config
    if not isinstance(config, CoreConfig):
        raise ArgumentTypeError(f"config must be an aimc CoreConfig, got {type(config).__name__}")
    chosen = kernels.resolve(backend)
    gen = make_generator(seed, "seed")
    fault_gen = None
    if faults is not None:
        if not isinstance(faults, Faults):
            raise ArgumentTypeError(f"faults must be an aimc.faults.Faults (or None), got {type(faults).__name__}")
        faults.check_spec(mapping.spec, mapping.chips)
        check_mapping_faults(mapping, faults)
        fault_gen = fault_generator(faults, gen if isinstance(seed, torch.Generator) else seed)
    chip = ProgrammedChip(
        mapping=mapping,
        device=model,
        strategy=strategy,
        seed=seed if isinstance(seed, int) else None,
        config=config,
        faults=faults,
        backend=backend,
    )
    for layer in mapping.layers.values():
        blocks = weight_blocks(layer)
        w_max, adc_range = _core_scales(layer, blocks, model, strategy, config, mapping.spec)
        layer_faults = faults.for_layer(layer, fault_gen) if faults is not None and fault_gen is not None else None
        chip.cores[layer.name] = program_core(
            blocks,
            model,
            strategy,
            gen,
            spec=mapping.spec,
            config=config,
            w_max=w_max,
            faults=layer_faults,
            adc_range_uA=adc_range,
            backend=chosen,
        )
    return chip


# --- the candidates of the LDPU chain, registered in aimc.kernels ----------------------------------------------------

#: Representative LDPU chain timed to choose the kernel: a 512 x 512 linear layer (2 x 2 cores) with ReLU, 1,024
#: rows; the probe uses 16 rows.
CHAIN_BENCH_SIZE, CHAIN_BENCH_ROWS, CHAIN_PROBE_ROWS = 512, 1024, 16


def _chain_workloads(after: AbcMapping[str, str], names: tuple[str, ...]) -> dict[str, kernels.Workload]:
    """Timed LDPU chains of a layer's core outputs (FP16 values), one per candidate of ``ldpu_chain``; each runs once
    on a few rows first, so that compiling is not timed."""
    from aimc.compiler import compile as compile_model

    gen = torch.Generator().manual_seed(0)
    size = CHAIN_BENCH_SIZE
    model = torch.nn.Sequential(torch.nn.Linear(size, size), torch.nn.ReLU())
    layer = next(iter(compile_model(model, example_input=torch.randn(64, size, generator=gen)).layers.values()))
    t = layer.tiling

    def call(name: str, rows: int) -> functools.partial:
        y = torch.randn(t.row_blocks, t.col_blocks, rows, t.block_outputs, generator=gen).half().float()
        out = torch.empty(rows, t.outputs)
        registers = _fused_registers(layer) if name == "numba" else None
        return functools.partial(_ldpu_rows, layer, y, None, True, out, registers)

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
    "CURRENT_HEADROOM",
    "ProgrammedChip",
    "core_adc_range",
    "core_w_max",
    "limited_w_max",
    "peak_current",
    "program",
]
