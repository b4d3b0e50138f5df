"""Speed of one analog core against a plain fp32 matmul of the same shape (issue #2 speed target).

One 256x256 core, batch 1024, four-phase with fresh read noise: the time of ``CoreReadout.mvm`` (what runs per
batch; ``prepare`` runs once per (chip, t)) relative to ``x @ W.T`` measured in the same run. Target: <= 4x, aim 2x.

Usage: ``python benchmarks/bench_core.py [--write]`` (``--write`` records the figures in docs/benchmarks.md).
"""

from __future__ import annotations

import argparse

import torch

from aimc import program_core

from _common import machine, median_time, today, write_section


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="record the figures in docs/benchmarks.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    w = torch.rand((256, 256), generator=g) * 2 - 1
    x = torch.rand((1024, 256), generator=g) * 2 - 1
    core = program_core(w, "hermes-2dev", "tdp", 0)
    rows = []
    for mode in ("four-phase", "one-phase"):
        readout = core.prepare(3600.0, mode, 1)
        gen = torch.Generator().manual_seed(2)
        t_ref = median_time(lambda: x @ w.T, args.repeats)
        t_mvm = median_time(lambda readout=readout, gen=gen: readout.mvm(x, gen), args.repeats)
        t_prep = median_time(lambda mode=mode: core.prepare(3600.0, mode, 1), max(5, args.repeats // 3))
        rows.append((mode, t_ref, t_mvm, t_prep))
    buf = torch.empty(1024, 256)
    gen = torch.Generator().manual_seed(3)
    t_rng = median_time(lambda: buf.normal_(generator=gen), args.repeats)
    table = [
        f"Machine: {machine()}. Date: {today()}. Median of {args.repeats} runs each.",
        "",
        "| read mode | `x @ W.T` fp32 (ms) | core MVM, fresh read noise (ms) | ratio | `prepare` once per run (ms) |",
        "|---|---|---|---|---|",
    ]
    for mode, t_ref, t_mvm, t_prep in rows:
        table.append(f"| {mode} | {1e3 * t_ref:.3f} | {1e3 * t_mvm:.3f} | {t_mvm / t_ref:.2f}x | {1e3 * t_prep:.2f} |")
    table += [
        "",
        f"Floor: drawing the 1024 x 256 fresh normals alone (`normal_`, torch CPU generator) takes {1e3 * t_rng:.3f} ms"
        f" = {t_rng / rows[0][1]:.2f}x the reference matmul.",
    ]
    text = "\n".join(table)
    print(text)
    if args.write:
        write_section("bench_core", text)


if __name__ == "__main__":
    main()
