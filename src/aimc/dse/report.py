"""The report of a design-space run: per design, its performance and its accuracy loss at one time after
programming; the Pareto fronts of energy per inference and of latency against that loss, the paper's chip marked.

Reads the store only (never weights or data), so it can be made anywhere and while the run goes on. Writes into the
output folder ``dse_report.md``, optionally ``dse_report.html``, ``dse.json`` (every design with its numbers and
front membership), ``points.csv`` and ``figures/<network>_pareto.png``.

Accuracy loss: the software network's metric minus the chip's (top-1 accuracy, in percentage points), or the chip's
minus the software's (bits per character), mean over programmed chips x read draws at the chosen time; ± is their
sample standard deviation. The Pareto front minimises both (energy or latency, loss).
"""

from __future__ import annotations

import html
import json
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimc.dse.pareto import dominates, pareto_front
from aimc.dse.space import Design
from aimc.errors import ValidationError
from aimc.sweep.report import _atomic_write, _write_csv, time_label
from aimc.sweep.store import ResultStore

#: The report's performance columns: key, header, format.
PERF_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("cores_used", "cores", "d"),
    ("chips", "chips", "d"),
    ("utilization", "util", ".0%"),
    ("mvm_time_ns", "MVM ns", ".0f"),
    ("latency_us", "latency µs", ".2f"),
    ("throughput_per_s", "inf/s", ",.0f"),
    ("energy_uj", "energy µJ", ".3f"),
    ("tops_per_w", "TOPS/W", ".3f"),
    ("area_mm2", "area mm²", ".1f"),
)


@dataclass
class DesignRow:
    """One design at the report's time: its performance, metric statistics, loss and front membership."""

    key: str
    design: Design
    perf: dict[str, Any]
    metric: str
    mean: float
    std: float
    n: int
    seeds: int
    loss: float
    energy_front: bool = False
    latency_front: bool = False
    reference: bool = False
    dominates_reference: bool = False

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "key": self.key,
            "label": self.design.label(),
            "design": self.design.as_dict(),
            "paper_chip": self.design.is_paper_chip,
            "perf": self.perf,
            "metric": self.metric,
            "mean": self.mean,
            "std": self.std,
            "n": self.n,
            "seeds": self.seeds,
            "loss": self.loss,
            "energy_front": self.energy_front,
            "latency_front": self.latency_front,
            "reference": self.reference,
            "dominates_reference": self.dominates_reference,
        }


def _loss(metric: str, software: float, value: float) -> float:
    """Loss in display units: accuracy points (x100) or BPC."""
    return 100.0 * (software - value) if metric == "accuracy" else value - software


def reference_design(designs: Sequence[Design]) -> Design | None:
    """The paper's chip among ``designs``: HERMES chip parameters in four-phase mode with TDP and the default
    device (the chip paper's setting), else the first design with the HERMES chip parameters, else None."""
    chip = [d for d in designs if d.is_paper_chip]
    for d in chip:
        if d.mode == "four-phase" and d.strategy == "tdp" and d.device == "hermes-2dev":
            return d
    return chip[0] if chip else None


