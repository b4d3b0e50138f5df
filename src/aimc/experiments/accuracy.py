"""Accuracy of a network on the simulated chip over time after programming (the chip paper's Fig. 3c / 4c kind).

For each seed the chip is programmed once (``aimc.program``) and read at every time after programming, as real
hardware is; each read is a fresh run (new read noise). Reported: mean ± std over seeds at each time.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch

from aimc._progress import progress as _progress
from aimc._validation import check_finite_tensor, check_number
from aimc.chip import program
from aimc.compiler.mapping import Mapping
from aimc.core.config import CoreConfig
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.faults import Faults


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
    faults: Faults | None = None,
) -> list[AccuracyPoint]:
    """Top-1 accuracy of ``mapping`` on ``(x, y)`` on chips programmed with each seed, read at each time.

    ``faults`` (:class:`aimc.faults.Faults`) gives every programmed chip these hardware defects; with
    ``faults.seed`` None each seed is a different die (its own stuck-device map). ``progress``: show the chip reads
    done on stderr (a live bar on a terminal, a line per read otherwise).
    """
    check_classification_data(x, y)
    if not list(seeds) or not list(times):
        raise ValidationError(f"seeds and times must each list at least one value; got {list(seeds)}, {list(times)}")
    check_number(batch_size, "batch_size", low=1, integer=True)
    acc: dict[float, list[float]] = {t: [] for t in times}
    desc = f"accuracy {strategy} {mode}"
    with _progress(total=len(seeds) * len(times), desc=desc, unit="chip reads", enabled=progress) as bar:
        for seed in seeds:
            chip = program(mapping, device, strategy, seed=seed, config=config, faults=faults)
            for j, t in enumerate(times):
                correct = 0
                for i in range(0, len(x), batch_size):
                    out = chip.run(x[i : i + batch_size], t=t, mode=mode, seed=1_000_003 * seed + 7919 * j + i)
                    correct += int((out.argmax(1) == y[i : i + batch_size]).sum())
                acc[t].append(correct / len(x))
                bar.set_postfix_str(f"seed {seed} t={t:g} s: accuracy {acc[t][-1]:.4g}", refresh=False)
                bar.update(1)
    return [
        AccuracyPoint(t, statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, v) for t, v in acc.items()
    ]


def check_classification_data(x: object, y: object) -> None:
    """Check a labelled batch: ``x`` a finite float tensor ``(N, ...)``, ``y`` integer labels ``(N,)``, N >= 1."""
    check_finite_tensor(x, "x")
    if not isinstance(y, torch.Tensor) or y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ArgumentTypeError(f"y must be an integer label tensor, got {getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() != 1 or len(y) != len(x):  # type: ignore[arg-type]
        raise ValidationError(f"y must have shape ({len(x)},) to label x; got {tuple(y.shape)}")  # type: ignore[arg-type]


def points_as_dicts(points: Sequence[AccuracyPoint]) -> list[dict[str, Any]]:
    """Points as plain dicts (JSON)."""
    return [asdict(p) for p in points]
