"""Figures and tables of chip-accuracy results (``aimc eval --plot``, ``aimc reproduce``)."""

from __future__ import annotations

from typing import Any

#: The chip paper's numbers (docs/physics.md §11): software, quantisation-only simulation, chip TDP and ODP (four-phase,
#: 1 h).
PAPER = {
    "resnet9": {"software": 0.9367, "quantisation": 0.9343, "tdp": 0.9281, "odp": 0.9223},
    "char-lstm": {"software": 1.336, "quantisation": 1.358, "tdp": 1.433, "odp": 1.456},
}
TIME_LABELS = {60.0: "1 min", 3600.0: "1 h", 86400.0: "1 day", 2_592_000.0: "30 days", 31_536_000.0: "1 year"}


def time_label(t: float) -> str:
    """``3600.0`` -> ``"1 h"``; other times in seconds."""
    return TIME_LABELS.get(float(t), f"{t:g} s")


def fmt(value: float, metric: str) -> str:
    """Accuracy in % with 2 decimals, BPC with 3."""
    return f"{100 * value:.2f}%" if metric == "accuracy" else f"{value:.3f}"


def fmt_point(point: dict[str, Any], metric: str) -> str:
    """``mean ± std`` of a point."""
    if metric == "accuracy":
        return f"{100 * point['mean']:.2f} ± {100 * point['std']:.2f}%"
    return f"{point['mean']:.3f} ± {point['std']:.3f}"


def plot_over_time(result: dict[str, Any], path: str) -> None:
    """Metric vs time after programming, one line (mean ± std over seeds) per run of an ``aimc eval`` result."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = result["metric"]
    scale = 100.0 if metric == "accuracy" else 1.0
    fig, ax = plt.subplots(figsize=(6, 4))
    for run in result["runs"]:
        pts = run["points"]
        ts = [p["t_seconds"] for p in pts]
        label = f"{run['strategy'].upper()} {run['mode']}" + (" + AdaBS" if run.get("adabs") else " (GDC)")
        ax.errorbar(
            ts,
            [scale * p["mean"] for p in pts],
            yerr=[scale * p["std"] for p in pts],
            marker="o",
            capsize=3,
            label=label,
        )
    ax.axhline(scale * result["software"], color="k", ls="--", lw=1, label="software")
    ax.set_xscale("log")
    ax.set_xlabel("time after programming (s)")
    ax.set_ylabel("test accuracy (%)" if metric == "accuracy" else "bits per character")
    ax.set_title(f"{result['task']} on the simulated chip ({result['test_size']} test {_unit(result['task'])})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _unit(task: str) -> str:
    return "images" if task == "resnet9" else "characters"
