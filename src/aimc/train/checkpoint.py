"""Training checkpoints without pickle, read as untrusted input.

Model and optimizer tensors go to safetensors, counters and settings to its JSON header, with the checksum of
:mod:`aimc.weights.io`. Reading makes the checks of :func:`aimc.weights.io.read_weights_file` (size, header, dtypes,
finite values, checksum, names and shapes against the model); a truncated, altered or crafted file raises
:class:`~aimc.errors.CorruptFileError` and leaves the model untouched. Weight files themselves are read and written
by :mod:`aimc.weights.io`.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from safetensors.torch import save_file

from aimc._tensorfile import check_path, tensor_checksum
from aimc.errors import ArgumentTypeError, CorruptFileError
from aimc.weights.io import CHECKSUM_KEY, check_state_dict, read_weights_file


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    meta: dict[str, Any],
    generator: torch.Generator | None = None,
    *,
    extra_generators: dict[str, torch.Generator] | None = None,
) -> None:
    """Atomically write model weights/buffers, optimizer state tensors and ``meta`` (JSON) to ``path``.

    ``generator``'s state is stored as ``rng.state``; each of ``extra_generators`` (e.g. a data loader's shuffling
    generator) as ``NAME.rng.state``, restored by :func:`load_checkpoint` under the same names.
    """
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
    for name, gen in (extra_generators or {}).items():
        tensors[_generator_key(name)] = gen.get_state()
    header = {"meta": json.dumps(meta), "optimizer": json.dumps(opt_meta), CHECKSUM_KEY: tensor_checksum(tensors)}
    out = check_path(path)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(out)


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generator: torch.Generator | None = None,
    *,
    extra_generators: dict[str, torch.Generator] | None = None,
) -> dict[str, Any]:
    """Restore what :func:`save_checkpoint` wrote; returns its ``meta``. Raises CorruptFileError on a bad file.

    Each of ``extra_generators`` whose state the file holds (saved under the same name) gets that state; the others
    are left as they are.
    """
    where = f"{str(path)!r}"
    try:
        tensors, header = read_weights_file(path, "checkpoint")
        meta = json.loads(header["meta"])
        opt_meta = json.loads(header.get("optimizer", "{}"))
        if not isinstance(meta, dict) or not isinstance(opt_meta, dict):
            raise CorruptFileError("meta and optimizer headers must be JSON objects")
    except (CorruptFileError, KeyError, ValueError, RecursionError) as err:
        raise CorruptFileError(f"{where} is not a valid aimc checkpoint: {err}") from None
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_dict(model, state, f"checkpoint {where}")
    opt_state: dict[int, dict[str, Any]] = {}
    try:
        if optimizer is not None and "param_groups" in opt_meta:
            for k, v in tensors.items():
                if k.startswith("optim."):
                    _, pid, key = k.split(".", 2)
                    opt_state.setdefault(int(pid), {})[key] = v
            for k, v in opt_meta.items():
                if k != "param_groups":
                    pid, key = k.split(".", 1)
                    opt_state.setdefault(int(pid), {})[key] = v
            optimizer.load_state_dict({"state": opt_state, "param_groups": opt_meta["param_groups"]})
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as err:
        raise CorruptFileError(f"{where} holds an optimizer state that does not fit: {err}") from None
    model.load_state_dict(state, strict=True)
    restore = {"rng.state": generator} if generator is not None else {}
    restore.update({_generator_key(name): gen for name, gen in (extra_generators or {}).items()})
    for key, gen in restore.items():
        if key in tensors:
            try:
                gen.set_state(tensors[key])
            except RuntimeError as err:
                raise CorruptFileError(f"{where} holds an invalid RNG state {key!r}: {err}") from None
    return meta


def _generator_key(name: str) -> str:
    """Tensor name of an extra generator's state."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ArgumentTypeError(f"generator names must be Python identifiers, got {name!r}")
    return f"{name}.rng.state"
