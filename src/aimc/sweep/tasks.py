"""Network tasks of a sweep, chosen by name: how to load a network's weights and data, what the software reference
is, and how one programmed chip is scored at one (time, mode).

A sweep file's ``network:`` names a task from this registry. Built in: ``resnet9`` (CIFAR-10 top-1 accuracy).
Another network adds a subclass of :class:`NetworkTask` and calls :func:`register_task`; the sweep machinery
(store, executors, report) is the same for all. The task object itself is shipped to Ray workers, so a task
registered in a driver script also runs on a cluster.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from aimc.errors import ArgumentTypeError
from aimc.sweep.errors import SweepSpecError
from aimc.sweep.points import batch_seed

if TYPE_CHECKING:
    from aimc.chip import ProgrammedChip
    from aimc.sweep.spec import DataSpec


@dataclass(frozen=True)
class TaskData:
    """The evaluation data a task ships to every worker once.

    Attributes:
        inputs: network inputs, first dim = samples (e.g. ``(N, 3, 32, 32)`` images).
        targets: what the metric compares against, first dim = samples (e.g. ``(N,)`` labels).
    """

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.inputs.shape[0])


class NetworkTask(ABC):
    """A network and its metric, as a sweep runs it.

    Class attributes:
        name: the name used in sweep files.
        metric: the key of the metric in :meth:`evaluate`'s result (stored per point).
        metric_label: axis/table label of the metric.
        display_scale: factor from the stored value to the displayed one (100 for a fraction shown in %).
        higher_is_better: direction of the metric.
        default_weights: shipped weights used when the sweep file names none.
    """

    name: str
    metric: str
    metric_label: str
    display_scale: float = 1.0
    higher_is_better: bool = True
    default_weights: str | None = None

    def resolve_weights(self, weights: str, *, where: str = "") -> Path:
        """The weights file of a shipped name or a ``.safetensors`` path; raises SweepSpecError if it is missing."""
        from aimc.weights import available_weights, weights_path

        if weights in available_weights():
            return weights_path(weights)
        path = Path(weights)
        if path.suffix != ".safetensors":
            raise SweepSpecError(
                f"{where}weights must be a shipped name ({', '.join(available_weights())}) or a path to a "
                f".safetensors file; got {weights!r}"
            )
        if not path.is_file():
            raise SweepSpecError(f"{where}weights file {str(path)!r} does not exist")
        return path

    @abstractmethod
    def check_data(self, data: DataSpec) -> None:
        """Raise an AimcError if the data set cannot be found (cheap: runs before any work)."""

    @abstractmethod
    def load_model(self, weights: Path) -> torch.nn.Module:
        """The software network with its weights, in eval mode."""

    @abstractmethod
    def calibration_input(self, data: DataSpec) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The example input ``aimc.compile`` calibrates on (``data.calibration_samples`` training samples)."""

    @abstractmethod
    def load_data(self, data: DataSpec) -> TaskData:
        """The evaluation data (``data.samples`` test samples)."""

    @abstractmethod
    def software(self, model: torch.nn.Module, data: TaskData, batch_size: int) -> dict[str, float]:
        """The metric of the software network on ``data`` (the report's reference line)."""

    @abstractmethod
    def evaluate(
        self,
        chip: ProgrammedChip,
        data: TaskData,
        *,
        t_seconds: float,
        mode: str,
        drift_compensation: bool,
        read_seed: int,
        batch_size: int,
    ) -> dict[str, float]:
        """Score ``chip`` on ``data`` read ``t_seconds`` after programming; batch ``b`` of the data uses the
        read-noise seed ``batch_seed(read_seed, b)``. Returns a dict holding at least ``self.metric``."""


class ResNet9Cifar10(NetworkTask):
    """ResNet-9 on CIFAR-10, top-1 accuracy (the chip paper's Fig. 3 experiment; docs/physics.md §11)."""

    name = "resnet9"
    metric = "accuracy"
    metric_label = "top-1 accuracy (%)"
    display_scale = 100.0
    higher_is_better = True
    default_weights = "resnet9_hwa"

    def check_data(self, data: DataSpec) -> None:
        from aimc.data import find_data_dir

        find_data_dir(data.dir)

    def load_model(self, weights: Path) -> torch.nn.Module:
        from aimc.models import resnet9
        from aimc.weights.io import load_weights_file

        model = resnet9()
        load_weights_file(weights, model)
        return model.eval()

    def calibration_input(self, data: DataSpec) -> torch.Tensor:
        from aimc.data import cifar10_tensors

        x, _ = cifar10_tensors("train", data.calibration_samples, data.dir)
        return x

    def load_data(self, data: DataSpec) -> TaskData:
        from aimc.data import cifar10_tensors

        x, y = cifar10_tensors("test", data.samples, data.dir)
        return TaskData(x, y)

    def software(self, model: torch.nn.Module, data: TaskData, batch_size: int) -> dict[str, float]:
        correct = 0
        with torch.no_grad():
            for i in range(0, len(data), batch_size):
                out = model(data.inputs[i : i + batch_size])
                correct += int((out.argmax(1) == data.targets[i : i + batch_size]).sum())
        return {self.metric: correct / len(data), "correct": correct, "samples": len(data)}

    def evaluate(
        self,
        chip: ProgrammedChip,
        data: TaskData,
        *,
        t_seconds: float,
        mode: str,
        drift_compensation: bool,
        read_seed: int,
        batch_size: int,
    ) -> dict[str, float]:
        correct = 0
        for b, i in enumerate(range(0, len(data), batch_size)):
            out = chip.run(
                data.inputs[i : i + batch_size],
                t=t_seconds,
                mode=mode,
                seed=batch_seed(read_seed, b),
                drift_compensation=drift_compensation,
            )
            correct += int((out.argmax(1) == data.targets[i : i + batch_size]).sum())
        return {self.metric: correct / len(data), "correct": correct, "samples": len(data)}


_TASKS: dict[str, NetworkTask] = {}


def register_task(task: NetworkTask, *, replace: bool = False) -> None:
    """Make ``task`` available to sweep files under ``task.name``.

    Args:
        task: a :class:`NetworkTask` instance.
        replace: allow replacing a task of the same name.
    """
    if not isinstance(task, NetworkTask):
        raise ArgumentTypeError(f"task must be an aimc.sweep.NetworkTask instance, got {type(task).__name__}")
    name = getattr(task, "name", None)
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError(f"task.name must be a non-empty string, got {name!r}")
    if name in _TASKS and not replace:
        raise SweepSpecError(f"a network task named {name!r} is already registered (pass replace=True to replace it)")
    _TASKS[name] = task


def available_tasks() -> list[str]:
    """Names of the registered network tasks."""
    return sorted(_TASKS)


def get_task(name: str, *, where: str = "") -> NetworkTask:
    """The registered task ``name``; raises SweepSpecError naming the registered ones otherwise."""
    if not isinstance(name, str) or name not in _TASKS:
        raise SweepSpecError(f"{where}network must be one of {', '.join(map(repr, available_tasks()))}; got {name!r}")
    return _TASKS[name]


def task_info(task: NetworkTask) -> dict[str, Any]:
    """What the report needs to know about a task's metric (recorded in the store)."""
    return {
        "network": task.name,
        "metric": task.metric,
        "metric_label": task.metric_label,
        "display_scale": task.display_scale,
        "higher_is_better": task.higher_is_better,
    }


register_task(ResNet9Cifar10())
