"""Saving and loading programmed chips: safetensors tensors + JSON metadata, never pickle.

A saved chip is one ``.safetensors`` file: the mapping's tensors (weights, affine registers), every core's device
state, ADC parameters and drift-compensation references, and in the safetensors header a JSON document with the
chip spec, the mapping, the device model, strategy, seed, core configuration and the software versions, plus a
SHA-256 checksum over all tensors. Loading checks the size limit, the format, the checksum, the names, shapes,
dtypes and finiteness of every tensor, and raises :class:`~aimc.errors.CorruptFileError` with the reason if
anything is off: a truncated, altered or crafted file never yields a chip and never runs code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from aimc._provenance import provenance
from aimc.chip import ProgrammedChip
from aimc.compiler.mapping import Mapping
from aimc.core.adc import AdcState
from aimc.core.analog import ProgrammedCore
from aimc.core.config import CoreConfig
from aimc.devices.base import DeviceState
from aimc.devices.registry import get as get_device
from aimc.errors import AimcError, ValidationError

#: Format version written into every file.
FORMAT_VERSION = "1"
#: Largest file aimc will open (bytes): a 64-core chip is ~120 MB; a crafted header cannot make us read more.
MAX_FILE_BYTES = 4 * 1024**3
_DEVICE_FIELDS = ("g_max_uS", "devices_per_unit", "t0_s", "t_read_s", "time_offset")


class CorruptFileError(AimcError, ValueError):
    """A saved file is truncated, altered, crafted or not an aimc file."""


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _core_tensors(core: ProgrammedCore, prefix: str) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.state.{k}": v for k, v in core.states.tensors().items()}
    out.update({f"{prefix}.adc.{k}": v for k, v in core.adc.tensors().items()})
    out[f"{prefix}.asymmetry"] = core.asymmetry
    out[f"{prefix}.w_max"] = core.w_max
    out[f"{prefix}.polarity"] = core.polarity
    out.update({f"{prefix}.gdc.{mode}": v for mode, v in core.gdc_reference.items()})
    return out


def save_chip(chip: ProgrammedChip, path: str | os.PathLike[str]) -> None:
    """Write ``chip`` to ``path`` (atomically: a reader never sees half a file)."""
    tensors = {f"mapping.{k}": v for k, v in chip.mapping.tensors().items()}
    cores_meta = []
    for i, (name, core) in enumerate(chip.cores.items()):
        tensors.update(_core_tensors(core, f"core{i}"))
        cores_meta.append({"layer": name, "g_max_uS": core.g_max_uS, "modes": sorted(core.gdc_reference)})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    describe = getattr(chip.device, "describe", lambda: {})()
    meta = {
        "format": FORMAT_VERSION,
        "mapping": chip.mapping.meta(),
        "device": {"name": chip.device.name, "describe": describe},
        "strategy": chip.strategy,
        "seed": chip.seed,
        "config": dataclasses.asdict(chip.config),
        "cores": cores_meta,
        "provenance": provenance(),
    }
    header = {"aimc": json.dumps(meta), "checksum": _checksum(tensors)}
    out = Path(path)
    tmp = out.with_name(out.name + ".tmp")
    save_file(tensors, str(tmp), metadata=header)
    tmp.replace(out)


def load(path: str | os.PathLike[str]) -> ProgrammedChip:
    """Load a chip saved by :meth:`ProgrammedChip.save`; raises CorruptFileError for anything but a valid file."""
    p = Path(path)
    if not p.is_file():
        raise ValidationError(f"path {str(p)!r} is not a file")
    size = p.stat().st_size
    if size > MAX_FILE_BYTES:
        raise CorruptFileError(f"{str(p)!r} is {size} bytes, larger than the {MAX_FILE_BYTES}-byte limit")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptFileError(f"{str(p)!r} is not a readable safetensors file: {err}") from None
    if "aimc" not in header or "checksum" not in header:
        raise CorruptFileError(f"{str(p)!r} is a safetensors file but not a saved aimc chip (no aimc metadata)")
    if _checksum(tensors) != header["checksum"]:
        raise CorruptFileError(f"{str(p)!r} fails its checksum: the tensors were altered after saving")
    try:
        meta = json.loads(header["aimc"])
        return _rebuild(meta, tensors)
    except CorruptFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, json.JSONDecodeError, AimcError) as err:
        raise CorruptFileError(f"{str(p)!r} has inconsistent aimc metadata: {err}") from None


def _rebuild(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ProgrammedChip:
    if meta.get("format") != FORMAT_VERSION:
        raise CorruptFileError(
            f"unsupported aimc file format {meta.get('format')!r}; this aimc reads {FORMAT_VERSION!r}"
        )
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CorruptFileError(f"tensor {name!r} holds NaN/Inf values")
    mapping = Mapping.from_parts(
        meta["mapping"], {k[len("mapping.") :]: v for k, v in tensors.items() if k.startswith("mapping.")}
    )
    saved = meta["device"]
    device = get_device(saved["name"])
    described = getattr(device, "describe", lambda: {})()
    for key in _DEVICE_FIELDS:
        if key in saved["describe"] and described.get(key) != saved["describe"][key]:
            raise CorruptFileError(
                f"device model {saved['name']!r} has {key}={described.get(key)!r} here but the chip was saved with "
                f"{saved['describe'][key]!r}"
            )
    config = CoreConfig(**meta["config"])
    chip = ProgrammedChip(mapping=mapping, device=device, strategy=meta["strategy"], seed=meta["seed"], config=config)
    if [c["layer"] for c in meta["cores"]] != list(mapping.layers):
        raise CorruptFileError("the saved cores do not match the mapping's layers")
    for i, cm in enumerate(meta["cores"]):
        prefix = f"core{i}"
        layer = mapping.layers[cm["layer"]]
        states = DeviceState.from_tensors(
            {k: tensors[f"{prefix}.state.{k}"] for k in ("g_target", "g_prog", "nu", "stuck")}
        )
        t = layer.tiling
        expected = (t.row_blocks, t.col_blocks)
        if tuple(states.g_target.shape[:2]) != expected or tuple(states.g_target.shape[-2:]) != (
            t.block_outputs,
            t.block_inputs,
        ):
            raise CorruptFileError(
                f"core state of layer {layer.name!r} has shape {tuple(states.g_target.shape)}, "
                f"which does not match its {expected} x ({t.block_outputs}, {t.block_inputs}) tiling"
            )
        adc = AdcState(**{k: tensors[f"{prefix}.adc.{k}"] for k in ("gain", "offset", "inv_alpha", "beta")})
        chip.cores[layer.name] = ProgrammedCore(
            spec=mapping.spec,
            config=config,
            device=device,
            strategy=meta["strategy"],
            states=states,
            polarity=tensors[f"{prefix}.polarity"],
            asymmetry=tensors[f"{prefix}.asymmetry"],
            adc=adc,
            w_max=tensors[f"{prefix}.w_max"],
            g_max_uS=float(cm["g_max_uS"]),
            gdc_reference={mode: tensors[f"{prefix}.gdc.{mode}"] for mode in cm["modes"]},
        )
    return chip