def summarize(store: ResultStore, t_seconds: float | None = None) -> tuple[float, dict[str, list[DesignRow]]]:
    """The report's rows per network at ``t_seconds`` (default: the space's report time, else its last time).

    Returns:
        ``(t, {network: rows})``, rows in the space's design order, each with its front membership set.
    """
    spec = store.get_meta("spec") or {}
    software = store.get_meta("software") or {}
    perf_meta = store.get_meta("perf") or {}
    designs = {k: Design(**v) for k, v in (store.get_meta("designs") or {}).items()}
    results = store.results()
    if t_seconds is None:
        t_seconds = (spec.get("report") or {}).get("time")
    if t_seconds is None:
        times = (spec.get("grid") or {}).get("times") or sorted({r.t_seconds for r in results})
        if not times:
            raise ValidationError(f"{str(store.folder)!r} holds no point yet")
        t_seconds = float(times[-1])
    by_design: dict[str, list[Any]] = {}
    for r in results:
        if r.t_seconds == float(t_seconds):
            key = r.details["design_key"]
            by_design.setdefault(key, []).append(r)
            designs.setdefault(key, Design(**r.details["design"]))
            perf_meta.setdefault(key, r.details["perf"])
    out: dict[str, list[DesignRow]] = {}
    for key, design in designs.items():
        rs = by_design.get(key)
        if not rs or design.network not in software:
            continue
        values = [r.value for r in rs]
        sw = software[design.network]["value"]
        losses = [_loss(rs[0].metric, sw, v) for v in values]
        row = DesignRow(
            key=key,
            design=design,
            perf=perf_meta[key],
            metric=rs[0].metric,
            mean=statistics.fmean(values),
            std=statistics.stdev(losses) if len(losses) > 1 else 0.0,
            n=len(values),
            seeds=len({r.seed for r in rs}),
            loss=statistics.fmean(losses),
        )
        out.setdefault(design.network, []).append(row)
    for rows in out.values():
        energy = pareto_front([(r.perf["energy_uj"], r.loss) for r in rows])
        latency = pareto_front([(r.perf["latency_us"], r.loss) for r in rows])
        for i in energy:
            rows[i].energy_front = True
        for i in latency:
            rows[i].latency_front = True
        ref = reference_design([r.design for r in rows])
        if ref is not None:
            ref_row = next(r for r in rows if r.design == ref)
            ref_row.reference = True
            point = (ref_row.perf["energy_uj"], ref_row.loss)
            for r in rows:
                r.dominates_reference = dominates((r.perf["energy_uj"], r.loss), point)
    return float(t_seconds), out


def _unit(metric: str) -> str:
    return "points" if metric == "accuracy" else "BPC"


def _digits(metric: str) -> str:
    """Number format of a loss: 2 decimals of a point, 3 of a bit per character."""
    return ".2f" if metric == "accuracy" else ".3f"


def answers(rows: Sequence[DesignRow], max_loss: float) -> list[str]:
    """Plain-text answers for one network: the reference, the designs that dominate it, the best TOPS/W within
    the loss budget."""
    out = []
    if not rows:
        return out
    unit, f = _unit(rows[0].metric), _digits(rows[0].metric)
    ref = next((r for r in rows if r.reference), None)
    if ref is not None:
        out.append(
            f"Paper's chip ({ref.design.label()}): {ref.perf['energy_uj']:.3f} µJ, {ref.perf['latency_us']:.2f} µs, "
            f"{ref.perf['tops_per_w']:.3f} TOPS/W, loss {ref.loss:{f}} ± {ref.std:{f}} {unit}."
        )
        better = [r for r in rows if r.dominates_reference]
        if better:
            better.sort(key=lambda r: r.perf["energy_uj"])
            out.append(
                f"{len(better)} design(s) dominate it in energy and loss: "
                + "; ".join(f"{r.design.label()} ({r.perf['energy_uj']:.3f} µJ, loss {r.loss:{f}})" for r in better)
                + "."
            )
        else:
            out.append("No design of the space dominates it in energy and loss.")
    ok = [r for r in rows if r.loss <= max_loss]
    if ok:
        best = max(ok, key=lambda r: r.perf["tops_per_w"])
        out.append(
            f"Best TOPS/W at a loss <= {max_loss:g} {unit}: {best.design.label()}, {best.perf['tops_per_w']:.3f} "
            f"TOPS/W ({best.perf['energy_uj']:.3f} µJ, loss {best.loss:{f}} ± {best.std:{f}})."
        )
    else:
        out.append(f"No design keeps the loss <= {max_loss:g} {unit}.")
    return out


