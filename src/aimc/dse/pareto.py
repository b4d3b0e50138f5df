"""Pareto fronts of minimised objectives (energy or latency against accuracy loss)."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float]) -> bool:
    """Whether ``a`` dominates ``b`` (all objectives minimised): no worse in every one and better in at least one."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points, in input order (equal points are all kept).

    Sorts by the first objective then the rest and sweeps once for two objectives (O(n log n)); falls back to the
    pairwise test for more. ``tests/test_dse.py`` checks it against the brute-force definition.
    """
    n = len(points)
    if n == 0:
        return []
    dims = len(points[0])
    if dims != 2:
        return [i for i in range(n) if not any(dominates(points[j], points[i]) for j in range(n) if j != i)]
    order = sorted(range(n), key=lambda i: (points[i][0], points[i][1]))
    keep: list[int] = []
    best_y = float("inf")
    k = 0
    while k < n:  # a group of equal first objectives: only its smallest second objective can be on the front
        group = [order[k]]
        while k + len(group) < n and points[order[k + len(group)]][0] == points[order[k]][0]:
            group.append(order[k + len(group)])
        y0 = points[group[0]][1]
        if y0 < best_y:
            keep += [i for i in group if points[i][1] == y0]
            best_y = y0
        k += len(group)
    return sorted(keep)


def dominated_by(point: Sequence[float], points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the points that dominate ``point``."""
    return [i for i, p in enumerate(points) if dominates(p, point)]
