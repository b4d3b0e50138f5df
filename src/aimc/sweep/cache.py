"""The compiled mapping of a sweep, kept in its output folder so that a resumed sweep does not compile again.

Compiling calibrates every layer on the calibration samples (tens of seconds for ResNet-9 on 256 images); a sweep
killed and resumed, or extended with more seeds, reuses ``mapping.safetensors``: safetensors tensors plus the
mapping's JSON metadata and a SHA-256 over both, tagged with the sweep context it was compiled for. A file that is
missing, from another context, altered or unreadable is ignored and the mapping compiled afresh (never an error:
it is a cache).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from aimc.compiler.mapping import Mapping
from aimc.errors import AimcError

#: File name of the cached mapping inside the output folder.
MAPPING_FILE = "mapping.safetensors"


def context_hash(context: dict[str, Any]) -> str:
    """SHA-256 of a sweep context (canonical JSON)."""
    return hashlib.sha256(json.dumps(context, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _digest(meta: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_mapping(mapping: Mapping, folder: Path, context: dict[str, Any]) -> Path:
    """Write ``mapping`` to ``folder/mapping.safetensors`` atomically; returns the path."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in mapping.tensors().items()}
    meta = json.dumps(mapping.meta(), sort_keys=True)
    header = {"aimc_mapping": meta, "context": context_hash(context), "digest": _digest(meta, tensors)}
    path = folder / MAPPING_FILE
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(path)
    return path


def load_mapping(folder: Path, context: dict[str, Any]) -> Mapping | None:
    """The cached mapping of ``context`` in ``folder``, or None if there is no valid one."""
    path = folder / MAPPING_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
        if header.get("context") != context_hash(context):
            return None
        meta = header["aimc_mapping"]
        if header.get("digest") != _digest(meta, tensors):
            return None
        return Mapping.from_parts(json.loads(meta), tensors)
    except (SafetensorError, OSError, KeyError, ValueError, TypeError, AimcError):
        return None
