"""Hardware faults as inputs: stuck devices, dead ADC columns, dead cores and dead links.

Real chips are not perfect: the chip paper reports > 99% of unit cells programmable on 63 of its 64 cores and 98.4%
on the worst one (docs/physics.md §2.5). A :class:`Faults` value describes the defects of one simulated chip (one
*die*); where each kind takes effect:

- **stuck devices** (``stuck_set`` / ``stuck_reset`` rates, or an explicit ``device_map`` per core) act when the chip
  is programmed (``aimc.program(..., faults=...)``): a conductance unit stuck at SET sits at the device model's
  ``g_max_uS`` whatever its target and drifts like a SET device (drift exponent drawn at g = 1, docs/physics.md §3.3);
  one stuck at RESET sits at 0 uS. A *conductance unit* is what the device model describes: one PCM device for
  one-device models (``"standard"``, ``"hermes-1dev"``; G1+, G2+, G1-, G2- per weight), the device pair of one polarity
  for the two-device HERMES fit (``"hermes-2dev"``; G+, G- per weight), so the rate is per device or per pair
  accordingly. This is the same model as the devices' own ``yield_fraction`` (:mod:`aimc.devices.statistical`), made
  explicit and placeable;
- **dead ADC columns** ``(core, column)``: the CCO of that output never oscillates, so both its counters read 0;
  the per-ADC calibration (docs/physics.md §6) finds a zero gain and the LDPU zeroes that output. A dead
  column therefore *reads zero* (our choice; a saturated column would instead read the full-scale value, which no
  downstream layer could tell from a real activation, whereas zero is what a skipped output gives);
- **dead cores** and **dead links** act when the network is compiled (``aimc.compile(..., avoid_cores=...,
  avoid_links=...)``, or ``**faults.compile_kwargs()``): no weight block is placed on a dead core, and the partial
  sums of a column chain are not sent over a dead link. ``program`` and ``ProgrammedChip.run`` refuse a mapping that
  puts a block on a dead core or whose chains cannot be routed over the live links.

Core ids are global (``chip * cores_per_chip + core``); a link is an unordered pair of linked cores of one chip
(:class:`aimc.compiler.Topology`); an ADC column is an output index 0..tile_cols-1 of a core's block.

This module composes the parts that act at each level: :mod:`aimc.core.faults` (stuck units and dead ADCs of a stack
of cores, :class:`~aimc.core.faults.CoreFaults`) and :mod:`aimc.compiler.faults` (checks of dead cores and links
against a placement).

Examples:
    >>> from aimc.faults import parse_faults
    >>> f = parse_faults("stuck_set=0.01,stuck_reset=0.01,dead_core=12,dead_link=3-4,dead_adc=5:17")
    >>> f.stuck_rate, f.dead_cores, f.dead_links, f.dead_adc
    (0.02, (12,), ((3, 4),), ((5, 17),))
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from aimc._validation import SeedLike, check_number, make_generator
from aimc.compiler.faults import check_links, check_placement
from aimc.compiler.mapping import MappedLayer
from aimc.compiler.mapping import Mapping as ChipMapping
from aimc.compiler.topology import Topology
from aimc.core.faults import HEALTHY, STUCK_RESET, STUCK_SET, CoreFaults
from aimc.errors import ArgumentTypeError, UnknownNameError, ValidationError
from aimc.spec import ChipSpec

#: Mixing constant that turns a programming seed into the seed of the fault draws when ``Faults.seed`` is None
#: (any odd 64-bit constant would do; this is the golden-ratio one of splitmix64). Numerical choice, not physics.
_SEED_MIX = 0x9E3779B97F4A7C15

#: Keys of the ``--faults`` text (:func:`parse_faults`).
FAULT_KEYS: tuple[str, ...] = ("stuck", "stuck_set", "stuck_reset", "dead_core", "dead_link", "dead_adc", "seed")


def _int(value: object, name: str, low: int = 0) -> int:
    return int(check_number(value, name, low=low, integer=True))


def _pair(value: object, name: str) -> tuple[int, int]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise ArgumentTypeError(f"{name} must be a pair of ints, got {type(value).__name__} {value!r}")
    items = list(value)
    if len(items) != 2:
        raise ValidationError(f"{name} must be a pair of ints, got {value!r}")
    return _int(items[0], name), _int(items[1], name)


@dataclass(frozen=True, eq=False)
class Faults:
    """The hardware defects of one simulated chip (see the module docstring for what each does).

    Args:
        stuck_set: fraction of conductance units stuck at SET (``g_max``), in [0, 1].
        stuck_reset: fraction stuck at RESET (0 uS), in [0, 1]; ``stuck_set + stuck_reset <= 1``.
        device_map: explicit stuck units per global core id: an integer tensor ``(U, tile_cols, tile_rows)`` of
            codes ``HEALTHY`` (0), ``STUCK_SET`` (1), ``STUCK_RESET`` (2), indexed [unit, output, input] in the
            core's block layout; ``U`` is the number of conductance units per weight of the device model and
            strategy (4 for one-device models, 2 for ``"hermes-2dev"`` with TDP). Entries outside the block a core
            holds are ignored. Applies in addition to the rates.
        dead_adc: ``(core, column)`` pairs of dead ADCs (the column reads zero).
        dead_cores: global ids of dead cores.
        dead_links: ``(core_a, core_b)`` pairs of dead on-chip links.
        seed: seed of the stuck-device draws, i.e. *which* die: an int fixes the stuck map whatever the programming
            seed (the same die programmed again); None (default) derives it from the programming seed (a new die
            per programmed chip). With the same seed the stuck units at a lower rate are a subset of those at a
            higher rate with the same SET/RESET ratio, so accuracy-vs-rate curves share their random numbers.
    """

    stuck_set: float = 0.0
    stuck_reset: float = 0.0
    device_map: Mapping[int, torch.Tensor] = field(default_factory=dict)
    dead_adc: tuple[tuple[int, int], ...] = ()
    dead_cores: tuple[int, ...] = ()
    dead_links: tuple[tuple[int, int], ...] = ()
    seed: int | None = None

    def __post_init__(self) -> None:
        s = float(check_number(self.stuck_set, "Faults.stuck_set", low=0.0, high=1.0))
        r = float(check_number(self.stuck_reset, "Faults.stuck_reset", low=0.0, high=1.0))
        if s + r > 1.0:
            raise ValidationError(f"Faults.stuck_set + Faults.stuck_reset must be <= 1, got {s} + {r}")
        if not isinstance(self.device_map, Mapping):
            raise ArgumentTypeError(
                f"Faults.device_map must be a dict core id -> code tensor, got {type(self.device_map).__name__}"
            )
        dmap: dict[int, torch.Tensor] = {}
        for core, codes in self.device_map.items():
            core = _int(core, "Faults.device_map core id")
            if not isinstance(codes, torch.Tensor):
                raise ArgumentTypeError(
                    f"Faults.device_map[{core}] must be a torch.Tensor of codes, got {type(codes).__name__}"
                )
            if codes.is_floating_point() or codes.is_complex() or codes.dtype == torch.bool:
                raise ArgumentTypeError(f"Faults.device_map[{core}] must have an integer dtype, got {codes.dtype}")
            if codes.dim() != 3:
                raise ValidationError(
                    f"Faults.device_map[{core}] must have shape (units, tile_cols, tile_rows), got {tuple(codes.shape)}"
                )
            if codes.numel() and (int(codes.min()) < HEALTHY or int(codes.max()) > STUCK_RESET):
                raise ValidationError(
                    f"Faults.device_map[{core}] codes must be 0 (healthy), 1 (stuck at SET) or 2 (stuck at RESET); "
                    f"got values in [{int(codes.min())}, {int(codes.max())}]"
                )
            dmap[core] = codes.detach().to("cpu", torch.int8)
        for name, items in (("dead_adc", self.dead_adc), ("dead_links", self.dead_links)):
            if isinstance(items, str | bytes) or not isinstance(items, Iterable):
                raise ArgumentTypeError(f"Faults.{name} must be a sequence of pairs, got {type(items).__name__}")
        adc = tuple(sorted({_pair(p, "Faults.dead_adc entry (core, column)") for p in self.dead_adc}))
        links = set()
        for p in self.dead_links:
            a, b = _pair(p, "Faults.dead_links entry (core_a, core_b)")
            if a == b:
                raise ValidationError(f"Faults.dead_links entry must join two different cores, got {a}-{b}")
            links.add((min(a, b), max(a, b)))
        if isinstance(self.dead_cores, str | bytes) or not isinstance(self.dead_cores, Iterable):
            raise ArgumentTypeError(
                f"Faults.dead_cores must be a sequence of ints, got {type(self.dead_cores).__name__}"
            )
        cores = tuple(sorted({_int(c, "Faults.dead_cores entry") for c in self.dead_cores}))
        if self.seed is not None:
            _int(self.seed, "Faults.seed")
        object.__setattr__(self, "stuck_set", s)
        object.__setattr__(self, "stuck_reset", r)
        object.__setattr__(self, "device_map", dmap)
        object.__setattr__(self, "dead_adc", adc)
        object.__setattr__(self, "dead_cores", cores)
        object.__setattr__(self, "dead_links", tuple(sorted(links)))

    # ------------------------------------------------------------------ views
    @property
    def stuck_rate(self) -> float:
        """Fraction of conductance units stuck (SET + RESET), from the rates."""
        return round(self.stuck_set + self.stuck_reset, 15)

    @property
    def is_empty(self) -> bool:
        """True when the chip has no defect at all."""
        return not (self.stuck_rate or self.device_map or self.dead_adc or self.dead_cores or self.dead_links)

    def compile_kwargs(self) -> dict[str, Any]:
        """``avoid_cores`` and ``avoid_links`` for :func:`aimc.compile` (``aimc.compile(m, **f.compile_kwargs())``)."""
        return {"avoid_cores": list(self.dead_cores), "avoid_links": [list(p) for p in self.dead_links]}

    def describe(self) -> dict[str, Any]:
        """JSON-ready description (the explicit map as its core ids and stuck counts)."""
        return {
            "stuck_set": self.stuck_set,
            "stuck_reset": self.stuck_reset,
            "device_map": {str(k): int((v != HEALTHY).sum()) for k, v in sorted(self.device_map.items())},
            "dead_adc": [list(p) for p in self.dead_adc],
            "dead_cores": list(self.dead_cores),
            "dead_links": [list(p) for p in self.dead_links],
            "seed": self.seed,
        }

    def to_text(self) -> str:
        """The ``--faults`` text of these faults (without the explicit device map); inverse of :func:`parse_faults`."""
        parts = []
        if self.stuck_set:
            parts.append(f"stuck_set={self.stuck_set!r}")
        if self.stuck_reset:
            parts.append(f"stuck_reset={self.stuck_reset!r}")
        parts += [f"dead_core={c}" for c in self.dead_cores]
        parts += [f"dead_link={a}-{b}" for a, b in self.dead_links]
        parts += [f"dead_adc={c}:{k}" for c, k in self.dead_adc]
        if self.seed is not None:
            parts.append(f"seed={self.seed}")
        return ",".join(parts)

    # ------------------------------------------------------------------ saving
    def to_parts(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """JSON metadata and tensors (the explicit map) for a saved chip; inverse of :meth:`from_parts`."""
        meta = {k: v for k, v in self.describe().items() if k != "device_map"}
        meta["device_map"] = sorted(self.device_map)
        return meta, {f"faults.device_map.{k}": v for k, v in self.device_map.items()}

    @classmethod
    def from_parts(cls, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Faults:
        """Rebuild from :meth:`to_parts` output; raises a ValidationError/ArgumentTypeError on bad content."""
        if not isinstance(meta, dict):
            raise ArgumentTypeError(f"faults metadata must be a JSON object, got {type(meta).__name__}")
        unknown = sorted(set(meta) - {"stuck_set", "stuck_reset", "device_map", "dead_adc", "dead_cores",
                                      "dead_links", "seed"})  # fmt: skip
        if unknown:
            raise ValidationError(f"faults metadata has unknown key(s) {unknown}")
        ids = meta.get("device_map", [])
        if not isinstance(ids, list):
            raise ArgumentTypeError(f"faults device_map must list core ids, got {type(ids).__name__}")
        dmap = {}
        for k in ids:
            core = _int(k, "faults device_map core id")
            key = f"faults.device_map.{core}"
            if key not in tensors:
                raise ValidationError(f"faults device map of core {core} is missing (tensor {key!r})")
            dmap[core] = tensors[key]
        return cls(
            stuck_set=meta.get("stuck_set", 0.0),
            stuck_reset=meta.get("stuck_reset", 0.0),
            device_map=dmap,
            dead_adc=meta.get("dead_adc", ()),
            dead_cores=meta.get("dead_cores", ()),
            dead_links=meta.get("dead_links", ()),
            seed=meta.get("seed"),
        )

    # ------------------------------------------------------------------ checks against a chip
    def check_spec(self, spec: ChipSpec, chips: int = 1) -> None:
        """Check every core id, link and column against ``chips`` chips of ``spec``."""
        total = spec.cores * chips
        bad = [c for c in (*self.dead_cores, *self.device_map, *(c for c, _ in self.dead_adc)) if c >= total]
        if bad:
            raise ValidationError(
                f"fault core ids must be in [0, {total - 1}] ({chips} chip(s)); got {sorted(set(bad))}"
            )
        cols = [k for _, k in self.dead_adc if k >= spec.tile_cols]
        if cols:
            raise ValidationError(f"dead ADC columns must be in [0, {spec.tile_cols - 1}]; got {sorted(set(cols))}")
        for core, codes in self.device_map.items():
            if tuple(codes.shape[1:]) != (spec.tile_cols, spec.tile_rows):
                raise ValidationError(
                    f"Faults.device_map[{core}] must have shape (units, {spec.tile_cols}, {spec.tile_rows}), "
                    f"got {tuple(codes.shape)}"
                )
        check_links(self.dead_links, Topology.of(spec), spec.cores, chips, "dead link")

    def check_mapping(self, mapping: ChipMapping) -> None:
        """Refuse a mapping that puts a block on a dead core or whose column chains cannot be routed over live links
        (:func:`aimc.compiler.faults.check_placement`)."""
        check_placement(mapping, self.dead_cores, self.dead_links)

    def for_layer(self, layer: MappedLayer, generator: torch.Generator) -> CoreFaults | None:
        """The faults of the cores holding ``layer``'s blocks, in the layer's ``(r, c)`` core layout (or None)."""
        t = layer.tiling
        index = {core: (i, j) for i, row in enumerate(layer.cores) for j, core in enumerate(row)}
        dead = None
        for core, col in self.dead_adc:
            if core in index and col < t.block_outputs:
                if dead is None:
                    dead = torch.zeros(t.row_blocks, t.col_blocks, t.block_outputs, dtype=torch.bool)
                dead[(*index[core], col)] = True
        dmap = {index[c]: v for c, v in self.device_map.items() if c in index}
        if not (self.stuck_rate or dmap or dead is not None):
            return None
        return CoreFaults(self.stuck_set, self.stuck_reset, dmap, dead, generator)


def fault_generator(faults: Faults, seed: SeedLike) -> torch.Generator:
    """Generator of the stuck-device draws: ``faults.seed`` if set, else derived from the programming seed.

    An int programming seed gives a separate stream (the programming noise is the same as without faults); a
    ``torch.Generator`` gives up one draw of its stream for the fault seed.
    """
    if faults.seed is not None:
        return make_generator(faults.seed, "Faults.seed")
    if isinstance(seed, torch.Generator):
        derived = int(torch.randint(0, 2**62, (1,), generator=seed))
    else:
        base = int(check_number(seed, "seed", low=0, integer=True))
        derived = ((base + 1) * _SEED_MIX) % 2**62
    return make_generator(derived, "fault seed")


def parse_faults(text: str) -> Faults:
    """Faults from the ``--faults`` text: comma-separated ``key=value`` items.

    Keys: ``stuck=R`` (R split half SET, half RESET), ``stuck_set=R``, ``stuck_reset=R`` (fractions of conductance
    units in [0, 1]), ``dead_core=N``, ``dead_link=A-B``, ``dead_adc=CORE:COLUMN`` (each repeatable), ``seed=N``.
    An empty text means no faults.

    Examples:
        >>> parse_faults("stuck=0.02,dead_core=12").stuck_set
        0.01
    """
    if not isinstance(text, str):
        raise ArgumentTypeError(f"faults must be a str like 'stuck=0.01,dead_core=12', got {type(text).__name__}")
    kwargs: dict[str, Any] = {"dead_cores": [], "dead_links": [], "dead_adc": []}
    for item in (p.strip() for p in text.split(",")):
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not value:
            raise ValidationError(f"--faults item {item!r} must be key=value (keys: {', '.join(FAULT_KEYS)})")
        if key not in FAULT_KEYS:
            raise UnknownNameError(f"unknown --faults key {key!r} in {item!r}; keys: {', '.join(FAULT_KEYS)}")
        if key in ("stuck", "stuck_set", "stuck_reset"):
            rate = _number(value, key)
            if key == "stuck":
                kwargs["stuck_set"] = kwargs.get("stuck_set", 0.0) + rate / 2
                kwargs["stuck_reset"] = kwargs.get("stuck_reset", 0.0) + rate / 2
            else:
                kwargs[key] = kwargs.get(key, 0.0) + rate
        elif key == "dead_core":
            kwargs["dead_cores"].append(_integer(value, key))
        elif key == "seed":
            kwargs["seed"] = _integer(value, key)
        else:
            sep_char = "-" if key == "dead_link" else ":"
            a, found, b = value.partition(sep_char)
            if not found:
                form = "A-B (two linked cores)" if key == "dead_link" else "CORE:COLUMN"
                raise ValidationError(f"--faults {key} must be {form}, got {value!r}")
            kwargs["dead_links" if key == "dead_link" else "dead_adc"].append((_integer(a, key), _integer(b, key)))
    return Faults(**kwargs)


def _number(text: str, key: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValidationError(f"--faults {key} must be a number in [0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ValidationError(f"--faults {key} must be a number in [0, 1], got {text!r}")
    return value


def _integer(text: str, key: str) -> int:
    text = text.strip()
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise ValidationError(f"--faults {key} needs non-negative integer ids, got {text!r}")
    return int(text)


__all__ = [
    "FAULT_KEYS",
    "HEALTHY",
    "STUCK_RESET",
    "STUCK_SET",
    "CoreFaults",
    "Faults",
    "fault_generator",
    "parse_faults",
]
