"""``aimc report OUTDIR``: tables (mean ± std per point) and figures (metric vs time per mode/strategy) of a sweep.

Reads the store only (never the weights or the data), so a report can be made on any machine that has the output
folder, and while the sweep is still running (SQLite WAL readers do not block the writer). Writes into OUTDIR:
``report.md``, optionally ``report.html``, ``points.csv`` (every stored point, for analysis elsewhere) and
``figures/<metric>_vs_time.png``.

Statistics: over all points that differ only in seed and read (chips x reads), the mean and the sample standard
deviation (n - 1 in the denominator; shown as ± 0 when n = 1).
"""

from __future__ import annotations

import csv
import html
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimc.sweep.store import PointResult, ResultStore

#: Group fields: points with equal values of these are one curve of the figure / one column of the table.
CURVE_FIELDS = ("strategy", "device", "mode", "drift_compensation")
_TIME_NAMES = ((365 * 86400.0, "y"), (86400.0, "d"), (3600.0, "h"), (60.0, "min"))


@dataclass(frozen=True)
class Cell:
    """Statistics of one (curve, time): values over seeds x reads."""

    mean: float
    std: float
    n: int
    seeds: int


def time_label(t: float) -> str:
    """``3600.0`` -> ``"1 h"``; a time that is no whole multiple of a unit stays in seconds."""
    for size, unit in _TIME_NAMES:
        if t >= size and (t / size) == round(t / size, 3):
            return f"{t / size:g} {unit}"
    return f"{t:g} s"


def _cell(values: Sequence[float], seeds: int) -> Cell:
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return Cell(mean, std, len(values), seeds)


def summarize(results: Sequence[PointResult]) -> dict[tuple[Any, ...], dict[float, Cell]]:
    """Results grouped by curve (:data:`CURVE_FIELDS`) and time: ``{curve: {t: Cell}}``, curves and times sorted."""
    groups: dict[tuple[Any, ...], dict[float, list[PointResult]]] = {}
    for r in results:
        curve = tuple(getattr(r, f) for f in CURVE_FIELDS)
        groups.setdefault(curve, {}).setdefault(r.t_seconds, []).append(r)
    return {
        curve: {t: _cell([r.value for r in rs], len({r.seed for r in rs})) for t, rs in sorted(groups[curve].items())}
        for curve in sorted(groups, key=lambda c: tuple(str(v) for v in c))
    }


def _varying(curves: Sequence[tuple[Any, ...]]) -> list[int]:
    """Indices of the curve fields that differ between curves (all of them if only one curve)."""
    idx = [i for i in range(len(CURVE_FIELDS)) if len({c[i] for c in curves}) > 1]
    return idx or [0, 2]


def curve_label(curve: tuple[Any, ...], fields: Sequence[int]) -> str:
    """A short label of a curve from its varying fields."""
    parts = []
    for i in fields:
        name, v = CURVE_FIELDS[i], curve[i]
        if name == "drift_compensation":
            parts.append("GDC on" if v else "GDC off")
        else:
            parts.append(str(v).upper() if name == "strategy" else str(v))
    return " / ".join(parts)


def _fmt(cell: Cell | None, scale: float) -> str:
    if cell is None:
        return "—"
    return f"{scale * cell.mean:.2f} ± {scale * cell.std:.2f} (n={cell.n})"


