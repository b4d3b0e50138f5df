"""A trained network on the simulated chip: quantisation-only and chip metrics over time, for any task
(:mod:`aimc.tasks`: ``"resnet9"`` top-1 accuracy, ``"char-lstm"`` and ``"char-transformer"`` bits per character).

The chip paper's networks and figures: docs/physics.md §11.

For each seed a chip is programmed once and read at every time after programming (as real hardware is), each read
with fresh read noise; global drift compensation is always on (docs/physics.md §4.1) and adaptive batch-norm statistics
(:mod:`aimc.chip.adabs`) optionally recalibrates the LDPU registers at each time on unlabelled training data.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

import torch

from aimc._progress import progress as _progress
from aimc.chip import program
from aimc.chip.adabs import adabs, reference_moments
from aimc.compiler import compile as compile_network
from aimc.compiler.mapping import Mapping
from aimc.core.config import CoreConfig
from aimc.errors import ValidationError
from aimc.experiments.accuracy import AccuracyPoint
from aimc.tasks import CALIBRATION_INPUTS, TaskData, get_task


def compile_task(model: torch.nn.Module, data: TaskData, **compile_kwargs: Any) -> Mapping:
    """The network compiled for the chip, converter ranges calibrated on the first :data:`CALIBRATION_INPUTS`
    unlabelled inputs of ``data``; ``compile_kwargs`` go to :func:`aimc.compile` (e.g. faults' dead cores)."""
    return compile_network(model, calibration=data.x_cal[:CALIBRATION_INPUTS], name=data.task, **compile_kwargs)


def quantisation_only(mapping: Mapping, data: TaskData) -> float:
    """The metric with exact weights (ideal devices, no read noise) and the chip's converters and digital units."""
    chip = program(mapping, "ideal", "tdp", seed=0)
    return get_task(data.task).score(chip, data, 60.0, "four-phase", 0, read_noise=False)


def metric_over_time(
    mapping: Mapping,
    data: TaskData,
    *,
    device: str = "hermes-2dev",
    strategy: str = "tdp",
    mode: str = "four-phase",
    times: Sequence[float] = (3600.0,),
    seeds: Sequence[int] = (0,),
    use_adabs: bool = False,
    faults: Any = None,
    progress: bool = True,
    config: CoreConfig | None = None,
) -> list[AccuracyPoint]:
    """The metric on chips programmed with each seed and read at each time: mean ± std over seeds per time.

    ``config``: the cores' unpublished parameters (default :class:`~aimc.core.config.CoreConfig`).
    ``progress``: show the chip reads done on stderr (a live bar on a terminal, a line per read otherwise).
    """
    if not list(seeds) or not list(times):
        raise ValidationError(f"seeds and times must each list at least one value; got {list(seeds)}, {list(times)}")
    task = get_task(data.task)
    reference = reference_moments(mapping, data.x_cal) if use_adabs else None
    values: dict[float, list[float]] = {t: [] for t in times}
    desc = f"eval {data.task} {strategy} {mode}{' +AdaBS' if use_adabs else ''}"
    with _progress(total=len(seeds) * len(times), desc=desc, unit="chip reads", enabled=progress) as bar:
        for seed in seeds:
            chip = program(mapping, device, strategy, seed=seed, faults=faults, config=config)
            for j, t in enumerate(times):
                read_seed = 1_000_003 * seed + 7919 * j
                used = chip
                if use_adabs:
                    used = adabs(chip, data.x_cal, t, mode=mode, seed=read_seed + 1, reference=reference)
                values[t].append(task.score(used, data, t, mode, read_seed))
                bar.set_postfix_str(f"seed {seed} t={t:g} s: {task.metric} {values[t][-1]:.4g}", refresh=False)
                bar.update(1)
    return [
        AccuracyPoint(t, statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, v) for t, v in values.items()
    ]
