"""Scaling study: how latency, energy and TOPS/W move when one design parameter of the chip changes (docs/scaling.md).

One-factor-at-a-time sweeps around the HERMES chip (Le Gallo et al. 2023): the tile size (square crossbars), the number
of cores (square-ish grid), the PWM input bits, the ADC resolution and the read mode, each with everything else at the
chip's values, for each reference network. Every point is a fresh :func:`aimc.compile` of the network for the variant
chip (on the fewest chips it fits) and an :func:`aimc.perf.estimate` of one inference.

- :func:`scaling_study` — the rows (plain dicts, JSON-ready).
- :func:`clock_rate_answer` — does going analog remove the clock-rate limit on operations per second? Computed from
  the rows.
- :func:`plot_scaling` — latency, energy, TOPS/W and throughput vs each factor, both networks, both modes.
- :func:`format_rows` — a fixed-width table.

Command line: ``aimc perf scaling --out docs/figures`` (see docs/scaling.md).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aimc._validation import check_choice, check_number
from aimc.compiler import compile as compile_network
from aimc.compiler.mapping import Mapping
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.models import example_input, get_model
from aimc.perf.constants import PerfConstants
from aimc.perf.model import TRANSPORTS, estimate, integration_time_ns, mvm_time_ns, step_timing
from aimc.perf.workload import network_work
from aimc.spec import READ_MODES, ChipSpec

#: The factors of the study, in the order of its rows, and how the figure and the table name them.
FACTORS: tuple[str, ...] = ("tile_size", "core_count", "pwm_bits", "adc_bits", "mode")
FACTOR_LABELS: dict[str, str] = {
    "tile_size": "tile size (rows = columns)",
    "core_count": "cores per chip",
    "pwm_bits": "PWM input bits",
    "adc_bits": "ADC resolution (bits)",
    "mode": "read mode",
}
#: Inputs that calibrate each compile (its number ranges only: latency and energy depend on the shapes alone).
CALIBRATION_BATCH = 1
#: Most chips the study tries before it gives up on fitting a network (a guard, far above any reference network).
MAX_CHIPS = 64

_COLUMNS: tuple[tuple[str, str, int, str], ...] = (
    # key, header, width, number format (strings are left-aligned, numbers right-aligned)
    ("network", "network", 9, ""),
    ("factor", "factor", 10, ""),
    ("value", "value", 10, "d"),
    ("mode", "mode", 10, ""),
    ("cores_used", "cores", 5, "d"),
    ("chips", "chips", 5, "d"),
    ("utilization", "util", 5, ".0%"),
    ("mvm_time_ns", "MVM ns", 7, ".1f"),
    ("peak_core_tops", "core TOPS", 9, ".3f"),
    ("latency_us", "latency µs", 10, ".2f"),
    ("energy_uj", "energy µJ", 10, ".3f"),
    ("throughput_per_s", "inf/s", 10, ",.0f"),
    ("tops", "TOPS", 7, ".3f"),
    ("tops_per_w", "TOPS/W", 7, ".3f"),
    ("tops_per_mm2", "TOPS/mm²", 8, ".4f"),
    ("bottleneck", "bottleneck", 10, ""),
    ("bottleneck_slot_ns", "slot ns", 8, ".1f"),
    ("limited_by", "limit", 7, ""),
)


def square_grid(cores: int) -> tuple[int, int]:
    """The most nearly square ``rows x cols`` grid of ``cores`` cores (16 -> 4 x 4, 64 -> 8 x 8, 32 -> 4 x 8)."""
    check_number(cores, "cores", low=1, integer=True)
    rows = max(r for r in range(1, math.isqrt(cores) + 1) if cores % r == 0)
    return rows, cores // rows


def variant_chip(
    base: ChipSpec | None = None, *, tile_size: int | None = None, cores: int | None = None, pwm_bits: int | None = None
) -> ChipSpec:
    """``base`` (default the HERMES chip) with square ``tile_size`` tiles, ``cores`` cores on a square-ish grid and/or
    ``pwm_bits`` PWM input bits; every other field keeps the chip's value."""
    spec = base or ChipSpec.hermes()
    changes: dict[str, int] = {}
    area: dict[str, float] = {}
    if tile_size is not None:
        # assumption: the MVM area of a core grows with its crossbar cells
        cells = tile_size * tile_size / (spec.tile_rows * spec.tile_cols)
        changes.update(tile_rows=tile_size, tile_cols=tile_size)
        area = {"mvm_area_mm2": spec.mvm_area_mm2 * cells}
    if cores is not None:
        rows, cols = square_grid(cores)
        changes.update(cores=cores, grid_rows=rows, grid_cols=cols)
    if pwm_bits is not None:
        changes["pwm_bits"] = pwm_bits
    spec = dataclasses.replace(spec, **changes)
    return dataclasses.replace(spec, **area) if tile_size is not None else spec


