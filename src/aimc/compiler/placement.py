"""Placement of layer blocks on cores so that partial sums travel over existing links (docs/physics.md §10).

A layer of r x c blocks forms c column chains of r cores; the partial sums of a chain are added core by core
along it, each core's LDPU adding the INT8 sum it receives (docs/physics.md §9.2, §10). The placer walks the cores of
each chip in a serpentine order (row 0 left to right, row 1 right to left, ...), in which consecutive cores are always
linked, and gives each chain consecutive free cores, so a chain is a path of direct links. Two rules give the chip
paper's placements without naming any network:

- a chain as long as a core row starts at the beginning of a free row (ResNet-9's conv5, conv6, conv7 each fill a
  row of 8);
- an LSTM layer's column chains run down the grid columns and end on the row just above the GDPUs (the GDPU row
  lies between core rows 4 and 5; docs/physics.md §9.3), one chain per GDPU slice, so that the last core of each chain
  feeds its GDPU (the PTB LSTM on rows 2-4, the captioning LSTM on rows 1-4).

Dead cores (``avoid_cores``) hold no block and carry no traffic; a chain does not send its partial sums over a dead
link (``avoid_links``): among the candidate chains in the order above, the first whose every step is a live direct
link or a live multi-hop route is taken, preferring one that crosses no dead link at all; if none can be routed the
placement fails with an error naming the dead links and cores (:mod:`aimc.faults`).
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterable, Sequence

from aimc.compiler.faults import check_links
from aimc.compiler.mapping import MappedLayer
from aimc.compiler.topology import Topology
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.spec import ChipSpec

#: The ``chips`` value of :func:`aimc.compile` that takes as many chips as the network needs.
AUTO_CHIPS = "auto"


def chips_needed(
    layers: Iterable[MappedLayer] | dict[str, MappedLayer], spec: ChipSpec, avoid: Iterable[object] = ()
) -> int:
    """The fewest chips of ``spec`` whose cores, less the ``avoid`` ones (dead cores), hold every block of
    ``layers`` (at least 1); without ``avoid``, the count that the "needs N cores ... chips=K" error of
    :func:`aimc.compiler.capture.check_fits` names."""
    items = layers.values() if isinstance(layers, dict) else layers
    need = sum(layer.tiling.cores for layer in items)
    dead = {c for c in avoid if isinstance(c, int) and not isinstance(c, bool) and c >= 0}
    n = max(1, math.ceil(need / spec.cores))
    while need > n * spec.cores - sum(c < n * spec.cores for c in dead):
        n += 1
    return n


def check_chips(chips: object) -> int | str:
    """``chips`` as :func:`aimc.compile` takes it: an int >= 1, or ``"auto"`` (as many chips as the network needs).

    Raises:
        ArgumentTypeError: not an int (a bool, a float, another string).
        ValidationError: an int below 1.
    """
    allowed = f"an int >= 1 (the number of chips) or {AUTO_CHIPS!r} (as many chips as the network needs)"
    if isinstance(chips, str) and chips == AUTO_CHIPS:
        return AUTO_CHIPS
    if isinstance(chips, bool) or not isinstance(chips, numbers.Integral):
        raise ArgumentTypeError(f"chips must be {allowed}; got {type(chips).__name__} {chips!r}")
    if chips < 1:
        raise ValidationError(f"chips must be {allowed}; got {chips!r}")
    return int(chips)


def gdpu_feed_row(spec: ChipSpec) -> int:
    """Grid row (0-based) of the cores directly above the GDPU slices: row 4 of 8 counting from 1 (docs/physics.md
    §9.3)."""
    return spec.grid_rows // 2 - 1


def serpentine(spec: ChipSpec, chips: int) -> list[int]:
    """Global core ids in serpentine order, chip after chip."""
    topo = Topology.of(spec)
    order = []
    for chip in range(chips):
        for r in range(topo.rows):
            cols = range(topo.cols) if r % 2 == 0 else range(topo.cols - 1, -1, -1)
            order.extend(chip * spec.cores + topo.core_at(r, c) for c in cols)
    return order


def place(
    layers: Sequence[MappedLayer],
    spec: ChipSpec,
    chips: int = 1,
    avoid_cores: Iterable[int] = (),
    avoid_links: Iterable[tuple[int, int]] = (),
) -> None:
    """Assign cores to every layer's blocks (``layer.cores[i][j]``), in place, in execution order.

    Args:
        layers: analog layers in execution order.
        chips: number of chips.
        avoid_cores: global core ids that must not be used (dead cores).
        avoid_links: pairs of linked global core ids whose link must not carry partial sums (dead links).
    """
    avoid = _core_ids(avoid_cores, spec.cores * chips)
    dead_links = _link_ids(avoid_links, spec, chips)
    routes = _Routes(Topology.of(spec), dead_links, avoid)
    free = [c for c in serpentine(spec, chips) if c not in avoid]
    need = sum(layer.tiling.cores for layer in layers)
    if need > len(free):
        raise ValidationError(
            f"the network needs {need} cores but only {len(free)} usable cores are left on {chips} chip(s) "
            f"({len(avoid)} avoided)"
        )
    for layer in layers:
        t = layer.tiling
        cores = None
        if layer.kind in ("lstm", "gru"):
            cores = _place_above_gdpus(t.row_blocks, t.col_blocks, spec, chips, free, routes)
        if cores is None:
            cores = _place_chains(t.row_blocks, t.col_blocks, spec, free, routes)
        layer.cores = cores
        used = {c for row in cores for c in row}
        free = [c for c in free if c not in used]


def _core_ids(cores: Iterable[int], total: int) -> set[int]:
    if isinstance(cores, str | bytes) or not isinstance(cores, Iterable):
        raise ArgumentTypeError(f"avoid_cores must be a sequence of core ids, got {type(cores).__name__}")
    ids = list(cores)
    wrong = [c for c in ids if isinstance(c, bool) or not isinstance(c, int)]
    if wrong:
        raise ArgumentTypeError(f"avoid_cores must hold int core ids; got {wrong[:5]!r}")
    bad = sorted(c for c in ids if not 0 <= c < total)
    if bad:
        raise ValidationError(f"avoid_cores must be core ids in [0, {total - 1}]; got {bad}")
    return set(ids)


def _link_ids(links: Iterable[tuple[int, int]], spec: ChipSpec, chips: int) -> set[tuple[int, int]]:
    if isinstance(links, str | bytes) or not isinstance(links, Iterable):
        raise ArgumentTypeError(f"avoid_links must be a sequence of (core_a, core_b) pairs, got {type(links).__name__}")
    out = set()
    for link in links:
        items = list(link) if isinstance(link, list | tuple) else None
        if items is None or len(items) != 2 or any(isinstance(c, bool) or not isinstance(c, int) for c in items):
            raise ArgumentTypeError(f"avoid_links must hold (core_a, core_b) pairs of ints; got {link!r}")
        out.add((min(items), max(items)))
    check_links(sorted(out), Topology.of(spec), spec.cores, chips, "avoid_links entry")
    return out


class _Routes:
    """Whether the partial sums of a chain can travel core to core: over live direct links, or routed around."""

    def __init__(self, topo: Topology, dead_links: set[tuple[int, int]], dead_cores: set[int]) -> None:
        self.topo, self.dead_links, self.dead_cores = topo, dead_links, dead_cores

    def chain_quality(self, chain: Sequence[int]) -> int:
        """2: no step crosses a dead link and every step has a live route; 1: all routable (some detour around a
        dead link); 0: some step has no live route."""
        quality = 2
        for a, b in itertools.pairwise(chain):
            if a // self.topo.cores != b // self.topo.cores:
                continue  # inter-chip transfer, not over the on-chip network
            if (min(a, b), max(a, b)) in self.dead_links:
                quality = 1
            if (self.dead_links or self.dead_cores) and self.topo.route_hops(
                a, b, dead_links=self.dead_links, dead_cores=self.dead_cores
            ) is None:
                return 0
        return quality


def _place_chains(r: int, c: int, spec: ChipSpec, free: list[int], routes: _Routes) -> list[list[int]]:
    """c chains of r consecutive free cores in serpentine order; a chain of a full row starts at a free row."""
    taken: list[list[int]] = []
    pool = list(free)
    for _ in range(c):
        starts = list(range(max(len(pool) - r + 1, 0)))
        if r == spec.grid_cols:
            rows = _full_free_rows(pool, spec)
            starts = rows + [s for s in starts if s not in rows]
        if not starts:
            raise ValidationError(f"not enough free cores for a chain of {r}")
        best = None
        for start in starts:
            quality = routes.chain_quality(pool[start : start + r])
            if quality == 2:
                best = start
                break
            if quality == 1 and best is None:
                best = start
        if best is None:
            raise ValidationError(
                f"no chain of {r} free cores can pass its partial sums over live links (dead links "
                f"{sorted(routes.dead_links)}, avoided cores {sorted(routes.dead_cores)})"
            )
        taken.append(pool[best : best + r])
        pool = pool[:best] + pool[best + r :]
    return [[taken[j][i] for j in range(c)] for i in range(r)]


def _full_free_rows(pool: list[int], spec: ChipSpec) -> list[int]:
    """Indices in ``pool`` of the first core of every grid row whose cores are all free and consecutive in ``pool``."""
    out = []
    for i in range(len(pool) - spec.grid_cols + 1):
        window = pool[i : i + spec.grid_cols]
        rows = {(core // spec.cores, (core % spec.cores) // spec.grid_cols) for core in window}
        if len(rows) == 1 and sorted(core % spec.grid_cols for core in window) == list(range(spec.grid_cols)):
            out.append(i)
    return out


def _place_above_gdpus(
    r: int, c: int, spec: ChipSpec, chips: int, free: list[int], routes: _Routes
) -> list[list[int]] | None:
    """Column chains ending on the GDPU feed row, chain j in grid column j; None if that region is not free."""
    bottom = gdpu_feed_row(spec)
    if c > min(spec.gdpu_slices, spec.grid_cols) or r > bottom + 1:
        return None
    free_set = set(free)
    topo = Topology.of(spec)
    for chip in range(chips):
        rows = range(bottom - r + 1, bottom + 1)
        cores = [[chip * spec.cores + topo.core_at(row, j) for j in range(c)] for row in rows]
        chains = [[cores[i][j] for i in range(r)] for j in range(c)]
        if all(core in free_set for row in cores for core in row) and all(
            routes.chain_quality(chain) == 2 for chain in chains
        ):
            return cores
    return None
