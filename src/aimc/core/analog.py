"""One analog in-memory computing core (or a stack of cores simulated together), docs/physics.md §2-§7.

A weight block W of at most ``tile_cols`` x ``tile_rows`` (outputs x inputs, the layout of ``torch.nn.Linear``) is
stored as the conductances of 4 PCM devices per weight, G1+, G2+, G1-, G2- (8T4R cell, W ∝ (G1+ + G2+) - (G1- +
G2-)). Each core scales its own block: the largest |W| of the core maps to the largest polarity conductance G_max
("per-core W_max -> G_max scaling"). An MVM applies the input as PWM pulses, integrates the bit-line currents in the
CCO ADCs (one ADC with a positive and a negative counter per output) and turns the counts into a number in the
LDPU in FP16: per-counter affine correction, positive minus negative, scale.

Every tensor of a :class:`ProgrammedCore` may carry leading *core* dimensions ``...``: a stack of equally shaped
cores (e.g. all sub-matrices of one network layer) is programmed and run in one batched tensor operation.

Read modes (docs/physics.md §7): four-phase reads every device with the same voltage polarity in four PWM cycles
(±input x ±weight); one-phase applies all four combinations in one cycle, so devices on rows with a negative input
are read with the negative voltage and conduct G·(1 + a) (polarity asymmetry, an assumption of
:mod:`aimc.core.config`), and the counters integrate twice the current in half the time (closer to saturation and
to the CCO's non-linear range).

Fast path: with x = x+ - x- and the polarity conductances G+, G-, the positive counter of a four-phase MVM collects
x+·G+ + x-·G- = (|x|·S + x·D)/2 and the negative one (|x|·S - x·D)/2, S = G+ + G-, D = G+ - G- (two matmuls instead
of four). The CCO of each counter is evaluated at the mean current of its two phases; ``exact_phases=True`` evaluates
each phase separately (four matmuls) and is the reference the fast path is tested against.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from aimc import kernels
from aimc._validation import SeedLike, check_choice, check_finite_tensor, check_number, make_generator
from aimc.core import fused, readdraw
from aimc.core.adc import AdcState, cco_counts, cco_counts_, sample_adc
from aimc.core.config import CoreConfig
from aimc.core.fastmath import (
    _AUX_DTYPES,
    AUX_PRODUCT_CANDIDATES,
    POS_NEG_PRODUCT_CANDIDATES,
    IntPlanes,
    ScaledPlanes,
    int8_plane,
    int8_planes,
    int_plane_products,
    pack_int_planes,
    pack_scaled_planes,
    scaled_plane_products,
)
from aimc.core.faults import CoreFaults
from aimc.core.inputs import FourPhaseInputs, prepare_four_phase
from aimc.core.normals import fill_normal_
from aimc.core.philox import draw_key, fill_normal_rows_
from aimc.core.pwm import quantize_input
from aimc.core.readnoise import fresh_noise_fraction
from aimc.core.rowpar import run_parts
from aimc.core.workpool import work_tensor
from aimc.devices.base import DeviceModel, DeviceState, check_time
from aimc.devices.registry import get as get_device
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.spec import READ_MODES, ChipSpec

#: Batch rows per thread below which an MVM is not split into parts that run at once (each part makes three
#: product calls of about 25 us fixed cost each; measured on a 2-core Xeon, 128 rows cost about 0.3 ms).
PART_MIN_ROWS = 128

#: Kernels whose pos - neg product runs on the int8 planes of :func:`int8_planes`.
INT8_PRODUCTS = ("int-mm", "onednn-int8")
#: Largest PWM level the int8 input paths hold exactly (the 8-bit chip's 127; :func:`prepare_four_phase` writes the
#: levels as int8, and the int8 products multiply them as int8). A chip with more PWM bits runs them in float32.
INT8_LEVELS = 127
#: Largest corrected charge (fC, in the LDPU's unit) kept in FP16: its largest finite value, 65,504.
FP16_CHARGE_LIMIT = 65504.0
#: Largest PWM level bfloat16 holds exactly (8-bit significand: every integer up to 256). Beyond it, the auxiliary
#: products run in float32, so that |x| and x^2 keep the input's resolution.
BF16_EXACT_LEVELS = 256


def readout_kernels_for(chosen: Mapping[str, str], spec: ChipSpec) -> dict[str, str]:
    """The kernels ``chosen`` for the hot operations, restricted to those that hold ``spec``'s PWM levels exactly:
    no int8 products above :data:`INT8_LEVELS` (pwm_bits > 8; bfloat16 auxiliary products instead), no bfloat16
    auxiliary products above :data:`BF16_EXACT_LEVELS` (pwm_bits > 9); float32, the reference kernel, instead."""
    out = dict(chosen)
    if spec.input_levels > INT8_LEVELS and out.get("pos_neg_product") in INT8_PRODUCTS:
        out["pos_neg_product"] = "float32"
    if spec.input_levels > INT8_LEVELS and out.get("aux_product") == "int8":
        out["aux_product"] = "bfloat16"
    if spec.input_levels > BF16_EXACT_LEVELS and out.get("aux_product") == "bfloat16":
        out["aux_product"] = "float32"
    return out


#: Device-assignment strategies (docs/physics.md §2.3): one device per polarity (ODP) or two (TDP).
STRATEGIES: tuple[str, ...] = ("odp", "tdp")


def _unit_layout(strategy: str, devices_per_unit: int) -> tuple[tuple[int, ...], bool]:
    """Polarity (+1/-1) of each modelled conductance unit, and whether the layout splits a pair into 2 devices.

    - ODP, one-device model: units G1+, G2+, G1-, G2-; device 1 of the weight's polarity is programmed, device 2 of
      each polarity stays RESET (docs/physics.md §2.3).
    - TDP, one-device model: the same four devices, both of a polarity used (see :func:`_split_tdp`).
    - TDP, two-device model (HERMES ``hermes-2dev``, fitted on the pair): one unit per polarity, the pair as a whole.
    """
    if devices_per_unit == 1:
        return (1, 1, -1, -1), strategy == "tdp"
    if devices_per_unit == 2 and strategy == "tdp":
        return (1, -1), False
    raise ValidationError(
        f"strategy {strategy!r} cannot use a device model with devices_per_unit={devices_per_unit}: ODP needs a "
        "one-device model (e.g. 'hermes-1dev', 'standard'); a two-device model ('hermes-2dev') needs strategy 'tdp'"
    )


def _split_tdp(target: torch.Tensor, g_device_max: float) -> tuple[torch.Tensor, torch.Tensor]:
    """TDP device assignment of a polarity target (docs/physics.md §2.3): returns the targets of devices 1 and 2.

    If the target exceeds what one device reaches at SET, one device is kept SET (at its maximum) and the other is
    iterated to the rest; otherwise one device is iterated to the target and the other RESET (0). All devices are
    taken to share the SET conductance ``g_device_max``, so "the one with the higher SET value" is device 1.
    """
    d1 = target.clamp_max(g_device_max)
    return d1, target - d1


def polarity_g_max(model: DeviceModel, strategy: str) -> float:
    """Largest conductance of one polarity (uS): one device for ODP, two for TDP (docs/physics.md §2.3)."""
    _, split = _unit_layout(strategy, model.devices_per_unit)
    return model.g_max_uS * (2 if split else 1)


def _check_levels(x: torch.Tensor, limit: int, quantize: bool) -> None:
    """``x`` given as PWM levels: a floating-point tensor within [-limit, limit] (which also rules out NaN/Inf)."""
    if not quantize:
        raise ValidationError("levels=True gives PWM levels, which need quantize=True (ideal converters take values)")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.numel() == 0:
        raise ArgumentTypeError("x given as PWM levels must be a non-empty floating-point torch.Tensor")
    low, high = torch.aminmax(x)
    if not (-limit <= float(low) and float(high) <= limit):  # NaN fails both comparisons
        raise ValidationError(
            f"x given as PWM levels must lie in [-{limit}, {limit}]; got [{float(low)}, {float(high)}]"
        )


def _broadcast_lead(a: torch.Size, b: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes(a, b)`` without its overhead (tens of microseconds, on the hot path)."""
    if a == b or not b:
        return a
    if not a:
        return b
    n = max(len(a), len(b))
    a_p, b_p = (1,) * (n - len(a)) + tuple(a), (1,) * (n - len(b)) + tuple(b)
    if any(i != j and i != 1 and j != 1 for i, j in zip(a_p, b_p, strict=True)):
        return torch.broadcast_shapes(a, b)  # raises its error
    return torch.Size(max(i, j) if i != 1 and j != 1 else i * j for i, j in zip(a_p, b_p, strict=True))