def compile_fitting(network: str, spec: ChipSpec) -> tuple[Mapping, int]:
    """Compile a reference network for ``spec`` on the fewest chips it fits on; returns (mapping, chips).

    A compile that fails for lack of cores (the compiler's "map it across at least N chips with chips=N" error, which
    it raises before calibrating, so a failed try is cheap) is retried on one chip more; any other error is raised.
    """
    for chips in range(1, MAX_CHIPS + 1):
        try:
            mapping = compile_network(
                get_model(network), spec, example_input(network, batch=CALIBRATION_BATCH), chips=chips, name=network
            )
        except ValidationError as err:
            if chips == MAX_CHIPS or "chips=" not in str(err):
                raise
            continue
        return mapping, chips
    raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises


def _limited_by(mapping: Mapping, spec: ChipSpec, layer: str, mode: str, adc_bits: int | None) -> str:
    """What sets the slot of ``layer``: ``"MVM"`` (the analog conversion) or ``"digital"`` (LDPU stream, hops, GDPU;
    or the network's digital ops, where they are the bottleneck stage)."""
    work = next((w for w in network_work(mapping) if w.name == layer), None)
    if work is None:  # the bottleneck is a chip's digital ops, not a layer
        return "digital"
    timing = step_timing(work, spec, mode, PerfConstants(), adc_bits)
    if work.gdpu_outputs:  # an LSTM step is MVM then digital, in sequence: the larger part dominates
        return "digital" if timing.digital_ns > timing.mvm_ns else "MVM"
    return "MVM" if timing.slot_ns <= timing.mvm_ns else "digital"


def _row(
    network: str,
    factor: str,
    value: int | str | None,
    mode: str,
    mapping: Mapping,
    chips: int,
    spec: ChipSpec,
    adc_bits: int | None,
    transport: str,
) -> dict[str, Any]:
    rep = estimate(mapping, mode, transport=transport, adc_resolution_bits=adc_bits, spec=spec)
    t_mvm = mvm_time_ns(spec, mode, adc_bits)
    # the bottleneck layer's MVM slot; a digital-ops stage's slot is its busy time per inference
    slot = next((lp.slot_ns for lp in rep.layers if lp.name == rep.bottleneck), 1e9 / rep.throughput_per_s)
    return {
        "network": network,
        "factor": factor,
        "value": value,
        "mode": mode,
        "tile_size": spec.tile_rows,
        "chip_cores": spec.cores,
        "pwm_bits": spec.pwm_bits,
        "adc_resolution_bits": adc_bits,
        "integration_time_ns": integration_time_ns(spec, adc_bits),
        "cores_used": rep.cores,
        "chips": chips,
        "utilization": rep.utilization,
        "mvm_time_ns": t_mvm,
        "peak_core_tops": 2.0 * spec.tile_rows * spec.tile_cols / t_mvm * 1e-3,
        "latency_us": rep.latency_ns * 1e-3,
        "energy_uj": rep.energy_per_inference_uj,
        "throughput_per_s": rep.throughput_per_s,
        "tops": rep.tops,
        "tops_per_w": rep.tops_per_w,
        "tops_per_mm2": rep.tops_per_mm2,
        "bottleneck": rep.bottleneck,
        "bottleneck_slot_ns": slot,
        "limited_by": _limited_by(mapping, spec, rep.bottleneck, mode, adc_bits),
    }


def _ints(values: Iterable[object], name: str, low: int) -> tuple[int, ...]:
    if isinstance(values, str | bytes) or not isinstance(values, Iterable):
        raise ArgumentTypeError(f"{name} must be a sequence of ints, got {type(values).__name__}")
    out = tuple(values)
    for v in out:
        check_number(v, name, low=low, integer=True)
    return out  # type: ignore[return-value]


