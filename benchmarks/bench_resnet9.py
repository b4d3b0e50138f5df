"""Whole-network speed and memory: ResNet-9 on 1,000 CIFAR-10 test images on the simulated chip.

Batch 250, four-phase, read noise on, 2 threads; the reference is the plain PyTorch fp32 forward pass of the same
network in the same run. Time: one process runs a PyTorch pass and a chip pass over the 1,000 images back to back,
``--repeats`` rounds after a warm-up; the ratio is the median of the rounds' ratios (a shared machine's slow spells
then hit both sides of a round alike). Memory: each side runs in its own subprocess so that its peak is measured
alone: the growth of the peak resident set (VmHWM, reset through /proc/self/clear_refs before a warm-up pass) over
the resident set before the warm-up pass. Also times ``aimc.program`` of the whole ResNet-9 chip and
``aimc.compile`` with 64, 128 and 256 calibration images. Targets: chip time <= 3x PyTorch (aim 1.5x), peak memory
<= 2x, program() < 5 s, compile with 256 images < 10 s and linear in their number. The kernels are those chosen on
this machine (``aimc info``), or those forced by ``AIMC_KERNELS``.

Usage: ``python benchmarks/bench_resnet9.py [--write] [--data-dir DIR]`` (``--write`` records this machine's row in
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch

from _common import kernels_used, machine, machine_label, today, write_row

#: Calibration batch sizes timed for aimc.compile.
CALIBRATION_IMAGES = (64, 128, 256)


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        lines = f.read().splitlines()
    for line in lines:
        if line.startswith(key + ":"):
            return float(line.split()[1]) / 1024.0
    raise KeyError(key)


def _reset_peak() -> float:
    """Reset the kernel's peak-RSS mark (Linux: write 5 to clear_refs) and return the current RSS (MB)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_mb("VmRSS")


def _passes(data_dir: str | None, sides: tuple[str, ...]) -> tuple[dict[str, float], dict[str, object]]:
    """The passes over 1,000 images of ``sides`` (``"torch"``, ``"chip"``) and, with the chip, the time
    ``aimc.program`` took."""
    import aimc
    from aimc.data import cifar10_tensors

    torch.set_num_threads(2)
    x, _ = cifar10_tensors("test", 1000, data_dir)
    model = aimc.models.resnet9(seed=0).eval()

    def run_torch() -> None:
        with torch.no_grad():
            for i in range(0, 1000, 250):
                model(x[i : i + 250])

    runs: dict[str, object] = {"torch": run_torch}
    info: dict[str, float] = {}
    if "compile" in sides:  # in a process of its own: its large work tensors would change the others' timings
        aimc.compile(model, example_input=x[:8])  # imports and first calls
        for n in CALIBRATION_IMAGES:
            start = time.perf_counter()
            aimc.compile(model, example_input=x[:n])
            info[f"compile_{n}_s"] = time.perf_counter() - start
        return info, {}
    if "chip" in sides:
        mapping = aimc.compile(model, example_input=x[:128])
        start = time.perf_counter()
        chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=0)
        info["program_s"] = time.perf_counter() - start

        def run_chip() -> None:
            for i in range(0, 1000, 250):
                chip.run(x[i : i + 250], t=3600.0, mode="four-phase", seed=i)

        runs["chip"] = run_chip
    return info, {k: v for k, v in runs.items() if k in sides}


def worker(side: str, repeats: int, data_dir: str | None) -> dict[str, float]:
    """``"torch"``/``"chip"``: peak memory growth of one side alone; ``"rounds"``: both sides timed in rounds;
    ``"compile"``: the compile times."""
    info, runs = _passes(data_dir, ("torch", "chip") if side == "rounds" else (side,))
    if side == "compile":
        return info
    if side == "rounds":
        for run in runs.values():
            run()  # warm-up
        ratios, times = [], {"torch": [], "chip": []}
        for _ in range(repeats):
            for name, run in runs.items():
                start = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - start)
            ratios.append(times["chip"][-1] / times["torch"][-1])
        return {
            **info,
            "kernels": kernels_used(),
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            **{f"{k}_s": statistics.median(v) for k, v in times.items()},
        }
    # the peak is measured from before the warm-up pass: memory the allocator keeps mapped after it (glibc reuses
    # freed blocks without returning them) would otherwise hide the working set of the timed pass
    base = _reset_peak()
    runs[side]()  # warm-up
    runs[side]()
    return {"peak_mb": _status_mb("VmHWM") - base}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--worker", choices=["torch", "chip", "rounds", "compile"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.repeats, args.data_dir)))
        return
    res = {}
    for side in ("rounds", "torch", "chip", "compile"):
        cmd = [sys.executable, __file__, "--worker", side, "--repeats", str(args.repeats)]
        if args.data_dir:
            cmd += ["--data-dir", args.data_dir]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True, env=os.environ.copy())
        res[side] = json.loads(proc.stdout.strip().splitlines()[-1])
    r, t, c = res["rounds"], res["torch"], res["chip"]
    compile_s = " / ".join(f"{res['compile'][f'compile_{n}_s']:.2f}" for n in CALIBRATION_IMAGES)
    print(f"Machine: {machine()}. Date: {today()}. {args.repeats} rounds.")
    print(f"Kernels: {r['kernels']}")
    print(
        f"time, 1,000 images: PyTorch {r['torch_s']:.2f} s, chip {r['chip_s']:.2f} s, ratio {r['ratio']:.2f}x "
        f"(rounds {r['ratio_min']:.2f}-{r['ratio_max']:.2f}x)"
    )
    print(f"peak memory growth: PyTorch {t['peak_mb']:.0f} MB, chip {c['peak_mb']:.0f} MB")
    print(f"aimc.program {r['program_s']:.2f} s; aimc.compile with {CALIBRATION_IMAGES} images: {compile_s} s")
    if args.write:
        write_row(
            "bench_resnet9",
            [
                "machine",
                "date",
                "torch",
                "kernels",
                "PyTorch (s)",
                "chip (s)",
                "time ratio",
                "peak memory, PyTorch / chip (MB)",
                "`program` (s)",
                "`compile`, 64 / 128 / 256 images (s)",
            ],
            [
                machine_label(),
                today(),
                torch.__version__,
                r["kernels"],
                f"{r['torch_s']:.2f}",
                f"{r['chip_s']:.2f}",
                f"**{r['ratio']:.2f}x** ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})",
                f"{t['peak_mb']:.0f} / {c['peak_mb']:.0f}",
                f"{r['program_s']:.2f}",
                compile_s,
            ],
        )


if __name__ == "__main__":
    main()
