"""Figures of the performance model: per-layer latency and energy breakdown."""

from __future__ import annotations

from collections.abc import Sequence

from aimc.perf.model import PerfReport


def plot_breakdown(reports: Sequence[PerfReport], path: str) -> None:
    """Save a PNG: per layer, the busy time and the energy by component, one column per report (read mode)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(reports), figsize=(6.5 * len(reports), 7.5), squeeze=False)
    components = ["mvm", "ldpu", "gdpu", "links", "transport", "inter-chip"]
    for col, rep in enumerate(reports):
        names = [lp.name for lp in rep.layers]
        ax = axes[0][col]
        ax.bar(names, [lp.busy_ns * 1e-3 for lp in rep.layers], color="tab:blue")
        ax.set_ylabel("busy time per inference (µs)")
        ax.set_title(f"{rep.model}, {rep.mode}: bottleneck {rep.bottleneck}, {rep.throughput_per_s:,.0f}/s")
        ax.tick_params(axis="x", rotation=45)
        ax = axes[1][col]
        bottom = [0.0] * len(names)
        for comp in components:
            vals = [lp.energy_uj.get(comp, 0.0) for lp in rep.layers]
            if any(vals):
                ax.bar(names, vals, bottom=bottom, label=comp)
                bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
        ax.set_ylabel("energy per inference (µJ)")
        ax.set_title(f"total {rep.energy_per_inference_uj:.1f} µJ (static {rep.energy_uj['static']:.1f} µJ)")
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
