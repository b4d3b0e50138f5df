"""Speed of one analog core against a plain fp32 matmul of the same shape (issue #2 speed target).

One 256x256 core, batch 1024, four-phase with fresh read noise: the time of ``CoreReadout.mvm`` (what runs per
batch; ``prepare`` runs once per (chip, t)) relative to ``x @ W.T`` measured in the same run. Target: <= 4x, aim 2x.

Usage: ``python benchmarks/bench_core.py [--write] [--threads N]`` (``--write`` records the figures in
docs/benchmarks.md). With N > 1 the four-phase MVM is also timed on one thread (its reference too). The machine's
load average is printed with the figures: other processes on the cores make the timings (most of all the
multi-threaded ones, whose OpenMP threads then wait for each other) meaningless.
"""

from __future__ import annotations

import argparse
import os

import torch

from aimc import program_core
from aimc.core import fused
from aimc.core.fastmath import int8_products_for
from aimc.core.philox import draw_key, fill_normal_rows_

from _common import machine, median_time, today, write_section


def numba_version() -> str:
    import numba

    return numba.__version__


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="record the figures in docs/benchmarks.md")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of (reference, MVM) medians; the ratio is the median round's"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    w = torch.rand((256, 256), generator=g) * 2 - 1
    x = torch.rand((1024, 256), generator=g) * 2 - 1
    core = program_core(w, "hermes-2dev", "tdp", 0)
    rows = []
    cases = [
        ("four-phase", "auto", args.threads),
        ("one-phase", "auto", args.threads),
        ("four-phase", "torch", args.threads),
    ]
    if args.threads > 1:
        cases.insert(1, ("four-phase", "auto", 1))
    for mode, backend, threads in cases:
        torch.set_num_threads(threads)
        readout = core.prepare(3600.0, mode, 1)
        gen = torch.Generator().manual_seed(2)
        # the reference and the MVM are timed back to back in each round, so that a slow spell of the machine
        # (a shared VM) hits both; the ratio reported is the median of the rounds' ratios, with their range
        rounds = []
        for _ in range(args.rounds):
            t_ref = median_time(lambda: x @ w.T, args.repeats)
            t_mvm = median_time(
                lambda readout=readout, gen=gen, backend=backend: readout.mvm(x, gen, backend=backend), args.repeats
            )
            rounds.append((t_mvm / t_ref, t_ref, t_mvm))
        rounds.sort()
        ratio, t_ref, t_mvm = rounds[len(rounds) // 2]
        t_prep = median_time(lambda mode=mode: core.prepare(3600.0, mode, 1), max(5, args.repeats // 3))
        label = mode if backend == "auto" else f"{mode}, PyTorch path (`backend='torch'`)"
        if threads != args.threads:
            label += f", {threads} thread (reference too)"
        rows.append((label, t_ref, t_mvm, t_prep, ratio, rounds[0][0], rounds[-1][0]))
    torch.set_num_threads(args.threads)
    buf = torch.empty(1024, 256)
    gen = torch.Generator().manual_seed(3)
    t_rng = median_time(lambda: buf.normal_(generator=gen), args.repeats)
    key = draw_key(gen)
    t_philox = median_time(lambda: fill_normal_rows_(buf, key), args.repeats)
    table = [
        f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end. Date: {today()}. "
        f"Median of {args.repeats} runs each, in {args.rounds} rounds (the median round shown). Fused kernels: "
        f"{'numba ' + numba_version() if fused.available() else 'not available'}; int8 product planes: "
        f"{'yes' if int8_products_for(torch.device('cpu')) else 'no'}.",
        "",
        "| read mode | `x @ W.T` fp32 (ms) | core MVM, fresh read noise (ms) | ratio | ratio, all rounds | "
        "`prepare` once per run (ms) |",
        "|---|---|---|---|---|---|",
    ]
    for label, t_ref, t_mvm, t_prep, ratio, low, high in rows:
        table.append(
            f"| {label} | {1e3 * t_ref:.3f} | {1e3 * t_mvm:.3f} | {ratio:.2f}x | {low:.2f}–{high:.2f}x | "
            f"{1e3 * t_prep:.2f} |"
        )
    table += [
        "",
        f"The 1024 x 256 fresh normals alone: {1e3 * t_rng:.3f} ms from PyTorch's CPU generator (`normal_`, "
        f"{t_rng / rows[0][1]:.2f}x the reference matmul); {1e3 * t_philox:.3f} ms as Philox4x32-10 + Box-Muller "
        f"(`aimc.core.philox`, {t_philox / rows[0][1]:.2f}x), which the fused kernel draws inside its pass.",
    ]
    text = "\n".join(table)
    print(text)
    if args.write:
        write_section("bench_core", text)


if __name__ == "__main__":
    main()
