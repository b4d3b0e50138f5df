"""Splitting a layer matrix into equal sub-matrices of at most one crossbar each (docs/physics.md §10).

A layer matrix of K inputs x N outputs is split into r = ceil(K / tile_rows) row blocks and c = ceil(N / tile_cols)
column blocks of equal size (zero-padded to it): the chip paper splits ResNet-9's 2016 x 224 layers into
8 x (252 x 224), not into 7 x 256 + 1 x 224. Each block goes to one core.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from aimc.spec import ChipSpec


@dataclass(frozen=True)
class Tiling:
    """How one K x N layer matrix (inputs x outputs) is cut into r x c equal blocks of n x m (n <= tile rows)."""

    inputs: int
    outputs: int
    row_blocks: int
    col_blocks: int
    block_inputs: int
    block_outputs: int
    tile_rows: int
    tile_cols: int

    @classmethod
    def split(cls, inputs: int, outputs: int, spec: ChipSpec) -> Tiling:
        """Equal split of an ``inputs x outputs`` matrix onto ``spec``'s crossbars."""
        r = math.ceil(inputs / spec.tile_rows)
        c = math.ceil(outputs / spec.tile_cols)
        return cls(inputs, outputs, r, c, math.ceil(inputs / r), math.ceil(outputs / c), spec.tile_rows, spec.tile_cols)

    @classmethod
    def split_groups(cls, inputs: int, outputs: int, groups: int, spec: ChipSpec) -> Tiling | None:
        """Split of a block-diagonal ``inputs x outputs`` matrix of ``groups`` equal groups (a grouped convolution)
        whose row blocks end at group boundaries: each row block holds the rows of whole groups, as many as fit in
        a crossbar, so that every output column has all its weights in one core. None where one group's rows
        exceed a crossbar, or for one group."""
        if groups <= 1 or inputs % groups or outputs % groups:
            return None
        rows_per_group = inputs // groups
        per_block = spec.tile_rows // rows_per_group
        if per_block < 1:
            return None
        r = math.ceil(groups / per_block)
        c = math.ceil(outputs / spec.tile_cols)
        block_inputs = rows_per_group * math.ceil(groups / r)  # the same r blocks, as evenly filled as they can be
        return cls(inputs, outputs, r, c, block_inputs, math.ceil(outputs / c), spec.tile_rows, spec.tile_cols)

    @property
    def cores(self) -> int:
        """Cores the layer occupies: r x c."""
        return self.row_blocks * self.col_blocks

    @property
    def utilization(self) -> float:
        """Fraction of the occupied crossbars' cells that hold a weight (Table I: 2016 x 224 on 8 cores = 86%)."""
        return self.inputs * self.outputs / (self.cores * self.tile_rows * self.tile_cols)

    def describe(self) -> dict[str, int]:
        """Plain dict (JSON)."""
        return asdict(self)


def tile(inputs: int, outputs: int, spec: ChipSpec, groups: int = 1) -> Tiling:
    """The split of a layer matrix: at group boundaries for a grouped convolution where one fits
    (:meth:`Tiling.split_groups`), else equal blocks (:meth:`Tiling.split`)."""
    return Tiling.split_groups(inputs, outputs, groups, spec) or Tiling.split(inputs, outputs, spec)