def _table(rows: Sequence[DesignRow]) -> tuple[list[str], list[list[str]]]:
    unit = _unit(rows[0].metric) if rows else ""
    header = ["design", *(h for _, h, _ in PERF_COLUMNS), rows[0].metric if rows else "metric", f"loss ({unit})"]
    header += ["front E", "front L"]
    scale = 100.0 if rows and rows[0].metric == "accuracy" else 1.0
    body = []
    for r in sorted(rows, key=lambda r: r.perf["energy_uj"]):
        name = r.design.label() + (" ★ paper" if r.reference else "")
        cells = [name, *(format(r.perf[k], f) for k, _, f in PERF_COLUMNS)]
        f = _digits(r.metric)
        cells += [f"{scale * r.mean:{f}}", f"{r.loss:{f}} ± {r.std:{f}} (n={r.n})"]
        cells += ["●" if r.energy_front else "", "●" if r.latency_front else ""]
        body.append(cells)
    return header, body


def plot_front(rows: Sequence[DesignRow], path: Path, title: str) -> None:
    """Energy per inference and latency against accuracy loss: front designs in colour and joined, dominated ones
    grey, the paper's chip a star."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    unit = _unit(rows[0].metric)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    for ax, key, flag, label in (
        (axes[0], "energy_uj", "energy_front", "energy per inference (µJ)"),
        (axes[1], "latency_us", "latency_front", "latency per inference (µs)"),
    ):
        front = sorted((r for r in rows if getattr(r, flag)), key=lambda r: r.perf[key])
        rest = [r for r in rows if not getattr(r, flag)]
        ax.errorbar(
            [r.perf[key] for r in rest],
            [r.loss for r in rest],
            yerr=[r.std for r in rest],
            fmt="o",
            color="0.7",
            ms=5,
            capsize=2,
            label="dominated",
        )
        ax.errorbar(
            [r.perf[key] for r in front],
            [r.loss for r in front],
            yerr=[r.std for r in front],
            fmt="o-",
            color="tab:blue",
            ms=6,
            capsize=2,
            label="Pareto front",
        )
        for r in front:
            ax.annotate(r.design.label(), (r.perf[key], r.loss), textcoords="offset points", xytext=(4, 4), fontsize=6)
        for r in rows:
            if r.reference:
                ax.plot(r.perf[key], r.loss, "*", color="tab:red", ms=16, label="paper's chip", zorder=5)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _p: f"{v:,.0f}" if v >= 10 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda _v, _p: ""))
        ax.set_xlabel(label)
        ax.set_ylabel(f"loss vs software ({unit})")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    folder: str | Path,
    *,
    t_seconds: float | None = None,
    max_loss: float | None = None,
    html_report: bool = False,
    figures: bool = True,
) -> list[Path]:
    """Write the report of a design-space output folder; returns the files written.

    Args:
        folder: the output folder (holding ``results.sqlite`` of an ``aimc dse`` run).
        t_seconds: the time of the fronts (default: the space's ``report.time``, else its last time).
        max_loss: the loss budget of the "best TOPS/W" answer (default: the space's ``report.max_loss``).
        html_report: also write ``dse_report.html``.
        figures: draw ``figures/<network>_pareto.png``.
    """
    folder = Path(folder)
    with ResultStore(folder, None, create=False) as store:
        if store.get_meta("kind") != "dse":
            raise ValidationError(f"{str(folder)!r} holds no design-space results (run `aimc dse` there)")
        spec = store.get_meta("spec") or {}
        software = store.get_meta("software") or {}
        total = store.get_meta("total")
        t, per_net = summarize(store, t_seconds)
        results = store.results()
    budget = float(max_loss if max_loss is not None else (spec.get("report") or {}).get("max_loss", 1.0))
    written: list[Path] = []
    title = f"Design-space report: {spec.get('name', folder.name)}"
    versions = sorted({(r.provenance.get("aimc", "?"), r.provenance.get("torch", "?")) for r in results})
    facts = [
        ("time after programming", time_label(t)),
        ("points", f"{len(results)} stored" + (f" of {total}" if total is not None else "")),
        ("seeds", ", ".join(map(str, sorted({r.seed for r in results})))),
        ("transport", str(spec.get("transport", "host"))),
        ("versions", "; ".join(f"aimc {a}, torch {v}" for a, v in versions)),
    ]
    for net, sw in software.items():
        scale = 100.0 if sw["metric"] == "accuracy" else 1.0
        facts.append((f"{net} software", f"{sw['metric']} {scale * sw['value']:{_digits(sw['metric'])}}"))
    md = [f"# {title}", ""]
    if spec.get("description"):
        md += [str(spec["description"]), ""]
    md += [f"- **{k}**: {v}" for k, v in facts]
    sections: list[tuple[str, list[str], list[str], list[list[str]], str | None]] = []
    for net, rows in per_net.items():
        header, body = _table(rows)
        text = answers(rows, budget)
        fig = None
        if figures and rows:
            path = folder / "figures" / f"{net}_pareto.png"
            plot_front(rows, path, f"{net}, {time_label(t)} after programming")
            written.append(path)
            fig = f"figures/{path.name}"
        sections.append((net, text, header, body, fig))
        md += ["", f"## {net}", ""]
        md += [f"- {a}" for a in text]
        md += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(c) + " |" for c in body]
        if fig:
            md += ["", f"![{net}: energy and latency against loss]({fig})"]
    if not per_net:
        md += ["", "No point is stored yet."]
    md += [
        "",
        "Front E / L: on the Pareto front of energy / latency against loss. ★: the paper's chip. Area: proxy of the "
        "analog cores (aimc.dse.runner.area_mm2). Every point: `points.csv`; every design: `dse.json`.",
    ]
    md_path = folder / "dse_report.md"
    _atomic_write(md_path, "\n".join(md) + "\n")
    written.insert(0, md_path)
    payload = {
        "name": spec.get("name"),
        "t_seconds": t,
        "max_loss": budget,
        "software": software,
        "networks": {net: [r.as_dict() for r in rows] for net, rows in per_net.items()},
        "answers": {net: answers(rows, budget) for net, rows in per_net.items()},
    }
    json_path = folder / "dse.json"
    _atomic_write(json_path, json.dumps(payload, indent=2) + "\n")
    written.append(json_path)
    csv_path = folder / "points.csv"
    _write_csv(results, csv_path)
    written.append(csv_path)
    if html_report:
        html_path = folder / "dse_report.html"
        _atomic_write(html_path, _html(title, facts, sections))
        written.insert(1, html_path)
    return written


def _html(
    title: str,
    facts: Sequence[tuple[str, str]],
    sections: Sequence[tuple[str, list[str], list[str], list[list[str]], str | None]],
) -> str:
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:90em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}th{background:#eee}"
        "td:first-child{text-align:left}tr.dominated{color:#999}tr.ref{font-weight:bold}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
        "<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in facts) + "</ul>",
    ]
    for net, text, header, body, fig in sections:
        parts.append(f"<h2>{e(net)}</h2>")
        parts.append("<ul>" + "".join(f"<li>{e(a)}</li>" for a in text) + "</ul>")
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        for cells in body:
            front = cells[-2] or cells[-1]
            cls = "ref" if "★" in cells[0] else ("" if front else "dominated")
            parts.append(f'<tr class="{cls}">' + "".join(f"<td>{e(c)}</td>" for c in cells) + "</tr>")
        parts.append("</table>")
        if fig:
            parts.append(f'<p><img src="{e(fig)}" alt="{e(net)} Pareto fronts"></p>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def is_dse_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds the store of an ``aimc dse`` run."""
    try:
        with ResultStore(folder, None, create=False) as store:
            return store.get_meta("kind") == "dse"
    except Exception:  # no store, or not one: not a design-space folder
        return False


__all__ = ["DesignRow", "answers", "is_dse_folder", "plot_front", "reference_design", "summarize", "write_report"]
