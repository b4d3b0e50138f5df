"""Table I of the chip paper (docs/physics.md §12) and the workloads behind its rows, mapped by aimc's own compiler."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from aimc.compiler import compile as compile_network
from aimc.perf.workload import LayerWork, layer_work
from aimc.spec import ChipSpec


@dataclass(frozen=True)
class PublishedRow:
    """One row of Table I: 1 MAC = 2 ops; TOPS and TOPS/W count MVM ops only."""

    use_case: str
    cores: int
    utilization: float
    mode: str
    tops: float
    tops_per_w: float
    tops_per_mm2: float
    energy_uj: float
    latency_ns: float


TABLE1: tuple[PublishedRow, ...] = (
    PublishedRow("full-chip MVM", 64, 1.00, "one-phase", 63.1, 9.76, 1.55, 0.86, 133),
    PublishedRow("full-chip MVM", 64, 1.00, "four-phase", 16.1, 2.48, 0.40, 3.38, 520),
    PublishedRow("one input to a deep ResNet-9 layer", 8, 0.86, "one-phase", 6.79, 6.88, 1.34, 0.97, 1131),
    PublishedRow("one input to a deep ResNet-9 layer", 8, 0.86, "four-phase", 1.74, 1.74, 0.34, 1.51, 1518),
    PublishedRow("one time step of the captioning LSTM", 32, 0.97, "one-phase", 30.6, 9.34, 1.50, 3.46, 1043),
    PublishedRow("one time step of the captioning LSTM", 32, 0.97, "four-phase", 7.82, 2.37, 0.38, 5.24, 1430),
)


def includes_digital(row: PublishedRow) -> bool:
    """Table I's full-chip rows count the array, ADC and PWM only; the network rows include LDPUs, GDPUs, links."""
    return row.use_case != "full-chip MVM"


def workloads(spec: ChipSpec | None = None) -> dict[str, LayerWork]:
    """The work behind each use case, from aimc's own mappings: a 2048 x 2048 layer filling all 64 cores; ResNet-9's
    conv5 (a 2016 x 224 layer on 8 cores); the captioning LSTM's gate layer (1008 x 2016 on 32 cores)."""
    from aimc.models import caption_lstm, example_input, resnet9

    spec = spec or ChipSpec.hermes()
    full = compile_network(nn.Linear(2048, 2048, bias=False), spec, torch.randn(4, 2048), name="full-chip")
    r9 = compile_network(resnet9(), spec, example_input("resnet9", batch=4), name="resnet9")
    cap = compile_network(caption_lstm().eval(), spec, example_input("caption-lstm", batch=4), name="caption-lstm")
    return {
        "full-chip MVM": layer_work(next(iter(full.layers.values())), 1),
        "one input to a deep ResNet-9 layer": layer_work(r9.layers["conv5"], 1),
        "one time step of the captioning LSTM": layer_work(cap.layers["lstm"], 1),
    }


@dataclass(frozen=True)
class RowComparison:
    """Our figures for one Table I row beside the paper's."""

    published: PublishedRow
    ours: dict[str, float]

    def deviation(self, key: str) -> float:
        """Relative deviation of one column: ours / paper - 1."""
        return self.ours[key] / getattr(self.published, key) - 1.0


COLUMNS = ("tops", "tops_per_w", "tops_per_mm2", "energy_uj", "latency_ns")


def compare_table1(constants: object | None = None, spec: ChipSpec | None = None) -> list[RowComparison]:
    """All six rows of Table I from aimc's mappings and model, beside the published figures."""
    from aimc.perf.constants import PerfConstants
    from aimc.perf.model import row_figures

    spec = spec or ChipSpec.hermes()
    constants = constants or PerfConstants()
    work = workloads(spec)
    out = []
    for row in TABLE1:
        fig = row_figures(work[row.use_case], spec, row.mode, constants, digital=includes_digital(row))  # type: ignore[arg-type]
        out.append(RowComparison(row, fig.as_dict()))
    return out


def format_comparison(rows: list[RowComparison]) -> str:
    """Ours beside the paper's, with the deviation in percent."""
    head = f"{'use case':<38} {'mode':<10} {'cores':>5} {'util':>5} " + " ".join(
        f"{c:>22}" for c in ("TOPS", "TOPS/W", "TOPS/mm2", "energy uJ", "latency ns")
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for key in COLUMNS:
            cells.append(f"{r.ours[key]:>7.3g} ({getattr(r.published, key):>6.3g},{100 * r.deviation(key):+5.1f}%)")
        lines.append(
            f"{r.published.use_case:<38} {r.published.mode:<10} {r.ours['cores']:>5} "
            f"{100 * r.ours['utilization']:>4.0f}% " + " ".join(f"{c:>22}" for c in cells)
        )
    lines.append("each cell: ours (paper, deviation)")
    return "\n".join(lines)
