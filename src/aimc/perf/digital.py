"""Latency and energy of a mapping's digital operations: every op of ``kind == "digital"`` (an ATen operation that
is not an analog layer, :mod:`aimc.digital.generic`), from the FLOPs and bytes the compiler recorded for it at
calibration (``op.attrs["flops"]``, ``op.attrs["bytes"]``, per inference: per image, or per position of a sequence).

Where an op runs (``op.attrs["unit"]``) and what it costs (constants in :mod:`aimc.perf.constants`):

- ``"ldpu"`` (element-wise add, multiply, clamp): its output values through one LDPU, one value per LDPU clock
  (docs/physics.md §9.2), at the fitted LDPU energy per value.
- ``"gdpu"`` (tanh, sigmoid, GELU-like functions): its output values spread over the GDPU slices, each reading one
  input per ``gdpu_clocks_per_output / GDPU_INPUTS_PER_LSTM_OUTPUT`` clocks (docs/physics.md §9.3), at the fitted
  energy of one LSTM output divided by the table evaluations it takes (``GDPU_TABLE_LOOKUPS_PER_LSTM_OUTPUT``).
- ``"digital"`` (products of two activations, softmax, normalisation, ...): a digital unit beside the cores, the
  longer of its FLOPs at the unit's FP16 throughput and its bytes at the unit's buffer bandwidth; energy per FLOP
  plus energy per byte moved.
- ``"layout"`` (views, reshapes, copies): its bytes only, at the digital unit's bandwidth and energy per byte; a view
  moves no byte and costs nothing.

An op without recorded FLOPs and bytes (a mapping saved before they were recorded) costs nothing.

How digital work overlaps the analog pipeline: the digital ops of one inference run after the layer that feeds them,
one after another, on one digital unit per chip (the chip of the last core of the layer that feeds them; chip 0 for
ops before the first layer). They add to the latency of one inference and to its energy, and do not overlap the
analog layers' MVMs. With the layers pipelined over successive inferences, each chip's digital ops form one more
pipeline stage whose busy time per inference is the sum of their times: it sets the throughput where it is the
slowest stage.

The analog layers' work per inference is what :mod:`aimc.perf.workload` counts: one MVM per output position of a
convolution, one MVM for a linear layer and one step for an LSTM/GRU. For a sequence model an inference is one
position of the sequence (a token, a time step): the compiler records a digital op's FLOPs and bytes per position
(the op's cost over a sequence divided by its length; attention's cost grows with the length, so a longer context
costs more per token).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from aimc.compiler.mapping import Mapping
from aimc.perf.constants import GDPU_INPUTS_PER_LSTM_OUTPUT, GDPU_TABLE_LOOKUPS_PER_LSTM_OUTPUT, PerfConstants
from aimc.spec import ChipSpec

#: Op kinds that are analog layers (their op names the layer in ``attrs["layer"]``).
ANALOG_KINDS = ("analog", "lstm", "gru")
#: Units a digital op can run on, in report order.
UNITS = ("ldpu", "gdpu", "digital", "layout")


@dataclass(frozen=True)
class DigitalOpWork:
    """One digital op's work for one inference item.

    Attributes:
        name: op name.
        target: the ATen operation (``"aten.layer_norm.default"``).
        unit: where it runs (module docstring).
        flops: FP16 operations.
        bytes: FP16 bytes read and written.
        values: output values of an element-wise (LDPU/GDPU) op: FLOPs / FLOPs per element.
        chip: the chip whose digital units run it.
        layer: the analog layer that feeds it (None before the first layer).
        costed: False where the op has no recorded FLOPs/bytes (it then costs nothing).
    """

    name: str
    target: str
    unit: str
    flops: float
    bytes: float
    values: float
    chip: int
    layer: str | None
    costed: bool


@dataclass(frozen=True)
class DigitalOpCost:
    """Latency (ns) and dynamic energy (nJ) of one digital op for one inference item."""

    work: DigitalOpWork
    latency_ns: float
    energy_nJ: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return {**asdict(self.work), "latency_ns": self.latency_ns, "energy_uj": self.energy_nJ * 1e-3}


def _flops_per_element(target: str) -> int:
    """FLOPs the compiler counted per output element of an element-wise op (its :data:`ELEMENT_FLOPS`, default 1)."""
    from aimc.digital.generic import ELEMENT_FLOPS, op_family

    return max(int(ELEMENT_FLOPS.get(op_family(target), 1)), 1)


def feeding_layers(mapping: Mapping) -> dict[str, str | None]:
    """Per op name, the analog layer whose output it depends on most recently (in execution order); None for ops
    that depend on no layer."""
    order: dict[str, int] = {}
    feeder: dict[str, str | None] = {}
    for index, op in enumerate(mapping.ops):
        if op.kind in ANALOG_KINDS and "layer" in op.attrs:
            feeder[op.name] = str(op.attrs["layer"])
            order[op.name] = index
            continue
        sources = [name for name in op.inputs if feeder.get(name) is not None]
        if sources:
            latest = max(sources, key=lambda name: order[name])
            feeder[op.name], order[op.name] = feeder[latest], order[latest]
        else:
            feeder[op.name] = None
    return feeder


def layer_chip(mapping: Mapping, layer: str | None) -> int:
    """The chip of the last core of ``layer`` (where its outputs leave); 0 for None or an unplaced layer."""
    if layer is None or layer not in mapping.layers or not mapping.layers[layer].cores:
        return 0
    return mapping.chip_of(mapping.layers[layer].cores[-1][-1])


def digital_work(mapping: Mapping) -> list[DigitalOpWork]:
    """Every digital op of ``mapping`` with its unit, FLOPs, bytes and chip, in execution order."""
    feeder = feeding_layers(mapping)
    out = []
    for op in mapping.ops:
        if op.kind != "digital":
            continue
        attrs = op.attrs
        target = str(attrs.get("target", ""))
        unit = str(attrs.get("unit", "digital"))
        unit = unit if unit in UNITS else "digital"
        costed = "flops" in attrs or "bytes" in attrs
        flops = float(attrs.get("flops", 0.0) or 0.0)
        moved = float(attrs.get("bytes", 0.0) or 0.0)
        values = flops / _flops_per_element(target) if unit in ("ldpu", "gdpu") else 0.0
        layer = feeder.get(op.name)
        chip = layer_chip(mapping, layer)
        out.append(DigitalOpWork(op.name, target, unit, flops, moved, values, chip, layer, costed))
    return out


def digital_op_cost(work: DigitalOpWork, spec: ChipSpec, constants: PerfConstants) -> DigitalOpCost:
    """Latency and energy of one digital op (module docstring)."""
    c = constants
    if work.unit == "ldpu":
        latency = work.values * 1e3 / spec.ldpu_clock_MHz
        energy = work.values * c.ldpu_energy_per_value_nJ
    elif work.unit == "gdpu":
        clocks_per_value = spec.gdpu_clocks_per_output / GDPU_INPUTS_PER_LSTM_OUTPUT
        latency = work.values / spec.gdpu_slices * clocks_per_value * 1e3 / spec.gdpu_clock_MHz
        energy = work.values * c.gdpu_energy_per_output_nJ / GDPU_TABLE_LOOKUPS_PER_LSTM_OUTPUT
    elif work.unit == "layout":
        latency = work.bytes / c.digital_unit_bytes_per_s * 1e9
        energy = work.bytes * c.digital_energy_pJ_per_byte * 1e-3
    else:
        latency = max(work.flops / c.digital_unit_flops_per_s, work.bytes / c.digital_unit_bytes_per_s) * 1e9
        energy = (work.flops * c.digital_energy_pJ_per_flop + work.bytes * c.digital_energy_pJ_per_byte) * 1e-3
    return DigitalOpCost(work, latency, energy)


def digital_costs(mapping: Mapping, spec: ChipSpec, constants: PerfConstants) -> list[DigitalOpCost]:
    """Every digital op's latency and energy for one inference item, in execution order."""
    return [digital_op_cost(w, spec, constants) for w in digital_work(mapping)]


def by_unit(costs: list[DigitalOpCost]) -> dict[str, dict[str, float]]:
    """Per unit that has ops: ops, latency (ns) and energy (µJ), in :data:`UNITS` order."""
    out: dict[str, dict[str, float]] = {}
    for unit in UNITS:
        mine = [c for c in costs if c.work.unit == unit]
        if mine:
            out[unit] = {
                "ops": len(mine),
                "latency_ns": sum(c.latency_ns for c in mine),
                "energy_uj": sum(c.energy_nJ for c in mine) * 1e-3,
            }
    return out
