"""Placement of layer blocks on cores so that partial sums travel over existing links (SPEC §2-3).

A layer of r x c blocks forms c column chains of r cores; the partial sums of a chain are added core by core
along it, each core's LDPU adding the INT8 sum it receives (SPEC §1, §3). The placer walks the cores of each chip in
a serpentine order (row 0 left to right, row 1 right to left, ...), in which consecutive cores are always linked,
and gives each chain consecutive free cores, so a chain is a path of direct links. Two rules give the chip paper's
placements without naming any network:

- a chain as long as a core row starts at the beginning of a free row (ResNet-9's conv5, conv6, conv7 each fill a
  row of 8);
- an LSTM layer's column chains run down the grid columns and end on the row just above the GDPUs (the GDPU row
  lies between core rows 4 and 5; SPEC §2-3), one chain per GDPU slice, so that the last core of each chain feeds
  its GDPU (the PTB LSTM on rows 2-4, the captioning LSTM on rows 1-4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from aimc.compiler.mapping import MappedLayer
from aimc.compiler.topology import Topology
from aimc.errors import ValidationError
from aimc.spec import ChipSpec


def gdpu_feed_row(spec: ChipSpec) -> int:
    """Grid row (0-based) of the cores directly above the GDPU slices: row 4 of 8 in SPEC §2 counting from 1."""
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


def place(layers: Sequence[MappedLayer], spec: ChipSpec, chips: int = 1, avoid_cores: Iterable[int] = ()) -> None:
    """Assign cores to every layer's blocks (``layer.cores[i][j]``), in place, in execution order.

    Args:
        layers: analog layers in execution order.
        chips: number of chips.
        avoid_cores: global core ids that must not be used (dead cores).
    """
    avoid = set(avoid_cores)
    total = spec.cores * chips
    bad = sorted(c for c in avoid if not 0 <= c < total)
    if bad:
        raise ValidationError(f"avoid_cores must be core ids in [0, {total - 1}]; got {bad}")
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
        if layer.kind == "lstm":
            cores = _place_above_gdpus(t.row_blocks, t.col_blocks, spec, chips, free)
        if cores is None:
            cores = _place_chains(t.row_blocks, t.col_blocks, spec, free)
        layer.cores = cores
        used = {c for row in cores for c in row}
        free = [c for c in free if c not in used]


def _place_chains(r: int, c: int, spec: ChipSpec, free: list[int]) -> list[list[int]]:
    """c chains of r consecutive free cores in serpentine order; a chain of a full row starts at a free row."""
    taken: list[list[int]] = []
    pool = list(free)
    for _ in range(c):
        start = 0
        if r == spec.grid_cols:
            start = _full_free_row(pool, spec) if _full_free_row(pool, spec) is not None else 0
        chain = pool[start : start + r]
        if len(chain) < r:
            raise ValidationError(f"not enough free cores for a chain of {r}")
        taken.append(chain)
        pool = pool[:start] + pool[start + r :]
    return [[taken[j][i] for j in range(c)] for i in range(r)]


def _full_free_row(pool: list[int], spec: ChipSpec) -> int | None:
    """Index in ``pool`` of the first core of a grid row whose cores are all free and consecutive in ``pool``."""
    for i in range(len(pool) - spec.grid_cols + 1):
        window = pool[i : i + spec.grid_cols]
        rows = {(core // spec.cores, (core % spec.cores) // spec.grid_cols) for core in window}
        if len(rows) == 1 and sorted(core % spec.grid_cols for core in window) == list(range(spec.grid_cols)):
            return i
    return None


def _place_above_gdpus(r: int, c: int, spec: ChipSpec, chips: int, free: list[int]) -> list[list[int]] | None:
    """Column chains ending on the GDPU feed row, chain j in grid column j; None if that region is not free."""
    bottom = gdpu_feed_row(spec)
    if c > min(spec.gdpu_slices, spec.grid_cols) or r > bottom + 1:
        return None
    free_set = set(free)
    topo = Topology.of(spec)
    for chip in range(chips):
        rows = range(bottom - r + 1, bottom + 1)
        cores = [[chip * spec.cores + topo.core_at(row, j) for j in range(c)] for row in rows]
        if all(core in free_set for row in cores for core in row):
            return cores
    return None
