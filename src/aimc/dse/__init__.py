"""Design-space exploration: accuracy (Monte Carlo on the simulated chip) and performance (the perf model) of a
network across chip designs, on the sweep engine, with Pareto fronts of energy and latency against accuracy loss.

Public API:

- :func:`run` — run a design space (a :class:`DesignSpace`, a YAML file or a dict); resumable; local or Ray.
- :func:`load_space` / :func:`parse_space` — validate a design-space file / dict; :func:`check_designs` — does every
  network fit on every design (before any work).
- :func:`write_report` — markdown/HTML/JSON report with the Pareto fronts; :func:`summarize` — its rows.
- :func:`pareto_front`, :func:`dominates` — the fronts themselves.
- :func:`design_chip` — the variant :class:`~aimc.spec.ChipSpec` of a design; :func:`design_perf`, :func:`area_mm2`.
- A space's networks are tasks of :mod:`aimc.tasks` (``resnet9``, ``char-lstm``, ``char-transformer`` built in;
  ``aimc.tasks.register_task`` adds one), evaluated as ``aimc eval`` evaluates them.
- :class:`DesignSpaceError` — a malformed space or an impossible design (an :class:`~aimc.errors.AimcError`).

See docs/dse.md.
"""

from aimc.dse.pareto import dominates, pareto_front
from aimc.dse.report import summarize, write_report
from aimc.dse.runner import DseResult, area_mm2, design_perf, output_folder, run
from aimc.dse.space import (
    Design,
    DesignPoint,
    DesignSpace,
    DesignSpaceError,
    check_designs,
    design_chip,
    load_space,
    parse_space,
)

__all__ = [
    "Design",
    "DesignPoint",
    "DesignSpace",
    "DesignSpaceError",
    "DseResult",
    "area_mm2",
    "check_designs",
    "design_chip",
    "design_perf",
    "dominates",
    "load_space",
    "output_folder",
    "pareto_front",
    "parse_space",
    "run",
    "summarize",
    "write_report",
]
