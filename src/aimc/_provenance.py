"""What a result must carry to be reproduced: versions, platform, time."""

from __future__ import annotations

import datetime as _dt
import hashlib
import platform
import sys
from pathlib import Path

import numpy as np
import torch

from aimc import kernels
from aimc._version import __version__


def provenance() -> dict[str, str]:
    """Versions of aimc and its numerical stack, the platform, the CPU, the kernels that ran (they change the numbers
    slightly, :mod:`aimc.kernels`) and the UTC time of the call."""
    return {
        "aimc": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "numba": kernels.numba_version(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu": kernels.cpu_model(),
        "torch_threads": str(torch.get_num_threads()),
        "kernels": ", ".join(f"{op}={kernel}" for op, kernel in kernels.used().items()) or "none ran",
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def code_fingerprint() -> str:
    """sha256 (16 hex digits) of the installed aimc package's Python sources and shipped weights: the code that
    computed a stored block (the version number alone does not change between commits)."""
    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for f in sorted([*root.rglob("*.py"), *root.rglob("*.safetensors")]):
        digest.update(str(f.relative_to(root)).encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()[:16]
