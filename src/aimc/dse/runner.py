"""Run a design space on the sweep engine: the same store, executors and progress as ``aimc sweep``.

For every chip design of a :class:`~aimc.dse.space.DesignSpace`, the network is compiled once for the design's chip
(calibrated as ``aimc eval`` does, on the fewest chips it fits on) and that one mapping gives both the design's
performance (:func:`design_perf`: latency, throughput, energy, TOPS/W and an area proxy, from
:func:`aimc.perf.estimate`) and its accuracy (Monte Carlo: programmed chips read at each time). Each point — a
design, a programming seed, a time, a read draw — is stored in the SQLite store of :mod:`aimc.sweep.store` as soon as
it is done, keyed by the hash of everything its result depends on, so a killed run resumes without recomputing and a
grown space runs only its new points. Points are grouped by programmed chip (mapping, device, strategy, read
voltage, seed): a chip is programmed once and read at every time and in every read mode of the space.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch

from aimc.compiler.mapping import Mapping as ChipMapping
from aimc.dse.space import Design, DesignPoint, DesignSpace, DesignSpaceError, _as_space, check_designs
from aimc.errors import ValidationError
from aimc.spec import ChipSpec
from aimc.sweep.cache import load_mapping, save_mapping
from aimc.sweep.errors import StoreError
from aimc.sweep.runner import Plan, SweepResult, check_run_options, run_pending
from aimc.sweep.store import PointResult, ResultStore
from aimc.sweep.worker import ChipRunner
from aimc.tasks import Task, get_task

#: The context of every design-space store (a folder of a sweep, or of an older schema, is refused).
DSE_CONTEXT = {"kind": "aimc-dse", "schema": 1}
#: Default output folder: results/dse/<name>.
DEFAULT_OUTPUT_ROOT = Path("results") / "dse"
#: The counter bits of the chip's ADC (ChipSpec.adc_bits), for the area proxy of designs that keep it.
_CHIP = ChipSpec.hermes()


@dataclass(frozen=True)
class DseResult(SweepResult):
    """What a run did: output folder, store, points in the space / stored before / computed now, wall time (the
    fields of :class:`~aimc.sweep.runner.SweepResult`; ``complete``: every point of the space is stored)."""


def area_mm2(spec: ChipSpec, chips: int) -> dict[str, float]:
    """An area proxy of a design: its chips' cores, each an MVM array plus its per-column periphery.

    Sources: the HERMES core is 1.392 mm², of which 0.635 mm² is the MVM unit (Le Gallo et al. 2023;
    docs/physics.md §10). Assumptions (not published): the MVM area grows with the crossbar's cells
    (:func:`~aimc.perf.scaling.variant_chip`, already in ``spec.mvm_area_mm2``); the rest of a core (one CCO ADC and
    LDPU lane per column, PWM drivers, control) grows with its columns and, for the ADCs, linearly with the counter
    bits (flip-flops). Chip-level blocks (GDPUs, I/O) are left out: the proxy compares the analog tiles.

    Returns:
        ``core_mm2`` (one core), ``area_mm2`` (every core of the chips the network spans) and ``adcs`` (ADCs there).
        :func:`design_perf` adds ``area_used_mm2``, the cores the network uses.
    """
    periphery = (_CHIP.core_area_mm2 - _CHIP.mvm_area_mm2) * (spec.tile_cols / _CHIP.tile_cols)
    periphery *= spec.adc_bits / _CHIP.adc_bits
    core = spec.mvm_area_mm2 + periphery
    cores = chips * spec.cores
    return {"core_mm2": core, "area_mm2": core * cores, "adcs": float(cores * spec.tile_cols)}


def design_perf(design: Design, mapping: ChipMapping, transport: str = "host") -> dict[str, Any]:
    """Performance of one inference of ``design`` from its compiled ``mapping`` (:func:`aimc.perf.estimate`).

    Returns a JSON-ready dict: cores used, chips, utilisation, MVM time, latency (µs), throughput (inferences/s),
    energy per inference (µJ), TOPS, TOPS/W, TOPS/mm², bottleneck layer, and the area proxy of :func:`area_mm2`.
    """
    from aimc.perf.model import estimate, mvm_time_ns

    spec = mapping.spec
    rep = estimate(mapping, design.mode, transport=transport, adc_resolution_bits=design.adc_bits, spec=spec)
    area = area_mm2(spec, mapping.chips)
    return {
        "cores_used": rep.cores,
        "chips": mapping.chips,
        "utilization": rep.utilization,
        "mvm_time_ns": mvm_time_ns(spec, design.mode, design.adc_bits),
        "integration_time_ns": spec.integration_time_ns,
        "latency_us": rep.latency_ns * 1e-3,
        "throughput_per_s": rep.throughput_per_s,
        "energy_uj": rep.energy_per_inference_uj,
        "tops": rep.tops,
        "tops_per_w": rep.tops_per_w,
        "tops_per_mm2": rep.tops_per_mm2,
        "bottleneck": rep.bottleneck,
        "transport": transport,
        **area,
        "area_used_mm2": area["core_mm2"] * rep.cores,
    }


@dataclass(frozen=True)
class DsePayload:
    """Everything a worker needs besides the points (shipped once per worker).

    Attributes:
        networks: the networks (:class:`~aimc.tasks.Task`) by name.
        designs: the designs with points to run, by :attr:`Design.key`.
        mappings: their compiled networks, by :attr:`Design.chip_key`.
        data: evaluation data by network (:class:`aimc.tasks.TaskData`).
        perf: :func:`design_perf` of each design, by key.
    """

    networks: dict[str, Task]
    designs: dict[str, Design]
    mappings: dict[str, ChipMapping]
    data: dict[str, Any]
    perf: dict[str, dict[str, Any]] = field(default_factory=dict)

    def make_runner(self, threads: int | None) -> DesignRunner:
        """A runner of this payload's points (the executors' hook)."""
        return DesignRunner(self, threads)


class DesignRunner(ChipRunner):
    """Runs design points on a cached programmed chip (one per (mapping, device, strategy, read voltage, seed))."""

    payload: DsePayload

    def run(self, key: str, point: DesignPoint) -> PointResult:
        """Evaluate ``point``, programming its chip unless the last one matches."""
        from aimc.chip import program

        p = self.payload
        design = p.designs[point.design]
        start = time.perf_counter()
        cpu_start = time.process_time()
        reused = self._use_chip(
            point.chip,
            lambda: program(
                p.mappings[design.chip_key],
                design.device_model(),
                design.strategy,
                seed=point.seed,
                config=core_config(design),
            ),
        )
        programmed = time.perf_counter()
        data = p.data[design.network]
        value = p.networks[design.network].score(self._chip, data, point.t_seconds, design.mode, point.read_seed)
        done = time.perf_counter()
        details = {"design": design.as_dict(), "design_key": design.key, "perf": p.perf[design.key]}
        return PointResult(
            key=key,
            seed=point.seed,
            device=design.device,
            strategy=design.strategy,
            t_seconds=float(point.t_seconds),
            mode=design.mode,
            drift_compensation=True,
            read=point.read,
            metric=p.networks[design.network].metric,
            value=float(value),
            details=details,
            read_seed=point.read_seed,
            program_s=programmed - start,
            run_s=done - programmed,
            cpu_s=time.process_time() - cpu_start,
            chip_reused=reused,
            worker=self.worker,
            provenance=self._provenance(),
            finished_utc=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        )


def core_config(design: Design) -> Any:
    """The cores' configuration of ``design``: :class:`~aimc.core.config.CoreConfig` with its read voltage."""
    import dataclasses

    from aimc.core.config import CoreConfig

    config = CoreConfig()
    return (
        config if design.read_voltage_V is None else dataclasses.replace(config, read_voltage_V=design.read_voltage_V)
    )


