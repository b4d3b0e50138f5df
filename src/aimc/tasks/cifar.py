"""ResNet-9 on CIFAR-10: top-1 accuracy on the test images (the chip paper's Fig. 3 experiment; docs/physics.md §11)."""

from __future__ import annotations

import torch

from aimc.data import cifar10_tensors
from aimc.models import example_input, get_model
from aimc.tasks.base import Task, TaskData

#: Our choice: unlabelled training images loaded for calibration and AdaBS.
CALIBRATION_IMAGES = 500


class ResNet9Cifar10(Task):
    """ResNet-9 on CIFAR-10 (``"resnet9"``): top-1 accuracy, runs of 250 images."""

    name = "resnet9"
    default_weights = "resnet9_hwa"
    calibration_inputs = CALIBRATION_IMAGES

    def architecture(self) -> torch.nn.Module:
        return get_model(self.name)

    def example_input(self) -> torch.Tensor:
        return example_input(self.name, batch=2)  # type: ignore[return-value]

    def load_data(self, samples: int | None, data_dir: str | None, *, calibration: int | None = None) -> TaskData:
        """The first ``samples`` CIFAR-10 test images and the first ``calibration`` (default
        :data:`CALIBRATION_IMAGES`) training images, unlabelled."""
        x, y = cifar10_tensors("test", samples, data_dir)
        x_cal, _ = cifar10_tensors("train", calibration or self.calibration_inputs, data_dir)
        return TaskData(self.name, x, y, x_cal)


__all__ = ["CALIBRATION_IMAGES", "ResNet9Cifar10"]
