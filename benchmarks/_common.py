"""Shared helpers of the benchmark scripts: timing medians, the machine's description and docs/benchmarks.md.

Every benchmark records one row per machine in a table of docs/benchmarks.md: a re-run on the same machine (CPU
model, thread count, forced kernels) replaces its row, other machines' rows stay, so the table shows the spread
across CPUs.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import re
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from aimc import kernels

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"

#: CPU feature flags worth printing beside a figure (they say what the CPU has; the kernels are chosen by timing).
FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8", "asimd", "sve")


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


def cpu_features() -> str:
    """The flags of :data:`FEATURES` the CPU reports (Linux), space-separated."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    flags = set()
    for line in text.splitlines():
        if line.lower().startswith(("flags", "features")):
            flags.update(line.split(":", 1)[1].split())
    return " ".join(f for f in FEATURES if f in flags)


def machine() -> str:
    """One line describing the machine and software."""
    return (
        f"{kernels.cpu_model()} ({platform.machine()}; {cpu_features() or 'no listed features'}); "
        f"{torch.get_num_threads()} threads; torch {torch.__version__}; numba {kernels.numba_version()}; "
        f"Python {platform.python_version()}"
    )


def kernels_used() -> str:
    """The kernels that ran in this process, and any forced by ``AIMC_KERNELS``."""
    used = ", ".join(f"{op}={k}" for op, k in kernels.used().items()) or "none"
    forced = os.environ.get(kernels.FORCE_ENV)
    return used + (f" (forced: {forced})" if forced else "")


def today() -> str:
    """UTC date."""
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def write_section(name: str, markdown: str, doc: Path = DOCS) -> None:
    """Replace the block between ``<!-- name:start -->`` and ``<!-- name:end -->`` in ``doc`` (docs/benchmarks.md),
    or append it."""
    text = doc.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def machine_label() -> str:
    """The first cell of a machine's row: CPU model, threads, and the kernels forced, if any."""
    forced = os.environ.get(kernels.FORCE_ENV)
    label = f"{kernels.cpu_model()}, {torch.get_num_threads()} threads"
    return label + (f", forced {forced}" if forced else "")


def write_row(name: str, header: Sequence[str], cells: Sequence[str]) -> None:
    """Put this machine's row ``cells`` (its first cell :func:`machine_label`) into the table of the block
    ``name`` of docs/benchmarks.md, replacing the row of the same machine and keeping the others."""
    text = DOCS.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    rows: list[str] = []
    match = re.search(re.escape(start) + r"(.*?)" + re.escape(end), text, flags=re.S)
    if match:
        rows = [line for line in match.group(1).strip().splitlines()[2:] if line.startswith("|")]
    row = "| " + " | ".join(cells) + " |"
    rows = [r for r in rows if r.split("|")[1].strip() != cells[0].strip()] + [row]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *rows]
    write_section(name, "\n".join(table))
