"""Latency, throughput and energy of a mapped network, calibrated to Table I of the chip paper (docs/physics.md §12).

- :func:`estimate` — per-layer and total figures of one inference, pipelined throughput and bottleneck.
- :func:`compare_table1` — the six rows of Table I from aimc's mappings, ours beside the paper's.
- :func:`fit_table1` — the least-squares fit behind :mod:`aimc.perf.constants`.
"""

from aimc.perf.constants import PerfConstants
from aimc.perf.fit import fit_table1, leave_lstm_out
from aimc.perf.model import PerfReport, RowFigures, estimate, mvm_time_ns, row_figures
from aimc.perf.table1 import TABLE1, compare_table1, format_comparison

__all__ = [
    "TABLE1",
    "PerfConstants",
    "PerfReport",
    "RowFigures",
    "compare_table1",
    "estimate",
    "fit_table1",
    "format_comparison",
    "leave_lstm_out",
    "mvm_time_ns",
    "row_figures",
]
