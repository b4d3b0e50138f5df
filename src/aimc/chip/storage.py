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
import json
import os
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import save_file

from aimc._provenance import provenance
from aimc._tensorfile import check_path, read_tensor_file, tensor_checksum
from aimc.compiler.mapping import Mapping
from aimc.compiler.validate import check_mapping
from aimc.core.adc import AdcState
from aimc.core.analog import STRATEGIES, ProgrammedCore, _unit_layout, polarity_g_max
from aimc.core.config import CoreConfig
from aimc.devices.base import DeviceModel, DeviceState
from aimc.devices.registry import get as get_device
from aimc.errors import AimcError, CorruptFileError, ValidationError
from aimc.faults import Faults
from aimc.spec import READ_MODES

#: Format version written into every file. "2": the checksum also covers the JSON metadata. "1" is still read.
FORMAT_VERSION = "2"
_READABLE_FORMATS = ("1", "2")
#: Largest file aimc will open (bytes): a 64-core chip is ~120 MB; a crafted header cannot make us read more.
MAX_FILE_BYTES = 4 * 1024**3
_DEVICE_FIELDS = ("g_max_uS", "devices_per_unit", "t0_s", "t_read_s", "time_offset")
_STATE = ("g_target", "g_prog", "nu", "stuck")
#: Plausibility bounds of a saved chip's physical values, far outside anything programming produces and inside
#: what the simulation handles (numerical guards against crafted files, not physics): conductances up to this
#: multiple of the device model's g_max (programming noise stays within a few uS of it), drift exponents up to
#: this value (measured ones are < 0.2, docs/physics.md §3), CCO gains up to this multiple of the nominal 35 MHz/uA (and
#: offsets up to this many GHz), drift-compensation reference readouts up to this value (they are ~1 at most).
_G_LIMIT = 4.0
_NU_LIMIT = 1.0
_ADC_LIMIT = 100.0
_GDC_LIMIT = 1e6
_ADC = ("gain", "offset", "inv_alpha", "beta")
#: Tensors stored with an integer or bool dtype, by name suffix; every other tensor is floating point.
_INT_TENSORS = {".state.stuck": "BOOL", ".polarity": "I8"}

__all__ = ["FORMAT_VERSION", "MAX_FILE_BYTES", "ChipState", "CorruptFileError", "read_chip", "save_chip"]


@dataclass
class ChipState:
    """What a saved chip holds: the compiled network and its programmed cores (the state of a
    :class:`~aimc.chip.ProgrammedChip`, which adds how it runs).

    Attributes:
        mapping: the compiled network.
        device: the device model.
        strategy: ``"odp"`` or ``"tdp"``.
        seed: the programming seed (recorded, not reused), or None.
        config: unpublished core parameters.
        cores: one stacked :class:`~aimc.core.ProgrammedCore` per analog layer, by layer name.
        faults: the chip's hardware defects (:class:`aimc.faults.Faults`), or None for a perfect chip.
    """

    mapping: Mapping
    device: DeviceModel
    strategy: str
    seed: int | None
    config: CoreConfig
    cores: dict[str, ProgrammedCore] = field(default_factory=dict)
    faults: Faults | None = None


def _checksum(tensors: dict[str, torch.Tensor], meta_json: str = "") -> str:
    return tensor_checksum(tensors, meta_json)


def _core_tensors(core: ProgrammedCore, prefix: str) -> dict[str, torch.Tensor]:
    out = {f"{prefix}.state.{k}": v for k, v in core.states.tensors().items()}
    out.update({f"{prefix}.adc.{k}": v for k, v in core.adc.tensors().items()})
    out[f"{prefix}.asymmetry"] = core.asymmetry
    out[f"{prefix}.w_max"] = core.w_max
    out[f"{prefix}.polarity"] = core.polarity
    out.update({f"{prefix}.gdc.{mode}": v for mode, v in core.gdc_reference.items()})
    return out


def save_chip(chip: ChipState, path: str | os.PathLike[str]) -> None:
    """Write ``chip`` (a :class:`~aimc.chip.ProgrammedChip`) to ``path`` (atomically: a reader never sees half a
    file)."""
    if not isinstance(chip, ChipState):
        raise ValidationError(f"chip must be a ProgrammedChip, got {type(chip).__name__}")
    out = check_path(path)
    tensors = {f"mapping.{k}": v for k, v in chip.mapping.tensors().items()}
    cores_meta = []
    for i, (name, core) in enumerate(chip.cores.items()):
        tensors.update(_core_tensors(core, f"core{i}"))
        cores_meta.append({"layer": name, "g_max_uS": core.g_max_uS, "modes": sorted(core.gdc_reference)})
    faults_meta = None
    if chip.faults is not None:
        faults_meta, fault_tensors = chip.faults.to_parts()
        tensors.update(fault_tensors)
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
        "faults": faults_meta,
        "provenance": provenance(),
    }
    meta_json = json.dumps(meta)
    header = {"aimc": meta_json, "checksum": _checksum(tensors, meta_json)}
    tmp = out.with_name(out.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata=header)
        tmp.replace(out)
    except OSError as err:
        raise ValidationError(f"cannot write the chip to {str(out)!r}: {err}") from None


