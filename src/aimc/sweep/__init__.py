"""Monte Carlo sweeps: many programmed chips x times x read modes x strategies x devices, resumable, local or Ray.

Public API:

- :func:`run` — run a sweep (a :class:`SweepSpec`, a YAML file or a dict); ``backend="ray"`` for a Ray cluster.
- :func:`load_spec` / :func:`parse_spec` — validate a sweep file / dict into a :class:`SweepSpec`.
- :func:`write_report` — markdown/HTML tables and figures of an output folder.
- :class:`ResultStore`, :class:`PointResult` — the SQLite store (one row per finished point).
- A sweep file's ``network`` names a task of :mod:`aimc.tasks` (``aimc.tasks.register_task`` adds one).
- Errors: :class:`SweepSpecError`, :class:`BackendError`, :class:`StoreError`, :class:`SweepInterruptedError`,
  :class:`WorkerFailedError` (all :class:`~aimc.errors.AimcError`).

See docs/sweeps.md.
"""

from aimc.sweep.errors import BackendError, StoreError, SweepInterruptedError, SweepSpecError, WorkerFailedError
from aimc.sweep.points import Point
from aimc.sweep.report import write_report
from aimc.sweep.runner import SweepResult, output_folder, run
from aimc.sweep.spec import DataSpec, GridSpec, SweepSpec, load_spec, parse_spec
from aimc.sweep.store import PointResult, ResultStore

__all__ = [
    "BackendError",
    "DataSpec",
    "GridSpec",
    "Point",
    "PointResult",
    "ResultStore",
    "StoreError",
    "SweepInterruptedError",
    "SweepResult",
    "SweepSpec",
    "SweepSpecError",
    "WorkerFailedError",
    "load_spec",
    "output_folder",
    "parse_spec",
    "run",
    "write_report",
]