def _shared_dims(x_lead: torch.Size, lead: torch.Size) -> int:
    """How many trailing dims of the cores' ``lead`` an input with leading dims ``x_lead`` broadcasts over (its
    size there is 1, or the dim is missing): the cores of those dims take the same input."""
    dims = 0
    while dims < len(lead) and (dims >= len(x_lead) or x_lead[len(x_lead) - 1 - dims] == 1):
        dims += 1
    return dims


class _Products(NamedTuple):
    """The products of one fast-path MVM of C cores (leading dims ``lead``) and B rows.

    y: half the (pos - neg) charge (fC) without fresh noise, float32 ``(G, B, S, W)`` for the C = G·S cores (core c
        at ``[c // S, :, c % S]``): W = m, or with ``y_pair`` W = 2m and the charge is the sum of the two halves,
        fl(256·step·Y_hi) + fl(step·Y_lo) of the int8 planes (:func:`int8_planes`); or a tuple of G such tensors
        ``(1, B, S, W)``, one per group (:func:`scaled_plane_products` unstacked). With ``y_scale``, int32: the
        plane products Y_hi, Y_lo themselves (:func:`int_plane_products`).
    y_scale: ``(C, 2)`` float32 (256·step, step) of int32 plane products in ``y``, else None.
    a: half the (pos + neg) charge in ``aux_dtype``, ``(*lead, B, m)``; with ``a_scale``, int32: the product of
        the int8 plane (:func:`int8_plane`), the charge being fl(a_scale·a).
    a_scale: ``(C,)`` float32 step of each core's int8 plane, else None.
    var: the fresh-noise variance of y (``aux_dtype``, ``(*lead, B, m)``), or None without fresh noise.
    key: with numba, the words that determine this MVM's standard normals (:mod:`aimc.core.philox`; the fused
        kernel draws them itself), else None.
    z: without numba, this MVM's standard normals (float32), else None.
    """

    y: torch.Tensor | tuple[torch.Tensor, ...]
    y_pair: bool
    y_scale: torch.Tensor | None
    a: torch.Tensor
    a_scale: torch.Tensor | None
    var: torch.Tensor | None
    key: np.ndarray | None
    z: torch.Tensor | None