def output_folder(space: DesignSpace, out: str | Path | None = None) -> Path:
    """Where a run writes: ``out``, else the file's ``output``, else ``results/dse/<name>``."""
    if out is not None:
        return Path(out)
    return space.output if space.output is not None else DEFAULT_OUTPUT_ROOT / space.name


def _compile(
    design: Design, model: torch.nn.Module, data: Any, calibration: int, chips: int, max_chips: int
) -> ChipMapping:
    """The network compiled for the design's chip as ``aimc eval`` compiles it (its first ``calibration`` unlabelled
    training inputs), on ``chips`` chips or, where placement needs it, a few more."""
    from aimc.compiler import compile as compile_network

    spec = design.chip_spec()
    for n in range(chips, max_chips + 1):
        try:
            return compile_network(
                model, spec, calibration=data.x_cal[:calibration], name=design.network, chips=n, progress=False
            )
        except ValidationError as err:
            if "chips=" not in str(err) or n == max_chips:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def prepare(
    space: DesignSpace, designs: list[Design], store: ResultStore, chips: dict[str, int], log: Callable[[str], None]
) -> DsePayload:
    """Load each network and its data, record the software reference, compile (or read from the folder's cache)
    each design's mapping, and compute every design's performance from it."""
    mappings: dict[str, ChipMapping] = {}
    networks: dict[str, Task] = {}
    data: dict[str, Any] = {}
    perf: dict[str, dict[str, Any]] = dict(store.get_meta("perf") or {})
    software: dict[str, Any] = dict(store.get_meta("software") or {})
    for net in dict.fromkeys(d.network for d in designs):
        ns = space.network(net)
        network = networks[net] = get_task(net)
        model = network.load_model(ns.weights)
        data[net] = network.load_data(ns.samples, space.data_dir)
        if net not in software:
            software[net] = {"metric": network.metric, "value": network.software(model, data[net])}
            store.set_meta("software", software)
        for d in (d for d in designs if d.network == net):
            if d.chip_key not in mappings:
                folder = store.folder / "mappings" / d.chip_key
                context = {"network": ns.context(), "chip_key": d.chip_key}
                mapping = load_mapping(folder, context)
                if mapping is None:
                    log(f"dse {space.name}: compiling {net} for {d.tile_rows}x{d.tile_cols} tiles ({d.label()})")
                    mapping = _compile(d, model, data[net], ns.calibration_samples, chips[d.chip_key], space.max_chips)
                    folder.mkdir(parents=True, exist_ok=True)
                    save_mapping(mapping, folder, context)
                mappings[d.chip_key] = mapping
            perf[d.key] = design_perf(d, mappings[d.chip_key], space.transport)
    store.set_meta("perf", perf)
    return DsePayload(networks, {d.key: d for d in designs}, mappings, data, {d.key: perf[d.key] for d in designs})