def scaling_study(
    networks: Sequence[str] = ("resnet9", "char-lstm"),
    *,
    tile_sizes: Sequence[int] = (128, 256, 512, 1024),
    core_counts: Sequence[int] = (16, 64, 256),
    pwm_bits: Sequence[int] = (4, 6, 8, 10),
    adc_bits: Sequence[int | None] = (None, 8, 10, 12),
    modes: Sequence[str] = ("one-phase", "four-phase"),
    transport: str = "host",
) -> list[dict[str, Any]]:
    """One-factor-at-a-time sweeps around the HERMES chip, for each network and read mode.

    Each factor is varied alone, every other parameter at the chip's value: square tiles of ``tile_sizes``; chips of
    ``core_counts`` cores on a square-ish grid (a network that does not fit is spread over the fewest chips that
    hold it); ``pwm_bits`` PWM input bits (integration window 2^(bits-1) x 1 ns/LSB); ADC resolutions
    ``adc_bits`` (``None``: the chip's, set by the PWM window; a CCO needs 2^bits x 300 ps to count ``bits``); and the
    read mode (factor ``"mode"``: the chip itself in each of ``modes``). Every other factor's point is evaluated in
    each of ``modes`` too. An empty sequence skips a factor.

    Args:
        networks: reference networks (:func:`aimc.models.get_model` names).
        tile_sizes, core_counts, pwm_bits, adc_bits, modes: the values of each factor.
        transport: inter-layer activations, ``"host"`` (as in the chip paper) or ``"on-chip"``.

    Returns:
        One dict per (network, factor, value, mode) with: network, factor, value, mode; the chip point (tile_size,
        chip_cores, pwm_bits, adc_resolution_bits, integration_time_ns); cores_used, chips, utilization,
        mvm_time_ns, peak_core_tops (2 x rows x cols / MVM time of one fully used core), latency_us, energy_uj (per
        inference), throughput_per_s (layers pipelined), tops, tops_per_w, tops_per_mm2 (whole network while
        pipelined, :func:`aimc.perf.estimate`), bottleneck (the layer that sets the rate), bottleneck_slot_ns (its
        time per MVM) and limited_by (``"MVM"`` or ``"digital"``: what sets that slot).
    """
    if isinstance(networks, str):
        networks = (networks,)
    tiles = _ints(tile_sizes, "tile_sizes", 1)
    cores = _ints(core_counts, "core_counts", 1)
    pwms = _ints(pwm_bits, "pwm_bits", 2)
    adcs = tuple(adc_bits)
    for b in adcs:
        if b is not None:
            check_number(b, "adc_bits", low=1, high=20, integer=True)
    modes = tuple(modes)
    if not modes:
        raise ValidationError("modes must name at least one read mode")
    for m in modes:
        check_choice(m, "mode", READ_MODES)
    check_choice(transport, "transport", TRANSPORTS)

    base = ChipSpec.hermes()
    cache: dict[tuple[str, ChipSpec], tuple[Mapping, int]] = {}

    def mapped(network: str, spec: ChipSpec) -> tuple[Mapping, int]:
        if (network, spec) not in cache:
            cache[network, spec] = compile_fitting(network, spec)
        return cache[network, spec]

    rows: list[dict[str, Any]] = []
    for net in networks:
        # factor, value, chip the network is mapped onto, chip it is estimated for, ADC bits. The PWM bits do not
        # change the tiling or the placement (only the calibrated input ranges), so the chip's own mapping serves.
        points: list[tuple[str, int | None, ChipSpec, ChipSpec, int | None]] = []
        points += [("tile_size", t, variant_chip(base, tile_size=t), None, None) for t in tiles]
        points += [("core_count", c, variant_chip(base, cores=c), None, None) for c in cores]
        points += [("pwm_bits", b, base, variant_chip(base, pwm_bits=b), None) for b in pwms]
        points += [("adc_bits", b, base, None, b) for b in adcs]
        for factor, value, chip, chip_for, adc in points:
            mapping, chips = mapped(net, chip)
            spec = chip_for or chip
            rows += [_row(net, factor, value, mode, mapping, chips, spec, adc, transport) for mode in modes]
        mapping, chips = mapped(net, base)
        rows += [_row(net, "mode", mode, mode, mapping, chips, base, None, transport) for mode in modes]
    return rows


# --- the clock-rate question ----------------------------------------------------------------------------------------


def _select(rows: Sequence[dict[str, Any]], **match: object) -> list[dict[str, Any]]:
    return [r for r in rows if all(r.get(k) == v for k, v in match.items())]


