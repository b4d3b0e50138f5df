"""Latency, energy and throughput of a mapped network: the analytical model (docs/physics.md §12).

Timing (one MVM on the cores of a layer, then the digital work behind it):

- MVM: t_mvm = phases·(t_int + d) + e, phases = 1 (one-phase) or 4 (four-phase), t_int the integration window
  (2^(pwm_bits-1) x ns/LSB = 128 ns; or the CCO counting time of a requested ADC resolution if longer), and d, e
  per-phase and fixed overheads derived from the published 133 / 520 ns (d = 1 ns, e = 4 ns). All cores of a layer
  run their MVMs at once, so t_mvm does not depend on the core count (Table I; docs/physics.md §12).
- Digital: the last core of each column chain streams its block outputs through its LDPU at one value per LDPU
  clock (docs/physics.md §9.2), behind a fixed hand-off time and one hop time per partial-sum hop along the chain; an
  LSTM adds the GDPUs (one output per 4 clocks, docs/physics.md §9.3) which overlap the stream but for their last
  output.
- Latency of one input to a layer (Table I rows): t_mvm + digital time.

Energy: every active core-equivalent (cores x utilisation) spends the fitted per-core MVM energy of the mode, every
value through an LDPU and every GDPU output a fitted energy, every byte on a link or through the host an assumed
energy, and the chip's static power runs for the whole latency. TOPS count MVM operations only (1 MAC = 2 ops)
over the MVM time, TOPS/W divides them by the power while MVMs stream (static + core dynamic power), TOPS/mm² by the
MVM area of the cores used — as Table I does (docs/physics.md §12).

Pipelined throughput of a whole network: layers sit on separate cores with stationary weights, so they work on
successive inputs at once; each layer needs one MVM per output position, each MVM slot lasting the longer of t_mvm
and its LDPU stream; the slowest layer (the bottleneck) sets the rate.

Digital operations that are not analog layers (ops of kind ``"digital"``: attention's products of activations,
softmax, LayerNorm, GELU, element-wise adds...) cost their recorded FLOPs and bytes on the unit that runs them
(:mod:`aimc.perf.digital`): they run after the layer that feeds them, one after another on one digital unit per chip,
adding to the latency and energy of an inference; each chip's digital ops are one more pipeline stage. A network on
several chips pays for the partial sums and activations that cross chips over a chip-to-chip link
(:mod:`aimc.perf.links`). The chip paper's networks have neither, so Table I does not depend on them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

from aimc._validation import check_choice, check_number
from aimc.compiler.mapping import Mapping
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.perf.constants import PerfConstants
from aimc.perf.digital import DigitalOpCost, by_unit, digital_costs
from aimc.perf.links import PARTIAL_SUMS, InterchipCost, interchip_cost, interchip_work
from aimc.perf.workload import LayerWork, network_work
from aimc.spec import READ_MODES, ChipSpec

TRANSPORTS = ("host", "on-chip")
#: ADC resolutions (bits) the model accepts: a CCO counts 2^bits x 300 ps; beyond 20 bits that is > 0.3 ms per MVM.
ADC_RESOLUTION_RANGE = (1, 20)


def _phases(mode: str) -> int:
    return 1 if mode == "one-phase" else 4


def _overheads() -> tuple[float, float]:
    """Per-phase and fixed MVM overheads (ns) from the published chip's 133 / 520 ns (Table I)."""
    ref = ChipSpec.hermes()
    t1, t4, t_int = ref.mvm_latency_one_phase_ns, ref.mvm_latency_four_phase_ns, ref.integration_time_ns
    d = (t4 - t1) / 3.0 - t_int
    return d, t1 - t_int - d


def integration_time_ns(spec: ChipSpec, adc_resolution_bits: int | None = None) -> float:
    """Integration window: the PWM duration, or the CCO's counting time for ``adc_resolution_bits`` if longer."""
    t = spec.integration_time_ns
    if adc_resolution_bits is not None:
        t = max(t, 2.0**adc_resolution_bits * spec.adc_ps_per_lsb * 1e-3)
    return t


