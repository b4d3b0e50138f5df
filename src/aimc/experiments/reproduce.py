"""``aimc reproduce``: the chip paper's accuracy comparison (Fig. 3c / 4c) and accuracy over time, in one run.

For ResNet-9/CIFAR-10, the char-LSTM/PTB and, beside it, a character-level transformer on the same PTB text (not in
the chip paper), with the shipped HWA-trained weights: software, quantisation only
(exact weights, the chip's converters and digital units), the simulated chip with the HERMES-fitted models in
four-phase mode at 1 h — TDP (two devices per polarity) and ODP (one) — and TDP over time after programming, with
global drift compensation alone and (ResNet-9) with AdaBS. Every finished block is stored in ``points.json`` in
the output folder as soon as it is done, so an interrupted run resumes where it stopped; the table, the figures and
``report.md`` are written at the end. Each task also reports its placement (cores, chips) and the perf model's latency
and energy per inference (an image, or a character) from the same mapping.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimc._progress import paused_bars
from aimc._progress import progress as _progress
from aimc._provenance import code_fingerprint, provenance
from aimc.data import DataNotFoundError, DownloadError
from aimc.errors import ValidationError
from aimc.experiments import evaluate as ev
from aimc.experiments.accuracy import points_as_dicts
from aimc.experiments.report import PAPER, fmt, fmt_point, time_label
from aimc.perf import estimate
from aimc.tasks import CharLSTMPtb, TaskData, available_tasks, get_task

#: Times after programming of the accuracy-over-time curves (1 min, 1 h, 1 day, 1 year).
TIMES = (60.0, 3600.0, 86400.0, 31_536_000.0)


@dataclass(frozen=True)
class Settings:
    """Sizes of a reproduction: test images / characters per task, seeds, AdaBS calibration inputs."""

    images: int | None = 400
    chars: int | None = 19_200
    streams: int = 128
    seeds: int = 2
    adabs_inputs: int = 256

    @classmethod
    def full(cls) -> Settings:
        """The whole test sets and 10 seeds (the chip paper's 10 inference runs per point)."""
        return cls(images=None, chars=None, streams=256, seeds=10, adabs_inputs=1000)


class _Store:
    """Finished blocks by key in a JSON file, written atomically after each block.

    Blocks are reused only by the same settings and the same code (:func:`code_fingerprint`): a store written by
    other code is moved aside to ``<name>.<its fingerprint>.json`` (kept, not reused) and the run starts afresh.
    """

    def __init__(self, path: Path, settings: Settings, log: Any = print) -> None:
        self.path = path
        self.data: dict[str, Any] = {}
        self.code = code_fingerprint()
        if path.is_file():
            try:
                loaded = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValidationError(f"{str(path)!r} is not a readable reproduce store ({err}); delete it") from None
            if loaded.get("settings") != settings.__dict__:
                raise ValidationError(
                    f"{str(path)!r} holds results of other settings ({loaded.get('settings')}); use another --out "
                    "folder or delete it"
                )
            old_code = str(loaded.get("code", "unknown"))
            old_code = old_code if old_code.isalnum() and len(old_code) <= 64 else "unknown"  # a file name part
            if old_code != self.code:
                aside = path.with_name(f"{path.stem}.{old_code}.json")
                os.replace(path, aside)
                log(
                    f"  {path.name} was computed by other aimc code ({old_code}, now {self.code}): kept as {aside.name}"
                )
            else:
                self.data = loaded.get("blocks", {})
        self.settings = settings

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(
            json.dumps({"settings": self.settings.__dict__, "code": self.code, "blocks": self.data}, indent=1)
        )
        os.replace(tmp, self.path)


def _blocks_of(task: str) -> tuple[str, ...]:
    """Names of a task's blocks, in the order they run."""
    return ("software", "quantisation", "tdp-gdc", "odp-gdc-1h") + (("tdp-adabs",) if task == "resnet9" else ())


def _task_blocks(
    task: str, settings: Settings, store: _Store, data_dir: str | None, log: Any, bar: Any, progress: bool
) -> dict[str, Any]:
    model = get_task(task).load_model()
    data, weights = _task_data(task, settings, data_dir)
    mapping = ev.compile_task(model, data)
    seeds = list(range(settings.seeds))

    def block(key: str, compute: Any) -> Any:
        full_key = f"{task}/{key}"
        bar.set_postfix_str(full_key)
        value = store.get(full_key)
        if value is None:
            t0 = time.time()
            value = compute()
            store.put(full_key, value)
            log(f"  {full_key}: done in {time.time() - t0:.0f} s")
        else:
            log(f"  {full_key}: from {store.path.name}")
        bar.update(1)
        return value

    out: dict[str, Any] = {"task": task, "metric": data.metric, "weights": weights, "test_size": data.size}
    out["placement"] = _placement(mapping)
    out["software"] = block("software", lambda: get_task(task).software(model, data))
    out["quantisation"] = block("quantisation", lambda: ev.quantisation_only(mapping, data))

    def curve(strategy: str, times: tuple[float, ...], use_adabs: bool) -> list[dict[str, Any]]:
        device = "hermes-1dev" if strategy == "odp" else "hermes-2dev"
        pts = ev.metric_over_time(
            mapping,
            data,
            device=device,
            strategy=strategy,
            times=times,
            seeds=seeds,
            use_adabs=use_adabs,
            progress=progress,
        )
        return points_as_dicts(pts)

    out["tdp"] = block("tdp-gdc", lambda: curve("tdp", TIMES, False))
    out["odp"] = block("odp-gdc-1h", lambda: curve("odp", (3600.0,), False))
    if task == "resnet9":
        out["tdp_adabs"] = block("tdp-adabs", lambda: curve("tdp", TIMES, True))
    return out


def _task_data(task: str, settings: Settings, data_dir: str | None) -> tuple[TaskData, str]:
    """The task's test data of the sizes of ``settings`` (images, or characters in ``settings.streams`` windows for
    the char-LSTM), at most ``settings.adabs_inputs`` calibration inputs, and the name of its weights file."""
    t = get_task(task)
    n = settings.images if t.metric == "accuracy" else settings.chars
    if isinstance(t, CharLSTMPtb):
        data = t.load_data(n, data_dir, streams=settings.streams)
    else:
        data = t.load_data(n, data_dir)
    data.x_cal = data.x_cal[: settings.adabs_inputs]
    path = t.weights_path()
    return data, "" if path is None else path.name


def _placement(mapping: Any) -> dict[str, Any]:
    """Cores and chips of the mapping, and the perf model's latency and energy of one inference (four-phase,
    activations through the host as in the chip paper)."""
    report = estimate(mapping)
    digital = sum(op.kind == "digital" and op.attrs.get("unit") != "layout" for op in mapping.ops)
    return {
        "cores": mapping.cores_used,
        "chips": mapping.chips,
        "digital_ops": digital,
        "latency_us": report.latency_ns / 1e3,
        "energy_uj": sum(report.energy_uj.values()),
        "throughput_per_s": report.throughput_per_s,
    }


def reproduce(
    out_dir: str = "results/reproduce",
    *,
    settings: Settings | None = None,
    data_dir: str | None = None,
    tasks: tuple[str, ...] | None = None,
    log: Any = print,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the comparison; returns the results and writes ``report.md``, ``results.json`` and figures.

    ``log`` receives a line per task and per finished block; ``progress`` shows the blocks done (and the chip reads
    of the block running) on stderr: a live bar on a terminal, plain lines otherwise. With ``progress=False``
    nothing is printed on stderr and ``log`` only receives warnings (a store of other code moved aside, a task
    skipped). A task whose data set cannot be found or downloaded (e.g. CIFAR-10 offline) is skipped with the
    reason in ``results["skipped"]`` and in the report; the other tasks run. ``tasks``: names of :mod:`aimc.tasks`
    (default: all of them).
    """
    settings = settings or Settings()
    tasks = tuple(available_tasks()) if tasks is None else tasks
    for task in tasks:
        if task not in available_tasks():
            raise ValidationError(f"task must be one of {', '.join(available_tasks())}; got {task!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(text: str) -> None:
        with paused_bars():  # the text above a live bar, not through it
            log(text)

    def say_progress(text: str) -> None:
        if progress:
            say(text)

    store = _Store(out / "points.json", settings, say)
    start = time.time()
    results: dict[str, Any] = {"settings": settings.__dict__, "tasks": {}, "skipped": {}}
    total = sum(len(_blocks_of(task)) for task in tasks)
    with _progress(total=total, desc="reproduce", unit="blocks", enabled=progress) as bar:
        for task in tasks:
            say_progress(f"{task}:")
            try:
                results["tasks"][task] = _task_blocks(task, settings, store, data_dir, say_progress, bar, progress)
            except (DataNotFoundError, DownloadError) as err:  # its data set is not here and cannot be fetched
                hint = "" if "aimc data fetch" in str(err) else "; `aimc data fetch cifar10` fetches or converts it"
                results["skipped"][task] = f"{err}{hint}"
                say(f"{task}: skipped, its data set is not available: {results['skipped'][task]}")
                bar.update(len(_blocks_of(task)))
    results["provenance"] = {**provenance(), "aimc_code": store.code}  # after the runs: the kernels they used
    results["seconds"] = round(time.time() - start, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    figures = _figures(results, out)
    (out / "report.md").write_text(report_markdown(results, figures))
    return results


def _at(points: list[dict[str, Any]], t: float) -> dict[str, Any]:
    return next(p for p in points if p["t_seconds"] == t)


def comparison_rows(task_result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(what, ours, paper, change vs our software) rows of the Fig. 3c / 4c comparison."""
    metric = task_result["metric"]
    paper = PAPER.get(task_result["task"], {})
    sw = task_result["software"]

    def published(key: str) -> str:
        return fmt(paper[key], metric) if key in paper else "— (not in the chip paper)"

    def loss(v: float) -> str:
        return f"{100 * (v - sw):+.2f} pt" if metric == "accuracy" else f"{v - sw:+.3f} BPC"

    tdp, odp = _at(task_result["tdp"], 3600.0), _at(task_result["odp"], 3600.0)
    return [
        ("software", fmt(sw, metric), published("software"), ""),
        (
            "quantisation only",
            fmt(task_result["quantisation"], metric),
            published("quantisation"),
            loss(task_result["quantisation"]),
        ),
        ("chip TDP, four-phase, 1 h", fmt_point(tdp, metric), published("tdp"), loss(tdp["mean"])),
        ("chip ODP, four-phase, 1 h", fmt_point(odp, metric), published("odp"), loss(odp["mean"])),
    ]


def time_rows(task_result: dict[str, Any]) -> list[tuple[str, ...]]:
    """(time, TDP with GDC, TDP with GDC + AdaBS) rows."""
    metric = task_result["metric"]
    rows = []
    for p in task_result["tdp"]:
        adabs = task_result.get("tdp_adabs")
        cell = fmt_point(_at(adabs, p["t_seconds"]), metric) if adabs else "—"
        rows.append((time_label(p["t_seconds"]), fmt_point(p, metric), cell))
    return rows


def format_tables(results: dict[str, Any]) -> str:
    """The comparison and over-time tables as markdown."""
    lines = []
    for task, r in results["tasks"].items():
        unit = "test accuracy" if r["metric"] == "accuracy" else "bits per character (lower is better)"
        lines += [
            f"### {task} — {unit}, {r['test_size']} test {'images' if task == 'resnet9' else 'characters'}, "
            f"weights {r['weights']}",
            "",
            "| | aimc | chip paper | change vs our software |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in comparison_rows(r)]
        lines += ["", "| TDP four-phase, time after programming | GDC | GDC + AdaBS |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in time_rows(r)]
        if "placement" in r:
            p = r["placement"]
            per = "image" if r["metric"] == "accuracy" else "character"
            lines += [
                "",
                f"Placement: {p['cores']} cores on {p['chips']} chip(s), {p['digital_ops']} digital ops; perf model "
                f"(four-phase, via the host): {p['latency_us']:.2f} µs and {p['energy_uj']:.2f} µJ per {per}, "
                f"{p['throughput_per_s']:,.0f} {per}s/s pipelined.",
            ]
        lines.append("")
    for task, reason in results.get("skipped", {}).items():
        lines += [f"### {task} — skipped", "", f"Its data set is not available here: {reason}", ""]
    return "\n".join(lines)


def report_markdown(results: dict[str, Any], figures: list[str]) -> str:
    """The report: settings, tables, figures, provenance."""
    s = results["settings"]
    prov = results["provenance"]
    head = [
        "# aimc reproduce — the chip paper's accuracy results on the simulated chip",
        "",
        f"Seeds (programmed chips) per point: {s['seeds']}; ResNet-9 test images: {s['images'] or 'all 10,000'}; "
        f"PTB test characters: {s['chars'] or 'all'}; AdaBS calibration inputs: {s['adabs_inputs']}. "
        "Mean ± std over seeds. HERMES-fitted device models: hermes-2dev for TDP, hermes-1dev for ODP; global drift "
        f"compensation on. Run time {results['seconds']:.0f} s.",
        "",
        format_tables(results),
    ]
    head += [f"![{Path(f).stem}]({Path(f).name})" for f in figures]
    head += ["", f"aimc {prov.get('aimc')}, torch {prov.get('torch')}, Python {prov.get('python')}", ""]
    return "\n".join(head)


def _figures(results: dict[str, Any], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    for task, r in results["tasks"].items():
        metric = r["metric"]
        scale = 100.0 if metric == "accuracy" else 1.0
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        tdp, odp = _at(r["tdp"], 3600.0), _at(r["odp"], 3600.0)
        names = ["software", "quantisation", "chip TDP", "chip ODP"]
        ours = [r["software"], r["quantisation"], tdp["mean"], odp["mean"]]
        errs = [0.0, 0.0, tdp["std"], odp["std"]]
        paper = [PAPER[task][k] for k in ("software", "quantisation", "tdp", "odp")] if task in PAPER else []
        xs = range(len(names))
        ax1.bar([x - 0.2 for x in xs], [scale * v for v in ours], 0.4, yerr=[scale * e for e in errs], label="aimc")
        if paper:
            ax1.bar([x + 0.2 for x in xs], [scale * v for v in paper], 0.4, label="chip paper")
        ax1.set_xticks(list(xs), names, fontsize=8)
        lo = min(ours + paper) * scale
        hi = max(ours + paper) * scale
        ax1.set_ylim(lo - (hi - lo) * 0.6 - 1e-3, hi + (hi - lo) * 0.3 + 1e-3)
        ax1.set_ylabel("test accuracy (%)" if metric == "accuracy" else "bits per character")
        ax1.set_title(f"{task}: four-phase, 1 h")
        ax1.legend(fontsize=8)
        for key, label in (("tdp", "TDP, GDC"), ("tdp_adabs", "TDP, GDC + AdaBS")):
            if key in r:
                pts = r[key]
                ax2.errorbar(
                    [p["t_seconds"] for p in pts],
                    [scale * p["mean"] for p in pts],
                    yerr=[scale * p["std"] for p in pts],
                    marker="o",
                    capsize=3,
                    label=label,
                )
        ax2.axhline(scale * r["software"], color="k", ls="--", lw=1, label="software")
        ax2.set_xscale("log")
        ax2.set_xlabel("time after programming (s)")
        ax2.set_title(f"{task} over time")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(str(path))
    return paths
