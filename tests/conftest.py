"""Shared fixtures: small random problems with fixed seeds."""

from __future__ import annotations

import os

import pytest
import torch

# Tests never download data sets: a test that needs CIFAR-10 where it is not found skips (see needs_cifar10).
os.environ.setdefault("AIMC_NO_DOWNLOAD", "1")


def _have_cifar10() -> bool:
    from aimc.data import DataNotFoundError, find_data_dir

    try:
        find_data_dir(download=False)
    except DataNotFoundError:
        return False
    return True


#: CIFAR-10 was found ($AIMC_DATA, a shared/data folder beside the working directory, or the user cache).
HAVE_CIFAR10 = _have_cifar10()
#: Marks a test that needs the real CIFAR-10 test set: it skips, saying how to enable it, where the set is missing.
needs_cifar10 = pytest.mark.skipif(
    not HAVE_CIFAR10, reason="needs CIFAR-10: run `aimc data fetch cifar10` (or set AIMC_DATA=DIR) to enable"
)


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache(tmp_path_factory):
    """The kernels are measured into a cache folder of the test session's own, never the user's (subprocesses of
    the tests inherit it)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("AIMC_CACHE_DIR", str(tmp_path_factory.mktemp("aimc-cache")))
    mp.delenv("AIMC_KERNELS", raising=False)
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _two_threads():
    """Every test runs with the 2 threads of the CI machine; tests that change it restore it."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def paper_mvm_problem(cores: int, m: int = 256, n: int = 256, batch: int = 2048, seed: int = 0):
    """The chip paper's MVM test problem: uniform W and x in [-1, 1], 30% of inputs zero. Returns (w, x, y_fp)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.rand((cores, m, n), generator=g) * 2 - 1
    x = torch.rand((cores, batch, n), generator=g) * 2 - 1
    x = x * (torch.rand(x.shape, generator=g) >= 0.3)
    return w, x, (x.double() @ w.double().mT).float()


def small_cnn(first_pool: int) -> torch.nn.Module:
    """Two conv layers and a classifier of 10 outputs, seeded (``torch.manual_seed(0)``), in eval mode; the first
    max-pool of ``first_pool`` takes 3-channel images of ``8 * first_pool`` pixels a side to the classifier's 4x4."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(first_pool),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(32 * 4 * 4, 10),
    ).eval()