def mvm_time_ns(spec: ChipSpec, mode: str, adc_resolution_bits: int | None = None) -> float:
    """Time of one MVM on any number of cores in parallel (Table I: 133 ns one-phase, 520 ns four-phase)."""
    check_choice(mode, "mode", READ_MODES)
    d, e = _overheads()
    return _phases(mode) * (integration_time_ns(spec, adc_resolution_bits) + d) + e


def core_mvm_energy_nJ(
    spec: ChipSpec, mode: str, constants: PerfConstants, adc_resolution_bits: int | None = None
) -> float:
    """Energy of one MVM on one fully used core; scales with crossbar cells and integration time (assumption:
    array and CCO energy grow with the number of cells read and the time they are read)."""
    ref = ChipSpec.hermes()
    cells = spec.tile_rows * spec.tile_cols / (ref.tile_rows * ref.tile_cols)
    time = integration_time_ns(spec, adc_resolution_bits) / ref.integration_time_ns
    return constants.core_mvm_energy_nJ(mode) * cells * time


def static_power_W(spec: ChipSpec, constants: PerfConstants) -> float:
    """Static power, scaled with the number of cores for variant chips (assumption: leakage per core)."""
    return constants.static_power_W * spec.cores / ChipSpec.hermes().cores


@dataclass(frozen=True)
class StepTiming:
    """Time of one input through one layer."""

    mvm_ns: float
    digital_ns: float
    slot_ns: float  #: time between successive MVMs on the layer when pipelined (a whole step for an LSTM)

    @property
    def latency_ns(self) -> float:
        """MVM + digital time of one input."""
        return self.mvm_ns + self.digital_ns


def step_timing(
    work: LayerWork,
    spec: ChipSpec,
    mode: str,
    constants: PerfConstants,
    adc_resolution_bits: int | None = None,
    digital: bool = True,
) -> StepTiming:
    """Timing of one MVM of a layer and the digital work behind it."""
    t_mvm = mvm_time_ns(spec, mode, adc_resolution_bits)
    if not digital:
        return StepTiming(t_mvm, 0.0, t_mvm)
    clk = 1e3 / spec.ldpu_clock_MHz  # ns per LDPU clock
    stream = work.values_out * clk
    if work.gdpu_outputs:
        per_slice = math.ceil(work.gdpu_outputs / spec.gdpu_slices)
        gclk = 1e3 / spec.gdpu_clock_MHz
        stream = max(stream, per_slice * spec.gdpu_clocks_per_output * gclk) + spec.gdpu_clocks_per_output * gclk
    digital_ns = constants.fixed_digital_ns + work.hops * constants.hop_clocks * clk + stream
    # an LSTM step needs the previous step's h: its steps cannot overlap, one step is a whole latency
    slot = t_mvm + digital_ns if work.gdpu_outputs else max(t_mvm, work.values_out * clk)
    return StepTiming(t_mvm, digital_ns, slot)


@dataclass(frozen=True)
class StepEnergy:
    """Dynamic energy (nJ) of one MVM of a layer and its digital work, by component."""

    mvm: float
    ldpu: float
    gdpu: float
    links: float

    @property
    def total(self) -> float:
        """Sum of the components."""
        return self.mvm + self.ldpu + self.gdpu + self.links


def step_energy(
    work: LayerWork,
    spec: ChipSpec,
    mode: str,
    constants: PerfConstants,
    adc_resolution_bits: int | None = None,
    digital: bool = True,
) -> StepEnergy:
    """Energy of one MVM of a layer (all its cores) and of the digital work behind it."""
    mvm = work.core_equivalents * core_mvm_energy_nJ(spec, mode, constants, adc_resolution_bits)
    if not digital:
        return StepEnergy(mvm, 0.0, 0.0, 0.0)
    chains = work.cores // (work.hops + 1)  # column blocks
    link_bytes = work.hops * chains * work.values_out  # INT8 partial sums along every chain
    return StepEnergy(
        mvm=mvm,
        ldpu=work.ldpu_values * constants.ldpu_energy_per_value_nJ,
        gdpu=work.gdpu_outputs * constants.gdpu_energy_per_output_nJ,
        links=link_bytes * constants.link_energy_pJ_per_byte * 1e-3,
    )


