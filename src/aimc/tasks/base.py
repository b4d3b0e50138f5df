"""A task: a network, its data and its metric, and how the software network and a programmed chip are scored.

``aimc eval``, ``aimc reproduce``, sweeps and design spaces all run tasks by name from one registry
(:func:`get_task`); a new task subclasses :class:`Task` and is registered with :func:`register_task`. A task object
travels to Ray workers with a sweep's or a design space's payload, so a task registered in a driver script also runs
on a cluster (its module must be importable there).
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from aimc._registry import Registry
from aimc.chip import ProgrammedChip
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.weights import available_weights
from aimc.weights import weights_path as shipped_weights_path
from aimc.weights.io import load_weights_file

#: Our choice: unlabelled inputs ``aimc eval`` calibrates the converter ranges on at compile time (the first ones of
#: a task's calibration inputs).
CALIBRATION_INPUTS = 256
#: Factor of the read seed in the seed of each chip run of ``aimc eval`` (:meth:`Task.run_seed`).
RUN_SEED_FACTOR = 1_000_003


@dataclass
class TaskData:
    """Test and calibration data of a task.

    Attributes:
        task: the task's name.
        x: test inputs, first dim = samples (images, or character windows).
        y: what the metric compares the outputs against (labels, or the characters to predict).
        x_cal: unlabelled inputs: the compile step's calibration and AdaBS.
    """

    task: str
    x: torch.Tensor
    y: torch.Tensor
    x_cal: torch.Tensor

    @property
    def metric(self) -> str:
        """The task's metric (``"accuracy"``, ``"bpc"``)."""
        return get_task(self.task).metric

    @property
    def size(self) -> int:
        """Test images, or scored characters."""
        return int(self.y.numel())


