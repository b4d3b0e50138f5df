"""CIFAR-10 from ``cifar10/cifar10-{train,test}.npz`` (numpy arrays, loaded without pickle).

The data folder (the one holding ``cifar10/``) is, in order:

1. the ``data_dir`` argument (``--data-dir DIR`` on the command line), else
2. the ``AIMC_DATA`` environment variable, else
3. ``shared/data`` beside the working directory (``./shared/data``, then ``../shared/data``) if it holds
   ``cifar10/``, else
4. the user cache folder (:func:`aimc.data.download.data_cache_dir`, e.g. ``~/.cache/aimc/data``).

A folder given as ``data_dir`` or ``AIMC_DATA`` is the only one used. Where none is given and CIFAR-10 is found
nowhere, the official archive is downloaded into the cache folder on first use (about 163 MiB, checked against its
published checksum; see :mod:`aimc.data.download`), unless ``AIMC_NO_DOWNLOAD=1`` is set. ``aimc data fetch cifar10
[--data-dir DIR]`` does the same on request.
"""

from __future__ import annotations

import math
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import torch

from aimc._validation import check_number
from aimc.data.download import (
    CIFAR10_ARCHIVE,
    CIFAR10_MD5,
    CIFAR10_URL,
    NO_DOWNLOAD_ENV,
    data_cache_dir,
    downloads_allowed,
    fetch_cifar10,
    has_cifar10,
)
from aimc.errors import ValidationError

#: Per-channel mean and std of the CIFAR-10 training images (0-1 scale), for input normalisation.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class DataNotFoundError(ValidationError):
    """No data folder holds CIFAR-10 and it may not (or cannot) be downloaded; the message says what to do."""


def _shared_dirs() -> list[Path]:
    return [Path.cwd() / "shared" / "data", Path.cwd() / ".." / "shared" / "data"]


def find_data_dir(data_dir: str | os.PathLike[str] | None = None, *, download: bool | None = None) -> Path:
    """The data folder holding ``cifar10/`` (see the module docstring for the order it is looked for in).

    Args:
        data_dir: the folder to use; None to look for one.
        download: whether CIFAR-10 may be downloaded into the cache folder when found nowhere; None (the default)
            means yes unless ``$AIMC_NO_DOWNLOAD`` is set.

    Raises:
        DataNotFoundError: the given folder has no ``cifar10/``, or CIFAR-10 is found nowhere and may not be
            downloaded; the message names the command to run and where to put the files.
        aimc.data.download.DownloadError, aimc.data.download.ChecksumError: the automatic download failed.
    """
    explicit = data_dir if data_dir is not None else (os.environ.get("AIMC_DATA") or None)
    if explicit is not None:
        root = Path(explicit)
        if (root / "cifar10").is_dir():
            return root.resolve()
        source = "--data-dir / data_dir" if data_dir is not None else "$AIMC_DATA"
        raise DataNotFoundError(
            f"{str(root)!r} (from {source}) has no cifar10/ folder; download CIFAR-10 into it with "
            f"`aimc data fetch cifar10 --data-dir {root}`, or put {CIFAR10_ARCHIVE} from {CIFAR10_URL} "
            f"(md5 {CIFAR10_MD5}) in {root / 'cifar10'} and run that command to convert it"
        )
    for shared in _shared_dirs():
        if (shared / "cifar10").is_dir():
            return shared.resolve()
    cache = data_cache_dir()
    if has_cifar10(cache):
        return cache.resolve()
    if download is None:
        download = downloads_allowed()
    if not download:
        looked = ", ".join(str(c) for c in [*_shared_dirs(), cache])
        raise DataNotFoundError(
            f"CIFAR-10 not found (looked in: {looked}) and {NO_DOWNLOAD_ENV} is set, so it is not downloaded. Run "
            f"`aimc data fetch cifar10` to download it into {cache}, or put {CIFAR10_ARCHIVE} from {CIFAR10_URL} "
            f"(md5 {CIFAR10_MD5}) in {cache / 'cifar10'} and run that command to convert it, or pass "
            "--data-dir DIR / set AIMC_DATA=DIR to a folder holding cifar10/cifar10-{train,test}.npz"
        )
    print(
        f"aimc: CIFAR-10 not found; downloading it into {cache} (set {NO_DOWNLOAD_ENV}=1 to turn this off)",
        file=sys.stderr,
    )
    return fetch_cifar10(cache).resolve()


def _read_head(path: Path, member: str, n: int) -> np.ndarray | None:
    """The first ``n`` rows of the array ``member`` of the npz file ``path``, reading only their bytes (the member is
    decompressed as a stream, stopping after them). None if the member is stored in a way that cannot be cut
    (Fortran order or a 0-d array); raises ValueError on an array that cannot be read without pickle."""
    with zipfile.ZipFile(path) as zf, zf.open(f"{member}.npy") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            return None
        if dtype.hasobject:
            raise ValueError(f"{member} holds Python objects, which are never loaded (no pickle)")
        if fortran_order or not shape:
            return None
        rows = min(n, shape[0])
        buf = bytearray(rows * math.prod(shape[1:]) * dtype.itemsize)
        view, got = memoryview(buf), 0
        while got < len(buf):
            k = f.readinto(view[got:])
            if not k:
                raise ValueError(f"{member} ends after {got} of {len(buf)} bytes")
            got += k
        return np.frombuffer(buf, dtype=dtype).reshape((rows, *shape[1:]))


def load_cifar10(
    split: str = "test", data_dir: str | os.PathLike[str] | None = None, n: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``split`` ("train" or "test") as ``(images uint8 (N, 32, 32, 3), labels uint8 (N,))``.

    With ``n``, only the first ``n`` images and labels are read from the file (not the whole split).
    """
    if split not in ("train", "test"):
        raise ValidationError(f"split must be 'train' or 'test', got {split!r}")
    if n is not None:
        check_number(n, "n", low=1, integer=True)
    path = find_data_dir(data_dir) / "cifar10" / f"cifar10-{split}.npz"
    if not path.is_file():
        raise ValidationError(f"missing CIFAR-10 file {str(path)!r}")
    try:
        images = labels = None
        if n is not None:
            images, labels = _read_head(path, "images", n), _read_head(path, "labels", n)
        if images is None or labels is None:
            with np.load(path, allow_pickle=False) as d:
                images, labels = d["images"], d["labels"]
            if n is not None:
                images, labels = images[:n], labels[:n]
    except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValidationError(f"{str(path)!r} is not a valid CIFAR-10 npz file: {err}") from None
    if images.ndim != 4 or images.shape[1:] != (32, 32, 3) or images.dtype != np.uint8:
        raise ValidationError(f"{str(path)!r} has images {images.shape} {images.dtype}, expected (N, 32, 32, 3) uint8")
    if labels.ndim != 1 or len(labels) != len(images) or labels.dtype.kind not in "iu":
        raise ValidationError(f"{str(path)!r} has labels {labels.shape} {labels.dtype}, expected ({len(images)},) ints")
    return images, labels


def cifar10_tensors(
    split: str = "test", n: int | None = None, data_dir: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised float images ``(N, 3, 32, 32)`` and int64 labels ``(N,)`` (the first ``n`` if given; only those
    are read from the file)."""
    images, labels = load_cifar10(split, data_dir, n)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    return (x - mean) / std, torch.from_numpy(labels.astype(np.int64))