@dataclass(frozen=True)
class RowFigures:
    """Table I's columns for one workload (one MVM step)."""

    cores: int
    utilization: float
    mode: str
    tops: float
    tops_per_w: float
    tops_per_mm2: float
    energy_uj: float
    latency_ns: float

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON)."""
        return asdict(self)


def row_figures(
    work: LayerWork,
    spec: ChipSpec,
    mode: str,
    constants: PerfConstants,
    digital: bool = True,
    adc_resolution_bits: int | None = None,
) -> RowFigures:
    """Table I's figures for one MVM of ``work`` (``digital=False``: the array + ADC + PWM only, as the full-chip
    MVM rows)."""
    timing = step_timing(work, spec, mode, constants, adc_resolution_bits, digital)
    energy = step_energy(work, spec, mode, constants, adc_resolution_bits, digital)
    ops = 2.0 * work.weights
    tops = ops / timing.mvm_ns * 1e-3
    p_static = static_power_W(spec, constants)
    power = p_static + energy.mvm / timing.mvm_ns  # W while MVMs stream (nJ/ns = W)
    latency = timing.latency_ns
    return RowFigures(
        cores=work.cores,
        utilization=work.core_equivalents / work.cores,
        mode=mode,
        tops=tops,
        tops_per_w=tops / power,
        tops_per_mm2=tops / (work.cores * spec.mvm_area_mm2),
        energy_uj=(energy.total + p_static * latency) * 1e-3,
        latency_ns=latency,
    )


@dataclass
class LayerPerf:
    """One layer's share of one inference."""

    name: str
    cores: int
    utilization: float
    mvms: int
    slot_ns: float
    busy_ns: float  #: mvms x slot: the layer's time per inference when pipelined
    latency_ns: float  #: busy time + fill (fixed digital + hops + last stream)
    energy_uj: dict[str, float]
    ops: float


