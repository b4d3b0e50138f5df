"""Checkpoints without pickle: model and optimizer tensors in safetensors, counters and settings in its JSON header."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from aimc.errors import ValidationError


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    generator: torch.Generator | None = None,
) -> None:
    """Atomically write model weights/buffers, optimizer state tensors and ``meta`` (JSON) to ``path``."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    opt_meta: dict[str, Any] = {}
    if optimizer is not None:
        state = optimizer.state_dict()
        for pid, st in state["state"].items():
            for key, val in st.items():
                if isinstance(val, torch.Tensor):
                    tensors[f"optim.{pid}.{key}"] = val.detach().cpu().contiguous().reshape(val.shape)
                else:
                    opt_meta[f"{pid}.{key}"] = val
        opt_meta["param_groups"] = state["param_groups"]
    if generator is not None:
        tensors["rng.state"] = generator.get_state()
    header = {"meta": json.dumps(meta), "optimizer": json.dumps(opt_meta)}
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(out)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns its ``meta``. Raises ValidationError on a bad file."""
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        meta = json.loads(header["meta"])
        opt_meta = json.loads(header.get("optimizer", "{}"))
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise ValidationError(f"{str(path)!r} is not a valid aimc checkpoint: {err}") from None
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValidationError(f"{str(path)!r} does not match the model: {str(err).splitlines()[0]}") from None
    if optimizer is not None and "param_groups" in opt_meta:
        opt_state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, pid, key = k.split(".", 2)
                opt_state.setdefault(int(pid), {})[key] = v
        for k, v in opt_meta.items():
            if k != "param_groups":
                pid, key = k.split(".", 1)
                opt_state.setdefault(int(pid), {})[key] = v
        optimizer.load_state_dict({"state": opt_state, "param_groups": opt_meta["param_groups"]})
    if generator is not None and "rng.state" in tensors:
        generator.set_state(tensors["rng.state"])
    return meta