def _dtype_check(path: str) -> Any:
    def allowed(name: str, dtype: str) -> None:
        want = next((d for suffix, d in _INT_TENSORS.items() if name.endswith(suffix)), None)
        if name.startswith("faults.device_map."):
            want = "I8"
        want = want or "F32"  # every floating-point tensor of a chip is float32
        if dtype != want:
            raise CorruptFileError(f"{path!r}: tensor {name!r} has dtype {dtype}, expected {want}")

    return allowed


def read_chip(path: str | os.PathLike[str]) -> ChipState:
    """The state of a chip saved by :meth:`~aimc.chip.ProgrammedChip.save` (:func:`aimc.load` makes it a chip).

    Checks, in order: the size limit (:data:`MAX_FILE_BYTES`), the safetensors header (size, offsets, shapes,
    dtypes; :mod:`aimc._tensorfile`), finiteness of every tensor, the checksum over tensors and metadata, then the
    structure: the mapping (:func:`aimc.compiler.validate.check_mapping`), the device model, the strategy, and the
    name, shape, dtype and range of every core tensor. Raises :class:`CorruptFileError` for anything but a valid file
    (:class:`ValidationError` if ``path`` is not a file); never runs code from the file.
    """
    p = check_path(path)
    tensors, header = read_tensor_file(
        p, max_bytes=MAX_FILE_BYTES, what="saved chip", allowed=_dtype_check(str(p)), finite=False
    )
    if "aimc" not in header or "checksum" not in header:
        raise CorruptFileError(f"{str(p)!r} is a safetensors file but not a saved aimc chip (no aimc metadata)")
    meta_json = header["aimc"]
    try:
        meta = json.loads(meta_json)
    except (ValueError, RecursionError) as err:
        raise CorruptFileError(f"{str(p)!r} has unreadable aimc metadata: {err}") from None
    version = meta.get("format") if isinstance(meta, dict) else None
    if version not in _READABLE_FORMATS:
        raise CorruptFileError(f"unsupported aimc file format {version!r}; this aimc reads {_READABLE_FORMATS}")
    if _checksum(tensors, meta_json if version != "1" else "") != header["checksum"]:
        raise CorruptFileError(f"{str(p)!r} fails its checksum: the tensors or metadata were altered after saving")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CorruptFileError(f"{str(p)!r}: tensor {name!r} holds NaN/Inf values")
    try:
        return _rebuild(meta, tensors)
    except CorruptFileError:
        raise
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, RecursionError) as err:
        raise CorruptFileError(f"{str(p)!r} has inconsistent aimc metadata: {type(err).__name__}: {err}") from None
    except AimcError as err:
        raise CorruptFileError(f"{str(p)!r} has inconsistent aimc metadata: {type(err).__name__}: {err}") from None


def _expect(t: torch.Tensor, shape: tuple[int, ...], name: str) -> torch.Tensor:
    if tuple(t.shape) != shape:
        raise CorruptFileError(f"tensor {name!r} has shape {tuple(t.shape)}, expected {shape}")
    return t


