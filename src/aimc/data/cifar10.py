"""CIFAR-10 from ``cifar10/cifar10-{train,test}.npz`` (numpy arrays, loaded without pickle).

The data directory is, in order: the ``data_dir`` argument, the ``AIMC_DATA`` environment variable, or a
``shared/data`` folder beside the working directory or beside the aimc checkout. It must hold ``cifar10/``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from aimc._validation import check_number
from aimc.errors import ValidationError

#: Per-channel mean and std of the CIFAR-10 training images (0-1 scale), for input normalisation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """The data directory (see the module docstring); raises ValidationError naming where it looked."""
    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    elif os.environ.get("AIMC_DATA"):
        candidates.append(Path(os.environ["AIMC_DATA"]))
    else:
        candidates += [
            Path.cwd() / ".." / "shared" / "data",
            Path.cwd() / "shared" / "data",
            Path(__file__).resolve().parents[4] / "shared" / "data",
        ]
    for c in candidates:
        if (c / "cifar10").is_dir():
            return c.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise ValidationError(
        f"no data directory with a cifar10/ folder found (looked in: {looked}); pass --data-dir DIR or set AIMC_DATA"
    )


def load_cifar10(split: str = "test", data_dir: str | os.PathLike[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` ("train" or "test") as ``(images uint8 (N, 32, 32, 3), labels uint8 (N,))``."""
    if split not in ("train", "test"):
        raise ValidationError(f"split must be 'train' or 'test', got {split!r}")
    path = find_data_dir(data_dir) / "cifar10" / f"cifar10-{split}.npz"
    if not path.is_file():
        raise ValidationError(f"missing CIFAR-10 file {str(path)!r}")
    try:
        with np.load(path, allow_pickle=False) as d:
            images, labels = d["images"], d["labels"]
    except (ValueError, KeyError, OSError) as err:
        raise ValidationError(f"{str(path)!r} is not a valid CIFAR-10 npz file: {err}") from None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8 or len(labels) != len(images):
        raise ValidationError(f"{str(path)!r} has images {images.shape} {images.dtype}, expected (N, 32, 32, 3) uint8")
    return images, labels


def cifar10_tensors(
    split: str = "test", n: int | None = None, data_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images ``(N, 3, 32, 32)`` and int64 labels ``(N,)`` (the first ``n`` if given)."""
    if n is not None:
        check_number(n, "n", low=1, integer=True)
    images, labels = load_cifar10(split, data_dir)
    if n is not None:
        images, labels = images[:n], labels[:n]
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels.astype(np.int64))
