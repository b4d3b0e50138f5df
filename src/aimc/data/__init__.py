"""Data sets: CIFAR-10 read from numpy files (no pickle) and downloaded on first use; character-level PTB.

CIFAR-10 is looked for in the ``data_dir`` argument, ``$AIMC_DATA``, ``./shared/data`` or ``../shared/data``, then
the user cache folder, where it is downloaded from its official home if found nowhere (``AIMC_NO_DOWNLOAD=1`` turns
that off; ``aimc data fetch cifar10`` downloads on request). See :mod:`aimc.data.cifar10` and
:mod:`aimc.data.download`.
"""

from aimc.data.cifar10 import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataNotFoundError,
    cifar10_tensors,
    find_data_dir,
    load_cifar10,
)
from aimc.data.download import ChecksumError, DownloadError, data_cache_dir, fetch_cifar10

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "ChecksumError",
    "DataNotFoundError",
    "DownloadError",
    "cifar10_tensors",
    "data_cache_dir",
    "fetch_cifar10",
    "find_data_dir",
    "load_cifar10",
]
