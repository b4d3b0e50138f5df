"""Errors of the sweep machinery; each is an :class:`~aimc.errors.AimcError` (the CLI prints it without a traceback)."""

from __future__ import annotations

from aimc.errors import AimcError, ValidationError


class SweepSpecError(ValidationError):
    """A sweep file or sweep dictionary is malformed: unknown key, wrong type, empty grid, unknown name, missing file.

    The message starts with where the problem is (``grid.times[2]``) so a user can find it in the file.
    """


class BackendError(AimcError, RuntimeError):
    """An executor cannot run: Ray is not installed, or the cluster address is unreachable or not a Ray cluster."""


class StoreError(AimcError, RuntimeError):
    """The result store cannot be used: it belongs to another sweep, is no aimc store, or is newer than this aimc."""


class SweepInterruptedError(AimcError, RuntimeError):
    """A sweep stopped before the end (Ctrl-C); every point finished until then is stored and a re-run resumes.

    Attributes:
        done: points stored (this run and earlier runs).
        total: points of the sweep.
    """

    def __init__(self, message: str, done: int, total: int) -> None:
        super().__init__(message)
        self.done = done
        self.total = total


class WorkerFailedError(AimcError, RuntimeError):
    """A worker failed for good (its retries exhausted, or the network task raised); finished points are stored."""