def _check_networks(store: ResultStore, space: DesignSpace) -> None:
    """Refuse a folder whose stored points of a network were computed with other weights or data (their software
    reference and losses would mix); record the networks' contexts otherwise."""
    stored = store.get_meta("networks") or {}
    contexts = {n.network: n.context() for n in space.networks}
    for name, ctx in contexts.items():
        old = stored.get(name)
        if old is not None and old != ctx:
            diff = ", ".join(
                f"{k}: stored {old.get(k)!r}, now {ctx.get(k)!r}" for k in sorted(ctx) if old.get(k) != ctx.get(k)
            )
            raise StoreError(
                f"{str(store.folder)!r} holds {name} results of other weights or data ({diff}); use another output "
                "folder (--out) or delete this one"
            )
    store.set_meta("networks", {**stored, **contexts})


def run(
    space: DesignSpace | str | Path | Mapping[str, Any],
    *,
    out: str | Path | None = None,
    backend: str = "local",
    address: str | None = None,
    workers: int | None = None,
    threads: int | None = None,
    progress: bool | TextIO = True,
    on_result: Callable[[PointResult], None] | None = None,
) -> DseResult:
    """Run a design space: every point not yet in the output folder's store, each stored as soon as it finishes.

    Args:
        space: a :class:`DesignSpace`, a path to a YAML file, or the same structure as a dict.
        out: output folder (default: the file's ``output``, else ``results/dse/<name>``).
        backend, address, workers, threads: the executor, as :func:`aimc.sweep.run` (``"local"`` or ``"ray"``).
        progress: print progress and the time left to stderr (True), to a given stream, or not (False).
        on_result: called in this process with every finished point, after it is stored.

    Raises:
        DesignSpaceError: a malformed space or an impossible design (found before any work).
        StoreError: the output folder holds another kind of results, or this space's networks with other weights
            or data (before any work).
        SweepInterruptedError: Ctrl-C; what finished is stored and a re-run resumes.
    """
    space = _as_space(space)
    stream = check_run_options(workers, threads, progress)
    chips = check_designs(space)  # impossible designs: before anything runs
    labels: dict[str, str] = {}
    todo: list[Design] = []

    def describe(r: PointResult) -> str:
        label = labels.get(r.details.get("design_key", ""), "?")
        return f"{r.details['design']['network']} {label} t={r.t_seconds:g}s seed {r.seed}: {r.metric} {r.value:.4g}"

    def plan(store: ResultStore) -> Plan:
        _check_networks(store, space)
        store.set_meta("kind", "dse")
        store.set_meta("spec", space.to_dict())
        designs = space.designs()
        store.set_meta("designs", {d.key: d.as_dict() for d in designs})
        points = space.points(designs)
        store.set_meta("total", len(points))
        keyed = [(space.key(d, p), d, p) for d, p in points]
        finished = store.finished_keys()
        pending = [(k, d, p) for k, d, p in keyed if k not in finished]
        labels.update((d.key, d.label()) for d in designs)
        todo[:] = dict.fromkeys(d for _, d, _ in pending)
        return Plan(len(points), [(k, p) for k, _, p in pending], describe)

    def log(text: str) -> None:
        if stream is not None:
            stream.write(text + "\n")
            stream.flush()

    return run_pending(  # type: ignore[return-value]
        output_folder(space, out),
        DSE_CONTEXT,
        name=space.name,
        kind="dse",
        again="space",
        plan=plan,
        prepare=lambda store, pending: prepare(space, todo, store, chips, log),
        backend=backend,
        address=address,
        workers=workers,
        threads=threads,
        stream=stream,
        on_result=on_result,
        result=DseResult,
    )


__all__ = [
    "DSE_CONTEXT",
    "DesignRunner",
    "DesignSpaceError",
    "DsePayload",
    "DseResult",
    "area_mm2",
    "design_perf",
    "output_folder",
    "prepare",
    "run",
]
