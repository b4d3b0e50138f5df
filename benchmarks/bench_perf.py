"""Speed of the performance model: ``aimc.perf.estimate`` for ResNet-9 (target < 100 ms), against compiling it.

Usage: ``python benchmarks/bench_perf.py [--write]``.
"""

from __future__ import annotations

import argparse

import torch

import aimc
from aimc.models import example_input, get_model
from aimc.perf import estimate

from _common import machine, median_time, today, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, x = get_model("resnet9"), example_input("resnet9")
    mapping = aimc.compile(model, example_input=x)
    t_est = median_time(lambda: estimate(mapping, "four-phase"), repeats=21)
    t_compile = median_time(lambda: aimc.compile(model, example_input=x), repeats=5, warmup=1)
    text = "\n".join(
        [
            f"Machine: {machine()}. Date: {today()}. Median of 21 (estimate) and 5 (compile) runs.",
            "",
            "| step | time (ms) |",
            "|---|---|",
            f"| `aimc.perf.estimate(resnet9 mapping, 'four-phase')` | {1e3 * t_est:.2f} |",
            f"| reference: `aimc.compile(resnet9)` of the same network | {1e3 * t_compile:.1f} |",
            "",
            f"Target < 100 ms: {'met' if t_est < 0.1 else 'missed'} ({t_est / t_compile:.4f}x of compiling).",
        ]
    )
    print(text)
    if args.write:
        write_section("bench_perf", text)


if __name__ == "__main__":
    main()
