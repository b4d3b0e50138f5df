"""The on-chip network between cores: a documented approximation of the 5-parallel-prism (5PP) topology.

Le Gallo et al. 2023 (docs/physics.md §10): the chip's 64 cores sit in an 8 x 8 grid; each core talks to at most 6
neighbours over the 5PP network (Dazzi et al., IEEE Trans. Computers 2021); a link is 8 parallel 1-bit channels at up to
3.2 Gbit/s; routing tables are set before run time.

Approximation used here (the exact 5PP wiring of the fabricated chip is not published): a triangular
lattice on the grid — each core links to its 4 grid neighbours and to its north-east and south-west diagonal
neighbours. That gives every core at most 6 neighbours, as the 5PP does, and contains the paths the chip paper
uses: horizontal chains along a core row (ResNet-9's conv5-7 each aggregate partial sums along a full row) and
vertical chains down a column (the LSTM's gate partial sums aggregate vertically into row 4, which feeds the GDPUs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from aimc.spec import ChipSpec

#: Grid offsets (d_row, d_col) of a core's neighbours in the triangular-lattice approximation of the 5PP.
NEIGHBOUR_OFFSETS: tuple[tuple[int, int], ...] = ((0, 1), (0, -1), (1, 0), (-1, 0), (-1, 1), (1, -1))


@dataclass(frozen=True)
class Topology:
    """Cores on a ``rows x cols`` grid and the undirected links between them.

    Core ``k`` sits at grid position ``(k // cols, k % cols)``.
    """

    rows: int
    cols: int

    @classmethod
    def of(cls, spec: ChipSpec) -> Topology:
        """The topology of ``spec``'s core grid."""
        return cls(spec.grid_rows, spec.grid_cols)

    @property
    def cores(self) -> int:
        """Number of cores."""
        return self.rows * self.cols

    def position(self, core: int) -> tuple[int, int]:
        """(row, column) of a core."""
        return divmod(core, self.cols)

    def core_at(self, row: int, col: int) -> int:
        """Core index at a grid position."""
        return row * self.cols + col

    def neighbours(self, core: int) -> list[int]:
        """Cores linked to ``core`` (at most 6)."""
        r, c = self.position(core)
        out = []
        for dr, dc in NEIGHBOUR_OFFSETS:
            rr, cc = r + dr, c + dc
            if 0 <= rr < self.rows and 0 <= cc < self.cols:
                out.append(self.core_at(rr, cc))
        return out

    def linked(self, a: int, b: int) -> bool:
        """Whether a direct link joins cores ``a`` and ``b``."""
        return b in self.neighbours(a)

    def links(self) -> list[tuple[int, int]]:
        """All undirected links as (smaller, larger) core pairs."""
        return sorted({(min(a, b), max(a, b)) for a in range(self.cores) for b in self.neighbours(a)})

    def route_hops(
        self,
        a: int,
        b: int,
        *,
        dead_links: Iterable[tuple[int, int]] = (),
        dead_cores: Iterable[int] = (),
    ) -> int | None:
        """Fewest live links from core ``a`` to core ``b`` of one chip, or None if no route exists.

        Core ids may be global (``chip * cores + core``); cores on different chips have no on-chip route. A route
        passes neither a dead link (an unordered pair of global ids) nor a dead core (other than ``a`` and ``b``).
        """
        if a // self.cores != b // self.cores:
            return None
        base = a - a % self.cores
        dead_l = {(min(x, y), max(x, y)) for x, y in dead_links}
        dead_c = set(dead_cores) - {a, b}
        frontier, seen, hops = [a], {a}, 0
        while frontier:
            if b in frontier:
                return hops
            nxt = []
            for core in frontier:
                for nb in self.neighbours(core - base):
                    g = base + nb
                    if g not in seen and g not in dead_c and (min(core, g), max(core, g)) not in dead_l:
                        seen.add(g)
                        nxt.append(g)
            frontier, hops = nxt, hops + 1
        return None
