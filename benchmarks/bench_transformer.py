"""Transformer speed: a 4-layer d=256 transformer encoder (4 heads, feed-forward 1,024, pre-norm, GELU) on a batch of 32
sequences of 128 tokens, on the simulated chip against the PyTorch fp32 forward pass of the same network.

The chip run is four-phase with read noise on, 1 hour after programming (hermes-2dev, TDP): the 16 projection and
feed-forward matrices on 48 cores, attention's products, softmax, LayerNorm and GELU as FP16 digital ops. One
process runs a PyTorch pass and a chip pass back to back, ``--repeats`` rounds after a warm-up; the ratio is the
median of the rounds' ratios (a shared machine's slow spells then hit both sides of a round alike). Target: chip time
<= 3x PyTorch (aim 1.5x). The kernels are those chosen on this machine (``aimc info``), or those forced by
``AIMC_KERNELS``.

Usage: ``python benchmarks/bench_transformer.py [--write] [--repeats N]`` (``--write`` records this machine's row in
docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from _common import kernels_used, machine, machine_label, today, write_row

#: The benchmark's network and batch.
LAYERS, D_MODEL, HEADS, FF, SEQ, BATCH = 4, 256, 4, 1024, 128, 32


def build() -> tuple[nn.Module, torch.Tensor]:
    """The encoder (seeded) and its input batch (B, T, d)."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(
        D_MODEL, HEADS, FF, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    model = nn.TransformerEncoder(layer, LAYERS, enable_nested_tensor=False).eval()
    return model, torch.randn(BATCH, SEQ, D_MODEL, generator=torch.Generator().manual_seed(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--repeats", type=int, default=7, help="timed rounds (default 7)")
    args = parser.parse_args()
    import aimc

    torch.set_num_threads(2)
    model, x = build()
    start = time.perf_counter()
    mapping = aimc.compile(model, calibration=x, progress=False)
    compile_s = time.perf_counter() - start
    chip = aimc.program(mapping, device="hermes-2dev", strategy="tdp", seed=0)

    def run_torch() -> None:
        with torch.no_grad():
            model(x)

    def run_chip(seed: int) -> None:
        chip.run(x, t=3600.0, mode="four-phase", seed=seed)

    run_torch()
    run_chip(0)  # warm-up: kernel choice and compilation
    rounds = []
    for r in range(args.repeats):
        t0 = time.perf_counter()
        run_torch()
        t1 = time.perf_counter()
        run_chip(r + 1)
        t2 = time.perf_counter()
        rounds.append((t1 - t0, t2 - t1))
    torch_s = statistics.median(a for a, _ in rounds)
    chip_s = statistics.median(b for _, b in rounds)
    ratios = [b / a for a, b in rounds]
    ratio = statistics.median(ratios)
    print(f"Machine: {machine()}. Date: {today()}. {args.repeats} rounds.")
    print(f"Kernels: {kernels_used()}")
    print(f"mapping: {mapping.cores_used} cores; compile {compile_s:.1f} s")
    print(
        f"time, {BATCH} x {SEQ} tokens: PyTorch {torch_s:.3f} s, chip {chip_s:.3f} s, ratio {ratio:.2f}x "
        f"(rounds {min(ratios):.2f}-{max(ratios):.2f}x)"
    )
    if args.write:
        write_row(
            "bench_transformer",
            ["machine", "date", "torch", "kernels", "PyTorch (s)", "chip (s)", "time ratio"],
            [
                machine_label(),
                today(),
                torch.__version__,
                kernels_used(),
                f"{torch_s:.3f}",
                f"{chip_s:.3f}",
                f"**{ratio:.2f}x** ({min(ratios):.2f}–{max(ratios):.2f})",
            ],
        )


if __name__ == "__main__":
    main()
