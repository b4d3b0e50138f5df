"""A live count of finished points on stderr: a ``tqdm`` bar on a terminal, one line per point otherwise."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from aimc._progress import is_terminal
from aimc._progress import progress as _progress
from aimc.sweep.store import PointResult


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _describe(result: PointResult) -> str:
    where = f"{result.strategy} {result.mode} t={result.t_seconds:g}s seed {result.seed}"
    return f"{where}: {result.metric} {result.value:.4g}"


class Progress:
    """Counts finished points and prints ``done/total``, the rate and the time left.

    On a terminal the count is a live ``tqdm`` bar (the last point's result after it); elsewhere (a log file, a
    pipe) each finished point prints one line.

    Args:
        name: the sweep's name.
        total: points of the sweep.
        done_before: points already stored when this run started.
        stream: where to print (default stderr); None prints nothing.
        describe: the text of a finished point after "last:" (default: strategy, mode, time, seed and metric).
        kind: the word before the name in each line (``"sweep"``; ``aimc dse`` passes ``"dse"``).
    """

    def __init__(
        self,
        name: str,
        total: int,
        done_before: int,
        stream: TextIO | None = sys.stderr,
        describe: Callable[[PointResult], str] | None = None,
        *,
        kind: str = "sweep",
    ) -> None:
        self.name = name
        self.kind = kind
        self.describe = describe or _describe
        self.total = total
        self.done_before = done_before
        self.computed = 0
        self.duplicates = 0
        self.stream = stream
        self._start = time.perf_counter()
        self._finished = False
        self._tty = stream is not None and is_terminal(stream)
        self._bar: Any = None  # the terminal's bar, from begin() on

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
            f"{self.kind} {self.name}: {self.total} points, {self.done_before} already stored, {todo} to run on "
            f"{executor}",
            final=True,
        )

    def begin(self) -> None:
        """Start the clock of the rate and the time left (after the one-off preparation)."""
        self._start = time.perf_counter()
        if self._tty and self._bar is None and not self._finished:
            self._bar = _progress(
                total=self.total,
                desc=f"{self.kind} {self.name}",
                unit="points",
                stream=self.stream,
                initial=self.done_before + self.computed,
            )

    def update(self, result: PointResult, stored: bool) -> None:
        """Count one finished point (``stored`` False: it was already in the store, e.g. a retried duplicate)."""
        if self._tty and self._bar is None and not self._finished:
            self.begin()
        if stored:
            self.computed += 1
        else:
            self.duplicates += 1
        last = self.describe(result)
        if self._bar is not None and not self._finished:
            self._bar.set_postfix_str(
                f"last: {last}" + (f" ({self.duplicates} already stored)" if self.duplicates else ""), refresh=False
            )
            self._bar.update(1 if stored else 0)
            return
        done = self.done_before + self.computed
        elapsed = time.perf_counter() - self._start
        rate = elapsed / self.computed if self.computed else 0.0
        left = rate * (self.total - done)
        self._print(
            f"{self.kind} {self.name}: {done}/{self.total} points done | {rate:.1f} s/point | "
            f"{_duration(elapsed)} elapsed, ~{_duration(left)} left | last: {last}"
        )

    def finish(self) -> None:
        """End the live bar (it stays on screen with the final count)."""
        if self._bar is not None and not self._finished:
            self._bar.close()
        self._finished = True