@dataclass
class PerfReport:
    """Latency, energy and throughput of one inference of a mapped network.

    Attributes:
        mode, transport: settings.
        layers: per-layer figures.
        latency_ns: one inference alone (layers one after another, inter-layer transport, digital ops and inter-chip
            transfers included).
        energy_uj: per inference, by component (mvm, ldpu, gdpu, links, transport, digital, inter-chip, static).
        ops: MVM operations per inference (1 MAC = 2 ops).
        throughput_per_s: inferences per second with the layers pipelined.
        bottleneck: the pipeline stage that sets the pipelined rate: a layer, or ``"digital ops"`` (``"digital ops
            (chip k)"`` on several chips) where one chip's digital ops take longer per inference than every layer.
        cores, utilization, tops, tops_per_w, tops_per_mm2: chip-level figures while the pipeline runs.
        digital: the digital ops (:mod:`aimc.perf.digital`): ``ops``, ``costed`` (ops with a recorded cost),
            ``latency_ns``, ``energy_uj``, their ``latency_share`` and ``energy_share`` of the inference's,
            ``units`` (per unit: ops, latency_ns, energy_uj) and ``per_op``.
        interchip: transfers between chips (:mod:`aimc.perf.links`): ``chips``, ``transfers`` and ``bytes`` per
            inference, ``latency_ns`` (what they add to the latency), ``energy_uj``, their shares, ``link`` (the
            link model) and ``per_layer``.
    """

    model: str
    mode: str
    transport: str
    layers: list[LayerPerf]
    latency_ns: float
    energy_uj: dict[str, float]
    ops: float
    throughput_per_s: float
    bottleneck: str
    cores: int
    utilization: float
    tops: float
    tops_per_w: float
    tops_per_mm2: float
    assumptions: dict[str, Any] = field(default_factory=dict)
    digital: dict[str, Any] = field(default_factory=dict)
    interchip: dict[str, Any] = field(default_factory=dict)

    @property
    def energy_per_inference_uj(self) -> float:
        """Total energy per inference (µJ)."""
        return sum(self.energy_uj.values())

    def as_dict(self) -> dict[str, Any]:
        """Plain dict (JSON), with the Table-I-style summary fields at the top level."""
        d = asdict(self)
        d["energy_per_inference_uj"] = self.energy_per_inference_uj
        d["energy_uj_total"] = self.energy_per_inference_uj
        return d

    def summary(self) -> str:
        """A printable report."""
        lines = [
            f"{self.model}, {self.mode}, inter-layer transport via {self.transport}",
            f"{'layer':<14} {'cores':>5} {'util':>6} {'MVMs':>6} {'slot ns':>8} {'busy µs':>9} {'energy µJ':>10}",
        ]
        for lp in self.layers:
            lines.append(
                f"{lp.name:<14} {lp.cores:>5} {100 * lp.utilization:>5.1f}% {lp.mvms:>6} {lp.slot_ns:>8.1f} "
                f"{lp.busy_ns * 1e-3:>9.2f} {sum(lp.energy_uj.values()):>10.3f}"
            )
        # the components every network has, and digital / inter-chip energy where there is some
        e = {k: v for k, v in self.energy_uj.items() if v or k not in ("digital", "inter-chip")}
        lines += [
            f"latency (one inference): {self.latency_ns * 1e-3:.2f} µs;  energy: {self.energy_per_inference_uj:.2f} µJ "
            f"(" + ", ".join(f"{k} {v:.2f}" for k, v in e.items()) + ")",
            f"pipelined: {self.throughput_per_s:,.0f} inferences/s, bottleneck {self.bottleneck};  "
            f"{self.tops:.2f} TOPS, {self.tops_per_w:.2f} TOPS/W, {self.tops_per_mm2:.3f} TOPS/mm² on {self.cores} "
            f"cores ({100 * self.utilization:.0f}% used)",
        ]
        lines += self._digital_lines() + self._interchip_lines()
        return "\n".join(lines)

    def _digital_lines(self) -> list[str]:
        """The digital ops' share of latency and energy, and per unit (none where the network has no digital op)."""
        d = self.digital
        if not d.get("ops"):
            return []
        uncosted = d["ops"] - d["costed"]
        note = f" ({uncosted} without a recorded cost, counted as free)" if uncosted else ""
        lines = [
            f"digital ops: {d['ops']} ops{note}, {100 * d['latency_share']:.1f}% of latency, "
            f"{100 * d['energy_share']:.1f}% of energy ({d['latency_ns'] * 1e-3:.2f} µs, {d['energy_uj']:.3f} µJ)"
        ]
        for unit, u in d["units"].items():
            share_t = u["latency_ns"] / self.latency_ns if self.latency_ns else 0.0
            share_e = u["energy_uj"] / self.energy_per_inference_uj if self.energy_per_inference_uj else 0.0
            lines.append(
                f"  {unit:<8} {u['ops']:>4} ops  {u['latency_ns'] * 1e-3:>9.3f} µs ({100 * share_t:5.1f}%)  "
                f"{u['energy_uj']:>9.4f} µJ ({100 * share_e:5.1f}%)"
            )
        return lines

    def _interchip_lines(self) -> list[str]:
        """Transfers between chips (none on one chip)."""
        x = self.interchip
        if x.get("chips", 1) <= 1:
            return []
        link = x["link"]
        return [
            f"inter-chip transfers ({x['chips']} chips): {x['transfers']:,} per inference ({x['bytes']:,} bytes), "
            f"{100 * x['latency_share']:.1f}% of latency ({x['latency_ns'] * 1e-3:.3f} µs), "
            f"{100 * x['energy_share']:.1f}% of energy ({x['energy_uj']:.4f} µJ); link {link['GBps']:g} GB/s, "
            f"{link['latency_ns']:g} ns per transfer, {link['pJ_per_bit']:g} pJ/bit"
        ]


