"""Progress of long steps on stderr: a live ``tqdm`` bar on a terminal, plain lines in a log, nothing when disabled.

Every long loop of aimc (chip reads of an evaluation, blocks of ``aimc reproduce``, training batches, the MVM
characterisation) reports through :func:`progress`::

    with progress(total=len(seeds) * len(times), desc="eval resnet9 tdp", unit="chip reads") as bar:
        for ...:
            ...
            bar.update()

On a terminal this is a ``tqdm`` bar with the count, the rate and the time left. Where stderr is not a terminal (a
log file, a pipe, a batch job) it prints one plain line per finished step and a final line instead of rewriting a
line with carriage returns, e.g. ``eval resnet9 tdp: 3/10 chip reads, 12 s elapsed, ETA 28 s``.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

from tqdm import tqdm

__all__ = ["LineProgress", "duration", "is_terminal", "paused_bars", "progress"]


def duration(seconds: float) -> str:
    """A short human-readable duration: ``12 s``, ``3 min 05 s``, ``2 h 07 min``."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is an interactive terminal (its ``isatty()`` says so; False if it cannot tell)."""
    try:
        return bool(stream.isatty())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # no isatty, or a closed stream
        return False


#: Width and height taken for a terminal that does not say how large it is.
DEFAULT_COLUMNS = 100
DEFAULT_ROWS = 20


def _terminal_size(stream: object) -> os.terminal_size | None:
    """Size of the terminal behind ``stream``, or None where it cannot tell (not a real file, no terminal)."""
    try:
        return os.get_terminal_size(stream.fileno())  # type: ignore[attr-defined]
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None


def _count(n: float) -> str:
    return f"{n:g}" if isinstance(n, float) else str(n)


class LineProgress:
    """The progress of a loop as plain lines: one per finished step (or every ``every`` steps) and a final one.

    Used where the output is not a terminal; with ``stream=None`` it prints nothing at all. It has the part of
    ``tqdm``'s interface that aimc uses: iteration, ``update``, ``set_postfix_str``, ``set_description``,
    ``close`` and use as a context manager.

    Args:
        iterable: items to pass through (each finished item counts as one step), or None to count with
            :meth:`update`.
        total: number of steps (default ``len(iterable)`` where it has one); None: no ETA.
        desc: what is being done, the start of every line.
        unit: what a step is, after the count (``"chip reads"``, ``"batches"``).
        stream: where to write; None prints nothing.
        initial: steps already done before this loop started (they do not count for the rate).
        every: print a line only when the count reaches a multiple of ``every`` (and at the last step).
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: float | None = None,
        desc: str,
        unit: str = "it",
        stream: TextIO | None = None,
        initial: float = 0,
        every: int = 1,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.stream = stream
        self.initial = initial
        self.n = initial
        self.every = max(1, int(every))
        self.postfix = ""
        self.closed = False
        self._start = time.perf_counter()

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress counts with update(); it was given no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _line(self, text: str) -> None:
        if self.stream is None:
            return
        self.stream.write(text + "\n")
        self.stream.flush()

    def _status(self) -> str:
        elapsed = time.perf_counter() - self._start
        count = f"{_count(self.n)}/{_count(self.total)}" if self.total is not None else _count(self.n)
        text = f"{self.desc}: {count} {self.unit}, {duration(elapsed)} elapsed"
        done_now = self.n - self.initial
        if self.total is not None and done_now > 0 and self.n < self.total:
            text += f", ETA {duration(elapsed / done_now * (self.total - self.n))}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def update(self, n: float = 1) -> None:
        """Count ``n`` more finished steps and print the status line (see ``every``)."""
        before = self.n
        self.n += n
        at_end = self.total is not None and self.n >= self.total
        if n and (at_end or int(self.n // self.every) > int(before // self.every)):
            self._line(self._status())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        """Text added to the end of the following lines (e.g. the current loss)."""
        del refresh  # lines are printed by update() only
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Change the start of the following lines."""
        del refresh
        self.desc = desc or ""

    def close(self) -> None:
        """Print the final line (once): how many steps finished and how long they took."""
        if self.closed:
            return
        self.closed = True
        elapsed = duration(time.perf_counter() - self._start)
        if self.total is None or self.n >= self.total:
            self._line(f"{self.desc}: done, {_count(self.n)} {self.unit} in {elapsed}")
        else:
            self._line(f"{self.desc}: stopped at {_count(self.n)}/{_count(self.total)} {self.unit} after {elapsed}")


def progress(
    iterable: Iterable[Any] | None = None,
    *,
    total: float | None = None,
    desc: str,
    unit: str = "it",
    enabled: bool = True,
    stream: TextIO | None = None,
    initial: float = 0,
    every: int = 1,
) -> tqdm | LineProgress:
    """The progress of a long loop, shown as fits where it goes.

    Use it as ``tqdm``: iterate over it, or call ``update(n)`` after each finished step (best inside a ``with``
    block, which closes it); ``set_postfix_str`` adds a short status such as the current loss.

    Args:
        iterable: items to pass through, or None to count with ``update``.
        total: number of steps (default ``len(iterable)``); None shows the count without an ETA.
        desc: what is being done (``"eval resnet9 tdp four-phase"``).
        unit: what a step is (``"chip reads"``, ``"batches"``).
        enabled: False prints nothing at all.
        stream: where to print (default: stderr at the time of the call).
        initial: steps already done before (e.g. of a resumed run); they do not count for the rate.
        every: where the output is not a terminal, print a line every this many steps (and at the last step)
            instead of after each step; a terminal's bar is always live.

    Returns:
        A ``tqdm`` bar with the count, rate and ETA if ``stream`` is a terminal, else a :class:`LineProgress`
        (plain lines; silent when not ``enabled``).
    """
    stream = sys.stderr if stream is None else stream
    if enabled and is_terminal(stream):
        # a terminal that reports no size (0 x 0, e.g. a pseudo-terminal of a job runner) would get no bar at all
        size = _terminal_size(stream)
        sized = size is None or (size.columns > 0 and size.lines > 0)
        # leave=None: a bar keeps its last state on screen, except one nested under another (e.g. the chip reads of
        # one block of `aimc reproduce`), which is cleared when done
        return tqdm(
            iterable,
            total=total,
            desc=desc,
            unit=unit,
            file=stream,
            initial=initial,
            leave=None,
            dynamic_ncols=sized,
            ncols=None if sized else DEFAULT_COLUMNS,
            nrows=None if sized else DEFAULT_ROWS,
        )
    return LineProgress(
        iterable, total=total, desc=desc, unit=unit, stream=stream if enabled else None, initial=initial, every=every
    )


def paused_bars() -> contextlib.AbstractContextManager[None]:
    """A context in which to print other text (a log line) while bars are shown: the live bars on stdout and
    stderr are cleared first and drawn again below the text. Does nothing where no bar is shown."""
    return tqdm.external_write_mode()
