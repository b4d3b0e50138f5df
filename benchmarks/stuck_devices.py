"""ResNet-9 accuracy vs stuck-device rate, float and HWA weights: docs/figures/stuck_devices.{png,json}.

For each rate r, a fraction r of the conductance units is stuck, half at SET (G_max) and half at RESET (0 uS)
(:mod:`aimc.faults`); hermes-2dev, TDP, four-phase, read 1 h after programming with global drift compensation; the
first ``--images`` CIFAR-10 test images; seeds 0..N-1, each seed its own programmed chip and its own die (stuck map
drawn from the programming seed, nested across rates so that the curves share their random numbers).

The JSON is written after every point and a rerun skips the points it already holds, so an interrupted run resumes.

    .venv/bin/python benchmarks/stuck_devices.py            # 2 x 6 rates x 2 seeds chip reads

On a busy machine, run the two weight sets as two single-threaded processes and merge them:

    .venv/bin/python benchmarks/stuck_devices.py --only float --threads 1 --out /tmp/sd_float &
    .venv/bin/python benchmarks/stuck_devices.py --only HWA --threads 1 --out /tmp/sd_hwa &
    wait; .venv/bin/python benchmarks/stuck_devices.py --merge /tmp/sd_float.json /tmp/sd_hwa.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

import aimc
from aimc._provenance import provenance
from aimc.data import cifar10_tensors
from aimc.experiments.accuracy import classification_accuracy
from aimc.faults import Faults
from aimc.weights import weights_path
from aimc.weights.io import load_weights_file as load_weights

ROOT = Path(__file__).resolve().parent.parent
WEIGHTS = {"float": "resnet9_float", "HWA": "resnet9_hwa"}
#: Stuck-unit rates of the figure (0-5%; the chip's measured yield is > 99%, docs/physics.md §2.5).
RATES = (0.0, 0.01, 0.02, 0.05)


def _mapping(name: str, x_cal: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor):
    model = aimc.models.resnet9()
    load_weights(str(weights_path(name)), model)
    model.eval()
    with torch.no_grad():
        software = float((model(x_test).argmax(1) == y_test).float().mean())
    return aimc.compile(model, example_input=x_cal, name=name), software


def plot(result: dict, path: Path) -> None:
    """Accuracy (mean ± std over seeds) vs stuck rate, one line per weights, software accuracy dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for (label, run), color in zip(result["runs"].items(), ("tab:blue", "tab:orange"), strict=False):
        pts = sorted(run["points"], key=lambda p: p["rate"])
        rates = [100 * p["rate"] for p in pts]
        ax.errorbar(
            rates,
            [100 * p["mean"] for p in pts],
            yerr=[100 * p["std"] for p in pts],
            marker="o",
            capsize=3,
            color=color,
            label=f"{label} weights on the chip",
        )
        ax.axhline(100 * run["software"], color=color, ls="--", lw=0.8, label=f"{label}, software")
    s = result["settings"]
    ax.set_xlabel("stuck conductance units (%), half at SET, half at RESET")
    ax.set_ylabel("CIFAR-10 top-1 accuracy (%)")
    ax.set_title(
        f"ResNet-9, {s['device']} {s['strategy'].upper()}, {s['mode']}, t = 1 h\n"
        f"{s['images']} test images x {s['seeds']} seeds (mean ± std)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--out", default=str(ROOT / "docs" / "figures" / "stuck_devices"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", choices=sorted(WEIGHTS), default=None, help="run one weight set only")
    parser.add_argument("--merge", nargs="+", default=None, help="merge the JSON of --only runs into --out")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates = [float(r) for r in args.rates.split(",")]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    if args.merge:
        parts = [json.loads(Path(p).read_text()) for p in args.merge]
        merged = {**parts[0], "runs": {k: v for part in parts for k, v in part["runs"].items()}}
        json_path.write_text(json.dumps(merged, indent=2))
        plot(merged, out.with_suffix(".png"))
        print(f"wrote {json_path} and {out.with_suffix('.png')}")
        return
    settings = {
        "images": args.images,
        "seeds": args.seeds,
        "device": "hermes-2dev",
        "strategy": "tdp",
        "mode": "four-phase",
        "t_seconds": 3600.0,
        "stuck_split": "half SET, half RESET",
        "script": "benchmarks/stuck_devices.py",
    }
    result = json.loads(json_path.read_text()) if json_path.is_file() else {}
    if result.get("settings") != settings:
        result = {"settings": settings, "runs": {}}
    result["provenance"] = provenance()
    x_test, y_test = cifar10_tensors("test", args.images, args.data_dir)
    x_cal, _ = cifar10_tensors("train", 256, args.data_dir)
    mappings = {}
    for label, name in WEIGHTS.items():
        if args.only is not None and label != args.only:
            continue
        mapping, software = _mapping(name, x_cal, x_test, y_test)
        mappings[label] = mapping
        sha = hashlib.sha256(weights_path(name).read_bytes()).hexdigest()
        run = result["runs"].get(label)
        if run is None or run.get("sha256") != sha:  # new weights: earlier points do not count
            result["runs"][label] = {"weights": name, "sha256": sha, "software": software, "points": []}
    # the ends and the middle of the curve first, so that an interrupted run already shows its shape
    order = sorted(rates, key=lambda r: (r not in (min(rates), max(rates)), r != sorted(rates)[len(rates) // 2], r))
    for rate in order:
        for label, mapping in mappings.items():
            run = result["runs"][label]
            if any(abs(p["rate"] - rate) < 1e-12 for p in run["points"]):
                continue
            start = time.time()
            faults = Faults(stuck_set=rate / 2, stuck_reset=rate / 2)
            (pt,) = classification_accuracy(
                mapping,
                x_test,
                y_test,
                device=settings["device"],
                strategy=settings["strategy"],
                mode=settings["mode"],
                times=[settings["t_seconds"]],
                seeds=list(range(args.seeds)),
                faults=faults,
            )
            run["points"].append(
                {"rate": rate, "mean": pt.mean, "std": pt.std, "per_seed": pt.per_seed, "seconds": time.time() - start}
            )
            print(f"{label:<5} rate {100 * rate:4.1f}%: {100 * pt.mean:.2f} ± {100 * pt.std:.2f}%", flush=True)
            tmp = json_path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(result, indent=2))
            tmp.replace(json_path)
            plot(result, out.with_suffix(".png"))
    plot(result, out.with_suffix(".png"))
    print(f"wrote {json_path} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
