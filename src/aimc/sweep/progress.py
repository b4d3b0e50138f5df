"""A live count of finished points on stderr: one rewritten line on a terminal, one line per point otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from aimc.sweep.store import PointResult


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


class Progress:
    """Counts finished points and prints ``done/total``, the rate and the time left.

    Args:
        name: the sweep's name.
        total: points of the sweep.
        done_before: points already stored when this run started.
        stream: where to print (default stderr); None prints nothing.
    """

    def __init__(self, name: str, total: int, done_before: int, stream: TextIO | None = sys.stderr) -> None:
        self.name = name
        self.total = total
        self.done_before = done_before
        self.computed = 0
        self.duplicates = 0
        self.stream = stream
        self._start = time.perf_counter()
        self._finished = False
        self._tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    def _print(self, text: str, *, final: bool = False) -> None:
        if self.stream is None:
            return
        if self._tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def header(self, executor: str) -> None:
        """Say what is about to run."""
        todo = self.total - self.done_before
        self._print(
            f"sweep {self.name}: {self.total} points, {self.done_before} already stored, {todo} to run on {executor}",
            final=True,
        )

    def begin(self) -> None:
        """Start the clock of the rate and the time left (after the one-off preparation)."""
        self._start = time.perf_counter()

    def update(self, result: PointResult, stored: bool) -> None:
        """Count one finished point (``stored`` False: it was already in the store, e.g. a retried duplicate)."""
        if stored:
            self.computed += 1
        else:
            self.duplicates += 1
        done = self.done_before + self.computed
        elapsed = time.perf_counter() - self._start
        rate = elapsed / self.computed if self.computed else 0.0
        left = rate * (self.total - done)
        self._print(
            f"sweep {self.name}: {done}/{self.total} points done | {rate:.1f} s/point | "
            f"{_duration(elapsed)} elapsed, ~{_duration(left)} left | last: {result.strategy} {result.mode} "
            f"t={result.t_seconds:g}s seed {result.seed}: {result.metric} {result.value:.4g}"
        )

    def finish(self) -> None:
        """End the live line."""
        if self._tty and self.stream is not None and (self.computed or self.duplicates) and not self._finished:
            self.stream.write("\n")
            self.stream.flush()
        self._finished = True