@dataclass
class CoreReadout:
    """Everything about a programmed core that depends only on (chip, t, mode): computed once per run.

    Attributes:
        core: the programmed core.
        mode: read mode.
        g_pos, g_neg: polarity conductances G+ and G- (uS) as read with the positive voltage, ``(..., m, n)``,
            including this run's quasi-static read noise.
        y_matrix: ``(..., K, m)`` float32 matrix giving half of (pos - neg) charge (fC) per PWM level of the input:
            four-phase (V·ns_per_LSB/2)·D^T, D = G+ - G-, against the signed input (K = n); one-phase the same of
            [D; -D']^T against [x+, x-] (K = 2n), primes marking the negative-voltage read G·(1 + a).
        a_matrix: ``(..., K, m)`` the same for half of pos + neg (S = G+ + G-), in ``aux_dtype``.
        fresh_var: ``(..., n, m)`` per-MVM read-noise variance of the half charge per squared PWM level, summed over
            a weight's devices, in ``aux_dtype``, or None without read noise.
        out_scale: ``(..., 1, 1)`` output units per fC of corrected charge, drift compensation included.
        aux_dtype: dtype of the pos + neg and noise-variance products (kernel ``aux_product``).
        y_planes: ``y_matrix`` as int8 planes (hi, lo, step) for the int8 pos - neg product
            (:func:`~aimc.core.fastmath.int8_planes`), or None to multiply in float32.
        a_plane: ``a_matrix`` as one int8 plane (q, step) for the int8 pos + neg product
            (:func:`~aimc.core.fastmath.int8_plane`, kernel ``aux_product="int8"``), or None.
        kernels: the kernel of each hot operation this readout runs with (:mod:`aimc.kernels`): ``pos_neg_product``,
            ``aux_product``, ``mvm_tail``, ``mvm_threads`` and, with read noise, ``readout_draw``.

    A readout keeps work buffers between calls of :meth:`mvm` (the hot path then allocates only its result), so
    one readout must not be used from two threads at once.
    """

    core: ProgrammedCore
    mode: str
    g_pos: torch.Tensor
    g_neg: torch.Tensor
    y_matrix: torch.Tensor
    a_matrix: torch.Tensor
    fresh_var: torch.Tensor | None
    out_scale: torch.Tensor
    aux_dtype: torch.dtype
    y_planes: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    a_plane: tuple[torch.Tensor, torch.Tensor] | None = None
    kernels: dict[str, str] = field(default_factory=dict)
    _registers: dict[tuple, tuple[torch.Tensor, ...]] = field(default_factory=dict, repr=False)

    @property
    def phases(self) -> int:
        """Phases each counter integrates over: 2 in four-phase mode (e.g. x+·G+ and x-·G-), 1 in one-phase."""
        return 2 if self.mode == "four-phase" else 1

    def _buffer(self, name: str, shape: torch.Size | tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """A work tensor used within one MVM call, kept between calls and runs (:mod:`aimc.core.workpool`)."""
        return work_tensor(name, shape, dtype, self.g_pos.device)

    def mvm(
        self,
        x: torch.Tensor,
        generator: SeedLike = None,
        *,
        x_range: float | torch.Tensor = 1.0,
        exact_phases: bool = False,
        quantize: bool = True,
        output_dtype: torch.dtype = torch.float32,
        levels: bool = False,
    ) -> torch.Tensor:
        """One MVM per row of ``x`` on the core(s), with fresh read noise.

        Args:
            x: inputs, shape ``(..., B, n)`` (leading core dims broadcast against the core's), finite.
            generator: seed or generator for the fresh read noise (required when there is read noise).
            x_range: input value mapped to PWM full scale; larger magnitudes saturate.
            exact_phases: evaluate each of the four phases' CCO counts separately (four-phase only).
            quantize: False replaces the converters by ideal ones: no PWM rounding or saturation, the exact
                bit-line charge instead of CCO counts, float32 instead of FP16 (device noise stays).
            output_dtype: dtype of the result (``torch.float16`` hands the LDPU's values on without conversion).
            levels: ``x`` already holds the signed PWM levels (integers in [-L, L], any float dtype, e.g. from
                :func:`~aimc.core.pwm.quantize_input`); ``x_range`` still sets the output scale. Needs ``quantize``.

        Returns:
            ``(..., B, m)`` estimates of ``x @ W.T`` as the LDPU computes them (FP16 values in float32).
        """
        core = self.core
        n = core.shape[1]
        scalar_range = isinstance(x_range, int | float)
        if scalar_range:
            check_number(x_range, "x_range", low=0.0, low_inclusive=False)
        if (
            not levels
            and quantize
            and not exact_phases
            and scalar_range
            and self.takes_prepared_inputs
            and isinstance(x, torch.Tensor)
            and x.is_floating_point()
            and x.dim() >= 2
            and x.shape[-1] == n
            and x.numel() > 0
            and x.device.type == "cpu"
        ):  # the hot path: the input pass also checks that x is finite
            return self._mvm_values(x, generator, float(x_range), output_dtype)
        if levels:
            _check_levels(x, core.spec.input_levels, quantize)
        else:
            check_finite_tensor(x, "x")
        if x.dim() < 2 or x.shape[-1] != n:
            raise ValidationError(f"x must have shape (..., batch, {n}) for this core; got {tuple(x.shape)}")
        spec = core.spec
        gen = make_generator(generator, "generator") if self.fresh_var is not None else None
        if not quantize:
            levels_in = x.to(self.g_pos.dtype) * (spec.input_levels / x_range)  # PWM levels, unrounded
            tau = levels_in * spec.pwm_ns_per_lsb  # pulse durations (ns)
            y = torch.matmul(tau, (self.g_pos - self.g_neg).mT)  # (pos - neg) charge / V: uS·ns
            half_charge = 0.5 * core.config.read_voltage_V * spec.pwm_ns_per_lsb  # fC / 2 per (uS · PWM level)
            self._fresh_noise_(y, levels_in.to(self.aux_dtype), gen, scale=spec.pwm_ns_per_lsb / half_charge)
            return y * (core.config.read_voltage_V * self.out_scale * x_range)
        if self.takes_prepared_inputs and not exact_phases and scalar_range:
            src = x.reshape(1, -1, n)  # all rows, in order, as one block of n inputs
            prepared = prepare_four_phase(
                src,
                n,
                1,
                self.aux_dtype,
                scale=None if levels else spec.input_levels / x_range,
                limit=spec.input_levels,
            )
            shaped = FourPhaseInputs(*(v.view(x.shape) for v in prepared))
            return self.mvm_prepared(shaped, gen, x_range=x_range, output_dtype=output_dtype)
        tau = x if levels else quantize_input(x.to(self.g_pos.dtype), x_range, spec)  # PWM levels (LSB), signed
        if exact_phases and self.mode == "four-phase":
            counts = self._exact_four_phase_counts(tau, gen)
        elif self._use_fused(x_range):
            return self._fused_mvm(tau, gen, float(x_range)).to(output_dtype)
        else:
            counts = self._fast_counts(tau, gen)
        return core.ldpu_combine(counts, self.phases, self.out_scale * x_range, output_dtype)

    def _mvm_values(
        self, x: torch.Tensor, generator: SeedLike, x_range: float, output_dtype: torch.dtype
    ) -> torch.Tensor:
        """:meth:`mvm` of input values on the hot path (:attr:`takes_prepared_inputs`): quantisation and the
        finiteness check in the input pass, then :meth:`mvm_prepared`."""
        n = self.core.shape[1]
        scale = self.core.spec.input_levels / x_range
        gen = make_generator(generator, "generator") if self.fresh_var is not None else None
        counts: list[int] = []

        def inputs(rows: slice) -> FourPhaseInputs:
            part = x[..., rows, :]
            src = part.reshape(-1, part.shape[-2], n)  # a view where x is contiguous
            nonfinite = np.zeros(src.shape[0] * src.shape[1], dtype=np.int32)
            prepared = prepare_four_phase(
                src, n, 1, self.aux_dtype, scale=scale, limit=self.core.spec.input_levels, nonfinite=nonfinite
            )
            counts.append(int(nonfinite.sum()))
            return FourPhaseInputs(*(v.view(part.shape) for v in prepared))

        try:
            return self._fused_parts(inputs, x.shape[:-2], x.shape[-2], gen, x_range, output_dtype)
        finally:  # a non-finite input makes its rows' results meaningless: raise instead of returning them
            if any(counts):
                raise ValidationError(f"x must be finite; it holds {sum(counts)} NaN/Inf value(s)")

    def _fused_parts(
        self,
        inputs: Callable[[slice], FourPhaseInputs],
        x_lead: torch.Size,
        batch: int,
        gen: torch.Generator | None,
        x_range: float,
        output_dtype: torch.dtype,
    ) -> torch.Tensor:
        """The products and the fused pass of ``batch`` rows, whose inputs ``inputs(rows)`` gives for a slice of
        rows, split with the ``mvm_threads`` kernel ``"parts"`` into parts of rows that run at once on PyTorch's
        threads (:func:`~aimc.core.rowpar.run_parts`; one part for small batches or one thread). Every output and
        its normal depend only on its row, so the numbers do not depend on the split.

        Returns:
            ``(*lead, batch, m)`` in ``output_dtype``.
        """
        lead = tuple(_broadcast_lead(x_lead, self.y_matrix.shape[:-2]))
        m = self.y_matrix.shape[-1]
        split = self.kernels.get("mvm_threads") == "parts"
        parts = max(1, min(torch.get_num_threads(), batch // PART_MIN_ROWS)) if split else 1
        if parts == 1:
            given = inputs(slice(None))
            p = self._products_of(given.levels, given.magnitude, given.square, gen)
            return self._fused_tail(p, x_range).to(output_dtype)
        key = draw_key(gen) if gen is not None and self.fresh_var is not None else None
        out = torch.empty((*lead, batch, m), dtype=torch.float32)
        self._fused_scale(lead, x_range), self._adc_registers(lead)  # cached before the threads start
        if self.y_planes is not None:
            shared = _shared_dims(x_lead, torch.Size(lead))
            if self._scaled_planes(lead, shared, batch // parts) is None:
                self._int_planes(lead, shared)
        bounds = [batch * i // parts for i in range(parts + 1)]

        def job(i: int) -> None:
            given = inputs(slice(bounds[i], bounds[i + 1]))
            p = self._products_of(given.levels, given.magnitude, given.square, None, key=key, tag=str(i))
            self._fused_tail(p, x_range, out=out, batch_offset=bounds[i])

        run_parts([functools.partial(job, i) for i in range(parts)])
        return out.to(output_dtype)

    @property
    def _tail_fused(self) -> bool:
        """Whether the converters and LDPU run as the compiled pass (:mod:`aimc.core.fused`; kernel ``mvm_tail``)."""
        return self.kernels.get("mvm_tail") == "numba" and self.g_pos.device.type == "cpu"

    def _use_fused(self, x_range: float | torch.Tensor) -> bool:
        """Whether this MVM runs the fused pass (which takes a scalar ``x_range`` only)."""
        return self._tail_fused and isinstance(x_range, int | float)

    def _products(self, tau: torch.Tensor, gen: torch.Generator | None) -> _Products:
        """The fast path's products of the PWM levels ``tau`` ``(..., B, n)`` (see :class:`_Products`)."""
        tau_aux = tau.to(self.aux_dtype, copy=True)  # a copy even in float32: abs_ below must not touch tau
        if self.mode == "four-phase":
            y_in, a_in = tau, tau_aux.abs_()
            sq_in = a_in * a_in if self.fresh_var is not None else None
        else:
            y_in = torch.cat([tau.clamp_min(0.0), (-tau).clamp_min_(0.0)], dim=-1)
            a_in = y_in.to(self.aux_dtype)
            sq_in = tau_aux * tau_aux if self.fresh_var is not None else None
        return self._products_of(y_in, a_in, sq_in, gen)

    def _products_of(
        self,
        y_in: torch.Tensor,
        a_in: torch.Tensor,
        sq_in: torch.Tensor | None,
        gen: torch.Generator | None,
        *,
        key: np.ndarray | None = None,
        tag: str = "",
    ) -> _Products:
        """The products of the inputs of the pos - neg product ``y_in`` (levels; int8 with int8 planes), the
        pos + neg product ``a_in`` and the noise variance ``sq_in`` (squared levels), all ``(..., B, K)``.

        ``key``: the normals' key of the MVM this is a part of (with numba; else drawn from ``gen``); ``tag``
        names this part's work buffers."""
        lead = _broadcast_lead(y_in.shape[:-2], self.y_matrix.shape[:-2])
        rows, m = y_in.shape[-2], self.y_matrix.shape[-1]
        cores = math.prod(lead)
        out_shape = torch.Size((*lead, rows, m))
        if self.y_planes is None:
            if y_in.dtype != self.y_matrix.dtype:
                y_in = self._buffer("x_float" + tag, y_in.shape, self.y_matrix.dtype).copy_(y_in)
            y = torch.matmul(y_in, self.y_matrix, out=self._buffer("y" + tag, out_shape, torch.float32))
            y, pair, y_scale = y.view(cores, rows, 1, m), False, None
        else:
            if y_in.dtype != torch.int8:
                y_in = self._buffer("x_int8" + tag, y_in.shape, torch.int8).copy_(y_in)
            shared = _shared_dims(y_in.shape[:-2], lead)
            packed = self._scaled_planes(tuple(lead), shared, rows)
            if packed is not None:  # the groups' products as they come where the fused kernel takes them
                y = scaled_plane_products(y_in, packed, tuple(lead), stack=not self._tail_fused)
                y_scale = None
            else:  # the exact int32 products; the converter pass scales them as oneDNN does
                planes = self._int_planes(tuple(lead), shared)

                def buffer(g: int, shape: tuple[int, int]) -> torch.Tensor:
                    return self._buffer(f"y_int{g}{tag}", shape, torch.int32)

                y, y_scale = int_plane_products(y_in, planes, tuple(lead), buffer), planes.scales
            pair = True
        if self.a_plane is None:
            a = torch.matmul(a_in, self.a_matrix, out=self._buffer("a_prod" + tag, out_shape, self.aux_dtype))
            a_scale = None
        else:
            a, a_scale = self._int_a(a_in, tuple(lead), out_shape, tag), self._a_scales(tuple(lead))
        if self.fresh_var is None or (gen is None and key is None) or sq_in is None:
            return _Products(y, pair, y_scale, a, a_scale, None, None, None)
        var = torch.matmul(sq_in, self.fresh_var, out=self._buffer("var_prod" + tag, out_shape, self.aux_dtype))
        if key is not None or fused.available():
            return _Products(y, pair, y_scale, a, a_scale, var, draw_key(gen) if key is None else key, None)
        return _Products(y, pair, y_scale, a, a_scale, var, None, self._normals(out_shape, gen))

    def _int_a(self, a_in: torch.Tensor, lead: tuple[int, ...], out_shape: torch.Size, tag: str) -> torch.Tensor:
        """The exact int32 product of the input magnitudes ``a_in`` ``(..., B, K)`` (integer PWM levels, any dtype)
        with each core's int8 plane of pos + neg (:attr:`a_plane`): ``(*lead, B, m)``, one ``torch._int_mm`` per
        core into its rows of the result."""
        if a_in.dtype != torch.int8:
            a_in = self._buffer("mag_int8" + tag, a_in.shape, torch.int8).copy_(a_in)
        rows, k = a_in.shape[-2:]
        q = self.a_plane[0]  # type: ignore[index]
        xe, qe = a_in.expand(*lead, rows, k), q.expand(*lead, *q.shape[-2:])  # views: nothing copied
        out = self._buffer("a_int" + tag, out_shape, torch.int32)
        flat = out.view(-1, rows, out_shape[-1])
        for c, idx in enumerate(itertools.product(*map(range, lead))):
            torch._int_mm(xe[idx], qe[idx], out=flat[c])
        return out

    def _a_scales(self, lead: tuple[int, ...]) -> torch.Tensor:
        """The step of each core's int8 plane of pos + neg as float32 ``(C,)`` for the cores ``lead``; computed once
        per readout."""
        key = ("a_scales", lead)
        if key not in self._registers:
            step = self.a_plane[1]  # type: ignore[index]
            self._registers[key] = (step.expand(*lead, 1, 1).reshape(-1).float().contiguous(),)
        return self._registers[key][0]

    def _scaled_planes(self, lead: tuple[int, ...], shared_dims: int, rows: int) -> ScaledPlanes | None:
        """:attr:`y_planes` of the cores ``lead`` (the planes broadcast to it) prepacked for oneDNN
        (:func:`pack_scaled_planes`), the cores of the last ``shared_dims`` leading dims sharing their input;
        computed once per readout; None unless the ``pos_neg_product`` kernel is ``"onednn-int8"``."""
        if self.kernels.get("pos_neg_product") != "onednn-int8":
            return None
        key = ("scaled_planes", lead, shared_dims)
        if key not in self._registers:
            hi, lo, step = self.y_planes  # type: ignore[misc]
            planes = hi.expand(*lead, *hi.shape[-2:]), lo.expand(*lead, *lo.shape[-2:]), step.expand(*lead, 1, 1)
            self._registers[key] = (pack_scaled_planes(*planes, shared_dims, rows),)
        return self._registers[key][0]  # type: ignore[return-value]

    def _int_planes(self, lead: tuple[int, ...], shared_dims: int) -> IntPlanes:
        """:attr:`y_planes` of the cores ``lead`` packed for ``torch._int_mm`` (:func:`pack_int_planes`), the cores of
        the last ``shared_dims`` leading dims sharing their input; computed once per readout."""
        key = ("int_planes", lead, shared_dims)
        if key not in self._registers:
            hi, lo, step = self.y_planes  # type: ignore[misc]
            planes = hi.expand(*lead, *hi.shape[-2:]), lo.expand(*lead, *lo.shape[-2:]), step.expand(*lead, 1, 1)
            self._registers[key] = (pack_int_planes(*planes, shared_dims),)
        return self._registers[key][0]  # type: ignore[return-value]

    @property
    def takes_prepared_inputs(self) -> bool:
        """Whether :meth:`mvm_prepared` can run: four-phase, with the fused pass on the CPU, and PWM levels that
        fit the int8 levels of :func:`~aimc.core.inputs.prepare_four_phase` (at most :data:`INT8_LEVELS`)."""
        return self.mode == "four-phase" and self._tail_fused and self.core.spec.input_levels <= INT8_LEVELS

    def mvm_prepared(
        self,
        inputs: FourPhaseInputs,
        generator: SeedLike = None,
        *,
        x_range: float = 1.0,
        output_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """:meth:`mvm` of inputs already in the three forms of :func:`~aimc.core.inputs.prepare_four_phase`
        (each ``(..., B, n)``, leading dims broadcasting against the cores'); see :attr:`takes_prepared_inputs`.

        Returns:
            ``(..., B, m)`` as :meth:`mvm` gives for the same PWM levels and ``x_range``.
        """
        if not self.takes_prepared_inputs:
            raise ValidationError("mvm_prepared needs a four-phase readout on the CPU with the fused kernel (numba)")
        gen = make_generator(generator, "generator") if self.fresh_var is not None else None

        def rows_of(rows: slice) -> FourPhaseInputs:
            return FourPhaseInputs(*(v[..., rows, :] for v in inputs))

        return self._fused_parts(rows_of, inputs.levels.shape[:-2], inputs.levels.shape[-2], gen, x_range, output_dtype)

    def _normals(self, shape: torch.Size, gen: torch.Generator, key: np.ndarray | None = None) -> torch.Tensor:
        """This MVM's standard normals ``shape`` (float32, on the readout's device): with numba those of
        :mod:`aimc.core.philox` for ``key`` (drawn from ``gen`` if not given), the fused kernel's numbers; else
        PyTorch's. Drawn on the CPU, so that a chip gives the same numbers on any device."""
        buf = self._buffer("z", shape, torch.float32) if self.g_pos.device.type == "cpu" else torch.empty(shape)
        if fused.available():
            z = fill_normal_rows_(buf, draw_key(gen) if key is None else key)
        else:
            z = fill_normal_(buf, gen)
        return z.to(self.g_pos.device)

    def _float_y(self, p: _Products) -> torch.Tensor:
        """Half the (pos - neg) charge as float32 ``(..., B, m)`` (the shape of ``p.a``), without fresh noise."""
        py = p.y if isinstance(p.y, torch.Tensor) else p.y[0] if len(p.y) == 1 else torch.cat(p.y)
        groups, rows, shared, width = py.shape
        m = width // 2 if p.y_pair else width
        y = self._buffer("y_float", torch.Size((groups, shared, rows, m)), torch.float32)
        if p.y_scale is not None:  # int32 plane products: fl(256·step·Y_hi) + fl(step·Y_lo), as the fused kernel
            sc = p.y_scale.view(groups, 1, shared, 2)
            hi, lo = py[..., :m] * sc[..., 0:1], py[..., m:] * sc[..., 1:2]  # int32 x float32 -> float32, one rounding
            torch.add(hi.transpose(1, 2), lo.transpose(1, 2), out=y)
        elif p.y_pair:
            torch.add(py[..., :m].transpose(1, 2), py[..., m:].transpose(1, 2), out=y)  # as the fused kernel
        else:
            y.copy_(py.transpose(1, 2))
        return y.view(p.a.shape)

    def _fused_mvm(self, tau: torch.Tensor, gen: torch.Generator | None, x_range: float) -> torch.Tensor:
        """:meth:`_fast_counts` and :meth:`ProgrammedCore.ldpu_combine` as one fused pass; ``(..., B, m)`` float32
        holding FP16 values."""
        return self._fused_tail(self._products(tau, gen), x_range)

    def _adc_registers(self, lead: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """Per-counter CCO terms (gk, ok of :func:`~aimc.core.adc.cco_counts_`) and the LDPU's FP16 correction
        registers (as float32 values), each ``(C, 2, m)`` for the C cores of ``lead``; computed once per readout."""
        key = ("adc_registers", lead)
        if key not in self._registers:
            spec, cfg, adc = self.core.spec, self.core.config, self.core.adc
            total_ns = spec.integration_time_ns * self.phases
            k = total_ns * 1e-3  # MHz·ns -> counts
            b = cfg.cco_nonlinearity_per_uA
            inv_a16, bias16 = self.core.ldpu_registers(self.phases)
            cores = math.prod(lead)

            def per_core(t: torch.Tensor) -> torch.Tensor:  # (*core_lead, 2, m) -> (C, 2, m) float32, contiguous
                return t.expand(*lead, *t.shape[-2:]).reshape(cores, *t.shape[-2:]).float().contiguous()

            self._registers[key] = tuple(
                per_core(t) for t in (adc.gain * (k / b if b else k / total_ns), adc.offset * k, inv_a16, bias16)
            )
        return self._registers[key]

    def _fused_scale(self, lead: tuple[int, ...], x_range: float) -> torch.Tensor:
        """The LDPU's FP16 output scale (``out_scale·x_range``) of each core as float32 ``(C,)``; cached per
        (cores, x_range) while ``out_scale`` is the same tensor."""
        key = ("scale", lead, x_range, id(self.out_scale))
        hit = self._registers.get(key)
        if hit is None or hit[1] is not self.out_scale:
            unit = self.core.ldpu_charge_unit
            scale = (self.out_scale * (x_range * unit)).to(torch.float16).float().expand(*lead, 1, 1)
            hit = self._registers[key] = (scale.reshape(math.prod(lead)).contiguous(), self.out_scale)
        return hit[0]

    def _fused_tail(
        self, p: _Products, x_range: float, out: torch.Tensor | None = None, batch_offset: int = 0
    ) -> torch.Tensor:
        """The converters and LDPU of the products ``p`` in the fused kernel (:mod:`aimc.core.fused`); with ``out``
        ``(*lead, B_out, m)``, the products are its rows ``batch_offset`` .. (a part of its MVM)."""
        spec, cfg = self.core.spec, self.core.config
        shape = p.a.shape
        lead, (rows, m) = tuple(shape[:-2]), shape[-2:]
        cores = math.prod(lead)
        total_ns = spec.integration_time_ns * self.phases
        b = cfg.cco_nonlinearity_per_uA
        gk, ok, inv_a, bias = self._adc_registers(lead)
        result = fused.adc_ldpu(
            p.y,
            p.y_pair,
            p.a.view(cores, rows, m),
            None if p.var is None else p.var.view(cores, rows, m),
            p.key,
            gk,
            ok,
            inv_a,
            bias,
            self._fused_scale(lead, x_range),
            den_c=total_ns / b if b else 0.0,
            q_max=spec.adc_saturation_uA * total_ns if cfg.adc_saturation else math.inf,
            c_max=float(spec.adc_max_count * self.phases),
            floor_counts=cfg.adc_quantization,
            out=None if out is None else out.view(cores, out.shape[-2], m),
            batch_offset=batch_offset,
            y_scale=p.y_scale,
            a_scale=p.a_scale,
        )
        return result.view(*lead, -1, m)

    def _noise_std(self, var: torch.Tensor) -> torch.Tensor:
        """sqrt(max(var, 0)) as float32 in a reused work buffer (the fused kernel computes the same)."""
        return self._buffer("std", var.shape, torch.float32).copy_(var).clamp_min_(0.0).sqrt_()

    def _fresh_noise_(
        self, out: torch.Tensor, tau_aux: torch.Tensor, gen: torch.Generator | None, scale: float = 1.0
    ) -> None:
        """Add the per-MVM read noise of the half charge, times ``scale``, to ``out`` ``(..., B, m)`` in place.

        For y = (G + E)·x with independent E_ij ~ N(0, s_ij^2), y - G·x is exactly N(0, sum_j s_ij^2 x_j^2): one
        matmul of the squared inputs (PWM levels ``tau_aux``, in ``aux_dtype``) gives every row its own fresh noise
        without a per-sample noise tensor (docs/design.md "Simulation numerics").
        """
        if self.fresh_var is None or gen is None:
            return
        var = torch.matmul(tau_aux * tau_aux, self.fresh_var)
        std = self._noise_std(var)
        if scale != 1.0:
            std.mul_(scale)
        out.addcmul_(self._normals(std.shape, gen), std)

    def _fast_counts(self, tau: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Counts ``(..., 2, B, m)`` of the positive and negative counters from two products (module docstring).

        pos - neg comes from the float32 product; pos + neg from the ``aux_dtype`` one. An error of the latter
        shifts both counters by the same charge and cancels in pos - neg to first order.
        """
        core, spec, cfg = self.core, self.core.spec, self.core.config
        p = self._products(tau, gen)
        y, a = self._float_y(p), p.a
        if p.a_scale is not None:  # int32 plane product: fl(step·a), as the fused kernel
            a = self._buffer("a", y.shape, torch.float32).copy_(a).mul_(p.a_scale.view(*y.shape[:-2], 1, 1))
        if p.var is not None:
            std = self._noise_std(p.var)
            z = p.z if p.z is not None else self._normals(y.shape, gen, p.key)  # type: ignore[arg-type]
            y.add_(z.mul_(std))  # two roundings, as the fused kernel (addcmul_ may fuse them into one FMA)
        if a.dtype != torch.float32:
            a = self._buffer("a", y.shape, torch.float32).copy_(a)
        q = self._buffer("q", torch.Size((*y.shape[:-2], 2, *y.shape[-2:])), torch.float32)
        torch.add(a, y, out=q[..., 0, :, :])  # fC: x+·G+ + x-·G- (four-phase)
        torch.sub(a, y, out=q[..., 1, :, :])  # fC: x+·G- + x-·G+
        adc = core.adc
        den = self._buffer("den", q.shape, torch.float32)
        window = spec.integration_time_ns
        return cco_counts_(q, window, adc.gain.unsqueeze(-2), adc.offset.unsqueeze(-2), spec, cfg, self.phases, den)

    def _exact_four_phase_counts(self, tau: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """Four-phase counts ``(..., 2, B, m)`` with the CCO evaluated at each phase's own mean current (four
        float32 products)."""
        core, spec, cfg = self.core, self.core.spec, self.core.config
        v = cfg.read_voltage_V
        window = spec.integration_time_ns
        tau = tau.float()
        noise = torch.zeros(
            (*torch.broadcast_shapes(tau.shape[:-2], self.g_pos.shape[:-2]), tau.shape[-2], self.g_pos.shape[-2]),
            device=tau.device,
        )
        self._fresh_noise_(noise, tau.to(self.aux_dtype), gen)  # half-charge units (fC)
        tau = tau * spec.pwm_ns_per_lsb  # pulse durations (ns)
        tp, tn = tau.clamp_min(0.0), (-tau).clamp_min(0.0)
        gp, gn = self.g_pos.mT, self.g_neg.mT
        q_pp, q_mm = torch.matmul(tp, gp) * v, torch.matmul(tn, gn) * v
        q_pm, q_mp = torch.matmul(tp, gn) * v, torch.matmul(tn, gp) * v
        q_pp, q_pm = q_pp + noise, q_pm - noise
        # Each counter keeps counting across its two phases (the CCO's phase carries over), so the count is
        # floored once, after both phases; only the CCO's non-linearity is evaluated per phase.
        frac = dataclasses.replace(cfg, adc_quantization=False)
        adc = core.adc
        g_p, g_n = adc.gain[..., 0:1, :], adc.gain[..., 1:2, :]
        o_p, o_n = adc.offset[..., 0:1, :], adc.offset[..., 1:2, :]
        c_pos = cco_counts(q_pp, window, g_p, o_p, spec, frac) + cco_counts(q_mm, window, g_p, o_p, spec, frac)
        c_neg = cco_counts(q_pm, window, g_n, o_n, spec, frac) + cco_counts(q_mp, window, g_n, o_n, spec, frac)
        counts = torch.stack([c_pos, c_neg], dim=-3)
        return counts.floor_() if cfg.adc_quantization else counts


@dataclass
class ProgrammedCore:
    """The programmed state of one core or of a stack of cores (leading dims ``...``).

    Attributes:
        spec, config: the chip and the core's unpublished parameters.
        device: the PCM device model used to program it.
        strategy: ``"odp"`` or ``"tdp"``.
        states: device state, tensors ``(..., U, m, n)`` for U conductance units per weight.
        polarity: ``(U,)`` +1 / -1, the polarity of each unit.
        asymmetry: ``(..., U, m, n)`` one-phase negative-voltage conductance factor a (read as G·(1+a)).
        adc: per-counter CCO parameters and calibration, ``(..., 2, m)``.
        w_max: ``(...,)`` the weight magnitude mapped to G_max in each core.
        g_max_uS: largest polarity conductance (one device for ODP, both for TDP).
        gdc_reference: per read mode, ``(...,)`` the drift-compensation calibration readout right after programming.
    """

    spec: ChipSpec
    config: CoreConfig
    device: DeviceModel
    strategy: str
    states: DeviceState
    polarity: torch.Tensor
    asymmetry: torch.Tensor
    adc: AdcState
    w_max: torch.Tensor
    g_max_uS: float
    gdc_reference: dict[str, torch.Tensor] = field(default_factory=dict)
    #: The deterministic part of the last readout (:meth:`_conductances_at`), keyed by ``(t, read_noise)``. Runs at
    #: the same time after programming (an evaluation's batches) reuse it; the random parts are drawn every run.
    _at_time: tuple[tuple[float, bool], torch.Tensor, torch.Tensor | None, torch.Tensor | None] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def shape(self) -> tuple[int, int]:
        """(outputs m, inputs n) of the block each core holds."""
        m, n = self.states.g_target.shape[-2:]
        return int(m), int(n)

    @property
    def cores_shape(self) -> tuple[int, ...]:
        """Leading core dimensions (``()`` for a single core)."""
        return tuple(self.states.g_target.shape[:-3])

    def target_weights(self) -> torch.Tensor:
        """The weights the targets encode, ``(..., m, n)``: (G+ - G-) targets scaled back by w_max / G_max."""
        pol = self.polarity.to(self.states.g_target.dtype).view(-1, 1, 1)
        g = (self.states.g_target * pol).sum(-3)
        return g * (self.w_max / self.g_max_uS)[..., None, None]

    def prepare(
        self,
        t_seconds: float = 3600.0,
        mode: str = "four-phase",
        generator: SeedLike = None,
        *,
        read_noise: bool = True,
        drift_compensation: bool = True,
        backend: kernels.Backend | None = None,
    ) -> CoreReadout:
        """Precompute the readout of the core at ``t_seconds`` after programming, in ``mode``.

        Draws this run's quasi-static part of the 1/f read noise (:mod:`aimc.core.readnoise`) and, with
        ``drift_compensation``, reads the calibration input once to set the global drift compensation factor
        (docs/physics.md §4.1).

        ``backend`` (:class:`aimc.kernels.Backend`) fixes the kernels of the MVM's hot operations; those it leaves
        open are chosen by measurement on this machine (:mod:`aimc.kernels`). They change the numbers slightly
        (e.g. int8 product planes round the matrix to 15 bits); the readout records them in :attr:`CoreReadout.kernels`.
        """
        t = check_time(t_seconds)
        check_choice(mode, "mode", READ_MODES)
        resolved, device_type = kernels.resolve(backend), self.states.g_prog.device.type
        chosen = readout_kernels_for(readout_kernels(resolved, device_type), self.spec)
        gen = make_generator(generator, "generator") if (read_noise or drift_compensation) else None
        g, noise_std, fresh_var = self._conductances_at(t, read_noise)
        half_charge = 0.5 * self.config.read_voltage_V * self.spec.pwm_ns_per_lsb  # fC / 2 per (uS · PWM level)
        drawn = None
        if noise_std is not None:
            # this run's quasi-static read noise: philox normals where numba is there (readdraw), else PyTorch's
            key = draw_key(gen) if readdraw.available() else None
            chosen["readout_draw"] = resolved.kernel("readout_draw", device_type)
            if chosen["readout_draw"] == "numba" and mode == "four-phase" and key is not None:
                drawn = readdraw.noisy_sums(g, noise_std, key, self.polarity, half_charge)
            else:
                g = readdraw.noisy_conductances(g, noise_std, gen, key)  # type: ignore[arg-type]
        if drawn is not None:
            g_pos, g_neg, y_matrix, a_matrix = drawn
        else:
            g_pos, g_neg = readdraw.polarity_sums(g, self.polarity)
            y_matrix, a_matrix = (g_pos - g_neg).mT * half_charge, (g_pos + g_neg).mT * half_charge
        aux = _AUX_DTYPES[chosen["aux_product"]]
        if mode == "one-phase":  # rows of negative inputs are read with the negative voltage: G·(1 + a), and swap
            gp_r, gn_r = readdraw.polarity_sums(g * (1.0 + self.asymmetry), self.polarity)  # the counters
            y_matrix = torch.cat([y_matrix, (gn_r - gp_r).mT * half_charge], dim=-2)
            a_matrix = torch.cat([a_matrix, (gp_r + gn_r).mT * half_charge], dim=-2)
        y_matrix = y_matrix.contiguous()
        base_scale = (
            self.w_max
            / (self.g_max_uS * self.config.read_voltage_V * self.spec.pwm_ns_per_lsb * self.spec.input_levels)
        )[..., None, None]
        readout = CoreReadout(
            core=self,
            mode=mode,
            g_pos=g_pos,
            g_neg=g_neg,
            y_matrix=y_matrix,
            a_matrix=a_matrix.to(aux, memory_format=torch.contiguous_format),
            fresh_var=None if fresh_var is None else (fresh_var.mT * half_charge**2).to(aux).contiguous(),
            out_scale=base_scale,
            aux_dtype=aux,
            y_planes=int8_planes(y_matrix) if chosen["pos_neg_product"] in INT8_PRODUCTS else None,
            a_plane=int8_plane(a_matrix) if chosen["aux_product"] == "int8" else None,
            kernels=chosen,
        )
        if drift_compensation:
            readout.out_scale = base_scale * self._gdc_factor(readout, mode, gen)
        return readout

    def _conductances_at(
        self, t: float, read_noise: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """What a readout at ``t`` draws its random part around, all deterministic in ``t`` and kept for the next
        run at the same time (:attr:`_at_time`): the drifted conductances, and with ``read_noise`` the std of the
        quasi-static read-noise draw, sqrt(1 − f)·σ, and the per-MVM read-noise variance summed over each weight's
        devices, f·σ² (f: :func:`fresh_noise_fraction`); None where there is no read noise."""
        cached = self._at_time
        if cached is not None and cached[0] == (t, read_noise):
            return cached[1], cached[2], cached[3]
        g = self.device.drift(self.states, t)
        noise_std = fresh_var = None
        if read_noise:
            sigma = self.device.read_noise_std(self.states, t)
            if bool((sigma > 0).any()):
                frac = fresh_noise_fraction(self.device, t, self.config.run_duration_s)
                noise_std = math.sqrt(1.0 - frac) * sigma
                fresh_var = (frac * sigma * sigma).sum(-3) if frac > 0 else None
        self._at_time = ((t, read_noise), g, noise_std, fresh_var)
        return g, noise_std, fresh_var

    def _gdc_readout(self, readout: CoreReadout, generator: torch.Generator) -> torch.Tensor:
        """Mean |output| of the calibration input (all inputs at ``gdc_input_fraction`` of full scale), ``(...,)``.

        The input is one row shared by the cores of the last core dimension (the column blocks), as a layer's
        inputs are, so that the products' packing made here (once per readout) is the one the layer's MVMs use."""
        n = self.shape[1]
        lead = self.cores_shape
        x_cal = torch.full(
            (*lead[:-1], 1, 1, n) if lead else (1, n),
            self.config.gdc_input_fraction,
            dtype=readout.g_pos.dtype,
            device=readout.g_pos.device,
        )
        y = readout.mvm(x_cal, generator)
        return y.abs().mean(dim=(-2, -1)).clamp_min(1e-30)

    def _gdc_factor(self, readout: CoreReadout, mode: str, generator: torch.Generator) -> torch.Tensor:
        """Global drift compensation (Joshi et al. 2020; docs/physics.md §4.1): reference readout / readout now, per
        core."""
        if mode not in self.gdc_reference:
            raise ValidationError(f"this core has no drift-compensation reference for mode {mode!r}")
        now = self._gdc_readout(readout, generator)
        return (self.gdc_reference[mode] / now)[..., None, None]

    @property
    def ldpu_charge_unit(self) -> float:
        """The charge unit (fC, a power of two) the LDPU's FP16 values count in: 1 fC for the chip's 128 ns window,
        larger for a variant chip whose four-phase charge at saturation (4 x 100 uA x window) would exceed FP16's
        largest value. Scaling by a power of two changes no rounding, only the range."""
        q_max = 4.0 * self.spec.adc_saturation_uA * self.spec.integration_time_ns
        return 2.0 ** max(0, math.ceil(math.log2(q_max / FP16_CHARGE_LIMIT)))

    def ldpu_registers(self, phases: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The LDPU's FP16 correction registers ``(..., 2, m)``: 1/alpha and -phases·beta/alpha, so that the
        corrected charge of a count c collected over ``phases`` windows is c·(1/alpha) + bias (in
        :attr:`ldpu_charge_unit`)."""
        inv_a = self.adc.inv_alpha / self.ldpu_charge_unit
        return inv_a.to(torch.float16), ((-phases * self.adc.beta) * inv_a).to(torch.float16)

    def ldpu_combine(
        self,
        counts: torch.Tensor,
        phases: int,
        out_scale: torch.Tensor,
        output_dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """LDPU in FP16 (docs/physics.md §9.2): counts -> FP16, per-counter affine correction (2 FMAs), subtract, scale.

        Computed in ``torch.float16`` so that every operation rounds as the LDPU's FP16 units do.

        Args:
            counts: ``(..., 2, B, m)`` counts of the positive (index 0) and negative (1) counters, each collected
                over ``phases`` phases.
            out_scale: ``(..., 1, 1)`` output units per fC.

        Returns:
            ``(..., B, m)`` FP16 values, as ``output_dtype``.
        """
        half = torch.float16
        inv_a, bias = self.ldpu_registers(phases)
        q = counts.to(half)
        torch.addcmul(bias.unsqueeze(-2), q, inv_a.unsqueeze(-2), out=q)  # corrected charge of each counter (fC)
        diff = torch.sub(q[..., 0, :, :], q[..., 1, :, :])
        return diff.mul_((out_scale * self.ldpu_charge_unit).to(half)).to(output_dtype)

    def mvm(
        self,
        x: torch.Tensor,
        t_seconds: float = 3600.0,
        mode: str = "four-phase",
        generator: SeedLike = None,
        *,
        backend: kernels.Backend | None = None,
        **kwargs: object,
    ) -> torch.Tensor:
        """Convenience: :meth:`prepare` (with ``backend``) then :meth:`CoreReadout.mvm` with the same generator.
        ``x``: (..., B, n)."""
        gen = make_generator(generator, "generator")
        return self.prepare(t_seconds, mode, gen, backend=backend).mvm(x, gen, **kwargs)  # type: ignore[arg-type]

    def to(self, device: torch.device | str) -> ProgrammedCore:
        """A copy with every tensor on ``device`` (e.g. ``"cuda"``)."""
        return ProgrammedCore(
            spec=self.spec,
            config=self.config,
            device=self.device,
            strategy=self.strategy,
            states=self.states.to(device),
            polarity=self.polarity.to(device),
            asymmetry=self.asymmetry.to(device),
            adc=self.adc.to(device),
            w_max=self.w_max.to(device),
            g_max_uS=self.g_max_uS,
            gdc_reference={k: v.to(device) for k, v in self.gdc_reference.items()},
        )


#: The operations whose kernels a :class:`CoreReadout` runs with, in the order they are chosen (each measured with the
#: earlier ones' choices in place).
READOUT_OPERATIONS = ("aux_product", "pos_neg_product", "mvm_tail", "mvm_threads")


def readout_kernels(backend: kernels.Backend, device_type: str) -> dict[str, str]:
    """The kernels of :data:`READOUT_OPERATIONS` that ``backend`` gives for tensors on ``device_type``."""
    return {op: backend.kernel(op, device_type) for op in READOUT_OPERATIONS}


def check_read_voltage(config: CoreConfig, spec: ChipSpec) -> None:
    """Refuse a ``config.read_voltage_V`` outside the chip's read voltages (docs/physics.md §5: 0.1-0.4 V)."""
    v = config.read_voltage_V
    if not spec.read_voltage_min_V <= v <= spec.read_voltage_max_V:
        raise ValidationError(
            f"CoreConfig.read_voltage_V {v:g} V is outside the chip's read voltages "
            f"[{spec.read_voltage_min_V:g}, {spec.read_voltage_max_V:g}] V (ChipSpec.read_voltage_min_V/_max_V)"
        )


def program_core(
    weights: torch.Tensor,
    device: DeviceModel | str = "hermes-2dev",
    strategy: str = "tdp",
    seed: SeedLike = 0,
    *,
    spec: ChipSpec | None = None,
    config: CoreConfig | None = None,
    w_max: torch.Tensor | float | None = None,
    faults: CoreFaults | None = None,
    adc_range_uA: torch.Tensor | float | None = None,
    backend: kernels.Backend | None = None,
) -> ProgrammedCore:
    """Program a weight block (or a stack of blocks) into PCM conductances.

    Args:
        weights: ``(..., m, n)`` with m <= ``spec.tile_cols`` outputs and n <= ``spec.tile_rows`` inputs; finite;
            any floating-point dtype (programmed in float32).
        device: a :class:`~aimc.devices.DeviceModel` or a preset name (``aimc.devices.available()``).
        strategy: ``"odp"`` (one device per polarity) or ``"tdp"`` (two), docs/physics.md §2.3.
        seed: int or ``torch.Generator``; the only source of programming randomness (device errors, drift
            exponents, ADC spread, asymmetry, the drift-compensation reference read).
        spec, config: the chip (default ``ChipSpec.hermes()``) and unpublished core parameters.
        w_max: weight mapped to G_max per core, ``(...,)`` or scalar; default max |W| of each core.
        faults: stuck devices and dead ADCs of these cores (:class:`aimc.core.faults.CoreFaults`, built by
            ``aimc.program(..., faults=...)``), applied before the drift-compensation reference is read.
        adc_range_uA: largest current (uA) of each core's ADC calibration, ``(...,)`` or scalar (see
            :func:`aimc.core.adc.calibrate`); default ``config.calibration_max_fraction`` x saturation.
        backend: kernels of the drift-compensation reference read (:class:`aimc.kernels.Backend`; default chosen by
            measurement).

    Returns:
        A :class:`ProgrammedCore`.
    """
    spec = ChipSpec.hermes() if spec is None else spec
    config = CoreConfig() if config is None else config
    if not isinstance(spec, ChipSpec):
        raise ArgumentTypeError(f"spec must be an aimc ChipSpec, got {type(spec).__name__}")
    if not isinstance(config, CoreConfig):
        raise ArgumentTypeError(f"config must be an aimc CoreConfig, got {type(config).__name__}")
    model = get_device(device) if isinstance(device, str) else device
    if not isinstance(model, DeviceModel):
        raise ArgumentTypeError(
            f"device must be a preset name or an aimc.devices.DeviceModel, got {type(device).__name__}"
        )
    check_choice(strategy, "strategy", STRATEGIES)
    check_read_voltage(config, spec)
    check_finite_tensor(weights, "weights")
    weights = weights.float()  # the core's state and hot path are float32 (docs/design.md)
    if weights.dim() < 2:
        raise ValidationError(f"weights must have shape (..., outputs, inputs); got {tuple(weights.shape)}")
    m, n = weights.shape[-2:]
    if m > spec.tile_cols or n > spec.tile_rows:
        raise ValidationError(
            f"weights block {m}x{n} (outputs x inputs) exceeds the {spec.tile_cols}x{spec.tile_rows} crossbar of a core"
        )
    gen = make_generator(seed, "seed")
    polarity, split = _unit_layout(strategy, model.devices_per_unit)
    g_max_pol = model.g_max_uS * (2 if split else 1)
    dtype = weights.dtype
    if w_max is None:
        w_max_t = weights.abs().amax(dim=(-2, -1))
        w_max_t = torch.where(w_max_t > 0, w_max_t, torch.ones_like(w_max_t))
    else:
        w_max_t = torch.as_tensor(w_max, dtype=dtype, device=weights.device)
        if not bool(torch.isfinite(w_max_t).all()) or bool((w_max_t <= 0).any()):
            raise ValidationError(f"w_max must be finite and > 0, got {w_max}")
        w_max_t = w_max_t.expand(weights.shape[:-2]).clone()
    w_norm = (weights / w_max_t[..., None, None]).clamp(-1.0, 1.0)
    t_pos = w_norm.clamp_min(0.0) * g_max_pol
    t_neg = (-w_norm).clamp_min(0.0) * g_max_pol
    if len(polarity) == 2:
        units = [t_pos, t_neg]
    elif split:
        units = [*_split_tdp(t_pos, model.g_max_uS), *_split_tdp(t_neg, model.g_max_uS)]
    else:
        zero = torch.zeros_like(t_pos)
        units = [t_pos, zero, t_neg, zero]
    targets = torch.stack(units, dim=-3).clamp(0.0, model.g_max_uS)
    states = model.program(targets.cpu(), gen).to(weights.device)
    if faults is not None:
        states = faults.apply_to_states(states, model)
    asym = config.polarity_asymmetry_mean + config.polarity_asymmetry_std * torch.randn(
        targets.shape, generator=gen, dtype=dtype
    )
    adc = sample_adc(tuple(weights.shape[:-2]), m, spec, config, gen, dtype, adc_range_uA)
    if faults is not None:
        adc = faults.apply_to_adc(adc)
    core = ProgrammedCore(
        spec=spec,
        config=config,
        device=model,
        strategy=strategy,
        states=states,
        polarity=torch.tensor(polarity, dtype=torch.int8),
        asymmetry=asym.to(weights.device),
        adc=adc.to(weights.device),
        w_max=w_max_t,
        g_max_uS=g_max_pol,
    )
    for mode in READ_MODES:
        readout = core.prepare(0.0, mode, gen, drift_compensation=False, backend=backend)
        core.gdc_reference[mode] = core._gdc_readout(readout, gen)
    return core


# --- the MVM's kernels, registered in aimc.kernels --------------------------------------------------------------

#: Representative MVM timed to choose the kernels: one 256 x 256 core, 1,024 input rows; the probe uses 16 rows.
BENCH_SIZE, BENCH_ROWS, PROBE_ROWS = 256, 1024, 16
#: Cores of the stack whose readout is timed to choose the ``readout_draw`` kernel.
DRAW_CORES = 4


def _first_readout_kernels() -> dict[str, str]:
    """The first candidate of each of :data:`READOUT_OPERATIONS` that runs on the CPU here (nothing measured)."""
    return {
        op: next(c.name for c in kernels.get_operation(op).candidates if c.available("cpu"))
        for op in READOUT_OPERATIONS
    }


def _mvm_workloads(operation: str, fixed: Mapping[str, str], names: tuple[str, ...]) -> dict[str, kernels.Workload]:
    """Timed four-phase MVMs with fresh read noise, one readout per candidate of ``operation``, the kernels of the
    operations chosen before it as ``fixed`` and those chosen after it at their first candidate that can run (the
    operations are chosen one after another, each on the whole MVM, so that each choice sees how the others use
    its result). Each readout runs once on a few rows first, so that compiling is not timed."""
    gen = torch.Generator().manual_seed(0)
    w = torch.rand((BENCH_SIZE, BENCH_SIZE), generator=gen) * 2 - 1
    x_run, x_probe = (torch.rand((rows, BENCH_SIZE), generator=gen) * 2 - 1 for rows in (BENCH_ROWS, PROBE_ROWS))
    base = {**_first_readout_kernels(), **fixed}
    core = program_core(w, "hermes-2dev", "tdp", 0, backend=kernels.Backend(**base))
    loads = {}
    for name in names:
        readout = core.prepare(3600.0, "four-phase", 1, backend=kernels.Backend(**{**base, operation: name}))
        readout.mvm(x_probe[:2], 2)  # compiles or loads the compiled kernels
        loads[name] = kernels.Workload(
            functools.partial(readout.mvm, x_probe, 3), functools.partial(readout.mvm, x_run, 4)
        )
    return loads


def _parts_available(device_type: str) -> bool:
    return device_type == "cpu" and torch.get_num_threads() > 1


_MVM_TAIL_CANDIDATES = kernels.compiled_or_torch(
    "one compiled pass per output row (aimc.core.fused)",
    "PyTorch element-wise operations (any device)",
    lambda device_type: device_type == "cpu" and fused.available(),
)

_MVM_THREADS_CANDIDATES = (
    kernels.Candidate("pools", "PyTorch's and numba's thread pools, one operation after another", "the reference"),
    kernels.Candidate(
        "parts",
        "the batch split into one part per thread, each part's whole MVM on its own thread (pays off where the two "
        "pools' idle workers take each other's cores)",
        "bit-identical to pools",
        _parts_available,
    ),
)


def _draw_workloads(fixed: Mapping[str, str], names: tuple[str, ...]) -> dict[str, kernels.Workload]:
    """Timed readouts (:meth:`ProgrammedCore.prepare` of a stack of cores with read noise, without drift
    compensation) per candidate of ``readout_draw``, the MVM's kernels at their first candidate that can run (a
    readout does not multiply). Each runs once first, so that compiling is not timed."""
    gen = torch.Generator().manual_seed(0)
    w = torch.rand((DRAW_CORES, BENCH_SIZE, BENCH_SIZE), generator=gen) * 2 - 1
    first = _first_readout_kernels()
    core = program_core(w, "hermes-2dev", "tdp", 0, backend=kernels.Backend(**first, readout_draw="torch"))
    loads = {}
    for name in names:
        backend = kernels.Backend(**{**first, **fixed, "readout_draw": name})
        run = functools.partial(core.prepare, 3600.0, "four-phase", 1, drift_compensation=False, backend=backend)
        run()
        loads[name] = kernels.Workload(run, run)
    return loads


_READOUT_SUMMARIES = {
    "aux_product": "a core's products |x|·(G+ + G-) and x²·σ² (counter common mode, fresh-noise variance)",
    "pos_neg_product": "a core's signed product x·(G+ - G-), the MVM's result",
    "mvm_tail": "an MVM's converters and LDPU after its products: read noise, CCO counts, FP16 correction",
    "mvm_threads": "how an MVM of a large batch uses PyTorch's threads",
}
_READOUT_CANDIDATES = {
    "aux_product": AUX_PRODUCT_CANDIDATES,
    "pos_neg_product": POS_NEG_PRODUCT_CANDIDATES,
    "mvm_tail": _MVM_TAIL_CANDIDATES,
    "mvm_threads": _MVM_THREADS_CANDIDATES,
}

kernels.register(
    kernels.Operation(
        name="readout_draw",
        summary="a run's read-noise draw of every device and its polarity sums (the fixed cost of a run)",
        candidates=kernels.compiled_or_torch(
            "one compiled pass per core row, normals drawn in place (aimc.core.readdraw)",
            "PyTorch operations (any device)",
            lambda device_type: device_type == "cpu" and readdraw.available(),
        ),
        workloads=_draw_workloads,
    )
)

# each timed on whole MVMs, chosen in the order of READOUT_OPERATIONS with the earlier choices in place
for _k, _op in enumerate(READOUT_OPERATIONS):
    kernels.register(
        kernels.Operation(
            name=_op,
            summary=_READOUT_SUMMARIES[_op],
            candidates=_READOUT_CANDIDATES[_op],
            workloads=functools.partial(_mvm_workloads, _op),
            after=READOUT_OPERATIONS[:_k],
        )
    )