def plot(summary: dict[tuple[Any, ...], dict[float, Cell]], info: dict[str, Any], reference: Any, path: Path) -> None:
    """Metric vs time after programming, one line per curve, error bars = std over chips x reads."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scale = float(info.get("display_scale", 1.0))
    fields = _varying(list(summary))
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    all_t = sorted({t for cells in summary.values() for t in cells})
    for curve, cells in summary.items():
        ts = list(cells)
        ax.errorbar(
            ts,
            [scale * c.mean for c in cells.values()],
            yerr=[scale * c.std for c in cells.values()],
            marker="o",
            capsize=3,
            label=curve_label(curve, fields),
        )
    if isinstance(reference, dict) and info.get("metric") in reference:
        ax.axhline(scale * reference[info["metric"]], color="k", ls="--", lw=1, label="software")
    if all(t > 0 for t in all_t):
        ax.set_xscale("log")
    else:
        positive = [t for t in all_t if t > 0]
        ax.set_xscale("symlog", linthresh=min(positive) if positive else 1.0)
    ax.set_xticks(all_t)
    ax.set_xticklabels([time_label(t) for t in all_t], rotation=30, ha="right")
    ax.minorticks_off()
    ax.set_xlabel("time after programming")
    ax.set_ylabel(info.get("metric_label", info.get("metric", "metric")))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_csv(results: Sequence[PointResult], path: Path) -> None:
    cols = [
        "key",
        "seed",
        "device",
        "strategy",
        "t_seconds",
        "mode",
        "drift_compensation",
        "read",
        "metric",
        "value",
        "read_seed",
        "program_s",
        "run_s",
        "cpu_s",
        "chip_reused",
        "worker",
        "aimc",
        "torch",
        "code",
        "finished_utc",
    ]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in results:
            w.writerow(
                [getattr(r, c) for c in cols[: cols.index("aimc")]]
                + [r.provenance.get(k, "") for k in ("aimc", "torch", "code")]
                + [r.finished_utc]
            )
    tmp.replace(path)


def _facts(store: ResultStore, results: Sequence[PointResult]) -> list[tuple[str, str]]:
    spec = store.get_meta("spec") or {}
    info = store.get_meta("task") or {}
    context = store.get_meta("context") or {}
    reference = store.get_meta("reference")
    total = store.get_meta("total")
    scale = float(info.get("display_scale", 1.0))
    facts = [
        ("network", f"{info.get('network', '?')} ({info.get('metric_label', info.get('metric', '?'))})"),
        ("weights", f"{spec.get('weights', '?')} (sha256 {str(context.get('weights_sha256', '?'))[:12]}…)"),
        (
            "data",
            f"{context.get('samples') or 'all'} test samples, {context.get('calibration_samples')} calibration "
            f"samples, batch {context.get('batch_size')}",
        ),
    ]
    if isinstance(reference, dict) and info.get("metric") in reference:
        facts.append(("software reference", f"{scale * reference[info['metric']]:.2f}"))
    done = len(results)
    status = f"{done} stored" + (f" of {total} in the last run's grid" if total is not None else "")
    if total is not None and done < total:
        status += " — incomplete: run the sweep again to finish it"
    facts.append(("points", status))
    if results:
        seeds = sorted({r.seed for r in results})
        facts.append(("seeds", ", ".join(map(str, seeds))))
        versions = Counter(
            (r.provenance.get("aimc", "?"), r.provenance.get("torch", "?"), r.provenance.get("code", "?"))
            for r in results
        )
        vtext = "; ".join(f"aimc {a} (code {c}), torch {t} ({n} points)" for (a, t, c), n in versions.items())
        if len(versions) > 1:
            vtext += " — mixed versions: points from different code or libraries"
        facts.append(("versions", vtext))
        programs = [r.program_s for r in results if not r.chip_reused]
        runs = [r.run_s for r in results]
        compute = sum(programs) + sum(runs)
        cpu = sum(r.cpu_s for r in results)
        facts.append(
            (
                "timings",
                f"{compute:.1f} s of compute ({cpu:.1f} CPU s) on {len({r.worker for r in results})} worker "
                f"process(es); program {statistics.fmean(programs) if programs else 0:.2f} s per chip "
                f"({len(programs)} chips programmed), {statistics.fmean(runs):.2f} s per point",
            )
        )
        facts.append(("finished", f"{min(r.finished_utc for r in results)} to {max(r.finished_utc for r in results)}"))
    return facts


def write_report(folder: str | Path, *, html_report: bool = False, figures: bool = True) -> list[Path]:
    """Write ``report.md`` (and ``report.html``), ``points.csv`` and the figure of a sweep's output folder.

    Args:
        folder: the sweep's output folder (holding ``results.sqlite``).
        html_report: also write ``report.html``.
        figures: draw ``figures/<metric>_vs_time.png``.

    Returns:
        The files written.
    """
    folder = Path(folder)
    with ResultStore(folder, None, create=False) as store:
        results = store.results()
        spec = store.get_meta("spec") or {}
        info = store.get_meta("task") or {}
        reference = store.get_meta("reference")
        facts = _facts(store, results)
    written: list[Path] = []
    summary = summarize(results)
    scale = float(info.get("display_scale", 1.0))
    metric = str(info.get("metric", "metric"))
    figure = folder / "figures" / f"{metric}_vs_time.png"
    if figures and summary:
        plot(summary, info, reference, figure)
        written.append(figure)
    csv_path = folder / "points.csv"
    _write_csv(results, csv_path)
    written.append(csv_path)
    curves = list(summary)
    fields = _varying(curves) if curves else []
    times = sorted({t for cells in summary.values() for t in cells})
    header = ["time after programming", *(curve_label(c, fields) for c in curves)]
    rows = [[time_label(t), *(_fmt(summary[c].get(t), scale) for c in curves)] for t in times]
    title = f"Sweep report: {spec.get('name', folder.name)}"
    label = info.get("metric_label", metric)
    md = [f"# {title}", ""]
    if spec.get("description"):
        md += [str(spec["description"]), ""]
    md += [f"- **{k}**: {v}" for k, v in facts]
    md += ["", f"## {label}: mean ± std over chips × reads", ""]
    if rows:
        md += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        md += ["| " + " | ".join(r) + " |" for r in rows]
        md += ["", "Curves: " + "; ".join(f"{curve_label(c, range(len(CURVE_FIELDS)))}" for c in curves)]
        if figures:
            md += ["", f"![{label} vs time after programming](figures/{figure.name})"]
    else:
        md.append("No point is stored yet.")
    md += ["", "Every point: `points.csv` (seed, read seed, timings, worker, versions)."]
    md_path = folder / "report.md"
    _atomic_write(md_path, "\n".join(md) + "\n")
    written.insert(0, md_path)
    if html_report:
        html_path = folder / "report.html"
        _atomic_write(html_path, _html(title, spec, facts, label, header, rows, figure.name if figures else None))
        written.insert(1, html_path)
    return written


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def _html(
    title: str,
    spec: dict[str, Any],
    facts: Sequence[tuple[str, str]],
    label: str,
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    figure: str | None,
) -> str:
    e = html.escape
    parts = [
        "<!doctype html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}th{background:#eee}</style>",
        "</head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if spec.get("description"):
        parts.append(f"<p>{e(str(spec['description']))}</p>")
    parts.append("<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>" for k, v in facts) + "</ul>")
    parts.append(f"<h2>{e(label)}: mean ± std over chips × reads</h2>")
    if rows:
        parts.append("<table><tr>" + "".join(f"<th>{e(h)}</th>" for h in header) + "</tr>")
        parts += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows]
        parts.append("</table>")
        if figure:
            parts.append(f'<p><img src="figures/{e(figure)}" alt="{e(label)} vs time"></p>')
    else:
        parts.append("<p>No point is stored yet.</p>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


__all__ = ["CURVE_FIELDS", "Cell", "curve_label", "plot", "summarize", "time_label", "write_report"]