def _point(row: dict[str, Any]) -> tuple[object, ...]:
    """The design point of a row (the same chip and network appear under several factors)."""
    keys = ("network", "tile_size", "chip_cores", "pwm_bits", "adc_resolution_bits", "mode")
    return tuple(row[k] for k in keys)


def _ns(values: Iterable[float]) -> str:
    return ", ".join(f"{v:.0f}" for v in values)


def clock_rate_answer(rows: Sequence[dict[str, Any]]) -> str:
    """Does going analog remove the clock-rate limit on operations per second? An answer computed from ``rows``.

    The sentences quote the study's own figures: the MVM time against the PWM bits (the PWM duration) and the ADC
    resolution (the CCO's counting time), the per-core peak TOPS against the tile size at a fixed MVM time, and
    whether the whole network's throughput follows the MVM time or the digital units' slot.
    """
    rows = list(rows)
    if not rows:
        raise ValidationError("clock_rate_answer needs the rows of a scaling study")
    chip = ChipSpec.hermes()
    ldpu_ns = 1e3 / chip.ldpu_clock_MHz
    out: list[str] = []

    # 1. the MVM time is the PWM duration 2^(b-1) x ns/LSB (plus fixed overheads), in each mode
    plain = [r for r in rows if r["adc_resolution_bits"] is None]
    for mode in READ_MODES:
        pts = sorted({(r["pwm_bits"], r["mvm_time_ns"], r["integration_time_ns"]) for r in _select(plain, mode=mode)})
        if not pts:
            continue
        bits = [p[0] for p in pts]
        text = (
            f"{mode.capitalize()}: the MVM time is set by the PWM duration 2^(bits-1) x {chip.pwm_ns_per_lsb:g} ns/LSB "
            f"(a {_ns(p[2] for p in pts)} ns window for {', '.join(map(str, bits))} input bits), giving "
            f"{_ns(p[1] for p in pts)} ns per MVM"
        )
        if len(pts) >= 2:
            (b0, t0, _), (b1, t1, _) = pts[-2], pts[-1]
            text += f"; it grows {(t1 / t0) ** (1.0 / (b1 - b0)):.2f}x per extra bit between {b0} and {b1} bits"
        out.append(text + ": a time-domain conversion with no clock cycle per operation in it.")

    # 2. a finer ADC needs a longer CCO count: 2^b x ps/LSB once it exceeds the PWM window
    adc = sorted(
        {
            (r["adc_resolution_bits"], r["mvm_time_ns"])
            for r in rows
            if r["adc_resolution_bits"] is not None
            and r["mode"] == "one-phase"
            and r["pwm_bits"] == chip.pwm_bits
            and r["tile_size"] == chip.tile_rows
        }
    )
    if adc:
        count = [(b, 2.0**b * chip.adc_ps_per_lsb * 1e-3) for b, _ in adc]
        longer = [(b, c, t) for (b, c), (_, t) in zip(count, adc, strict=True) if c > chip.integration_time_ns]
        inside = [b for b, c in count if c <= chip.integration_time_ns]
        text = f"The ADC's counting time 2^bits x {chip.adc_ps_per_lsb:g} ps adds to it"
        if longer:
            text += (
                f": {', '.join(str(b) for b, _, _ in longer)} bits need {_ns(c for _, c, _ in longer)} ns of "
                f"counting, which stretch the one-phase MVM to {_ns(t for _, _, t in longer)} ns"
            )
        if inside:
            text += (
                f"{';' if longer else ':'} {', '.join(map(str, inside))} bits fit in the "
                f"{chip.integration_time_ns:g} ns PWM window and cost no time"
            )
        out.append(text + ".")

    # 3. per-core TOPS grow with the tile size at a fixed MVM time
    for mode in READ_MODES:
        tiles = sorted(
            {
                (r["tile_size"], r["mvm_time_ns"], r["peak_core_tops"])
                for r in _select(rows, factor="tile_size", mode=mode)
            }
        )
        if len(tiles) >= 2:
            t_mvm = {t[1] for t in tiles}
            same = len({round(t, 6) for t in t_mvm}) == 1
            out.append(
                f"At {'a fixed' if same else 'a varying'} {mode} MVM time of {_ns(sorted(t_mvm))} ns, one core's peak "
                f"rises from {tiles[0][2]:.3g} TOPS ({tiles[0][0]}x{tiles[0][0]} tile) to {tiles[-1][2]:.3g} TOPS "
                f"({tiles[-1][0]}x{tiles[-1][0]}), {tiles[-1][2] / tiles[0][2]:.0f}x: an MVM does rows x columns MACs "
                f"in one conversion, however many there are."
            )
            break

    # 4. whole networks: the rate follows the digital units once the MVM is short enough
    for net in dict.fromkeys(r["network"] for r in rows):
        for factor in ("tile_size", "pwm_bits"):
            pts = sorted(_select(rows, network=net, factor=factor, mode="one-phase"), key=lambda r: r["value"])
            if len(pts) < 2:
                continue
            lo, hi = pts[0], pts[-1]
            digital = [r for r in pts if r["limited_by"] == "digital"]
            what = "tile size" if factor == "tile_size" else "PWM bits"
            text = (
                f"{net}, one-phase: from {lo['value']} to {hi['value']} {what} the MVM time goes "
                f"{lo['mvm_time_ns']:.0f} -> {hi['mvm_time_ns']:.0f} ns while the throughput goes "
                f"{lo['throughput_per_s']:,.0f} -> {hi['throughput_per_s']:,.0f} inferences/s (network TOPS "
                f"{lo['tops']:.3g} -> {hi['tops']:.3g})"
            )
            if digital:
                d = digital[0]
                text += (
                    f"; at {d['value']} {what} the bottleneck layer {d['bottleneck']} needs a "
                    f"{d['bottleneck_slot_ns']:.0f} ns slot against a {d['mvm_time_ns']:.0f} ns MVM, "
                    f"set by its digital units (the LDPU streams one value per {ldpu_ns:g} ns clock at "
                    f"{chip.ldpu_clock_MHz:g} MHz)"
                )
            out.append(text + ".")

    def share_digital(mode: str) -> float | None:
        points = {_point(r): r["limited_by"] for r in rows if r["mode"] == mode}
        return sum(v == "digital" for v in points.values()) / len(points) if points else None

    shares = {m: share_digital(m) for m in READ_MODES}
    verdict = (
        "So going analog removes the clock from the MACs: one MVM does all rows x columns of a tile in a conversion "
        "time set by the PWM duration and the ADC's counting time (exponential in their bits), with no clock cycle "
        "per operation, so a core's operations per second grow with its tile size at a fixed MVM time. It does not "
        "remove the limit on a network's operations per second: "
    )
    known = {m: v for m, v in shares.items() if v is not None}
    verdict += (
        " and ".join(f"{100 * v:.0f}% of the distinct {m} design points" for m, v in known.items())
        + f" have their bottleneck layer's slot set by the digital units ({chip.ldpu_clock_MHz:g} MHz LDPU, one value "
        "per clock, and for an LSTM the GDPUs behind it), the rest by the analog conversion time itself, which "
        "doubles with every input or ADC bit."
    )
    out.append(verdict)
    return "\n".join(out)


