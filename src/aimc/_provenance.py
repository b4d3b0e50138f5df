"""What a result must carry to be reproduced: versions, platform, time (DESIGN.md "Reproducible")."""

from __future__ import annotations

import datetime as _dt
import platform
import sys

import numpy as np
import torch


def provenance() -> dict[str, str]:
    """Versions of aimc and its numerical stack, the platform and the UTC time of the call."""
    from aimc import __version__

    return {
        "aimc": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch_threads": str(torch.get_num_threads()),
        "utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
