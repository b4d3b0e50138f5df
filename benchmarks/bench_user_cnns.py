"""How well aimc keeps the accuracy of networks trained without it: calibration methods and HWA fine-tuning.

The networks are the two CIFAR-10 CNNs of ``benchmarks/user_cnns.py`` (a VGG-style net with BatchNorm after ReLU and
raw 0-255 pixel inputs, a MobileNet-style net with depthwise convolutions), trained in plain PyTorch. For each net and
each calibration method (``aimc.compile(..., calibration_method=...)``, calibrated on training images):

- software: the PyTorch model (float32);
- quantisation only: ideal devices, no read noise, the chip's converters and digital units;
- hermes-2dev TDP and hermes-1dev ODP, four-phase reads, at 1 hour and 1 day after programming (global drift
  compensation on), over ``--seeds`` programming seeds;
- hermes-2dev TDP at 1 hour with AdaBS (``aimc.chip.adabs.adabs``: each layer's LDPU affine registers recalibrated
  on :data:`ADABS_IMAGES` unlabelled training images at the time of use), for the default calibration method.

Then, with ``--finetune-epochs N``, the net is fine-tuned hardware-aware (``aimc.train.hwa_finetune``, hermes-2dev
TDP noise) for N epochs on the CIFAR-10 training set, and measured again with the default calibration method.
``--noise-scale``, ``--output-noise``, ``--batchnorm``, ``--distill``, ``--lr``, ``--drift`` and ``--augment`` set
its recipe. The fine-tuned weights go to ``benchmarks/weights/<net>_hwa[_<digital layers>][_<recipe>].safetensors``;
where that file exists nothing is trained.

With ``--digital-layers depthwise`` every depthwise convolution runs on the digital unit beside the cores in FP16
(``aimc.compile(..., digital_layers="depthwise")``, and fine-tuning leaves it without analog noise); its figures are
kept beside the all-analog ones (the ``net`` column says "depthwise digital"). ``--digital-layers depthwise+stem``
puts the first convolution there as well (``digital_layers=["depthwise", "0"]``).

Every figure is kept in ``--results`` (JSON) as soon as it is measured: a run that is stopped continues where it
stopped, computes nothing twice, and runs side by side may share the file. ``--write`` puts the table into
docs/validation.md.

Usage: ``python benchmarks/bench_user_cnns.py [--nets vgg,mobilenet] [--images 2000] [--calibration-images 512]
[--seeds 0,1,2] [--finetune-epochs 5] [--write]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

import aimc
import user_cnns
from aimc.compiler.calibrate import DEFAULT_METHOD
from aimc.compiler.observe import METHODS
from aimc.data import load_cifar10
from aimc.train.batches import AugmentedBatches

from _common import machine, today, write_section

VALIDATION = Path(__file__).resolve().parent.parent / "docs" / "validation.md"
#: The chip configurations measured: (label, device preset, strategy).
CHIPS = (("TDP", "hermes-2dev", "tdp"), ("ODP", "hermes-1dev", "odp"))
TIMES = {"1 h": 3600.0, "1 d": 86400.0}
#: When the AdaBS column reads the chip (and recalibrates it): 1 hour.
ADABS_TIME = 3600.0
#: Training images that calibrate the ranges.
CALIBRATION_IMAGES = 512
BATCH = 250
#: Unlabelled training images (after the calibration images) that AdaBS recalibrates on.
ADABS_IMAGES = 1000
#: Results key suffix of the runs with every depthwise convolution on the digital unit.
DW_TAG = "+dw-digital"
#: ... and of those with the first convolution (the stem, layer "0" of both nets) there as well.
STEM_TAG = "+dw-stem-digital"
#: ``--digital-layers`` choices: compile's ``digital_layers``, the results key suffix, the weights file suffix and
#: the table's words.
DIGITAL = {
    "depthwise": (("depthwise",), DW_TAG, "_dw_digital", "depthwise digital"),
    "depthwise+stem": (("depthwise", "0"), STEM_TAG, "_dw_stem_digital", "depthwise and stem digital"),
}


def _accuracy(run, x: torch.Tensor, y: torch.Tensor) -> float:
    correct = 0
    for i in range(0, len(x), BATCH):
        correct += int((run(x[i : i + BATCH], i).argmax(1) == y[i : i + BATCH]).sum())
    return 100.0 * correct / len(x)


class Results:
    """The figures measured so far, in a JSON file written after each one. Runs may share the file: each write
    merges the figures other runs have written since (then replaces the file in one rename)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, float] = self._read()

    def _read(self) -> dict[str, float]:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def get(self, key: str, compute) -> float:
        if key not in self.data:
            start = time.perf_counter()
            value = float(compute())
            self.data = {**self._read(), **self.data, key: value}
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
            tmp.replace(self.path)
            print(f"{key}: {self.data[key]:.2f}  ({time.perf_counter() - start:.0f} s)", flush=True)
        return self.data[key]