class Task(ABC):
    """A network and its metric, by name.

    A subclass gives the untrained network and its input (:meth:`architecture`, :meth:`example_input`) and the data
    (:meth:`load_data`). The metric is top-1 accuracy of class logits unless :meth:`scores` says otherwise; the
    software network and the chip are read in batches of :attr:`batch_size` inputs. A task whose data or reading
    does not fit this may override :meth:`software` and :meth:`score` instead.

    Class attributes:
        name: the name used by ``aimc eval``, sweep and design-space files.
        metric: the key of the metric in :meth:`scores` (``"accuracy"``: a fraction, higher is better).
        metric_label: axis and table label of the metric.
        display_scale: factor from the metric to the displayed value (100 for a fraction shown in %).
        higher_is_better: direction of the metric.
        default_weights: shipped weights used when none are named (None: the network brings its own).
        batch_size: inputs per run of the network and of the chip when scoring (None: all at once).
        calibration_inputs: unlabelled inputs :meth:`load_data` loads by default.
    """

    name: str
    metric: str = "accuracy"
    metric_label: str = "top-1 accuracy (%)"
    display_scale: float = 100.0
    higher_is_better: bool = True
    default_weights: str | None = None
    batch_size: int | None = 250
    calibration_inputs: int = CALIBRATION_INPUTS

    @abstractmethod
    def architecture(self) -> torch.nn.Module:
        """An untrained instance of the network."""

    @abstractmethod
    def example_input(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """A small batch of network inputs, on which :meth:`architecture` can be captured."""

    @abstractmethod
    def load_data(self, samples: int | None, data_dir: str | None, *, calibration: int | None = None) -> TaskData:
        """The first ``samples`` test samples (all when None) and ``calibration`` unlabelled inputs (None:
        :attr:`calibration_inputs`), from ``data_dir`` (None: the data set's default search)."""

    # ------------------------------------------------------------------ weights
    def weights_path(self, weights: str | os.PathLike[str] | None = None) -> Path | None:
        """The weights file of a shipped name or a ``.safetensors`` path (None: :attr:`default_weights`; None if the
        task has none either)."""
        name = self.default_weights if weights is None else str(weights)
        if name is None:
            return None
        if name in available_weights():
            return shipped_weights_path(name)
        if not name.endswith(".safetensors"):
            raise ValidationError(
                f"weights must be a .safetensors file or a shipped name ({', '.join(available_weights())}); "
                f"got {name!r}"
            )
        return Path(name)

    def load_model(self, weights: str | os.PathLike[str] | None = None) -> torch.nn.Module:
        """The network with the trained ``weights`` (:meth:`weights_path`; read as untrusted input), in eval mode."""
        model = self.architecture()
        path = self.weights_path(weights)
        if path is not None:
            load_weights_file(path, model)
        return model.eval()

    def identity(self, weights: str | None = None) -> str:
        """SHA-256 of what the results depend on besides the chip: the weights file (or the model's tensors)."""
        h = hashlib.sha256()
        path = self.weights_path(weights)
        if path is not None:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            return h.hexdigest()
        for k, v in sorted(self.load_model(weights).state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    def check_data(self, data_dir: str | None) -> None:
        """Raise an AimcError if the task's data cannot be found or read (runs before any expensive work): loads one
        test sample and one calibration input."""
        self.load_data(1, data_dir, calibration=1)

    # ------------------------------------------------------------------ scoring
    def scores(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """The metric (key :attr:`metric`) and the counts behind it, of the network's ``outputs`` on all test
        samples: here top-1 accuracy of class logits ``(N, classes)`` against labels ``(N,)``."""
        correct = int((outputs.argmax(-1) == targets).sum())
        return {self.metric: correct / len(targets), "correct": correct, "samples": len(targets)}

    def batches(self, data: TaskData, batch_size: int | None = None) -> Iterator[tuple[int, int, torch.Tensor]]:
        """``(batch index, first sample, inputs)`` of each run over ``data.x`` (``batch_size``, default
        :attr:`batch_size`; None: one run)."""
        size = batch_size if batch_size is not None else self.batch_size
        step = len(data.x) if size is None else size
        for b, start in enumerate(range(0, len(data.x), step)):
            yield b, start, data.x[start : start + step]

    def software_scores(
        self, model: torch.nn.Module, data: TaskData, batch_size: int | None = None
    ) -> dict[str, float]:
        """:meth:`scores` of the PyTorch network (float32) on ``data``, run in batches of ``batch_size`` (default
        :attr:`batch_size`)."""
        with torch.no_grad():
            outputs = [model(x) for _, _, x in self.batches(data, batch_size)]
        return self.scores(torch.cat(outputs), data.y)

    def software(self, model: torch.nn.Module, data: TaskData) -> float:
        """The metric of the PyTorch network on ``data``."""
        return self.software_scores(model, data)[self.metric]

    def chip_scores(
        self,
        chip: ProgrammedChip,
        data: TaskData,
        *,
        t_seconds: float,
        mode: str,
        seed: Callable[[int, int], int],
        batch_size: int | None = None,
        **run_kwargs: Any,
    ) -> dict[str, float]:
        """:meth:`scores` of ``chip`` read ``t_seconds`` after programming, in runs of ``batch_size`` inputs (default
        :attr:`batch_size`); the run of batch ``b`` starting at sample ``start`` draws its read noise from
        ``seed(b, start)``. ``run_kwargs`` go to :meth:`~aimc.chip.ProgrammedChip.run`."""
        outputs = [
            chip.run(x, t=t_seconds, mode=mode, seed=seed(b, start), **run_kwargs)
            for b, start, x in self.batches(data, batch_size)
        ]
        return self.scores(torch.cat(outputs), data.y)

    def run_seed(self, read_seed: int, start: int) -> int:
        """The read-noise seed of the chip run over the samples from ``start`` when the chip is read with
        ``read_seed`` (:meth:`score`): ``read_seed`` x :data:`RUN_SEED_FACTOR` + ``start``."""
        return read_seed * RUN_SEED_FACTOR + start

    def score(
        self, chip: ProgrammedChip, data: TaskData, t_seconds: float, mode: str, read_seed: int, **run_kwargs: Any
    ) -> float:
        """The metric of ``chip`` on ``data`` read ``t_seconds`` after programming, its runs seeded by
        :meth:`run_seed` from ``read_seed`` (as ``aimc eval`` reads it)."""
        scores = self.chip_scores(
            chip,
            data,
            t_seconds=t_seconds,
            mode=mode,
            seed=lambda _b, start: self.run_seed(read_seed, start),
            **run_kwargs,
        )
        return scores[self.metric]


#: The tasks by name.
_TASKS: Registry[Task] = Registry("task")


def register_task(task: Task, *, replace: bool = False) -> None:
    """Make ``task`` available under ``task.name`` (``replace``: allow replacing a task of the same name)."""
    if not isinstance(task, Task):
        raise ArgumentTypeError(f"task must be an aimc.tasks.Task instance, got {type(task).__name__}")
    _TASKS.register(getattr(task, "name", None), task, replace=replace)  # type: ignore[arg-type]


def available_tasks() -> list[str]:
    """Names of the registered tasks."""
    return _TASKS.available()


def get_task(name: str) -> Task:
    """The registered task ``name``; UnknownNameError naming the registered ones otherwise."""
    return _TASKS.get(name)


__all__ = [
    "CALIBRATION_INPUTS",
    "RUN_SEED_FACTOR",
    "Task",
    "TaskData",
    "available_tasks",
    "get_task",
    "register_task",
]
