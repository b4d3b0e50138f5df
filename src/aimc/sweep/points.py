"""Grid points: their identity (a hash of everything a result depends on), their read-noise seeds, and how they
are grouped into units of work that program a chip once.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Point:
    """One grid point: a chip programmed with ``seed`` on ``device`` with ``strategy``, read ``t_seconds`` after
    programming in ``mode`` (read-noise draw number ``read``)."""

    seed: int
    device: str
    strategy: str
    t_seconds: float
    mode: str
    drift_compensation: bool
    read: int = 0

    @property
    def chip(self) -> tuple[int, str, str]:
        """What programming depends on: points sharing it share one programmed chip."""
        return (self.seed, self.device, self.strategy)

    def as_dict(self) -> dict[str, Any]:
        """Plain fields (JSON-ready)."""
        return asdict(self)


def _canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


def point_key(context: dict[str, Any], point: Point) -> str:
    """SHA-256 (hex) of the sweep context and the point's fields: the point's primary key in the store.

    ``t_seconds`` is hashed as a float, so ``3600`` and ``3600.0`` (and ``1h``) are the same point.
    """
    fields = point.as_dict() | {"t_seconds": float(point.t_seconds)}
    return hashlib.sha256(_canonical({"context": context, "point": fields}).encode()).hexdigest()


#: Read-noise seeds live in [0, 2**63): torch.Generator.manual_seed takes 64-bit values.
_SEED_SPACE = 2**63


def read_seed(key: str) -> int:
    """The read-noise seed of a point, derived from its key alone: it does not depend on which worker runs the
    point or in which order, so every executor gives the same numbers."""
    return int(key[:16], 16) % _SEED_SPACE


def batch_seed(base: int, batch_index: int) -> int:
    """Seed of the ``batch_index``-th ``chip.run`` call of a point whose read seed is ``base``."""
    return (base + batch_index) % _SEED_SPACE


def work_units(points: list[Point], workers: int) -> list[list[Point]]:
    """Group points into units of work: one unit per programmed chip (seed, device, strategy), so each chip is
    programmed once and read at all its times and modes.

    When there are fewer chips than ``workers``, the largest units are split in halves until every worker has one
    (the chip is then programmed on two workers, which costs one extra ``program`` but keeps all workers busy).

    Args:
        points: the points to run, in order.
        workers: the number of workers (>= 1).

    Returns:
        Units in the order of their first point; each unit keeps the points' order.
    """
    groups: dict[tuple[int, str, str], list[Point]] = {}
    for p in points:
        groups.setdefault(p.chip, []).append(p)
    units = list(groups.values())
    while len(units) < workers:
        i = max(range(len(units)), key=lambda k: len(units[k]), default=None)
        if i is None or len(units[i]) < 2:
            break
        unit = units.pop(i)
        half = (len(unit) + 1) // 2
        units[i:i] = [unit[:half], unit[half:]]
    return units
