"""Data sets: CIFAR-10 read from numpy files (no pickle), located from an argument, $AIMC_DATA or ../shared/data."""

from aimc.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, cifar10_tensors, find_data_dir, load_cifar10

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "cifar10_tensors", "find_data_dir", "load_cifar10"]
