"""Speed of one analog core against a plain fp32 matmul of the same shape.

One 256 x 256 core, batch 1024, four-phase with fresh read noise: the time of ``CoreReadout.mvm`` (what runs per
batch; ``prepare`` runs once per (chip, t)) relative to ``x @ W.T`` measured in the same run. Target: <= 4x, aim 2x.
The kernels are those chosen on this machine (``aimc info``), or those forced by ``AIMC_KERNELS``.

Usage: ``python benchmarks/bench_core.py [--write] [--threads N]`` (``--write`` records this machine's row in
docs/benchmarks.md). With N > 1 the four-phase MVM is also timed on one thread (its reference too). The machine's
load average is printed with the figures: other processes on the cores make the timings meaningless.
"""

from __future__ import annotations

import argparse
import os

import torch

from aimc import program_core
from aimc.core.philox import draw_key, fill_normal_rows_
from aimc.kernels import Backend

from _common import kernels_used, machine, machine_label, median_time, today, write_row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="record this machine's row in docs/benchmarks.md")
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
    results = {}
    cases = {
        "four-phase": ("four-phase", None, args.threads),
        "one-phase": ("one-phase", None, args.threads),
        "torch tail": ("four-phase", Backend(mvm_tail="torch"), args.threads),
    }
    if args.threads > 1:
        cases["1 thread"] = ("four-phase", None, 1)
    for label, (mode, backend, threads) in cases.items():
        torch.set_num_threads(threads)
        readout = core.prepare(3600.0, mode, 1, backend=backend)
        gen = torch.Generator().manual_seed(2)
        # the reference and the MVM are timed back to back in each round, so that a slow spell of the machine
        # (a shared VM) hits both; the ratio reported is the median of the rounds' ratios, with their range
        rounds = []
        for _ in range(args.rounds):
            t_ref = median_time(lambda: x @ w.T, args.repeats)
            t_mvm = median_time(lambda readout=readout, gen=gen: readout.mvm(x, gen), args.repeats)
            rounds.append((t_mvm / t_ref, t_ref, t_mvm))
        rounds.sort()
        ratio, t_ref, t_mvm = rounds[len(rounds) // 2]
        t_prep = median_time(lambda mode=mode, b=backend: core.prepare(3600.0, mode, 1, backend=b), 5)
        results[label] = (t_ref, t_mvm, ratio, rounds[0][0], rounds[-1][0], t_prep, dict(readout.kernels))
        print(
            f"{label:>12}: x @ W.T {1e3 * t_ref:.3f} ms, MVM {1e3 * t_mvm:.3f} ms, {ratio:.2f}x "
            f"(rounds {rounds[0][0]:.2f}-{rounds[-1][0]:.2f}x), prepare {1e3 * t_prep:.2f} ms; {readout.kernels}"
        )
    torch.set_num_threads(args.threads)
    buf = torch.empty(1024, 256)
    gen = torch.Generator().manual_seed(3)
    t_rng = median_time(lambda: buf.normal_(generator=gen), args.repeats)
    key = draw_key(gen)
    t_philox = median_time(lambda: fill_normal_rows_(buf, key), args.repeats)
    print(f"1024 x 256 normals: PyTorch {1e3 * t_rng:.3f} ms, Philox (in the fused pass) {1e3 * t_philox:.3f} ms")
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f} at the end. Date: {today()}.")
    print(f"Kernels: {kernels_used()}")
    if args.write:

        def ratio(label: str) -> str:
            r = results.get(label)
            return "" if r is None else f"{r[2]:.2f}x"

        t_ref, t_mvm, r, low, high, t_prep, chosen = results["four-phase"]
        write_row(
            "bench_core",
            [
                "machine",
                "date",
                "torch",
                "kernels (four-phase)",
                "`x @ W.T` (ms)",
                "MVM (ms)",
                "four-phase",
                "one-phase",
                "1 thread",
                "PyTorch tail",
                "`prepare` (ms)",
            ],
            [
                machine_label(),
                today(),
                torch.__version__,
                ", ".join(chosen.values()),
                f"{1e3 * t_ref:.3f}",
                f"{1e3 * t_mvm:.3f}",
                f"**{r:.2f}x** ({low:.2f}–{high:.2f})",
                ratio("one-phase"),
                ratio("1 thread"),
                ratio("torch tail"),
                f"{1e3 * t_prep:.2f}",
            ],
        )


if __name__ == "__main__":
    main()