def _rebuild(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ChipState:
    mapping = Mapping.from_parts(
        meta["mapping"], {k[len("mapping.") :]: v for k, v in tensors.items() if k.startswith("mapping.")}
    )
    check_mapping(mapping)
    saved = meta["device"]
    device = get_device(saved["name"])
    described = getattr(device, "describe", lambda: {})()
    for key in _DEVICE_FIELDS:
        if key in saved["describe"] and described.get(key) != saved["describe"][key]:
            raise CorruptFileError(
                f"device model {saved['name']!r} has {key}={described.get(key)!r} here but the chip was saved with "
                f"{saved['describe'][key]!r}"
            )
    strategy = meta["strategy"]
    if strategy not in STRATEGIES:
        raise CorruptFileError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    seed = meta["seed"]
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise CorruptFileError(f"seed must be a non-negative int or null, got {seed!r}")
    if not isinstance(meta["config"], dict):
        raise CorruptFileError("config must be an object")
    # chips saved before CoreConfig.adc_calibration existed were calibrated over the fixed range
    config = CoreConfig(**{"adc_calibration": "full", **meta["config"]})
    faults = None
    if meta.get("faults") is not None:
        faults = Faults.from_parts(meta["faults"], tensors)
        faults.check_spec(mapping.spec, mapping.chips)
        faults.check_mapping(mapping)
    chip = ChipState(mapping=mapping, device=device, strategy=strategy, seed=seed, config=config, faults=faults)
    cores_meta = meta["cores"]
    if not isinstance(cores_meta, list) or [c["layer"] for c in cores_meta] != list(mapping.layers):
        raise CorruptFileError("the saved cores do not match the mapping's layers")
    polarity_expected = torch.tensor(_unit_layout(strategy, device.devices_per_unit)[0], dtype=torch.int8)
    g_max_expected = polarity_g_max(device, strategy)
    expected_names = {f"mapping.{k}" for k in mapping.tensors()}
    expected_names |= {f"faults.device_map.{k}" for k in (faults.device_map if faults else {})}
    for i, cm in enumerate(cores_meta):
        prefix = f"core{i}"
        layer = mapping.layers[cm["layer"]]
        t = layer.tiling
        rc = (t.row_blocks, t.col_blocks)
        units = len(polarity_expected)
        state_shape = (*rc, units, t.block_outputs, t.block_inputs)
        modes = cm["modes"]
        if not isinstance(modes, list) or not set(modes) <= set(READ_MODES) or len(set(modes)) != len(modes):
            raise CorruptFileError(f"core {i}: read modes {modes!r} must be a list of {READ_MODES}")
        names = [f"{prefix}.state.{k}" for k in _STATE] + [f"{prefix}.adc.{k}" for k in _ADC]
        names += [f"{prefix}.{k}" for k in ("asymmetry", "w_max", "polarity")]
        names += [f"{prefix}.gdc.{mode}" for mode in modes]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise CorruptFileError(f"core {i} (layer {layer.name!r}) is missing tensor(s) {missing}")
        expected_names.update(names)
        for k in _STATE:
            _expect(tensors[f"{prefix}.state.{k}"], state_shape, f"{prefix}.state.{k}")
        states = DeviceState.from_tensors({k: tensors[f"{prefix}.state.{k}"] for k in _STATE})
        g_hi = _G_LIMIT * device.g_max_uS
        for k in ("g_target", "g_prog"):
            g = getattr(states, k)
            if bool((g < 0).any()) or bool((g > g_hi).any()):
                raise CorruptFileError(f"core {i}: {k} must lie in [0, {g_hi:g}] uS for {device.name!r}")
        if bool((states.nu < 0).any()) or bool((states.nu > _NU_LIMIT).any()):
            raise CorruptFileError(f"core {i}: drift exponents must lie in [0, {_NU_LIMIT}]")
        polarity = tensors[f"{prefix}.polarity"]
        if not torch.equal(polarity, polarity_expected):
            raise CorruptFileError(
                f"core {i}: polarity {polarity.tolist()} does not match strategy {strategy!r} with "
                f"{device.name!r} ({polarity_expected.tolist()})"
            )
        g_max = cm["g_max_uS"]
        if isinstance(g_max, bool) or not isinstance(g_max, int | float) or abs(g_max - g_max_expected) > 1e-9:
            raise CorruptFileError(f"core {i}: g_max_uS {g_max!r} is not {g_max_expected} for this device/strategy")
        adc = AdcState(**{k: _expect(tensors[f"{prefix}.adc.{k}"], (*rc, 2, t.block_outputs), k) for k in _ADC})
        nominal = mapping.spec.cco_gain_MHz_per_uA
        for k, lo, hi in (
            ("gain", 0.0, _ADC_LIMIT * nominal),
            ("offset", -_ADC_LIMIT * 1e3, _ADC_LIMIT * 1e3),
            ("inv_alpha", 0.0, _ADC_LIMIT * 1e3 / nominal),
            ("beta", -float(mapping.spec.adc_max_count), float(mapping.spec.adc_max_count)),
        ):
            v = getattr(adc, k)
            if bool((v < lo).any()) or bool((v > hi).any()):
                raise CorruptFileError(f"core {i}: ADC {k} must lie in [{lo:g}, {hi:g}]")
        asym = tensors[f"{prefix}.asymmetry"]
        if bool((asym.abs() >= 1).any()):
            raise CorruptFileError(f"core {i}: polarity asymmetry must lie in (-1, 1)")
        w_max = _expect(tensors[f"{prefix}.w_max"], rc, f"{prefix}.w_max")
        gdc = {m: _expect(tensors[f"{prefix}.gdc.{m}"], rc, f"{prefix}.gdc.{m}") for m in modes}
        if bool((w_max <= 0).any()) or any(bool((v <= 0).any()) for v in gdc.values()):
            raise CorruptFileError(f"core {i}: w_max and drift-compensation references must be > 0")
        if any(bool((v > _GDC_LIMIT).any()) for v in gdc.values()):
            raise CorruptFileError(f"core {i}: drift-compensation references must be <= {_GDC_LIMIT:g}")
        chip.cores[layer.name] = ProgrammedCore(
            spec=mapping.spec,
            config=config,
            device=device,
            strategy=strategy,
            states=states,
            polarity=polarity,
            asymmetry=_expect(tensors[f"{prefix}.asymmetry"], state_shape, f"{prefix}.asymmetry"),
            adc=adc,
            w_max=w_max,
            g_max_uS=float(g_max),
            gdc_reference=gdc,
        )
    unexpected = sorted(set(tensors) - expected_names)
    if unexpected:
        raise CorruptFileError(f"the file holds tensors no part of the chip uses: {unexpected[:5]}")
    return chip
