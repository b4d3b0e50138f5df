"""Trained weights shipped with aimc (safetensors), with the command, seed, versions and log that made them.

See ``README.md`` in this folder. ``weights_path("resnet9_float")`` gives the file of a shipped network.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from aimc.errors import UnknownNameError


def available_weights() -> list[str]:
    """Names of the shipped weight files (without the ``.safetensors`` suffix)."""
    root = resources.files("aimc.weights")
    return sorted(p.name[: -len(".safetensors")] for p in root.iterdir() if p.name.endswith(".safetensors"))


def weights_path(name: str) -> Path:
    """Path of a shipped weights file, e.g. ``"resnet9_float"`` or ``"resnet9_hwa"``."""
    names = available_weights()
    if name not in names:
        raise UnknownNameError(f"no shipped weights named {name!r}; available: {', '.join(map(repr, names))}")
    return Path(str(resources.files("aimc.weights") / f"{name}.safetensors"))


def weights_problem(weights: str) -> str | None:
    """What is wrong with ``weights`` as a shipped name or a ``.safetensors`` path, as the end of a sentence that
    begins with the setting's name (e.g. ``"must be a shipped name (...) ..."``), or None if it names a shipped file
    or an existing ``.safetensors`` file."""
    if weights in available_weights():
        return None
    path = Path(weights)
    if path.suffix != ".safetensors":
        return (
            f"must be a shipped name ({', '.join(available_weights())}) or a path to a .safetensors file; "
            f"got {weights!r}"
        )
    if not path.is_file():
        return f"file {str(path)!r} does not exist"
    return None
