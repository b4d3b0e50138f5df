"""The sweep file: schema, strict validation on load, and expansion into grid points.

A sweep file is YAML (read with ``yaml.safe_load``: plain data, never objects) or the same structure as a Python
dict::

    name: resnet9-drift          # optional; default: the file's stem
    network: resnet9             # a registered task (aimc.tasks.available_tasks())
    weights: resnet9_hwa         # a shipped weights name or a .safetensors path (default: the task's default)
    data:                        # optional
      dir: null                  # folder holding the data set (default: $AIMC_DATA, shared/data, user cache)
      samples: 1000              # test samples (images); null = the whole test set
      calibration_samples: 256   # samples the compiler calibrates the ADC/INT8 ranges on
      batch_size: 250
    grid:
      seeds: [0, 1, 2]           # programmed chips (or a count N for seeds 0..N-1)
      times: [60, 1h, 1d, 1y]    # seconds after programming; a number, or a string with unit s, min, h, d, w, y
      modes: [four-phase, one-phase]
      strategies: [odp, tdp]
      devices: [default]         # device presets; "default" = hermes-1dev for ODP, hermes-2dev for TDP
      drift_compensation: [true]
      reads: 1                   # independent read-noise draws per (chip, time, mode)
    output: results/sweeps/resnet9-drift   # optional; `aimc sweep --out` overrides

Every problem (unknown key, wrong type, empty list, duplicate value, unknown device/strategy/mode/network, missing
weights file) raises :class:`~aimc.sweep.errors.SweepSpecError` naming its place in the file, before any work.
Relative paths are taken from the current working directory, as for any command-line argument.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from aimc.core.analog import STRATEGIES
from aimc.devices import available as available_devices
from aimc.spec import READ_MODES
from aimc.sweep.errors import SweepSpecError
from aimc.sweep.points import Point, point_key
from aimc.tasks import available_tasks, get_task
from aimc.weights import available_weights, weights_problem
from aimc.weights import weights_path as shipped_weights_path

#: Device preset per strategy when the grid says ``default``: the HERMES statistics fitted to one device per
#: polarity for ODP and to a device pair for TDP (docs/physics.md §3.2); the same defaults as ``aimc eval``.
DEFAULT_DEVICE = {"odp": "hermes-1dev", "tdp": "hermes-2dev"}

#: Seconds per time unit accepted in ``grid.times`` (a year is 365 days, as ``aimc mvm-error``'s 31,536,000 s).
TIME_UNITS = {"s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0, "y": 365 * 86400.0}

#: Largest grid a sweep file may describe: a guard against a typo (``seeds: 100000``) filling a disk.
MAX_POINTS = 1_000_000

_TOP_KEYS = ("name", "description", "network", "weights", "data", "grid", "output")
_DATA_KEYS = ("dir", "samples", "calibration_samples", "batch_size")
_GRID_KEYS = ("seeds", "times", "modes", "strategies", "devices", "drift_compensation", "reads")
_TIME_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class DataSpec:
    """Which data a sweep evaluates on.

    Attributes:
        dir: folder holding the data set, or None for the default search: ``$AIMC_DATA``, a ``shared/data``
            folder next to the working directory, then the user cache, downloaded on first use (:mod:`aimc.data`).
        samples: test samples (the first ``samples`` of the test split), or None for all of them.
        calibration_samples: training samples the compiler calibrates on.
        batch_size: samples per ``chip.run`` call (each call draws its own read noise, so it is part of a point's
            identity).
    """

    dir: str | None = None
    samples: int | None = None
    calibration_samples: int = 256
    batch_size: int = 250


@dataclass(frozen=True)
class GridSpec:
    """The axes crossed into grid points (see the module docstring)."""

    seeds: tuple[int, ...]
    times: tuple[float, ...]
    modes: tuple[str, ...] = ("four-phase",)
    strategies: tuple[str, ...] = ("tdp",)
    devices: tuple[str, ...] = ("default",)
    drift_compensation: tuple[bool, ...] = (True,)
    reads: int = 1


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep.

    Attributes:
        name: the sweep's name (report title).
        network: the registered task (:mod:`aimc.tasks`).
        weights: the weights as written in the file (shipped name or path).
        weights_path: the resolved weights file (exists).
        data: :class:`DataSpec`.
        grid: :class:`GridSpec`.
        output: output folder from the file, or None.
        description: free text for the report.
    """

    name: str
    network: str
    weights: str
    weights_path: Path
    data: DataSpec
    grid: GridSpec
    output: Path | None = None
    description: str = ""

    @cached_property
    def weights_sha256(self) -> str:
        """SHA-256 of the weights file: a point's identity includes the exact weights, not just their name."""
        h = hashlib.sha256()
        with open(self.weights_path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    def context(self) -> dict[str, Any]:
        """What every point of this sweep shares and what its results depend on (hashed into each point's key).

        The data folder's location, the output folder, the grid and the software versions are not part of it:
        the same data elsewhere gives the same results, a grid may grow between runs, and versions are recorded
        per point instead.
        """
        return {
            "network": self.network,
            "weights_sha256": self.weights_sha256,
            "samples": self.data.samples,
            "calibration_samples": self.data.calibration_samples,
            "batch_size": self.data.batch_size,
        }

    def points(self) -> list[Point]:
        """Every grid point, in grid order, without duplicates (``default`` devices resolved per strategy)."""
        g = self.grid
        seen: set[Point] = set()
        out: list[Point] = []
        for seed in g.seeds:
            for strategy in g.strategies:
                for dev in g.devices:
                    device = DEFAULT_DEVICE[strategy] if dev == "default" else dev
                    for mode in g.modes:
                        for comp in g.drift_compensation:
                            for t in g.times:
                                for read in range(g.reads):
                                    p = Point(seed, device, strategy, float(t), mode, bool(comp), read)
                                    if p not in seen:
                                        seen.add(p)
                                        out.append(p)
        return out

    def key(self, point: Point) -> str:
        """The store key of ``point`` in this sweep (hash of the context and the point's fields)."""
        return point_key(self.context(), point)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (recorded in the store); :func:`parse_spec` reads it back."""
        grid = asdict(self.grid)
        grid = {k: list(v) if isinstance(v, tuple) else v for k, v in grid.items()}
        return {
            "name": self.name,
            "description": self.description,
            "network": self.network,
            "weights": self.weights,
            "data": asdict(self.data),
            "grid": grid,
            "output": None if self.output is None else str(self.output),
        }


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a YAML sweep file.

    Args:
        path: the file.

    Returns:
        The validated :class:`SweepSpec`; its name defaults to the file's stem.
    """
    p = Path(path)
    return parse_spec(read_yaml(p, "sweep file", SweepSpecError), source=str(p), default_name=p.stem)


def read_yaml(path: Path, what: str, error: type[SweepSpecError]) -> object:
    """The parsed YAML document in ``path``; raises ``error`` ("``what`` 'PATH' ...") where the file is missing,
    unreadable or not YAML (the loader of sweep files and of design-space files)."""
    import yaml

    if not path.is_file():
        raise error(f"{what} {str(path)!r} does not exist or is not a file")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise error(f"{what} {str(path)!r} is not valid YAML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise error(f"{what} {str(path)!r} cannot be read: {err}") from None


def parse_spec(raw: object, *, source: str = "sweep", default_name: str = "sweep") -> SweepSpec:
    """Validate a sweep given as a dict (the structure of the YAML file; see the module docstring).

    Args:
        raw: the parsed document.
        source: where it came from, for messages.
        default_name: the name when the document has none.
    """
    where = f"{source}: "
    if raw is None:
        raise SweepSpecError(f"{where}the sweep file is empty; it needs at least 'network' and 'grid'")
    top = _mapping(raw, "the top level", where)
    _no_unknown(top, _TOP_KEYS, "the top level", where)
    for key in ("network", "grid"):
        if key not in top:
            raise SweepSpecError(f"{where}missing required key {key!r} at the top level")
    name = _string(top.get("name", default_name), "name", where)
    description = _string(top.get("description", ""), "description", where, allow_empty=True)
    network = _string(top["network"], "network", where)
    if network not in available_tasks():
        raise SweepSpecError(
            f"{where}network: network must be one of {', '.join(map(repr, available_tasks()))}; got {network!r}"
        )
    weights_value = top.get("weights", get_task(network).default_weights)
    if weights_value is None:
        raise SweepSpecError(f"{where}network {network!r} has no default weights; give 'weights'")
    weights = _string(weights_value, "weights", where)
    weights_path = _weights_file(weights, where + "weights: ")
    data = _parse_data(top.get("data", {}), where)
    grid = _parse_grid(top["grid"], where)
    output = top.get("output")
    out_path = None if output is None else Path(_string(output, "output", where))
    spec = SweepSpec(name, network, weights, weights_path, data, grid, out_path, description)
    n = (
        len(grid.seeds)
        * len(grid.times)
        * len(grid.modes)
        * len(grid.strategies)
        * len(grid.devices)
        * len(grid.drift_compensation)
        * grid.reads
    )
    if n > MAX_POINTS:
        raise SweepSpecError(f"{where}the grid has {n:,} points, more than the limit of {MAX_POINTS:,}")
    return spec


def _weights_file(weights: str, where: str) -> Path:
    """The weights file of a shipped name or a ``.safetensors`` path; raises SweepSpecError if it is missing."""
    if weights in available_weights():
        return shipped_weights_path(weights)
    problem = weights_problem(weights)
    if problem is not None:
        raise SweepSpecError(f"{where}weights {problem}")
    return Path(weights)


def _parse_data(raw: object, where: str) -> DataSpec:
    data = _mapping(raw, "data", where)
    _no_unknown(data, _DATA_KEYS, "data", where)
    d = DataSpec()
    dir_ = data.get("dir", d.dir)
    if dir_ is not None:
        dir_ = _string(dir_, "data.dir", where)
    samples = data.get("samples", d.samples)
    if samples is not None:
        samples = _int(samples, "data.samples", where, low=1)
    cal = _int(data.get("calibration_samples", d.calibration_samples), "data.calibration_samples", where, low=1)
    batch = _int(data.get("batch_size", d.batch_size), "data.batch_size", where, low=1)
    return DataSpec(dir_, samples, cal, batch)


def _parse_grid(raw: object, where: str) -> GridSpec:
    grid = _mapping(raw, "grid", where)
    _no_unknown(grid, _GRID_KEYS, "grid", where)
    for key in ("seeds", "times"):
        if key not in grid:
            raise SweepSpecError(f"{where}missing required key 'grid.{key}'")
    seeds_raw = grid["seeds"]
    if isinstance(seeds_raw, int) and not isinstance(seeds_raw, bool):
        count = _int(seeds_raw, "grid.seeds", where, low=1)
        if count > MAX_POINTS:  # checked before the range is expanded: a typo must not exhaust memory
            raise SweepSpecError(
                f"{where}grid.seeds asks for {count:,} seeds, more than the limit of {MAX_POINTS:,} grid points"
            )
        seeds = tuple(range(count))
    else:
        seeds_list = _list(seeds_raw, "grid.seeds", where)
        seeds = tuple(_int(v, f"grid.seeds[{i}]", where, low=0) for i, v in enumerate(seeds_list))
    times_list = _list(grid["times"], "grid.times", where)
    times = tuple(_time(v, f"grid.times[{i}]", where) for i, v in enumerate(times_list))
    d = GridSpec(seeds=(0,), times=(0.0,))
    modes = _choices(grid.get("modes", list(d.modes)), "grid.modes", READ_MODES, where)
    strategies = _choices(grid.get("strategies", list(d.strategies)), "grid.strategies", STRATEGIES, where)
    devices = _choices(grid.get("devices", list(d.devices)), "grid.devices", ("default", *available_devices()), where)
    comp_raw = _list(grid.get("drift_compensation", list(d.drift_compensation)), "grid.drift_compensation", where)
    comp = []
    for i, v in enumerate(comp_raw):
        if not isinstance(v, bool):
            raise SweepSpecError(f"{where}grid.drift_compensation[{i}] must be true or false, got {_show(v)}")
        comp.append(v)
    reads = _int(grid.get("reads", d.reads), "grid.reads", where, low=1)
    for key, values in (("seeds", seeds), ("times", times), ("drift_compensation", tuple(comp))):
        _no_duplicates(values, f"grid.{key}", where)
    return GridSpec(seeds, times, modes, strategies, devices, tuple(comp), reads)


def _show(v: object) -> str:
    return f"{type(v).__name__} {v!r}"


def _mapping(raw: object, name: str, where: str) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise SweepSpecError(f"{where}{name} must be a mapping of keys to values, got {_show(raw)}")
    for k in raw:
        if not isinstance(k, str):
            raise SweepSpecError(f"{where}keys in {name} must be strings, got {_show(k)}")
    return dict(raw)


def _no_unknown(d: Mapping[str, Any], allowed: Sequence[str], name: str, where: str) -> None:
    for k in d:
        if k not in allowed:
            hint = difflib.get_close_matches(k, allowed, n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise SweepSpecError(
                f"{where}unknown key {k!r} in {name}{did}; allowed keys: {', '.join(map(repr, allowed))}"
            )


def _string(v: object, name: str, where: str, *, allow_empty: bool = False) -> str:
    if not isinstance(v, str):
        raise SweepSpecError(f"{where}{name} must be a string, got {_show(v)}")
    if not allow_empty and not v.strip():
        raise SweepSpecError(f"{where}{name} must not be empty")
    return v


def _int(v: object, name: str, where: str, *, low: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise SweepSpecError(f"{where}{name} must be an integer >= {low}, got {_show(v)}")
    if v < low:
        raise SweepSpecError(f"{where}{name} must be an integer >= {low}, got {v}")
    return v


def _list(v: object, name: str, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise SweepSpecError(f"{where}{name} must be a list (e.g. [a, b]), got {_show(v)}")
    if not v:
        raise SweepSpecError(f"{where}{name} must not be empty: a sweep needs at least one value on every axis")
    return v


def _choices(v: object, name: str, allowed: Sequence[str], where: str) -> tuple[str, ...]:
    values = _list(v, name, where)
    for i, item in enumerate(values):
        if not isinstance(item, str) or item not in allowed:
            options = ", ".join(map(repr, allowed))
            raise SweepSpecError(f"{where}{name}[{i}] must be one of {options}; got {_show(item)}")
    _no_duplicates(tuple(values), name, where)
    return tuple(values)


def _no_duplicates(values: tuple[Any, ...], name: str, where: str) -> None:
    seen = set()
    for v in values:
        if v in seen:
            raise SweepSpecError(f"{where}{name} lists {v!r} twice")
        seen.add(v)


def _time(v: object, name: str, where: str) -> float:
    """A time after programming: a number of seconds, or a string with a unit (``"1h"``, ``"1.5d"``, ``"1y"``)."""
    if isinstance(v, bool):
        raise SweepSpecError(f"{where}{name} must be a number of seconds or a string like '1h', got {_show(v)}")
    if isinstance(v, int | float):
        value = float(v)
    elif isinstance(v, str):
        m = _TIME_RE.match(v)
        if m is None or m.group(2) not in ("", *TIME_UNITS):
            raise SweepSpecError(
                f"{where}{name} must be a number of seconds or a number with a unit ({', '.join(TIME_UNITS)}), "
                f"got {v!r}"
            )
        value = float(m.group(1)) * TIME_UNITS.get(m.group(2) or "s", 1.0)
    else:
        raise SweepSpecError(f"{where}{name} must be a number of seconds or a string like '1h', got {_show(v)}")
    if not math.isfinite(value) or value < 0:
        raise SweepSpecError(f"{where}{name} must be a finite time >= 0 s, got {v!r}")
    return value
