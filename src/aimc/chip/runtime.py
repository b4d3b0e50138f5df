"""A programmed chip and the network's forward pass on it; the chip as a ``torch.nn.Module``; loading a saved chip.

``ProgrammedChip.run(x, t, mode, seed)`` reads the chip at ``t`` seconds after programming with fresh read noise: each
layer's cores are prepared once (drift, frozen read noise, drift compensation), then the mapping's ops run in order,
each intermediate value freed after its last reader. Analog layers run on their cores (:mod:`aimc.chip.analog`),
LSTM/GRU layers step by step (:mod:`aimc.chip.recurrent`), every other op from the table of :mod:`aimc.chip.ops`.

``chip.as_module(t=3600.0, mode="four-phase", seed=0)`` returns an :class:`AnalogModule`; calling it runs the network
on the chip like :meth:`ProgrammedChip.run`::

    model = chip.as_module(t=86400.0)          # one day after programming
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())

Read noise: the real chip draws fresh read noise on every read, and so does the module: the k-th call (k = 0, 1,
...) seeds its read noise with :meth:`AnalogModule.call_seed` ``(k)``, a seed derived from ``(seed, k)``. The first
call uses ``seed`` itself, so it equals ``chip.run(x, t, mode, seed=seed)``. A module made with the same chip and
seed therefore gives the same sequence of outputs, and :meth:`AnalogModule.reset` starts the sequence again.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from torch import nn

from aimc import kernels
from aimc._validation import SeedLike, check_choice, check_number, make_generator
from aimc.chip.analog import Observer, run_analog
from aimc.chip.ops import OpContext, run_op
from aimc.chip.recurrent import run_rnn
from aimc.chip.storage import ChipState, read_chip, save_chip
from aimc.compiler.mapping import MappedLayer, Op
from aimc.core.analog import CoreReadout
from aimc.devices.base import check_time
from aimc.errors import AimcError, ArgumentTypeError, ValidationError
from aimc.spec import READ_MODES

#: ``recalibrate(layer, measure) -> layer``: see :meth:`ProgrammedChip.run`.
Recalibrator = Callable[[MappedLayer, Callable[[Observer], None]], MappedLayer]


@dataclass
class ProgrammedChip(ChipState):
    """A mapping programmed into PCM devices, and the network's forward pass on it (:meth:`run`).

    Attributes:
        mapping: the compiled network.
        device: the device model.
        strategy: ``"odp"`` or ``"tdp"``.
        seed: the programming seed (recorded, not reused).
        config: unpublished core parameters.
        cores: one stacked :class:`~aimc.core.ProgrammedCore` per analog layer, by layer name.
        faults: the chip's hardware defects (:class:`aimc.faults.Faults`), or None for a perfect chip.
        backend: the kernels its runs use by default (:class:`aimc.kernels.Backend`; None: chosen by measurement).
    """

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
        (reproducible: ``module.reset()`` starts again; see :class:`AnalogModule`)."""
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
                registers, :mod:`aimc.chip.adabs`).
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
            self.faults.check_mapping(self.mapping)
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
        digital = quantize and device_type == "cpu" and any(op.kind == "digital" for op in self.mapping.ops)
        rounding = chosen.kernel("fp16_round", device_type) if digital else "torch"
        ctx = OpContext(self.mapping.extra_tensors, self.tensor_device, quantize, rounding)
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
                        value = self._run_op(op, env, readouts, gen, ctx, chain, recalibrate, pool)
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
        ctx: OpContext,
        chain: bool,
        recalibrate: Recalibrator | None = None,
        pool: Op | None = None,
    ) -> torch.Tensor:
        """One op of the mapping: an analog layer on its cores, an LSTM/GRU layer step by step, or a non-analog op
        (:mod:`aimc.chip.ops`); ``chain``: the LDPU chains run compiled (kernel ``ldpu_chain``)."""
        args = [env[i] for i in op.inputs]
        if op.kind == "analog":
            layer = self.mapping.layers[op.attrs["layer"]]
            addend = env[layer.add] if layer.add is not None else None
            readout = readouts[layer.name]
            if recalibrate is not None:
                current = layer

                def measure(obs: Observer) -> None:
                    run_analog(current, readout, args[0], addend, gen, ctx.quantize, obs, chain=chain)

                layer = recalibrate(layer, measure)
            window = None if pool is None else (tuple(pool.attrs["kernel"]), tuple(pool.attrs["stride"]))
            return run_analog(layer, readout, args[0], addend, gen, ctx.quantize, pool=window, chain=chain)
        if op.kind in ("lstm", "gru"):
            layer = self.mapping.layers[op.attrs["layer"]]
            reverse, batch_first = op.attrs.get("reverse", False), op.attrs.get("batch_first", True)
            return run_rnn(layer, readouts[layer.name], args[0], gen, ctx.quantize, chain, reverse, batch_first)
        return run_op(op, args, ctx)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Save the programmed chip (safetensors + JSON metadata; see :mod:`aimc.chip.storage`); :func:`load` reads
        it back."""
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


#: The keyword arguments of :meth:`ProgrammedChip.run` a module passes on (``quantize``, ``read_noise``, ...).
RUN_OPTIONS = tuple(
    name
    for name, p in inspect.signature(ProgrammedChip.run).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


class AnalogModule(nn.Module):
    """A programmed chip as a ``torch.nn.Module``: ``module(x)`` is the network's forward pass on the chip.

    Made by :meth:`aimc.ProgrammedChip.as_module`. The chip is programmed once (its programming noise is fixed);
    each call reads it ``t`` seconds after programming in read mode ``mode``.

    Attributes a user may change between calls (checked on assignment, as ``chip.run`` checks them):

    - ``t``: seconds after programming (a number >= 0).
    - ``mode``: ``"four-phase"`` or ``"one-phase"``.
    - ``seed``: the read-noise seed (an int >= 0). Setting it restarts the call counter, as :meth:`reset` does.
    - ``run_kwargs``: the other options of :meth:`ProgrammedChip.run` (``quantize``, ``drift_compensation``,
      ``read_noise``, ``recalibrate``, ``backend``), a dict.
    - ``chip``: the :class:`~aimc.ProgrammedChip` that runs.

    Read noise is fresh on every call and reproducible: call k (counted from 0 since the module was made, its seed
    set, or :meth:`reset`) runs with ``seed=self.call_seed(k)``; call 0 uses ``seed`` itself, so the first output
    equals ``chip.run(x, t, mode, seed=seed)``. A call that raises does not count.

    The chip has no trainable parameters: ``parameters()`` and ``state_dict()`` are empty, ``train()`` and
    ``eval()`` change nothing in the simulation, and outputs carry no gradient (run it under ``torch.no_grad()``
    or not, the result is the same). ``module.to(device)``, ``.cpu()`` and ``.cuda()`` (also through a parent
    module) move the chip: ``module.chip`` becomes ``chip.to(device)``, and inputs are moved to the chip's
    device. Dtype conversions (``.half()``, ``.to(torch.float64)``) leave the chip alone: its number formats are
    the hardware's.
    """

    def __init__(
        self,
        chip: ProgrammedChip,
        t: float = 3600.0,
        mode: str = "four-phase",
        seed: int = 0,
        **run_kwargs: Any,
    ) -> None:
        """Wrap ``chip``; ``t``, ``mode``, ``seed`` and ``run_kwargs`` as for :meth:`ProgrammedChip.run`."""
        super().__init__()
        if not isinstance(chip, ProgrammedChip):
            raise ArgumentTypeError(f"chip must be an aimc.ProgrammedChip, got {type(chip).__name__}")
        unknown = sorted(set(run_kwargs) - set(RUN_OPTIONS))
        if unknown:
            raise ArgumentTypeError(
                f"unknown option(s) of chip.run: {', '.join(unknown)}; allowed: t, mode, seed, {', '.join(RUN_OPTIONS)}"
            )
        self.chip = chip
        self.t = t
        self.mode = mode
        self.seed = seed
        self.run_kwargs: dict[str, Any] = dict(run_kwargs)

    @property
    def t(self) -> float:
        """Seconds after programming at which the chip is read (>= 0)."""
        return self._t

    @t.setter
    def t(self, value: float) -> None:
        self._t = check_time(value, "t")

    @property
    def mode(self) -> str:
        """The read mode, ``"four-phase"`` or ``"one-phase"``."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = check_choice(value, "mode", READ_MODES)

    @property
    def seed(self) -> int:
        """The read-noise seed; setting it restarts the call counter (the next call uses this seed itself)."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(check_number(value, "seed", low=0, integer=True))
        self._calls = 0

    @property
    def calls(self) -> int:
        """Calls since the module was made, its seed set or :meth:`reset`: the next call uses ``call_seed(calls)``."""
        return self._calls

    def reset(self) -> None:
        """Restart the read-noise sequence: the next call gives the same output as the first one did."""
        self._calls = 0

    def call_seed(self, k: int) -> int:
        """The read-noise seed of call ``k`` (from 0): ``seed`` for k = 0, else a 63-bit seed derived from
        ``(seed, k)`` (``numpy.random.SeedSequence``), so different calls and different seeds get unrelated noise.

        ``chip.run(x, t, mode, seed=module.call_seed(k))`` reproduces call k outside the module.
        """
        k = int(check_number(k, "k", low=0, integer=True))
        if k == 0:
            return self._seed
        state = np.random.SeedSequence([self._seed, k]).generate_state(1, dtype=np.uint64)[0]
        return int(state) >> 1

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The network's forward pass on the chip, with this call's read noise.

        Args:
            inputs: the network's input batch, shaped as for the PyTorch network (e.g. images ``(B, C, H, W)``,
                token ids ``(B, T)``); several tensors for a network with several inputs. Moved to the chip's
                device.

        Returns:
            The network's output (e.g. logits ``(B, classes)``), on the chip's device, without gradient.
        """
        x = inputs[0] if len(inputs) == 1 else tuple(inputs)
        out = self.chip.run(x, t=self._t, mode=self._mode, seed=self.call_seed(self._calls), **self.run_kwargs)
        self._calls += 1
        return out

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> AnalogModule:
        """``to`` / ``cpu`` / ``cuda`` (also from a parent module): move the chip where ``fn`` sends a tensor."""
        here = self.chip.tensor_device
        probe = fn(torch.empty(0, device=here))
        if isinstance(probe, torch.Tensor) and probe.device != here:
            self.chip = self.chip.to(probe.device)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        """``network=..., cores=..., pcm=..., strategy=..., t=..., mode=..., seed=...`` (and the run options)."""
        chip = self.chip
        parts = [
            f"network={chip.mapping.model_name!r}",
            f"cores={chip.mapping.cores_used}",
            f"pcm={getattr(chip.device, 'name', type(chip.device).__name__)!r}",
            f"strategy={chip.strategy!r}",
            f"t={self._t:g}",
            f"mode={self._mode!r}",
            f"seed={self._seed}",
        ]
        parts += [f"{k}={v!r}" for k, v in self.run_kwargs.items()]
        return ", ".join(parts)


def load(path: str | os.PathLike[str]) -> ProgrammedChip:
    """Load a chip saved by :meth:`ProgrammedChip.save`.

    The file is checked as untrusted input (:func:`aimc.chip.storage.read_chip`): size, format, checksum, names,
    shapes, dtypes and ranges of every tensor; anything but a valid file raises :class:`~aimc.errors.CorruptFileError`
    (:class:`~aimc.errors.ValidationError` if ``path`` is not a file), and no code from the file ever runs.
    """
    state = read_chip(path)
    return ProgrammedChip(**{f.name: getattr(state, f.name) for f in dataclasses.fields(state)})


__all__ = ["RUN_OPTIONS", "AnalogModule", "ProgrammedChip", "Recalibrator", "load"]
