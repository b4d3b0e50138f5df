"""Dead cores and dead links, as the compiler sees them: checks of link lists, and of a mapping's placement.

The placement avoids dead cores and links (``aimc.compile(..., avoid_cores=..., avoid_links=...)``,
:mod:`aimc.compiler.placement`); a programmed chip refuses a mapping that puts a block on a dead core or whose
partial sums cannot be routed over the live links (:meth:`aimc.faults.Faults.check_mapping`). Core ids are global
(``chip * cores_per_chip + core``); a link is an unordered pair of linked cores of one chip.
"""

from __future__ import annotations

from collections.abc import Iterable

from aimc.compiler.mapping import Mapping
from aimc.compiler.topology import Topology
from aimc.errors import ValidationError


def check_links(links: Iterable[tuple[int, int]], topo: Topology, cores_per_chip: int, chips: int, what: str) -> None:
    """Check that every pair is a link of one chip's topology (global core ids); ValidationError otherwise."""
    total = cores_per_chip * chips
    for a, b in links:
        if not (0 <= a < total and 0 <= b < total):
            raise ValidationError(f"{what} {a}-{b}: core ids must be in [0, {total - 1}] ({chips} chip(s))")
        if a // cores_per_chip != b // cores_per_chip or not topo.linked(a % cores_per_chip, b % cores_per_chip):
            raise ValidationError(
                f"{what} {a}-{b} is not a link of the chip's network (cores {a} and {b} are not neighbours; "
                f"core {a} links to {sorted(a - a % cores_per_chip + n for n in topo.neighbours(a % cores_per_chip))})"
            )


def check_placement(mapping: Mapping, dead_cores: Iterable[int], dead_links: Iterable[tuple[int, int]]) -> None:
    """Refuse a mapping that puts a block on one of ``dead_cores`` or whose column chains cannot be routed over the
    links of its topology that are not in ``dead_links`` (global core ids, pairs ordered low-high)."""
    dead = set(dead_cores)
    avoid = sorted(dead)
    for layer in mapping.layers.values():
        used = sorted(dead.intersection(layer.core_list()))
        if used:
            raise ValidationError(
                f"layer {layer.name!r} is placed on dead core(s) {used}; compile the network around them with "
                f"aimc.compile(..., avoid_cores={avoid}) (or **faults.compile_kwargs())"
            )
    links = {(a, b) for a, b in dead_links}
    if not (links or dead):
        return
    topo = mapping.topology
    for link in mapping.links_used():
        a, b = link["from"], link["to"]
        if link["kind"] != "on-chip":
            continue
        if topo.route_hops(a, b, dead_links=links, dead_cores=dead) is None:
            raise ValidationError(
                f"layer {link['layer']!r} sends partial sums from core {a} to core {b}, but no route of live links "
                f"joins them (dead links {sorted(links)}, dead cores {sorted(dead)}); compile with "
                "**faults.compile_kwargs()"
            )


__all__ = ["check_links", "check_placement"]