def estimate(
    mapping: Mapping,
    mode: str = "four-phase",
    *,
    transport: str = "host",
    constants: PerfConstants | None = None,
    adc_resolution_bits: int | None = None,
    spec: ChipSpec | None = None,
) -> PerfReport:
    """Latency, energy and throughput of one inference of ``mapping`` (one image, or one LSTM time step).

    Args:
        mapping: from :func:`aimc.compile`.
        mode: ``"four-phase"`` or ``"one-phase"``.
        transport: inter-layer activations ``"host"`` (through the FPGA, as in the chip paper) or ``"on-chip"``
            (over the 5PP links).
        constants: model constants (default: fitted to Table I, see :mod:`aimc.perf.constants`).
        adc_resolution_bits: ADC resolution to provide; a CCO needs 2^bits x 300 ps to count it (None: the
            chip's, set by the 128 ns PWM window).
        spec: chip to estimate for (default: the mapping's).
    """
    if not isinstance(mapping, Mapping):
        raise ArgumentTypeError(f"mapping must be an aimc Mapping (from aimc.compile), got {type(mapping).__name__}")
    check_choice(mode, "mode", READ_MODES)
    check_choice(transport, "transport", TRANSPORTS)
    if adc_resolution_bits is not None:
        low, high = ADC_RESOLUTION_RANGE
        check_number(adc_resolution_bits, "adc_resolution_bits", low=low, high=high, integer=True)
    constants = constants or PerfConstants()
    spec = spec or mapping.spec
    works = network_work(mapping)
    if not works:
        raise ValidationError("the mapping has no analog layer")
    layers: list[LayerPerf] = []
    totals = {
        "mvm": 0.0, "ldpu": 0.0, "gdpu": 0.0, "links": 0.0, "transport": 0.0, "digital": 0.0, "inter-chip": 0.0,
        "static": 0.0,
    }  # fmt: skip
    latency = 0.0
    ops = 0.0
    crossings: dict[str, list[InterchipCost]] = {}
    for x in interchip_work(mapping, works, transport):
        crossings.setdefault(x.layer, []).append(interchip_cost(x, constants))
    interchip_ns = 0.0
    for i, w in enumerate(works):
        timing = step_timing(w, spec, mode, constants, adc_resolution_bits)
        energy = step_energy(w, spec, mode, constants, adc_resolution_bits)
        slot = timing.slot_ns
        fill = max(timing.latency_ns - timing.slot_ns, 0.0)
        link_costs = crossings.get(w.name, [])
        if link_costs:
            before = w.mvms * slot + fill
            slot, fill, output_ns = _with_crossings(link_costs, w, slot, fill)
            interchip_ns += w.mvms * slot + fill - before + output_ns
            latency += output_ns
        busy = w.mvms * slot
        e = {
            "mvm": w.mvms * energy.mvm * 1e-3,
            "ldpu": w.mvms * energy.ldpu * 1e-3,
            "gdpu": w.mvms * energy.gdpu * 1e-3,
            "links": w.mvms * energy.links * 1e-3,
        }
        # INT8 activations leaving the layer: its outputs, or an LSTM's hidden state (not its 4 gate values)
        out_bytes = w.mvms * (w.gdpu_outputs or w.weights // w.input_values)
        if i < len(works) - 1:
            if transport == "host":
                t_tr = out_bytes / constants.host_link_GBps
                e_tr = out_bytes * constants.host_energy_pJ_per_byte * 1e-6
            else:
                t_tr = out_bytes / (spec.link_channels * spec.link_rate_Gbps / 8.0)
                e_tr = out_bytes * constants.link_energy_pJ_per_byte * 1e-6
            e["transport"] = e_tr
            latency += t_tr
        if link_costs:
            e["inter-chip"] = sum(c.energy_nJ for c in link_costs) * 1e-3
        for k, v in e.items():
            totals[k] += v
        latency += busy + fill
        ops += 2.0 * w.weights * w.mvms
        layers.append(
            LayerPerf(
                w.name,
                w.cores,
                w.core_equivalents / w.cores,
                w.mvms,
                slot,
                busy,
                busy + fill,
                e,
                2.0 * w.weights * w.mvms,
            )
        )
    digital = digital_costs(mapping, spec, constants)
    digital_ns = sum(c.latency_ns for c in digital)
    latency += digital_ns
    totals["digital"] = sum(c.energy_nJ for c in digital) * 1e-3
    busiest = max(layers, key=lambda lp: lp.busy_ns)
    bottleneck, period_ns = busiest.name, busiest.busy_ns
    for chip, busy in _digital_stages(digital).items():
        if busy > period_ns:
            bottleneck, period_ns = ("digital ops" if mapping.chips == 1 else f"digital ops (chip {chip})"), busy
    p_static = static_power_W(spec, constants) * mapping.chips  # every chip the network spans leaks
    totals["static"] = p_static * period_ns * 1e-3
    cores = sum(w.cores for w in works)
    core_eq = sum(w.core_equivalents for w in works)
    tops = ops / period_ns * 1e-3
    power = sum(totals.values()) * 1e3 / period_ns  # µJ per period -> W
    energy_total = sum(totals.values())
    links = [c for costs in crossings.values() for c in costs]
    return PerfReport(
        model=mapping.model_name,
        mode=mode,
        transport=transport,
        layers=layers,
        latency_ns=latency,
        energy_uj=totals,
        ops=ops,
        throughput_per_s=1e9 / period_ns,
        bottleneck=bottleneck,
        cores=cores,
        utilization=core_eq / cores,
        tops=tops,
        tops_per_w=tops / power,
        tops_per_mm2=tops / (cores * spec.mvm_area_mm2),
        assumptions={"constants": asdict(constants), "adc_resolution_bits": adc_resolution_bits},
        digital={
            "ops": len(digital),
            "costed": sum(c.work.costed for c in digital),
            "latency_ns": digital_ns,
            "energy_uj": totals["digital"],
            "latency_share": digital_ns / latency if latency else 0.0,
            "energy_share": totals["digital"] / energy_total if energy_total else 0.0,
            "units": by_unit(digital),
            "per_op": [c.as_dict() for c in digital],
        },
        interchip={
            "chips": mapping.chips,
            "transfers": sum(c.work.transfers_per_inference for c in links),
            "bytes": sum(c.work.bytes for c in links),
            "latency_ns": interchip_ns,
            "energy_uj": totals["inter-chip"],
            "latency_share": interchip_ns / latency if latency else 0.0,
            "energy_share": totals["inter-chip"] / energy_total if energy_total else 0.0,
            "link": {
                "GBps": constants.interchip_GBps,
                "latency_ns": constants.interchip_latency_ns,
                "pJ_per_bit": constants.interchip_energy_pJ_per_bit,
            },
            "per_layer": [c.as_dict() for c in links],
        },
    )


def _with_crossings(
    costs: list[InterchipCost], work: LayerWork, slot: float, fill: float
) -> tuple[float, float, float]:
    """A layer's MVM slot and pipeline fill with its inter-chip transfers, and the time its output crossings add to
    the inference (:mod:`aimc.perf.links`)."""
    output_ns = 0.0
    for cost in costs:
        if cost.work.what == PARTIAL_SUMS:
            if work.gdpu_outputs:  # an LSTM/GRU step waits for its partial sums before the GDPU: the step lengthens
                slot += cost.chain_ns
            else:  # the chain is longer (pipeline fill) and the link must carry each MVM's partial sums in a slot
                fill += cost.chain_ns
                slot = max(slot, cost.occupancy_ns)
        else:
            output_ns += cost.chain_ns
    return slot, fill, output_ns


def _digital_stages(costs: list[DigitalOpCost]) -> dict[int, float]:
    """Per chip, the busy time per inference of its digital unit (the sum of its digital ops' times)."""
    out: dict[int, float] = {}
    for c in costs:
        out[c.work.chip] = out.get(c.work.chip, 0.0) + c.latency_ns
    return out
