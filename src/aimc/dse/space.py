"""The design-space file: schema, strict validation on load, chip designs and their grid points.

A design space is YAML (``yaml.safe_load``) or the same structure as a dict::

    name: resnet9-dse
    networks:                        # one or more; each a name or a mapping
      - network: resnet9             # a task: resnet9 (CIFAR-10 top-1 accuracy), char-lstm or char-transformer (PTB
                                   #   bits per character), or one registered with aimc.tasks.register_task
        weights: resnet9_hwa         # shipped name or .safetensors path (default: the network's HWA weights)
        samples: 500                 # test images (characters for char-lstm); null = the whole test set
        calibration_samples: 256     # inputs the compile calibrates on (default: aimc eval's 256)
    design:                          # every list is an axis; the designs are their cross product
      tile_size: [128, 256, 512]     # square crossbars (or tile_rows / tile_cols, crossed)
      cores: [64]                    # cores per chip
      pwm_bits: [8]
      adc_bits: [chip, 8, 10, 12]    # chip = the HERMES counter, its resolution set by the PWM window
      modes: [four-phase]
      strategies: [odp, tdp]         # devices per weight: 1 (ODP) or 2 (TDP) per polarity
      devices: [default]             # device presets; default = hermes-1dev (ODP) / hermes-2dev (TDP)
      read_voltage_V: [default]      # read voltage (V), default = CoreConfig's
      g_max_uS: [default]            # largest conductance per weight polarity (uS), default = the device preset's
    grid:
      seeds: 2                       # programmed chips per design
      times: [1d]                    # after programming
      reads: 1                       # read-noise draws per (chip, time)
    report:
      time: 1d                       # the time of the Pareto front (default: the last time)
      max_loss: 1.0                  # accuracy-loss budget (points; BPC for char-lstm) of the "best TOPS/W" answer
    transport: host                  # inter-layer activations: host (as the chip paper) or on-chip
    max_chips: 16                    # a design needing more chips for a network is refused
    data_dir: null
    output: results/dse/resnet9

Every problem raises :class:`DesignSpaceError` (an :class:`~aimc.sweep.errors.SweepSpecError`) naming the key and
the allowed values, before any work; :func:`check_designs` then checks that each network fits on each chip design.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from aimc.core.analog import STRATEGIES
from aimc.perf.model import ADC_RESOLUTION_RANGE
from aimc.spec import READ_MODES, ChipSpec
from aimc.sweep.errors import SweepSpecError
from aimc.sweep.spec import (
    DEFAULT_DEVICE,
    MAX_POINTS,
    _choices,
    _int,
    _list,
    _mapping,
    _no_duplicates,
    _no_unknown,
    _show,
    _string,
    _time,
    read_yaml,
)
from aimc.tasks import CALIBRATION_INPUTS, available_tasks, get_task
from aimc.weights import weights_problem

#: Tile sizes (rows and columns) a design may have: from a crossbar too small to be worth its ADCs to 16x the chip's.
TILE_RANGE = (16, 4096)
#: Cores per chip a design may have.
CORES_RANGE = (1, 1024)
#: PWM input bits (sign + magnitude): a 2-bit PWM is the smallest; 16 bits are a 32.8 µs window.
PWM_RANGE = (2, 16)
#: ADC resolutions the perf model supports.
ADC_RANGE = ADC_RESOLUTION_RANGE
#: Read voltages: the chip's (docs/physics.md §5).
READ_VOLTAGE_RANGE = (ChipSpec.hermes().read_voltage_min_V, ChipSpec.hermes().read_voltage_max_V)
#: Largest conductance of one weight polarity (uS): from a tenth to about twice and a half the HERMES two-device fit's
#: 20.7 uS (docs/physics.md §3.2); beyond it the device statistics are extrapolated further than we want to go.
G_MAX_RANGE = (2.0, 50.0)
#: Most chips a network may span by default (``max_chips``).
MAX_CHIPS = 16

_TOP_KEYS = (
    "name",
    "description",
    "networks",
    "design",
    "grid",
    "report",
    "transport",
    "max_chips",
    "data_dir",
    "output",
)
_NETWORK_KEYS = ("network", "weights", "samples", "calibration_samples")
_DESIGN_KEYS = (
    "tile_size",
    "tile_rows",
    "tile_cols",
    "cores",
    "pwm_bits",
    "adc_bits",
    "modes",
    "strategies",
    "devices",
    "read_voltage_V",
    "g_max_uS",
)
_GRID_KEYS = ("seeds", "times", "reads")
_REPORT_KEYS = ("time", "max_loss")


class DesignSpaceError(SweepSpecError):
    """A design-space file is malformed, or a design in it is impossible (names the key and the allowed range)."""


@dataclass(frozen=True)
class NetworkSpec:
    """One network of the space: ``network`` (a task of :mod:`aimc.tasks`), its weights, test samples and the
    calibration inputs of its compile (default: ``aimc eval``'s 256)."""

    network: str
    weights: str | None = None
    samples: int | None = None
    calibration_samples: int = 256

    @cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights (:meth:`aimc.tasks.Task.identity`): a point's identity includes the exact weights."""
        return get_task(self.network).identity(self.weights)

    def context(self) -> dict[str, Any]:
        """What this network's results depend on (hashed into each point's key)."""
        return {
            "network": self.network,
            "weights_sha256": self.weights_sha256,
            "samples": self.samples,
            "calibration_samples": self.calibration_samples,
        }


@dataclass(frozen=True)
class Design:
    """One chip design for one network (hashable; its :meth:`as_dict` is part of each point's key).

    Attributes:
        network: the network it runs.
        tile_rows, tile_cols: crossbar size.
        cores: cores per chip (on the most nearly square grid).
        pwm_bits: PWM input bits (sign + magnitude).
        adc_bits: ADC resolution in bits, or None for the chip's own ADC (12-bit counters, resolution set by the
            PWM window: 448 counts at saturation in 128 ns).
        mode, strategy, device: read mode, ODP/TDP, device preset.
        read_voltage_V: read voltage, or None for :class:`~aimc.core.config.CoreConfig`'s default.
        g_max_uS: the device model's largest conductance per polarity, or None for the preset's.
    """

    network: str
    tile_rows: int
    tile_cols: int
    cores: int
    pwm_bits: int
    adc_bits: int | None
    mode: str
    strategy: str
    device: str
    read_voltage_V: float | None
    g_max_uS: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain fields (JSON-ready; ``g_max_uS`` only where set, so that the keys of designs without it are those
        of the first release)."""
        d = dataclasses.asdict(self)
        if d["g_max_uS"] is None:
            del d["g_max_uS"]
        return d

    def device_model(self) -> Any:
        """The device model to program: the preset, with ``g_max_uS`` where set."""
        from aimc.devices import get

        return get(self.device) if self.g_max_uS is None else get(self.device, g_max_uS=self.g_max_uS)

    @property
    def key(self) -> str:
        """Short identity of the design (first 16 hex digits of the SHA-256 of its fields)."""
        return _digest(self.as_dict())[:16]

    def chip_spec(self) -> ChipSpec:
        """The variant chip of this design (:func:`design_chip`)."""
        return design_chip(self.tile_rows, self.tile_cols, self.cores, self.pwm_bits, self.adc_bits)

    @property
    def chip_key(self) -> str:
        """Identity of the compiled mapping: the network on this design's chip (shared by modes, devices, ...)."""
        return _digest({"network": self.network, "chip": dataclasses.asdict(self.chip_spec())})[:16]

    @property
    def is_paper_chip(self) -> bool:
        """Whether the chip parameters are the HERMES chip's (any read mode, strategy or device)."""
        return self.chip_spec() == ChipSpec.hermes() and self.read_voltage_V is None and self.g_max_uS is None

    def label(self) -> str:
        """A short human-readable label: ``256x256 64c pwm8 adc=chip 4ph TDP``."""
        adc = "chip" if self.adc_bits is None else str(self.adc_bits)
        mode = "1ph" if self.mode == "one-phase" else "4ph"
        text = f"{self.tile_rows}x{self.tile_cols} {self.cores}c pwm{self.pwm_bits} adc={adc} {mode} "
        text += self.strategy.upper()
        if self.device != DEFAULT_DEVICE[self.strategy]:
            text += f" {self.device}"
        if self.read_voltage_V is not None:
            text += f" {self.read_voltage_V:g}V"
        if self.g_max_uS is not None:
            text += f" Gmax{self.g_max_uS:g}uS"
        return text


def _digest(obj: object) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def design_chip(
    tile_rows: int, tile_cols: int, cores: int, pwm_bits: int, adc_bits: int | None, base: ChipSpec | None = None
) -> ChipSpec:
    """The variant chip of a design: ``base`` (default HERMES) with other tiles, cores, PWM and ADC bits.

    Tiles: the MVM area grows with the crossbar's cells (the assumption of :func:`aimc.perf.scaling.variant_chip`).
    Cores: on the most nearly square grid. ADC: ``adc_bits`` = b gives 2^b counts at the saturation current. The
    CCO counts 2^b x 300 ps at its top rate (docs/physics.md §6; the perf model's ADC time): where that is longer
    than the PWM window, the PWM LSB is stretched so that the inputs fill the longer window (more charge, more
    counts: the perf model's longer integration time); where it is shorter, the CCO gain is lowered so that
    saturation gives 2^b counts in the PWM window (a coarser ADC in the same time). The counter then has b bits.
    None keeps the chip's ADC.
    """
    from aimc.perf.scaling import square_grid

    spec = base or ChipSpec.hermes()
    rows, cols = square_grid(cores)
    cells = tile_rows * tile_cols / (spec.tile_rows * spec.tile_cols)
    changes: dict[str, Any] = {
        "tile_rows": tile_rows,
        "tile_cols": tile_cols,
        "cores": cores,
        "grid_rows": rows,
        "grid_cols": cols,
        "pwm_bits": pwm_bits,
    }
    if cells != 1.0:
        changes["mvm_area_mm2"] = spec.mvm_area_mm2 * cells
    spec = dataclasses.replace(spec, **changes)
    if adc_bits is None:
        return spec
    count_ns = 2.0**adc_bits * spec.adc_ps_per_lsb * 1e-3
    window = spec.integration_time_ns
    if count_ns > window:
        return dataclasses.replace(spec, adc_bits=adc_bits, pwm_ns_per_lsb=spec.pwm_ns_per_lsb * count_ns / window)
    return dataclasses.replace(
        spec, adc_bits=adc_bits, cco_gain_MHz_per_uA=spec.cco_gain_MHz_per_uA * count_ns / window
    )


@dataclass(frozen=True)
class DesignPoint:
    """One grid point: ``design`` (its key) programmed with ``seed``, read ``t_seconds`` after programming
    (read-noise draw ``read``). The device, strategy and mode repeat the design's (the store's columns)."""

    design: str
    seed: int
    t_seconds: float
    read: int
    device: str
    strategy: str
    mode: str
    chip_id: str
    drift_compensation: bool = True

    @property
    def chip(self) -> tuple[str, int]:
        """What programming depends on (mapping, device, strategy, read voltage, seed): points sharing it share
        one programmed chip, whatever their read mode and time."""
        return (self.chip_id, self.seed)

    @property
    def read_seed(self) -> int:
        """The read-noise seed: ``aimc eval``'s for this seed's first time (1,000,003 x seed), plus 7,919 per
        extra read draw. Every design and time of a seed reads with the same seed (common random numbers: the
        designs' differences are not blurred by different noise draws)."""
        return 1_000_003 * self.seed + 7919 * self.read


@dataclass(frozen=True)
class DesignSpace:
    """A validated design space (see the module docstring)."""

    name: str
    networks: tuple[NetworkSpec, ...]
    tile_sizes: tuple[tuple[int, int], ...]
    cores: tuple[int, ...]
    pwm_bits: tuple[int, ...]
    adc_bits: tuple[int | None, ...]
    modes: tuple[str, ...]
    strategies: tuple[str, ...]
    devices: tuple[str, ...]
    read_voltages: tuple[float | None, ...]
    g_maxes: tuple[float | None, ...]
    seeds: tuple[int, ...]
    times: tuple[float, ...]
    reads: int = 1
    report_time: float | None = None
    max_loss: float = 1.0
    transport: str = "host"
    max_chips: int = MAX_CHIPS
    data_dir: str | None = None
    output: Path | None = None
    description: str = ""

    def network(self, name: str) -> NetworkSpec:
        """The network entry ``name``."""
        return next(n for n in self.networks if n.network == name)

    def designs(self) -> list[Design]:
        """Every design, in file order, without duplicates (``default`` devices resolved per strategy)."""
        out: dict[Design, None] = {}
        for net in self.networks:
            for rows, cols in self.tile_sizes:
                for cores in self.cores:
                    for pwm in self.pwm_bits:
                        for adc in self.adc_bits:
                            for mode in self.modes:
                                for strategy in self.strategies:
                                    for dev in self.devices:
                                        device = DEFAULT_DEVICE[strategy] if dev == "default" else dev
                                        for v, g in itertools.product(self.read_voltages, self.g_maxes):
                                            d = Design(
                                                net.network, rows, cols, cores, pwm, adc, mode, strategy, device, v, g
                                            )
                                            out[d] = None
        return list(out)

    def programmed_chip_id(self, design: Design) -> str:
        """Identity of a programmed chip of ``design`` before its seed: mapping, device, strategy, read voltage."""
        parts = [design.chip_key, design.device, design.strategy, design.read_voltage_V]
        return _digest(parts if design.g_max_uS is None else [*parts, design.g_max_uS])[:16]

    def points(self, designs: list[Design] | None = None) -> list[tuple[Design, DesignPoint]]:
        """Every (design, point), grouped by design then seed (the order a chip is programmed once in)."""
        out = []
        for d in designs if designs is not None else self.designs():
            chip_id = self.programmed_chip_id(d)
            for seed in self.seeds:
                for t in self.times:
                    for read in range(self.reads):
                        p = DesignPoint(d.key, seed, float(t), read, d.device, d.strategy, d.mode, chip_id)
                        out.append((d, p))
        return out

    def key(self, design: Design, point: DesignPoint) -> str:
        """The store key of a point: SHA-256 of the network's context, the design and the point's fields."""
        fields = {"seed": point.seed, "t_seconds": float(point.t_seconds), "read": point.read}
        context = self.network(design.network).context()
        return _digest({"kind": "aimc-dse", "network": context, "design": design.as_dict(), "point": fields})

    @property
    def front_time(self) -> float:
        """The time of the Pareto front: ``report.time``, else the last time of the grid."""
        return self.report_time if self.report_time is not None else self.times[-1]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded in the store); :func:`parse_space` reads it back."""
        return {
            "name": self.name,
            "description": self.description,
            "networks": [dataclasses.asdict(n) for n in self.networks],
            "design": {
                "tile_rows": [r for r, _ in self.tile_sizes],
                "tile_cols": [c for _, c in self.tile_sizes],
                "cores": list(self.cores),
                "pwm_bits": list(self.pwm_bits),
                "adc_bits": ["chip" if b is None else b for b in self.adc_bits],
                "modes": list(self.modes),
                "strategies": list(self.strategies),
                "devices": list(self.devices),
                "read_voltage_V": ["default" if v is None else v for v in self.read_voltages],
                "g_max_uS": ["default" if v is None else v for v in self.g_maxes],
            },
            "grid": {"seeds": list(self.seeds), "times": list(self.times), "reads": self.reads},
            "report": {"time": self.report_time, "max_loss": self.max_loss},
            "transport": self.transport,
            "max_chips": self.max_chips,
            "data_dir": self.data_dir,
            "output": None if self.output is None else str(self.output),
        }


def load_space(path: str | Path) -> DesignSpace:
    """Read and validate a YAML design-space file (its name defaults to the file's stem)."""
    p = Path(path)
    return parse_space(read_yaml(p, "design-space file", DesignSpaceError), source=str(p), default_name=p.stem)


def parse_space(raw: object, *, source: str = "space", default_name: str = "dse") -> DesignSpace:
    """Validate a design space given as a dict (the structure of the YAML file; see the module docstring)."""
    where = f"{source}: "
    if raw is None:
        raise DesignSpaceError(f"{where}the file is empty; it needs at least 'networks', 'design' and 'grid'")
    try:
        return _parse(raw, where, default_name)
    except DesignSpaceError:
        raise
    except SweepSpecError as err:  # the shared helpers' errors, as this module's
        raise DesignSpaceError(str(err)) from None


def _parse(raw: object, where: str, default_name: str) -> DesignSpace:
    from aimc.perf.model import TRANSPORTS

    top = _mapping(raw, "the top level", where)
    _no_unknown(top, _TOP_KEYS, "the top level", where)
    for key in ("networks", "design", "grid"):
        if key not in top:
            raise DesignSpaceError(f"{where}missing required key {key!r} at the top level")
    name = _string(top.get("name", default_name), "name", where)
    description = _string(top.get("description", ""), "description", where, allow_empty=True)
    networks = _parse_networks(top["networks"], where)
    design = _mapping(top["design"], "design", where)
    _no_unknown(design, _DESIGN_KEYS, "design", where)
    tiles = _parse_tiles(design, where)
    cores = _ints(design.get("cores", [ChipSpec.hermes().cores]), "design.cores", CORES_RANGE, where)
    pwm = _ints(design.get("pwm_bits", [ChipSpec.hermes().pwm_bits]), "design.pwm_bits", PWM_RANGE, where)
    adc = _parse_adc(design.get("adc_bits", ["chip"]), where)
    modes = _choices(design.get("modes", ["four-phase"]), "design.modes", READ_MODES, where)
    strategies = _choices(design.get("strategies", ["tdp"]), "design.strategies", STRATEGIES, where)
    from aimc.devices import available as available_devices

    devices = _choices(design.get("devices", ["default"]), "design.devices", ("default", *available_devices()), where)
    voltages = _parse_defaults(
        design.get("read_voltage_V", ["default"]), "design.read_voltage_V", READ_VOLTAGE_RANGE, "V", where
    )
    g_maxes = _parse_defaults(design.get("g_max_uS", ["default"]), "design.g_max_uS", G_MAX_RANGE, "uS", where)
    for dev in devices:
        for g in g_maxes:
            _check_device(dev, strategies, g, where)
    grid = _mapping(top["grid"], "grid", where)
    _no_unknown(grid, _GRID_KEYS, "grid", where)
    for key in ("seeds", "times"):
        if key not in grid:
            raise DesignSpaceError(f"{where}missing required key 'grid.{key}'")
    seeds_raw = grid["seeds"]
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        count = _int(seeds_raw, "grid.seeds", where, low=1)
        if count > MAX_POINTS:
            raise DesignSpaceError(f"{where}grid.seeds asks for {count:,} seeds, more than {MAX_POINTS:,}")
        seeds = tuple(range(count))
    else:
        seeds = tuple(
            _int(v, f"grid.seeds[{i}]", where, low=0) for i, v in enumerate(_list(seeds_raw, "grid.seeds", where))
        )
    times = tuple(_time(v, f"grid.times[{i}]", where) for i, v in enumerate(_list(grid["times"], "grid.times", where)))
    _no_duplicates(seeds, "grid.seeds", where)
    _no_duplicates(times, "grid.times", where)
    reads = _int(grid.get("reads", 1), "grid.reads", where, low=1)
    report = _mapping(top.get("report", {}), "report", where)
    _no_unknown(report, _REPORT_KEYS, "report", where)
    report_time = None if report.get("time") is None else _time(report["time"], "report.time", where)
    if report_time is not None and report_time not in times:
        shown = ", ".join(f"{t:g}" for t in times)
        raise DesignSpaceError(f"{where}report.time ({report_time:g} s) must be one of grid.times ({shown} s)")
    max_loss = report.get("max_loss", 1.0)
    if (
        isinstance(max_loss, bool)
        or not isinstance(max_loss, int | float)
        or not math.isfinite(max_loss)
        or max_loss < 0
    ):
        raise DesignSpaceError(f"{where}report.max_loss must be a number >= 0, got {_show(max_loss)}")
    transport = _string(top.get("transport", "host"), "transport", where)
    if transport not in TRANSPORTS:
        raise DesignSpaceError(f"{where}transport must be one of {', '.join(map(repr, TRANSPORTS))}; got {transport!r}")
    max_chips = _int(top.get("max_chips", MAX_CHIPS), "max_chips", where, low=1)
    data_dir = top.get("data_dir")
    if data_dir is not None:
        data_dir = _string(data_dir, "data_dir", where)
    output = top.get("output")
    out_path = None if output is None else Path(_string(output, "output", where))
    space = DesignSpace(
        name=name,
        networks=networks,
        tile_sizes=tiles,
        cores=cores,
        pwm_bits=pwm,
        adc_bits=adc,
        modes=modes,
        strategies=strategies,
        devices=devices,
        read_voltages=voltages,
        g_maxes=g_maxes,
        seeds=seeds,
        times=times,
        reads=reads,
        report_time=report_time,
        max_loss=float(max_loss),
        transport=transport,
        max_chips=max_chips,
        data_dir=data_dir,
        output=out_path,
        description=description,
    )
    n = len(space.designs()) * len(seeds) * len(times) * reads
    if n > MAX_POINTS:
        raise DesignSpaceError(f"{where}the space has {n:,} points, more than the limit of {MAX_POINTS:,}")
    return space


def _parse_networks(raw: object, where: str) -> tuple[NetworkSpec, ...]:
    out = []
    for i, item in enumerate(_list(raw, "networks", where)):
        name = f"networks[{i}]"
        entry = {"network": item} if isinstance(item, str) else _mapping(item, name, where)
        _no_unknown(entry, _NETWORK_KEYS, name, where)
        if "network" not in entry:
            raise DesignSpaceError(f"{where}missing required key '{name}.network'")
        net = _string(entry["network"], f"{name}.network", where)
        if net not in available_tasks():
            known = ", ".join(map(repr, available_tasks()))
            raise DesignSpaceError(f"{where}{name}.network must be one of {known}; got {net!r}")
        weights = entry.get("weights")
        if weights is not None:
            weights = _string(weights, f"{name}.weights", where)
            problem = weights_problem(weights)
            if problem is not None:
                raise DesignSpaceError(f"{where}{name}.weights {problem}")
        samples = entry.get("samples")
        if samples is not None:
            samples = _int(samples, f"{name}.samples", where, low=1)
        cal = _int(entry.get("calibration_samples", CALIBRATION_INPUTS), f"{name}.calibration_samples", where, low=1)
        out.append(NetworkSpec(net, weights, samples, cal))
    _no_duplicates(tuple(n.network for n in out), "networks", where)
    return tuple(out)


def _ints(raw: object, name: str, allowed: tuple[int, int], where: str) -> tuple[int, ...]:
    low, high = allowed
    values = []
    for i, v in enumerate(_list(raw, name, where)):
        if isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise DesignSpaceError(f"{where}{name}[{i}] must be an integer in [{low}, {high}]; got {_show(v)}")
        values.append(v)
    _no_duplicates(tuple(values), name, where)
    return tuple(values)


def _parse_tiles(design: dict[str, Any], where: str) -> tuple[tuple[int, int], ...]:
    square = "tile_size" in design
    if square and ("tile_rows" in design or "tile_cols" in design):
        raise DesignSpaceError(f"{where}design: give tile_size (square tiles) or tile_rows/tile_cols, not both")
    chip = ChipSpec.hermes()
    if square:
        sizes = _ints(design["tile_size"], "design.tile_size", TILE_RANGE, where)
        return tuple((s, s) for s in sizes)
    rows = _ints(design.get("tile_rows", [chip.tile_rows]), "design.tile_rows", TILE_RANGE, where)
    cols = _ints(design.get("tile_cols", [chip.tile_cols]), "design.tile_cols", TILE_RANGE, where)
    return tuple((r, c) for r in rows for c in cols)


def _parse_adc(raw: object, where: str) -> tuple[int | None, ...]:
    low, high = ADC_RANGE
    values: list[int | None] = []
    for i, v in enumerate(_list(raw, "design.adc_bits", where)):
        if v == "chip":
            values.append(None)
        elif isinstance(v, bool) or not isinstance(v, int) or not low <= v <= high:
            raise DesignSpaceError(
                f"{where}design.adc_bits[{i}] must be 'chip' or an integer in [{low}, {high}] (the ADC resolutions the "
                f"perf model supports); got {_show(v)}"
            )
        else:
            values.append(v)
    _no_duplicates(tuple(values), "design.adc_bits", where)
    return tuple(values)


def _parse_defaults(
    raw: object, name: str, allowed: tuple[float, float], unit: str, where: str
) -> tuple[float | None, ...]:
    """A list of ``default`` (None) or numbers in ``allowed`` (read voltages, G_max)."""
    low, high = allowed
    sources = {"V": "the chip's read voltages, docs/physics.md §5", "uS": "G_MAX_RANGE"}
    values: list[float | None] = []
    for i, v in enumerate(_list(raw, name, where)):
        if v == "default":
            values.append(None)
        elif isinstance(v, bool) or not isinstance(v, int | float) or not low <= v <= high:
            raise DesignSpaceError(
                f"{where}{name}[{i}] must be 'default' or a value in [{low:g}, {high:g}] {unit} ({sources[unit]}); "
                f"got {_show(v)}"
            )
        else:
            values.append(float(v))
    _no_duplicates(tuple(values), name, where)
    return tuple(values)


def _check_device(device: str, strategies: tuple[str, ...], g_max: float | None, where: str) -> None:
    """A device preset that cannot take ``g_max`` (e.g. ``ideal``) is refused now, not at programming."""
    from aimc.devices import get
    from aimc.errors import AimcError

    if g_max is None:
        return
    names = [DEFAULT_DEVICE[s] for s in strategies] if device == "default" else [device]
    for name in names:
        try:
            get(name, g_max_uS=g_max)
        except AimcError as err:
            raise DesignSpaceError(
                f"{where}design.g_max_uS {g_max:g} cannot be set on device {name!r}: {err}"
            ) from None


def _as_space(space: DesignSpace | str | Path | Mapping[str, Any]) -> DesignSpace:
    if isinstance(space, DesignSpace):
        return space
    if isinstance(space, str | Path):
        return load_space(space)
    if isinstance(space, Mapping):
        return parse_space(dict(space))
    from aimc.errors import ArgumentTypeError

    raise ArgumentTypeError(f"space must be a DesignSpace, a path to a YAML file or a dict; got {type(space).__name__}")


def cores_needed(network: str, spec: ChipSpec) -> int:
    """Cores the network's weight layers need on ``spec``'s tiles (traced and tiled, not calibrated: fast)."""
    from aimc.compiler.capture import export_graph, fuse, lower

    net = get_task(network)
    example = net.example_input()
    captured = lower(export_graph(net.architecture(), example if isinstance(example, tuple) else (example,)), spec)
    fuse(captured)
    return sum(layer.tiling.cores for layer in captured.layers.values())


def check_designs(space: DesignSpace) -> dict[str, int]:
    """Check that every network fits on every chip design within ``max_chips`` chips, before any work.

    Returns:
        The chips each compiled mapping spans, by :attr:`Design.chip_key`.

    Raises:
        DesignSpaceError: naming the network, the tile size and cores per chip, the chips needed and the allowed
            range.
    """
    chips: dict[str, int] = {}
    needed: dict[tuple[str, int, int], int] = {}
    for d in space.designs():
        if d.chip_key in chips:
            continue
        spec = d.chip_spec()
        if (d.network, d.tile_rows, d.tile_cols) not in needed:
            needed[d.network, d.tile_rows, d.tile_cols] = cores_needed(d.network, spec)
        need = needed[d.network, d.tile_rows, d.tile_cols]
        n = math.ceil(need / d.cores)
        if n > space.max_chips:
            raise DesignSpaceError(
                f"design.tile_size {d.tile_rows}x{d.tile_cols} with design.cores {d.cores}: {d.network} needs {need} "
                f"cores, {n} chips; allowed: at most max_chips = {space.max_chips} chips (tiles in "
                f"[{TILE_RANGE[0]}, {TILE_RANGE[1]}]): use larger tiles, more cores per chip or a larger max_chips"
            )
        chips[d.chip_key] = n
    return chips
