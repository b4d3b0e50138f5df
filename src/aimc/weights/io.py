"""Reading and writing weight files: safetensors without pickle, read as untrusted input.

A model's tensors go to safetensors, its metadata (strings) to the header with a checksum. Reading checks, before
any tensor is used: the file size (:data:`MAX_WEIGHTS_BYTES`), the safetensors header (declared size, offsets,
shapes, dtypes; :mod:`aimc._tensorfile`), that every floating-point tensor is finite, the ``aimc_sha256`` checksum
when the file carries one (files written here do), and that every tensor's name, shape and dtype kind match the
model. A truncated, altered or crafted file raises :class:`~aimc.errors.CorruptFileError` and leaves the model
untouched. Training checkpoints (:mod:`aimc.train.checkpoint`) are read with the same checks.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from safetensors.torch import save_file

from aimc._tensorfile import FLOAT_DTYPES, check_path, read_tensor_file, tensor_checksum
from aimc.errors import ArgumentTypeError, CorruptFileError

#: Largest weights or checkpoint file read (bytes). ResNet-9 weights are 7.5 MB, a training checkpoint with its
#: optimizer state about twice that; the captioning LSTM's 4.1 M weights are 16 MB. A generous bound that still
#: stops a crafted multi-GB file before it is read.
MAX_WEIGHTS_BYTES = 2 * 1024**3
#: Metadata key of the checksum written by :func:`save_weights` and :func:`aimc.train.checkpoint.save_checkpoint`.
CHECKSUM_KEY = "aimc_sha256"
#: Integer tensors a weights/checkpoint file may hold, by name suffix (batch-norm counters, the RNG state).
_INT_SUFFIXES = {"num_batches_tracked": ("I64",), "rng.state": ("U8",)}


def _dtype_check(where: str) -> Any:
    def allowed(name: str, dtype: str) -> None:
        for suffix, dtypes in _INT_SUFFIXES.items():
            if name.endswith(suffix):
                if dtype not in dtypes:
                    raise CorruptFileError(f"{where}: tensor {name!r} has dtype {dtype}, expected {dtypes[0]}")
                return
        if dtype not in FLOAT_DTYPES:
            raise CorruptFileError(f"{where}: tensor {name!r} has dtype {dtype}, expected a floating-point dtype")

    return allowed


def read_weights_file(
    path: str | os.PathLike[str], what: str = "weights file"
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read and check a weights or checkpoint file (see the module docstring); returns ``(tensors, metadata)``."""
    p = check_path(path)
    where = f"{what} {str(p)!r}"
    tensors, meta = read_tensor_file(p, max_bytes=MAX_WEIGHTS_BYTES, what=what, allowed=_dtype_check(where))
    if CHECKSUM_KEY in meta and tensor_checksum(tensors) != meta[CHECKSUM_KEY]:
        raise CorruptFileError(f"{where} fails its checksum: the tensors were altered after saving")
    return tensors, meta


def check_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """Names, shapes and dtype kinds of ``state`` against ``model.state_dict()``; CorruptFileError if they differ."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CorruptFileError(
            f"{where} does not hold this model's weights: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )
    for name, ref in expected.items():
        t = state[name]
        if tuple(t.shape) != tuple(ref.shape):
            raise CorruptFileError(
                f"{where}: tensor {name!r} has shape {tuple(t.shape)}, the model has {tuple(ref.shape)}"
            )
        if t.is_floating_point() != ref.is_floating_point():
            raise CorruptFileError(f"{where}: tensor {name!r} has dtype {t.dtype}, the model has {ref.dtype}")


def load_weights_file(path: str | os.PathLike[str], model: torch.nn.Module) -> dict[str, str]:
    """Load a weights file or a training checkpoint (its ``model.*`` tensors) into ``model``; returns the metadata.

    Raises:
        CorruptFileError: the file is truncated, altered, crafted, holds NaN/Inf, or does not fit ``model``.
        ValidationError: ``path`` is not a file.
    """
    if not isinstance(model, torch.nn.Module):
        raise ArgumentTypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    tensors, meta = read_weights_file(path)
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")} or tensors
    check_state_dict(model, state, f"weights file {str(path)!r}")
    model.load_state_dict(state, strict=True)
    return meta


def save_weights(path: str | os.PathLike[str], model: torch.nn.Module, metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``model``'s state dict with ``metadata`` and the checksum :func:`load_weights_file` checks."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    header = {**(metadata or {}), CHECKSUM_KEY: tensor_checksum(tensors)}
    out = check_path(path)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(out)


__all__ = [
    "CHECKSUM_KEY",
    "MAX_WEIGHTS_BYTES",
    "check_state_dict",
    "load_weights_file",
    "read_weights_file",
    "save_weights",
]
