"""The networks a design space evaluates, by name: how to get the model, its data, and how a chip is scored.

Built in: ``resnet9`` (CIFAR-10 top-1 accuracy) and ``char-lstm`` (Penn Treebank bits per character), evaluated
exactly as ``aimc eval`` evaluates them (:mod:`aimc.experiments.evaluate`: the same data, calibration inputs, read
seeds and metric). Another network subclasses :class:`DseNetwork` and calls :func:`register_network`; the object
travels to Ray workers with the payload, so one registered in a driver script also runs on a cluster.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import torch

from aimc.errors import ArgumentTypeError, ValidationError


class DseNetwork(ABC):
    """A network and its metric, as a design space runs it.

    Class attributes:
        name: the name used in design-space files.
        metric: the metric's name (``"accuracy"``: a fraction, higher is better, its loss shown in points; any other
            metric: lower is better, its loss shown in its own units).
        default_weights: shipped weights used when the file names none (None: the network brings its own).
    """

    name: str
    metric: str = "accuracy"
    default_weights: str | None = None

    def weights_path(self, weights: str | None) -> Path | None:
        """The weights file of a shipped name or a ``.safetensors`` path (None: the network has no file)."""
        from aimc.weights import available_weights, weights_path

        name = weights or self.default_weights
        if name is None:
            return None
        return weights_path(name) if name in available_weights() else Path(name)

    def identity(self, weights: str | None) -> str:
        """SHA-256 of what the results depend on besides the design: the weights file (or the model's tensors)."""
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

    @abstractmethod
    def architecture(self) -> torch.nn.Module:
        """An untrained instance (captured and tiled to check that it fits a design; never evaluated)."""

    @abstractmethod
    def example_input(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """A small batch of model inputs, on which :meth:`architecture` is captured."""

    @abstractmethod
    def load_model(self, weights: str | None) -> torch.nn.Module:
        """The software network with its weights, in eval mode."""

    @abstractmethod
    def load_data(self, samples: int | None, data_dir: str | None) -> Any:
        """Test data and unlabelled calibration inputs: an object with ``x``, ``y``, ``x_cal`` and ``metric``
        (:class:`aimc.experiments.evaluate.TaskData`)."""

    @abstractmethod
    def software(self, model: torch.nn.Module, data: Any) -> float:
        """The software network's metric on ``data``."""

    @abstractmethod
    def score(self, chip: Any, data: Any, t_seconds: float, mode: str, read_seed: int) -> float:
        """The programmed chip's metric on ``data`` at ``t_seconds`` after programming, read noise from
        ``read_seed``."""


class EvalTask(DseNetwork):
    """A task of ``aimc eval`` (:data:`aimc.experiments.evaluate.TASKS`), evaluated as ``aimc eval`` does."""

    def __init__(self, name: str) -> None:
        from aimc.experiments.evaluate import DEFAULT_WEIGHTS, check_task

        self.name = check_task(name)
        self.metric = "accuracy" if name == "resnet9" else "bpc"
        self.default_weights = DEFAULT_WEIGHTS[name]

    def architecture(self) -> torch.nn.Module:
        from aimc.models import get_model

        return get_model(self.name).eval()

    def example_input(self) -> torch.Tensor | tuple[torch.Tensor, ...]:
        from aimc.models import example_input

        return example_input(self.name, batch=2)

    def load_model(self, weights: str | None) -> torch.nn.Module:
        from aimc.experiments.evaluate import load_network

        path = self.weights_path(weights)
        return load_network(self.name, None if path is None else str(path))[0]

    def load_data(self, samples: int | None, data_dir: str | None) -> Any:
        from aimc.experiments.evaluate import load_data

        return load_data(self.name, samples, data_dir)

    def software(self, model: torch.nn.Module, data: Any) -> float:
        from aimc.experiments.evaluate import software_metric

        return software_metric(model, data)

    def score(self, chip: Any, data: Any, t_seconds: float, mode: str, read_seed: int) -> float:
        from aimc.experiments.evaluate import chip_metric

        return chip_metric(chip, data, t_seconds, mode, read_seed)


_NETWORKS: dict[str, DseNetwork] = {}


def register_network(network: DseNetwork, *, replace: bool = False) -> None:
    """Make ``network`` available to design-space files under ``network.name``."""
    if not isinstance(network, DseNetwork):
        raise ArgumentTypeError(f"network must be an aimc.dse.DseNetwork instance, got {type(network).__name__}")
    if not isinstance(getattr(network, "name", None), str) or not network.name:
        raise ArgumentTypeError(f"network.name must be a non-empty string, got {getattr(network, 'name', None)!r}")
    if network.name in _NETWORKS and not replace:
        raise ValidationError(f"a network named {network.name!r} is already registered (pass replace=True)")
    _NETWORKS[network.name] = network


def available_networks() -> list[str]:
    """Names of the registered networks."""
    return list(_NETWORKS)


def get_network(name: str) -> DseNetwork:
    """The registered network ``name``."""
    if name not in _NETWORKS:
        raise ValidationError(f"network must be one of {', '.join(map(repr, _NETWORKS))}; got {name!r}")
    return _NETWORKS[name]


register_network(EvalTask("resnet9"))
register_network(EvalTask("char-lstm"))
