"""A trained network on the simulated chip: software, quantisation-only and chip metrics over time.

The chip paper's networks and figures: docs/physics.md §11.

One entry point for both of the chip paper's benchmark tasks:

- ``"resnet9"``: top-1 accuracy on CIFAR-10 test images (higher is better);
- ``"char-lstm"``: bits per character on character-level PTB (lower is better), windows of
  :mod:`aimc.experiments.language`;
- ``"char-transformer"``: the same metric and text for the character-level transformer (not in the chip paper),
  windows of its context: :data:`TRANSFORMER_WARMUP` characters read, the next ones scored.

For each seed a chip is programmed once and read at every time after programming (as real hardware is), each read
with fresh read noise; global drift compensation is always on (docs/physics.md §4.1) and adaptive batch-norm statistics
(:mod:`aimc.chip.adabs`) optionally recalibrates the LDPU registers at each time on unlabelled training data.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from aimc._progress import progress as _progress
from aimc.chip import ProgrammedChip, program
from aimc.chip.adabs import adabs, reference_moments
from aimc.compiler import compile as compile_network
from aimc.compiler.mapping import Mapping
from aimc.core.config import CoreConfig
from aimc.errors import ValidationError
from aimc.experiments.accuracy import AccuracyPoint
from aimc.experiments.language import bpc_from_logits, windows

TASKS = ("resnet9", "char-lstm", "char-transformer")
#: Default shipped weights of each task.
DEFAULT_WEIGHTS = {"resnet9": "resnet9_hwa", "char-lstm": "char_lstm_hwa", "char-transformer": "char_transformer_hwa"}
#: Our choice: characters each char-transformer window reads before its scored part (half its 128-character
#: context; the other half is scored, so every scored character has at least this much context).
TRANSFORMER_WARMUP = 64
#: Windows per chip run of the char-transformer (memory of the attention matrices vs speed).
TRANSFORMER_BATCH = 64
#: Our choice: unlabelled training inputs for AdaBS (images, or character windows of the LSTM).
ADABS_INPUTS = 500
#: Our choice: inputs used to calibrate the converter ranges at compile time.
CALIBRATION_INPUTS = 256
#: Images per chip run (memory vs speed).
BATCH = 250


@dataclass
class TaskData:
    """Test and calibration data of a task. ``x``/``y``: test inputs and targets; ``x_cal``: unlabelled inputs."""

    task: str
    x: torch.Tensor
    y: torch.Tensor
    x_cal: torch.Tensor

    @property
    def metric(self) -> str:
        return "accuracy" if self.task == "resnet9" else "bpc"

    @property
    def size(self) -> int:
        """Test images, or scored characters."""
        return int(self.y.numel())


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ValidationError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    return task


def load_network(task: str, weights: str | None = None) -> tuple[torch.nn.Module, str]:
    """The task's network with trained weights (a shipped name or a .safetensors path), in eval mode."""
    from aimc.models import get_model
    from aimc.weights import available_weights, weights_path
    from aimc.weights.io import load_weights_file

    check_task(task)
    name = weights or DEFAULT_WEIGHTS[task]
    if not name.endswith(".safetensors"):
        if name not in available_weights():
            raise ValidationError(
                f"weights must be a .safetensors file or a shipped name ({', '.join(available_weights())}); "
                f"got {name!r}"
            )
        name = str(weights_path(name))
    model = get_model(task)
    load_weights_file(name, model)
    return model.eval(), name


def load_data(task: str, n: int | None = None, data_dir: str | None = None, streams: int = 256) -> TaskData:
    """Test data of the task: the first ``n`` test images, or ``n`` characters of the PTB test set read as
    ``streams`` windows (all when None), and unlabelled training inputs for calibration and AdaBS."""
    check_task(task)
    if task == "resnet9":
        from aimc.data import cifar10_tensors

        x, y = cifar10_tensors("test", n, data_dir)
        x_cal, _ = cifar10_tensors("train", ADABS_INPUTS, data_dir)
        return TaskData(task, x, y, x_cal)
    from aimc.data.ptb import ptb_chars

    test = ptb_chars("test", data_dir)
    if n is not None:
        test = test[: n + 1]
    if task == "char-transformer":  # windows of the context: the first half read, the second scored
        scored = TRANSFORMER_WARMUP
        x, y = windows(test, max(1, (test.numel() - 1) // scored), TRANSFORMER_WARMUP)
        cal, _ = windows(ptb_chars("valid", data_dir)[: 128 * scored + 1], 128, TRANSFORMER_WARMUP)
        return TaskData(task, x, y, cal)
    x, y = windows(test, min(streams, max(1, (test.numel() - 1) // 2)))
    cal, _ = windows(ptb_chars("valid", data_dir)[:20_001], 64)
    return TaskData(task, x, y, cal)


def software_metric(model: torch.nn.Module, data: TaskData) -> float:
    """The PyTorch model's metric (float32)."""
    with torch.no_grad():
        if data.task == "char-lstm":
            return bpc_from_logits(model(data.x), data.y)
        if data.task == "char-transformer":
            logits = torch.cat(
                [model(data.x[i : i + TRANSFORMER_BATCH]) for i in range(0, len(data.x), TRANSFORMER_BATCH)]
            )
            return bpc_from_logits(logits, data.y)
        correct = sum(
            int((model(data.x[i : i + BATCH]).argmax(1) == data.y[i : i + BATCH]).sum())
            for i in range(0, len(data.x), BATCH)
        )
    return correct / len(data.x)


def chip_metric(chip: ProgrammedChip, data: TaskData, t: float, mode: str, seed: int, **run_kwargs: Any) -> float:
    """One read of the chip over the test data at ``t`` seconds after programming."""
    if data.task == "char-lstm":
        return bpc_from_logits(chip.run(data.x, t=t, mode=mode, seed=seed, **run_kwargs), data.y)
    if data.task == "char-transformer":
        b = TRANSFORMER_BATCH
        logits = [
            chip.run(data.x[i : i + b], t=t, mode=mode, seed=seed * 1_000_003 + i, **run_kwargs)
            for i in range(0, len(data.x), b)
        ]
        return bpc_from_logits(torch.cat(logits), data.y)
    correct = 0
    for i in range(0, len(data.x), BATCH):
        out = chip.run(data.x[i : i + BATCH], t=t, mode=mode, seed=seed * 1_000_003 + i, **run_kwargs)
        correct += int((out.argmax(1) == data.y[i : i + BATCH]).sum())
    return correct / len(data.x)


def compile_task(model: torch.nn.Module, data: TaskData) -> Mapping:
    """The network compiled for the chip, converter ranges calibrated on unlabelled training inputs."""
    return compile_network(model, calibration=data.x_cal[:CALIBRATION_INPUTS], name=data.task)


def quantisation_only(mapping: Mapping, data: TaskData) -> float:
    """The metric with exact weights (ideal devices, no read noise) and the chip's converters and digital units."""
    chip = program(mapping, "ideal", "tdp", seed=0)
    return chip_metric(chip, data, 60.0, "four-phase", 0, read_noise=False)


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
                values[t].append(chip_metric(used, data, t, mode, read_seed))
                bar.set_postfix_str(f"seed {seed} t={t:g} s: {data.metric} {values[t][-1]:.4g}", refresh=False)
                bar.update(1)
    return [
        AccuracyPoint(t, statistics.fmean(v), statistics.pstdev(v) if len(v) > 1 else 0.0, v) for t, v in values.items()
    ]
