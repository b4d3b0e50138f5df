"""Calibration data as a stream of checked model-input batches.

A user gives calibration data as one tensor (or a tuple of tensors, one per model input), or as any iterable of
batches: a ``torch.utils.data.DataLoader``, a list, a generator. A batch is a tensor or a tuple/list whose first
elements are the model's inputs (a ``(images, labels)`` batch of a classification loader gives its images). A tensor
is cut into batches of :data:`TENSOR_BATCH` items, so that the activations recorded per batch stay bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch

from aimc.errors import ArgumentTypeError, ValidationError

#: Our choice: items per calibration batch when the data is given as one tensor (bounds the memory of the recorded
#: activations: about 130 MB for ResNet-9 on 32x32 images).
TENSOR_BATCH = 64

CalibrationData = torch.Tensor | tuple[torch.Tensor, ...] | Iterable[Any]


def _what(batch: object) -> str:
    if isinstance(batch, torch.Tensor):
        return f"tensor {tuple(batch.shape)} {batch.dtype}"
    return type(batch).__name__


def check_batch(batch: object, n_inputs: int, index: int) -> tuple[torch.Tensor, ...]:
    """The model inputs of calibration batch number ``index`` (from 0): checked to be non-empty tensors with the same
    number of items, finite where floating-point."""
    where = f"calibration batch {index}"
    if isinstance(batch, torch.Tensor):
        inputs: tuple[Any, ...] = (batch,)
    elif isinstance(batch, tuple | list):
        inputs = tuple(batch[:n_inputs])
    else:
        raise ArgumentTypeError(
            f"{where} is a {_what(batch)}; a batch must be a tensor of model inputs, or a tuple/list whose first "
            f"{n_inputs} element(s) are the model's input tensors (e.g. the (images, labels) of a DataLoader)"
        )
    if len(inputs) < n_inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        got = ", ".join(_what(t) for t in inputs) or "nothing"
        raise ArgumentTypeError(f"{where} must start with the model's {n_inputs} input tensor(s); got {got}")
    if any(t.dim() == 0 or t.shape[0] == 0 or t.numel() == 0 for t in inputs):
        raise ValidationError(f"{where} is empty; got shapes {[tuple(t.shape) for t in inputs]}")
    if len({t.shape[0] for t in inputs}) > 1:
        raise ValidationError(f"{where}: the inputs' batch sizes differ: {[tuple(t.shape) for t in inputs]}")
    for i, t in enumerate(inputs):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise ValidationError(f"{where}, input {i}: {bad} of {t.numel()} values are NaN or Inf; all must be finite")
    return inputs


def batches(data: CalibrationData, n_inputs: int) -> Iterator[tuple[torch.Tensor, ...]]:
    """The checked model-input batches of ``data`` (see the module docstring)."""
    if isinstance(data, torch.Tensor) or (
        isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data)
    ):
        whole = check_batch(data, n_inputs, 0)
        for start in range(0, whole[0].shape[0], TENSOR_BATCH):
            yield tuple(t[start : start + TENSOR_BATCH] for t in whole)
        return
    if isinstance(data, str | bytes | dict) or not isinstance(data, Iterable):
        raise ArgumentTypeError(
            "calibration data must be a tensor of representative model inputs, a tuple of them (one per model input) "
            f"or an iterable of such batches such as a DataLoader; got {type(data).__name__}"
        )
    for index, batch in enumerate(data):
        yield check_batch(batch, n_inputs, index)


def count(data: CalibrationData) -> int | None:
    """Number of batches ``data`` gives, where it says (for a progress bar's total), else None."""
    if isinstance(data, torch.Tensor):
        return -(-data.shape[0] // TENSOR_BATCH) if data.dim() else None
    if isinstance(data, tuple) and data and all(isinstance(t, torch.Tensor) for t in data):
        return -(-data[0].shape[0] // TENSOR_BATCH) if data[0].dim() else None
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return None