def measure(
    res: Results, prefix: str, model: torch.nn.Module, net: str, data: dict, methods, seeds, digital=()
) -> None:
    """Every figure of ``model`` under the keys ``prefix/...``; ``digital``: ``compile``'s ``digital_layers``."""
    x, y, x_cal = data["x"], data["y"], data["x_cal"]
    from aimc.chip.adabs import adabs

    def software() -> float:
        with torch.no_grad():
            return _accuracy(lambda xb, _i: model(xb), x, y)

    res.get(f"{prefix}/software", software)
    for method in methods:
        keys = [f"{prefix}/{method}/quant"] + [
            f"{prefix}/{method}/{label}/{t}/seed{seed}" for label, _, _ in CHIPS for seed in seeds for t in TIMES
        ]
        if method == DEFAULT_METHOD:
            keys += [f"{prefix}/{method}/TDP+AdaBS/1 h/seed{seed}" for seed in seeds]
        if all(k in res.data for k in keys):
            continue
        mapping = aimc.compile(
            model,
            calibration=x_cal,
            calibration_method=method,
            name=net,
            progress=False,
            digital_layers=list(digital),
        )

        def quant(mapping=mapping) -> float:
            chip = aimc.program(mapping, "ideal", "tdp", seed=0)
            return _accuracy(lambda xb, i: chip.run(xb, t=60.0, mode="four-phase", seed=i, read_noise=False), x, y)

        res.get(f"{prefix}/{method}/quant", quant)
        for label, device, strategy in CHIPS:
            for seed in seeds:
                chip = aimc.program(mapping, device, strategy, seed=seed)
                for tname, t in TIMES.items():

                    def read(chip=chip, t=t, seed=seed) -> float:
                        return _accuracy(
                            lambda xb, i: chip.run(xb, t=t, mode="four-phase", seed=seed * 1_000_003 + i), x, y
                        )

                    res.get(f"{prefix}/{method}/{label}/{tname}/seed{seed}", read)
                if label == "TDP" and method == DEFAULT_METHOD:

                    def read_adabs(chip=chip, seed=seed) -> float:
                        tuned = adabs(chip, data["x_adabs"], ADABS_TIME, seed=seed)
                        return _accuracy(
                            lambda xb, i: tuned.run(xb, t=ADABS_TIME, mode="four-phase", seed=seed * 1_000_003 + i),
                            x,
                            y,
                        )

                    res.get(f"{prefix}/{method}/TDP+AdaBS/1 h/seed{seed}", read_adabs)


def _mean(res: Results, key: str) -> str:
    """The mean ± std over every programming seed measured for ``key`` (a run with more ``--seeds`` adds some)."""
    vals = [v for k, v in res.data.items() if k.startswith(f"{key}/seed")]
    if not vals:
        return "–"
    return f"{statistics.fmean(vals):.2f}" + (f" ± {statistics.pstdev(vals):.2f}" if len(vals) > 1 else "")