# --- table and figure -----------------------------------------------------------------------------------------------


def _cell(value: object, width: int, fmt: str) -> str:
    if value is None:
        return format("chip", f">{width}")
    if isinstance(value, str):
        return format(value, f">{width}" if fmt else f"<{width}")
    return format(value, f">{width}{fmt}")


def format_rows(rows: Sequence[dict[str, Any]]) -> str:
    """A fixed-width table of the study's rows (value ``chip``: the chip's own ADC resolution, set by the PWM
    window; limit: whether the bottleneck layer's slot is set by its MVM or by its digital units)."""
    head = " ".join(format(h, f"{'>' if fmt else '<'}{w}") for _, h, w, fmt in _COLUMNS)
    lines = [head, "-" * len(head)]
    lines += [" ".join(_cell(r.get(key), w, fmt) for key, _, w, fmt in _COLUMNS) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


_METRICS: tuple[tuple[str, str], ...] = (
    ("latency_us", "latency per inference (µs)"),
    ("energy_uj", "energy per inference (µJ)"),
    ("tops_per_w", "TOPS/W (network, pipelined)"),
    ("throughput_per_s", "throughput (inferences/s)"),
)
_MODE_STYLE: dict[str, dict[str, str]] = {
    "one-phase": {"color": "tab:blue", "ls": "-", "marker": "o"},
    "four-phase": {"color": "tab:red", "ls": "--", "marker": "s"},
}


def _number(value: float, _pos: object = None) -> str:
    """Tick label in plain numbers: 0.6, 3.5, 40, 2,000, 300k, 1M."""
    if value >= 1e6:
        return f"{value / 1e6:g}M"
    if value >= 1e5:
        return f"{value / 1e3:g}k"
    return f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"


def _minor(value: float, leads: Sequence[int]) -> str:
    """Label a minor log tick only if its leading digit is in ``leads``."""
    lead = round(value / 10 ** math.floor(math.log10(value) + 1e-9))
    return _number(value) if lead in leads else ""


def plot_scaling(rows: Sequence[dict[str, Any]], path: str | Path) -> None:
    """Figure of the study, saved as PNG at ``path``.

    One block of panels per network (their figures differ by orders of magnitude, so each keeps its own axes); in a
    block, one row per swept factor (tile size, cores per chip, PWM bits, ADC resolution) and one column per metric
    (latency and energy per inference, TOPS/W, pipelined throughput); line colour and style = read mode; log y axes
    (the factors act multiplicatively). Points that need more than one chip are labelled in the latency panels.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    rows = list(rows)
    factors = [f for f in FACTORS if f != "mode" and _select(rows, factor=f)]
    if not factors:
        raise ValidationError("plot_scaling needs rows of at least one swept factor (tile, cores, PWM or ADC)")
    networks = list(dict.fromkeys(r["network"] for r in rows))
    modes = [m for m in READ_MODES if _select(rows, mode=m)]

    fig = plt.figure(figsize=(4.0 * len(_METRICS), 2.7 * len(factors) * len(networks) + 0.8), layout="constrained")
    blocks = fig.subfigures(len(networks), 1, squeeze=False)[:, 0]
    for block, net in zip(blocks, networks, strict=True):
        block.suptitle(net, fontsize=13, fontweight="bold")
        axes = block.subplots(len(factors), len(_METRICS), squeeze=False)
        for i, factor in enumerate(factors):
            values = list(dict.fromkeys(r["value"] for r in _select(rows, factor=factor, network=net)))
            values.sort(key=lambda v: -1 if v is None else v)
            for j, (metric, title) in enumerate(_METRICS):
                ax = axes[i][j]
                for mode in modes:
                    pts = {r["value"]: r for r in _select(rows, factor=factor, network=net, mode=mode)}
                    xs = [k for k, v in enumerate(values) if v in pts]
                    ys = [pts[values[k]][metric] for k in xs]
                    ax.plot(xs, ys, ms=5, label=mode, **_MODE_STYLE[mode])
                    if j == 0 and mode == modes[-1]:
                        for k, y in zip(xs, ys, strict=True):
                            if pts[values[k]]["chips"] > 1:
                                ax.annotate(
                                    f"{pts[values[k]]['chips']} chips",
                                    (k, y),
                                    textcoords="offset points",
                                    xytext=(0, 7),
                                    ha="center",
                                    fontsize=8,
                                )
                ax.set_yscale("log")
                ax.margins(y=0.15)
                ax.yaxis.set_major_formatter(FuncFormatter(_number))
                lo, hi = ax.get_ylim()
                lead = (1, 2, 3, 4, 5, 6, 7, 8, 9) if hi / lo < 3 else (2, 3, 5) if hi / lo < 30 else ()
                ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _p, lead=lead: _minor(v, lead)))
                ax.tick_params(axis="y", which="minor", labelsize=7)
                ax.set_xticks(range(len(values)), ["chip" if v is None else str(v) for v in values])
                ax.set_xlim(-0.3, len(values) - 0.7)
                ax.set_xlabel(FACTOR_LABELS[factor], fontsize=9)
                ax.grid(True, which="major", alpha=0.35)
                ax.grid(True, which="minor", axis="y", alpha=0.12)
                if i == 0:
                    ax.set_title(title, fontsize=10)
    handles, labels = blocks[0].axes[0].get_legend_handles_labels()
    chip = ChipSpec.hermes()
    fig.legend(handles, labels, loc="outside lower center", ncol=len(labels), fontsize=10)
    fig.suptitle(
        f"One factor at a time around the HERMES chip (the others at its values: {chip.tile_rows}x{chip.tile_cols} "
        f"tiles, {chip.cores} cores, {chip.pwm_bits}-bit PWM, ADC set by the {chip.integration_time_ns:g} ns PWM "
        f"window; 'chip' = that ADC resolution)",
        fontsize=11,
    )
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
