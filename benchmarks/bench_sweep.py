"""Scaling of a sweep on Ray: a 32-point ResNet-9 sweep with 1 vs 2 local Ray workers (docs/benchmarks.md).

32 points = 4 chips (seeds) x 4 times x 2 read modes, TDP, on the first ``--images`` CIFAR-10 test images. Each
configuration runs ``--repeats`` times, alternating, each on a fresh local Ray cluster with as many CPUs as
workers (one torch thread per worker) and into a fresh output folder holding the compiled mapping (compiling is
the same one-off driver step for every configuration and is not what is measured). Timed: ``aimc.sweep.run``
from start to the last stored point, including the workers' start-up, shipping the payload and programming.
An in-process run (1 thread) is the reference without Ray.

Usage: ``python benchmarks/bench_sweep.py [--images 8] [--repeats 3] [--write]`` (``--write`` records the block in
docs/benchmarks.md and draws docs/figures/sweep_scaling.png).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from aimc import sweep
from aimc.sweep.cache import MAPPING_FILE

from _common import DOCS, machine, today, write_section

FIGURE = DOCS.parent / "figures" / "sweep_scaling.png"


def spec(images: int) -> dict:
    """The 32-point sweep."""
    return {
        "name": "bench-32",
        "network": "resnet9",
        "data": {"samples": images, "calibration_samples": 64, "batch_size": images},
        "grid": {"seeds": 4, "times": [60, "1h", "1d", "1y"], "modes": ["four-phase", "one-phase"]},
    }


def timed_run(doc: dict, root: Path, mapping: Path, backend: str, workers: int) -> tuple[float, list]:
    """Wall time of one sweep into a fresh folder, and its stored points."""
    out = Path(tempfile.mkdtemp(dir=root))
    shutil.copy(mapping, out / MAPPING_FILE)
    if backend == "ray":
        import ray

        ray.init(
            address="local",
            num_cpus=workers,
            include_dashboard=False,
            log_to_driver=False,
            logging_level=logging.ERROR,
        )
    try:
        start = time.perf_counter()
        result = sweep.run(
            doc, out=out, backend=backend, workers=workers if backend == "ray" else None, threads=1, progress=False
        )
        wall = time.perf_counter() - start
    finally:
        if backend == "ray":
            ray.shutdown()
    assert result.complete and result.computed == 32, result
    with sweep.ResultStore(out, None, create=False) as store:
        rows = store.results()
    return wall, rows


def plot(rows: list[tuple[str, int, float]], path: Path) -> None:
    """Wall time and speed-up of the Ray configurations."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ray_rows = [r for r in rows if r[0] == "ray"]
    local = next(r[2] for r in rows if r[0] == "local")
    workers = [r[1] for r in ray_rows]
    walls = [r[2] for r in ray_rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(8, 3.4))
    a.bar([str(w) for w in workers], walls, color="C0", label="Ray")
    a.axhline(local, color="k", ls="--", lw=1, label="in-process (1 thread)")
    a.set_xlabel("Ray workers (1 CPU each)")
    a.set_ylabel("wall time of the 32-point sweep (s)")
    a.legend(fontsize=8)
    b.plot(workers, [walls[0] / w for w in walls], "o-", label="measured")
    b.plot(workers, [w / workers[0] for w in workers], "k--", lw=1, label="ideal")
    b.set_xlabel("Ray workers")
    b.set_ylabel("speed-up over 1 worker")
    b.set_xticks(workers)
    b.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--images", type=int, default=8, help="CIFAR-10 test images per point")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="1,2", help="Ray worker counts to compare")
    parser.add_argument("--write", action="store_true", help="record the figures in docs/benchmarks.md")
    args = parser.parse_args()
    doc = spec(args.images)
    counts = [int(w) for w in args.workers.split(",")]
    root = Path(tempfile.mkdtemp(prefix="bench_sweep_"))
    load_before = os.getloadavg()[0]
    where = machine()  # before the runs set this process's torch threads
    try:
        # compile once (driver-side, the same for every configuration); every timed run reuses the mapping
        warm = root / "warm"
        warm_spec = doc | {"grid": doc["grid"] | {"seeds": [0], "times": [60], "modes": ["four-phase"]}}
        sweep.run(warm_spec, out=warm, threads=1, progress=False)
        mapping = warm / MAPPING_FILE
        configs = [("local", 1)] + [("ray", w) for w in counts]
        walls: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        per_point: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        share: dict[tuple[str, int], list[float]] = {c: [] for c in configs}
        values: dict[tuple[str, int], dict[str, float]] = {}
        for rep in range(args.repeats):
            for c in configs:
                wall, rows = timed_run(doc, root, mapping, *c)
                walls[c].append(wall)
                per_point[c] += [r.run_s for r in rows]
                share[c].append(sum(r.cpu_s for r in rows) / sum(r.run_s + r.program_s for r in rows))
                values[c] = {r.key: r.value for r in rows}
                print(f"repeat {rep + 1}/{args.repeats} {c[0]} x{c[1]}: {wall:.1f} s", flush=True)
        same = all(v == values[configs[0]] for v in values.values())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    load_after = os.getloadavg()[0]
    med = {c: statistics.median(w) for c, w in walls.items()}
    one = med[("ray", counts[0])]
    lines = [
        f"Machine: {where}. Date: {today()}. 32 points (4 chips x 4 times x 2 modes, TDP, ResNet-9), "
        f"{args.images} CIFAR-10 test images per point; median of {args.repeats} runs each, alternating; "
        f"1-minute load average {load_before:.1f} before and {load_after:.1f} after (other jobs shared the CPUs).",
        "",
        "| executor | workers | sweep wall time (s) | points/s | speed-up vs 1 Ray worker | run s per point (median) "
        "| CPU share of a worker |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in configs:
        kind = "in-process" if c[0] == "local" else "Ray, local cluster"
        lines.append(
            f"| {kind} | {c[1]} | {med[c]:.1f} | {32 / med[c]:.2f} | "
            f"{'' if c[0] == 'local' else f'{one / med[c]:.2f}x'} | {statistics.median(per_point[c]):.2f} | "
            f"{100 * statistics.median(share[c]):.0f}% |"
        )
    lines += [
        "",
        f"Every configuration stored the same 32 values: {'yes' if same else 'NO'}. CPU share of a worker: CPU "
        "seconds over wall seconds of its points (100% = it had a core to itself).",
        "",
        "![sweep scaling](figures/sweep_scaling.png)",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section("bench_sweep", text)
        plot([(c[0], c[1], med[c]) for c in configs], FIGURE)
        print(f"wrote {DOCS} and {FIGURE}")


if __name__ == "__main__":
    main()
