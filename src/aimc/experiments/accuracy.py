"""Accuracy of a network on the simulated chip over time after programming (the chip paper's Fig. 3c / 4c kind).

For each seed the chip is programmed once (``aimc.program``) and read at every time after programming, as real
hardware is; each read is a fresh run (new read noise). Reported: mean ± std over seeds at each time.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from aimc.chip import program
from aimc.compiler.mapping import Mapping
from aimc.core.config import CoreConfig


@dataclass(frozen=True)
class AccuracyPoint:
    """Accuracy at one time after programming over several programmed chips."""

    t_seconds: float
    mean: float
    std: float
    per_seed: list[float]


def classification_accuracy(
    mapping: Mapping,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: str = "hermes-2dev",
    strategy: str = "tdp",
    mode: str = "four-phase",
    times: Sequence[float] = (3600.0,),
    seeds: Sequence[int] = (0,),
    batch_size: int = 250,
    config: CoreConfig | None = None,
    progress: bool = True,
) -> list[AccuracyPoint]:
    """Top-1 accuracy of ``mapping`` on ``(x, y)`` on chips programmed with each seed, read at each time."""
    acc: dict[float, list[float]] = {t: [] for t in times}
    start = time.time()
    for k, seed in enumerate(seeds):
        chip = program(mapping, device, strategy, seed=seed, config=config)
        for j, t in enumerate(times):
            correct = 0
            for i in range(0, len(x), batch_size):
                out = chip.run(x[i : i + batch_size], t=t, mode=mode, seed=1_000_003 * seed + 7919 * j + i)
                correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
            acc[t].append(correct / len(x))
            if progress:
                done = k * len(times) + j + 1
                print(
                    f"\r  {strategy} {mode}: {done}/{len(seeds) * len(times)} chip reads, {time.time() - start:.0f} s",
                    end="",
                    file=sys.stderr,
                    flush=True,
                )
    if progress:
        print(file=sys.stderr)
    return [
        AccuracyPoint(t, statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, v) for t, v in acc.items()
    ]


def points_as_dicts(points: Sequence[AccuracyPoint]) -> list[dict[str, Any]]:
    """Points as plain dicts (JSON)."""
    return [asdict(p) for p in points]
