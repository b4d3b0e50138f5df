"""Shared helpers of the benchmark scripts: timing medians and the docs/benchmarks.md update."""

from __future__ import annotations

import datetime as dt
import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def median_time(fn: Callable[[], object], repeats: int = 15, warmup: int = 3) -> float:
    """Median wall time (s) of ``fn`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def machine() -> str:
    """One line describing the machine and software."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {torch.get_num_threads()} threads; torch {torch.__version__}; Python {platform.python_version()}"


def today() -> str:
    """UTC date."""
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def write_section(name: str, markdown: str) -> None:
    """Replace the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` in docs/benchmarks.md."""
    text = DOCS.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    DOCS.write_text(text)
