"""Reading safetensors files that may come from strangers: size limits, a checked header, a dtype allowlist.

A safetensors file is an 8-byte little-endian header length, a JSON header (per tensor: dtype, shape, byte offsets;
plus an optional ``__metadata__`` dict of strings) and the raw tensor bytes. Nothing in it can run code, but a
crafted file can still declare a huge header, offsets past its end, shapes that disagree with their byte ranges,
dtypes aimc never writes, or non-finite values. :func:`read_tensor_file` checks all of that *before* reading any
tensor data (the header is parsed by us, with a size limit, then safetensors reads the tensors) and raises
:class:`~aimc.errors.CorruptFileError` naming the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from aimc.errors import ArgumentTypeError, CorruptFileError, ValidationError

#: Largest JSON header accepted (bytes). aimc's own headers are < 1 MB (a 64-core chip's mapping metadata is
#: ~100 kB); safetensors itself allows 100 MB. A tighter limit bounds the JSON parsing of a crafted header.
MAX_HEADER_BYTES = 16 * 1024**2
#: Most tensors one file may declare (a saved 64-core chip holds a few hundred).
MAX_TENSORS = 100_000

#: safetensors dtype names -> (torch dtype, bytes per element) of every dtype aimc reads.
DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "I64": (torch.int64, 8),
    "I32": (torch.int32, 4),
    "I16": (torch.int16, 2),
    "I8": (torch.int8, 1),
    "U8": (torch.uint8, 1),
    "BOOL": (torch.bool, 1),
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})

#: ``allowed(name, dtype) -> None`` raises if tensor ``name`` may not have safetensors dtype ``dtype``.
DtypeCheck = Callable[[str, str], None]


def check_path(path: object, name: str = "path") -> Path:
    """A str or os.PathLike path; ArgumentTypeError otherwise."""
    if not isinstance(path, str | os.PathLike):
        raise ArgumentTypeError(f"{name} must be a str or os.PathLike file path, got {type(path).__name__}")
    return Path(path)


def read_header(path: str | os.PathLike[str], *, max_bytes: int, what: str) -> tuple[dict[str, dict], dict[str, str]]:
    """Parse and check the header of a safetensors file without reading tensor data.

    Returns:
        ``(entries, metadata)``: per tensor name its ``{"dtype", "shape", "data_offsets"}``, and the string
        metadata.
    """
    p = check_path(path)
    if not p.is_file():
        raise ValidationError(f"{what} {str(p)!r} is not a file")
    size = p.stat().st_size
    if size > max_bytes:
        raise CorruptFileError(f"{what} {str(p)!r} is {size:,} bytes, larger than the {max_bytes:,}-byte limit")
    if size < 8:
        raise CorruptFileError(f"{what} {str(p)!r} is not a readable safetensors file: only {size} bytes")
    with open(p, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_HEADER_BYTES or n > size - 8:
            raise CorruptFileError(
                f"{what} {str(p)!r} is not a readable safetensors file: it declares a {n:,}-byte header, more than "
                f"{'the file holds' if n > size - 8 else f'the {MAX_HEADER_BYTES:,}-byte limit'}"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise CorruptFileError(f"{what} {str(p)!r} is not a readable safetensors file: bad header ({err})") from None
    if not isinstance(header, dict):
        raise CorruptFileError(f"{what} {str(p)!r} is not a readable safetensors file: the header is not an object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise CorruptFileError(f"{what} {str(p)!r} has malformed metadata (must map strings to strings)")
    if len(header) > MAX_TENSORS:
        raise CorruptFileError(f"{what} {str(p)!r} declares {len(header):,} tensors, more than {MAX_TENSORS:,}")
    data_bytes = size - 8 - n
    for name, entry in header.items():
        _check_entry(name, entry, data_bytes, f"{what} {str(p)!r}")
    return header, meta


def _check_entry(name: str, entry: object, data_bytes: int, where: str) -> None:
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise CorruptFileError(f"{where}: tensor {name!r} has a malformed header entry")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in DTYPES:
        raise CorruptFileError(f"{where}: tensor {name!r} has dtype {dtype!r}; aimc reads {', '.join(DTYPES)}")
    ints = isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    if not ints or len(shape) > 8:
        raise CorruptFileError(f"{where}: tensor {name!r} has a malformed shape {shape!r}")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        or not 0 <= offsets[0] <= offsets[1] <= data_bytes
    ):
        raise CorruptFileError(
            f"{where} is truncated or not a readable safetensors file: tensor {name!r} has byte offsets "
            f"{offsets!r} outside its {data_bytes:,} bytes of data"
        )
    nbytes = math.prod(shape) * DTYPES[dtype][1]
    if offsets[1] - offsets[0] != nbytes:
        raise CorruptFileError(
            f"{where}: tensor {name!r} declares shape {shape} ({nbytes:,} bytes of {dtype}) but "
            f"{offsets[1] - offsets[0]:,} bytes of data"
        )


def read_tensor_file(
    path: str | os.PathLike[str],
    *,
    max_bytes: int,
    what: str,
    allowed: DtypeCheck | None = None,
    finite: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor of a safetensors file after checking it (see the module docstring).

    Args:
        path: the file.
        max_bytes: size limit of the file.
        what: what the file should be, for messages ("saved chip", "weights file").
        allowed: a per-tensor dtype check (raise CorruptFileError to reject), or None for any known dtype.
        finite: reject NaN / Inf in floating-point tensors.

    Returns:
        ``(tensors, metadata)``.
    """
    header, _ = read_header(path, max_bytes=max_bytes, what=what)
    where = f"{what} {str(path)!r}"
    if allowed is not None:
        for name, entry in header.items():
            allowed(name, entry["dtype"])
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no items()
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        raise CorruptFileError(f"{where} is not a readable safetensors file: {err}") from None
    if set(tensors) != set(header):
        raise CorruptFileError(f"{where} changed while it was read")
    if finite:
        for name, t in tensors.items():
            if t.is_floating_point() and t.numel() and not bool(torch.isfinite(t).all()):
                bad = int((~torch.isfinite(t)).sum())
                raise CorruptFileError(f"{where}: tensor {name!r} holds {bad} NaN/Inf value(s)")
    return tensors, meta


def tensor_checksum(tensors: dict[str, torch.Tensor], extra: str = "") -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``tensors`` (sorted by name), then ``extra``."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    h.update(extra.encode())
    return h.hexdigest()