def _recipe(stage: str) -> str:
    """``"hwa_noise_scale1_output_noise0.05_batchnorm-frozen_distill0.5_augment_5ep"`` -> ``"HWA fine-tuned
    (noise_scale 1, output_noise 0.05, batchnorm frozen, distill 0.5, crops and flips, 5 epochs)"``."""
    parts = stage.removeprefix("hwa").strip("_")
    if not parts:
        return "HWA fine-tuned"
    settings = [p for p in ("noise_scale", "output_noise", "batchnorm", "distill", "lr") if f"_{p}" in f"_{parts}"]
    words = [f"{p} {f'_{parts}'.split(f'_{p}', 1)[1].lstrip('-').split('_')[0]}" for p in settings]
    if "_drift" in parts:
        words.append("drift 1 min-1 day")
    if "_augment" in parts:
        words.append("crops and flips")
    if parts.endswith("ep"):
        words.append(parts.rsplit("_", 1)[1].replace("ep", " epochs"))
    return "HWA fine-tuned (" + ", ".join(words) + ")"


def table(res: Results, nets, methods, finetuned: bool) -> str:
    head = "| net | weights | calibration | software | quantisation only | " + " | ".join(
        [f"{label} {t}" for label, _, _ in CHIPS for t in TIMES] + ["TDP 1 h + AdaBS"]
    )
    lines = [head + " |", "|" + "---|" * (6 + len(CHIPS) * len(TIMES))]
    words = {tag: f" ({text})" for _, tag, _, text in DIGITAL.values()}
    for net, variant in [(n, v) for n in nets for v in ("", *words)]:
        found = {k.split("/")[1] for k in res.data if k.startswith(f"{net}{variant}/")}
        stages = ["float"] + (sorted(st for st in found if st.startswith("hwa")) if finetuned else [])
        for stage in stages:
            prefix = f"{net}{variant}/{stage}"
            if f"{prefix}/software" not in res.data:
                continue
            for method in methods if stage == "float" else (DEFAULT_METHOD,):
                if f"{prefix}/{method}/quant" not in res.data:
                    continue
                cells = [
                    net + words.get(variant, ""),
                    "as trained" if stage == "float" else _recipe(stage),
                    f"`{method}`",
                    f"{res.data[f'{prefix}/software']:.2f}",
                    f"{res.data[f'{prefix}/{method}/quant']:.2f}",
                ]
                cells += [_mean(res, f"{prefix}/{method}/{label}/{t}") for label, _, _ in CHIPS for t in TIMES]
                cells.append(_mean(res, f"{prefix}/{method}/TDP+AdaBS/1 h"))
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nets", default="vgg,mobilenet")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--images", type=int, default=2000, help="test images (default 2000)")
    parser.add_argument(
        "--calibration-images",
        type=int,
        default=CALIBRATION_IMAGES,
        help=f"training images that calibrate the ranges (default {CALIBRATION_IMAGES}); AdaBS takes the next "
        f"{ADABS_IMAGES}",
    )
    parser.add_argument("--seeds", default="0", help="programming seeds, comma-separated (default 0)")
    parser.add_argument("--finetune-epochs", type=int, default=0)
    parser.add_argument("--finetune-nets", default=None, help="nets to fine-tune (default: all of --nets)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--results", type=Path, default=Path("results/user_cnns.json"))
    parser.add_argument("--write", action="store_true", help="put the table into docs/validation.md")
    parser.add_argument(
        "--digital-layers",
        choices=sorted(DIGITAL),
        default=None,
        help="depthwise convolutions (and with +stem the first one) on the digital unit",
    )
    parser.add_argument("--noise-scale", type=float, default=None, help="hwa_finetune's noise_scale (default its own)")
    parser.add_argument("--output-noise", type=float, default=None, help="hwa_finetune's output_noise")
    parser.add_argument(
        "--batchnorm", choices=["update", "frozen"], default=None, help="hwa_finetune's batchnorm (default its own)"
    )
    parser.add_argument("--distill", type=float, default=None, help="hwa_finetune's distill (default none)")
    parser.add_argument("--lr", type=float, default=None, help="hwa_finetune's peak learning rate (default its own)")
    parser.add_argument(
        "--augment",
        action="store_true",
        help="fine-tune on random crops and flips (aimc.train.batches.AugmentedBatches)",
    )
    parser.add_argument(
        "--drift", action="store_true", help="hwa_finetune's drift_window=DRIFT_WINDOW_S (1 min - 1 day)"
    )
    parser.add_argument("--threads", type=int, default=2, help="PyTorch threads (default 2)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    nets, methods = args.nets.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    res = Results(args.results)
    n_cal = args.calibration_images
    test_images, test_labels = load_cifar10("test", args.data_dir, args.images)
    train_images, train_labels = load_cifar10("train", args.data_dir, None)
    for net in nets:
        data = {
            "x": user_cnns.to_input(test_images, net),
            "y": torch.as_tensor(test_labels).long(),
            "x_cal": user_cnns.to_input(train_images[:n_cal], net),
            "x_adabs": user_cnns.to_input(train_images[n_cal : n_cal + ADABS_IMAGES], net),
        }
        model = user_cnns.load(net)
        digital, tag, suffix, _ = DIGITAL[args.digital_layers] if args.digital_layers else ((), "", "", "")
        noise = {k: v for k, v in (("noise_scale", args.noise_scale), ("output_noise", args.output_noise)) if v}
        recipe = "".join(f"_{k}{v:g}" for k, v in noise.items())
        if args.batchnorm:
            noise["batchnorm"] = args.batchnorm
            recipe += f"_batchnorm-{args.batchnorm}"
        if args.distill:
            noise["distill"] = args.distill
            recipe += f"_distill{args.distill:g}"
        if args.lr:
            noise["lr"] = args.lr
            recipe += f"_lr{args.lr:g}"
        if args.drift:
            from aimc.train.hwa import DRIFT_WINDOW_S

            noise["drift_window"] = DRIFT_WINDOW_S
            recipe += "_drift"
        if args.augment:
            recipe += "_augment"
        if recipe and args.finetune_epochs > 1:  # (the plain recipe's weights file keeps its name)
            recipe += f"_{args.finetune_epochs}ep"
        measure(res, f"{net}{tag}/float", model, net, data, methods, seeds, digital)
        if args.finetune_epochs and net in (args.finetune_nets or args.nets).split(","):
            out = user_cnns.WEIGHTS_DIR / f"{net}_hwa{suffix}{recipe}.safetensors"
            if not out.exists():
                from aimc.train import hwa_finetune
                from aimc.weights.io import save_weights

                x_train, y_train = user_cnns.to_input(train_images, net), torch.as_tensor(train_labels).long()
                loader = (
                    AugmentedBatches(x_train, y_train)
                    if args.augment
                    else torch.utils.data.DataLoader(
                        torch.utils.data.TensorDataset(x_train, y_train),
                        batch_size=128,
                        shuffle=True,
                        generator=torch.Generator().manual_seed(0),
                    )
                )
                tuned = hwa_finetune(
                    model,
                    loader,
                    epochs=args.finetune_epochs,
                    seed=0,
                    checkpoint=f"results/{out.stem}.ckpt",
                    digital_layers=list(digital),
                    **noise,
                )
                meta = {"finetune_epochs": str(args.finetune_epochs), "base": f"{net}.safetensors"}
                save_weights(out, tuned, {**meta, **{k: str(v) for k, v in noise.items()}})
            tuned = user_cnns._load_file(net, out)
            measure(res, f"{net}{tag}/hwa{recipe}", tuned, net, data, (DEFAULT_METHOD,), seeds, digital)
    markdown = (
        f"Machine: {machine()}. Date: {today()}. {args.images} CIFAR-10 test images; calibration on "
        f"{n_cal} training images; accuracy in %; chip columns: programming seed 0, or the mean ± std "
        "over the seeds measured where a ± is shown.\n\n" + table(res, nets, methods, bool(args.finetune_epochs))
    )
    print(markdown)
    if args.write:
        write_section("user_cnns", markdown, VALIDATION)


if __name__ == "__main__":
    main()
