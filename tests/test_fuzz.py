"""Property tests over configs and inputs, and fuzz targets over the file loaders (hypothesis).

Every target asserts the same contract: a bad value or file raises an :class:`~aimc.errors.AimcError` subclass and
nothing else (no crash, no other exception type, no hang), and a good one gives a usable result. ``make test`` runs a
few hundred inputs per target (< 30 s); ``AIMC_FUZZ_EXAMPLES=10000 pytest tests/test_fuzz.py`` (``make fuzz``) runs
the long version. Every example is also timed: one taking longer than ``HANG_SECONDS`` fails as a hang.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import aimc
from aimc._tensorfile import tensor_checksum
from aimc.errors import AimcError
from aimc.faults import Faults, parse_faults
from aimc.weights.io import load_weights_file

#: Inputs per fuzz target: 120 in ``make test`` (about 1,000 over all targets); AIMC_FUZZ_EXAMPLES for the long run.
FUZZ_EXAMPLES = int(os.environ.get("AIMC_FUZZ_EXAMPLES", "120"))
#: Inputs per property test of configs and run inputs (same knob).
PROPERTY_EXAMPLES = int(os.environ.get("AIMC_FUZZ_EXAMPLES", "60"))
#: An example running longer than this (s) counts as a hang.
HANG_SECONDS = 20.0

FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=True,  # the same inputs on every run: a failure reproduces
    suppress_health_check=list(HealthCheck),
)
PROPERTY = settings(FUZZ, max_examples=PROPERTY_EXAMPLES)


def _contract(fn, *args, **kwargs):
    """Call ``fn``; return its result, or None if it raised an AimcError. Anything else fails the test."""
    start = time.perf_counter()
    try:
        result = fn(*args, **kwargs)
        event(f"{getattr(fn, '__name__', 'call')}: accepted")
        return result
    except AimcError as err:
        event(f"{getattr(fn, '__name__', 'call')}: {type(err).__name__}")
        return None
    finally:
        assert time.perf_counter() - start < HANG_SECONDS, "hang"


# ---------------------------------------------------------------------------------------------- shared files
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small programmed chip with faults, saved; its bytes and parsed header.

    The chip has 32 x 32 crossbars, so that a small network (2 layers, 6 cores, column chains of 2) keeps every
    tensor small and each fuzz input fast.
    """
    tmp = tmp_path_factory.mktemp("fuzz")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(40, 48), nn.ReLU(), nn.Linear(48, 10)).eval()
    x = torch.randn(8, 40, generator=torch.Generator().manual_seed(0))
    spec = dataclasses.replace(aimc.ChipSpec.hermes(), tile_rows=32, tile_cols=32)
    mapping = aimc.compile(net, spec, example_input=x)
    assert mapping.cores_used == 6
    faults = Faults(stuck_set=0.01, stuck_reset=0.01, dead_adc=[(mapping.layers["2"].core_list()[0], 3)])
    chip = aimc.program(mapping, "hermes-1dev", "odp", seed=0, faults=faults)
    path = tmp / "chip.safetensors"
    chip.save(path)
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
        header = dict(f.metadata())
    weights = tmp / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    return {
        "tmp": tmp,
        "net": net,
        "x": x,
        "chip": chip,
        "bytes": path.read_bytes(),
        "tensors": tensors,
        "header": header,
        "weights": weights.read_bytes(),
    }


def _write(tmp: Path, name: str, data: bytes) -> Path:
    p = tmp / name
    p.write_bytes(data)
    return p


def _check_loaded(chip: aimc.ProgrammedChip | None, x: torch.Tensor) -> None:
    """A file that loads must give a chip that runs (or refuses the input with an AimcError)."""
    if chip is None:
        return
    out = _contract(chip.run, x, seed=0)
    if out is not None:
        assert out.shape == (len(x), 10) and bool(torch.isfinite(out).all())


# ---------------------------------------------------------------------------------------------- byte mutations
@st.composite
def byte_mutations(draw, data: bytes) -> bytes:
    """Truncate, flip bytes, overwrite a run, insert or delete bytes, or rewrite the 8-byte header length."""
    kind = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "length", "header_flip"]))
    n = len(data)
    if kind == "truncate":
        return data[: draw(st.integers(0, n - 1))]
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "header_flip":  # inside a safetensors JSON header, where the structure lives
        end = min(8 + int.from_bytes(data[:8], "little"), n)
        out = bytearray(data)
        i = draw(st.integers(8, end - 1)) if end > 8 else draw(st.integers(0, n - 1))
        out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if kind == "overwrite":
        i = draw(st.integers(0, n - 1))
        chunk = draw(st.binary(min_size=1, max_size=64))
        return data[:i] + chunk + data[i + len(chunk) :]
    if kind == "insert":
        i = draw(st.integers(0, n))
        return data[:i] + draw(st.binary(min_size=1, max_size=64)) + data[i:]
    if kind == "delete":
        i = draw(st.integers(0, n - 1))
        return data[:i] + data[i + draw(st.integers(1, 64)) :]
    length = draw(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 2 * n)))
    return struct.pack("<Q", length) + data[8:]


@given(st.data())
@FUZZ
def test_fuzz_saved_chip_bytes(small, data):
    mutated = data.draw(byte_mutations(small["bytes"]))
    chip = _contract(aimc.load, _write(small["tmp"], "bytes.safetensors", mutated))
    _check_loaded(chip, small["x"])


# ---------------------------------------------------------------------------------------------- crafted headers
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def _paths(obj, prefix=()):
    """Every path into a JSON document (dict keys and list indices)."""
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@pytest.fixture(scope="module")
def meta_paths(small):
    meta = json.loads(small["header"]["aimc"])
    return [p for p in _paths(meta) if p and p[0] != "provenance"]


@given(st.data())
@FUZZ
def test_fuzz_saved_chip_crafted_metadata(small, meta_paths, data):
    """Splice the header JSON: replace, delete or duplicate a value anywhere, then re-sign it (a crafted file)."""
    meta = json.loads(small["header"]["aimc"])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(meta_paths))
        parent = meta
        try:
            for key in path[:-1]:
                parent = parent[key]
            action = data.draw(st.sampled_from(["replace", "delete", "swap"]))
            if action == "replace":
                parent[path[-1]] = data.draw(JSON_VALUES)
            elif action == "delete" and isinstance(parent, dict):
                del parent[path[-1]]
            elif action == "delete" and isinstance(parent, list):
                parent.pop(path[-1])
            else:
                other = data.draw(st.sampled_from(meta_paths))
                src = meta
                for key in other:
                    src = src[key]
                parent[path[-1]] = json.loads(json.dumps(src))
        except (KeyError, IndexError, TypeError):
            continue  # an earlier edit removed this path
    meta_json = json.dumps(meta)
    header = {**small["header"], "aimc": meta_json}
    if data.draw(st.booleans()):
        header["checksum"] = tensor_checksum(small["tensors"], meta_json)
    path = small["tmp"] / "crafted.safetensors"
    save_file(small["tensors"], str(path), metadata=header)
    _check_loaded(_contract(aimc.load, path), small["x"])


@given(st.data())
@FUZZ
def test_fuzz_saved_chip_crafted_tensors(small, data):
    """Replace a tensor by one of another dtype, shape or content (NaN, Inf, negative, huge), then re-sign."""
    tensors = dict(small["tensors"])
    name = data.draw(st.sampled_from(sorted(tensors)))
    t = tensors[name]
    kind = data.draw(st.sampled_from(["dtype", "shape", "value", "drop", "add"]))
    if kind == "dtype":
        dtype = data.draw(st.sampled_from([torch.float16, torch.float64, torch.int64, torch.int8, torch.bool]))
        tensors[name] = t.to(dtype)
    elif kind == "shape":
        shape = data.draw(st.lists(st.integers(0, 5), min_size=0, max_size=4))
        tensors[name] = torch.zeros(shape, dtype=t.dtype)
    elif kind == "value" and t.numel():
        flat = t.clone().reshape(-1)
        i = data.draw(st.integers(0, flat.numel() - 1))
        if t.is_floating_point():
            flat[i] = data.draw(st.sampled_from([math.nan, math.inf, -1.0, 1e30, 0.0, -1e30]))
        else:
            flat[i] = data.draw(st.sampled_from([-1, 0, 1, 2, 3])) if t.dtype != torch.bool else True
        tensors[name] = flat.reshape(t.shape)
    elif kind == "drop":
        del tensors[name]
    else:
        tensors[data.draw(st.text(min_size=1, max_size=10))] = torch.zeros(3)
    header = dict(small["header"])
    header["checksum"] = tensor_checksum(tensors, header["aimc"])
    path = small["tmp"] / "tensors.safetensors"
    save_file(tensors, str(path), metadata=header)
    _check_loaded(_contract(aimc.load, path), small["x"])


@given(st.data())
@FUZZ
def test_fuzz_weights_file(small, data):
    mutated = data.draw(byte_mutations(small["weights"]))
    net = nn.Sequential(nn.Linear(40, 48), nn.ReLU(), nn.Linear(48, 10))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    loaded = _contract(load_weights_file, _write(small["tmp"], "weights_m.safetensors", mutated), net)
    if loaded is None:  # a rejected file leaves the model untouched
        assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    else:
        assert all(bool(torch.isfinite(v).all()) for v in net.state_dict().values())


# ---------------------------------------------------------------------------------------------- sweep files
SWEEP_YAML = (Path(__file__).resolve().parent.parent / "examples" / "sweep_resnet9.yaml").read_text()


@given(st.data())
@FUZZ
def test_fuzz_sweep_file(tmp_path_factory, data):
    from aimc.sweep.spec import load_spec

    text = SWEEP_YAML.encode()
    mutated = data.draw(st.one_of(byte_mutations(text), st.binary(max_size=200)))
    path = tmp_path_factory.getbasetemp() / "fuzz_sweep.yaml"
    path.write_bytes(mutated)
    spec = _contract(load_spec, path)
    if spec is not None:
        assert spec.points()


@given(JSON_VALUES, st.data())
@FUZZ
def test_fuzz_sweep_dict(value, data):
    """The sweep dict with one field replaced by arbitrary JSON-like data."""
    import yaml

    from aimc.sweep.spec import parse_spec

    raw = yaml.safe_load(SWEEP_YAML)
    section = data.draw(st.sampled_from([None, "data", "grid"]))
    target = raw if section is None else raw[section]
    key = data.draw(st.sampled_from(sorted(target)))
    target[key] = value
    _contract(parse_spec, raw)


def test_sweep_seed_count_is_bounded():
    """A seed count far beyond the points limit is refused before it is expanded (it once exhausted memory)."""
    import yaml

    from aimc.sweep.spec import parse_spec

    raw = yaml.safe_load(SWEEP_YAML)
    raw["grid"]["seeds"] = 10**12
    with pytest.raises(AimcError, match="points"):
        parse_spec(raw)


# ---------------------------------------------------------------------------------------------- configs
FLOATS = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(10**6), 10**6) | st.none() | st.text(max_size=3)


@given(st.sampled_from([f.name for f in dataclasses.fields(aimc.CoreConfig)]), FLOATS)
@PROPERTY
def test_core_config_accepts_or_names_the_field(name, value):
    config = _contract(aimc.CoreConfig, **{name: value})
    if config is not None:
        assert getattr(config, name) == value


@given(st.sampled_from([f.name for f in dataclasses.fields(aimc.ChipSpec)]), FLOATS)
@PROPERTY
def test_chip_spec_accepts_or_names_the_field(name, value):
    spec = _contract(dataclasses.replace, aimc.ChipSpec.hermes(), **{name: value})
    if spec is None:
        with pytest.raises(AimcError, match=name):
            dataclasses.replace(aimc.ChipSpec.hermes(), **{name: value})


ANY_FAULT_ITEM = st.tuples(
    st.sampled_from(["stuck", "stuck_set", "stuck_reset", "dead_core", "dead_link", "dead_adc", "seed", "bogus", ""]),
    st.sampled_from(["=", "", "=="]),
    st.one_of(
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-5, 10**10).map(str),
        st.tuples(st.integers(-1, 70), st.sampled_from("-:"), st.integers(-1, 300)).map("{0[0]}{0[1]}{0[2]}".format),
        st.text(max_size=6),
    ),
).map("".join)
VALID_FAULT_ITEM = st.one_of(
    st.tuples(st.sampled_from(["stuck", "stuck_set", "stuck_reset"]), st.floats(0, 0.3)).map("{0[0]}={0[1]!r}".format),
    st.integers(0, 70).map("dead_core={}".format),
    st.tuples(st.integers(0, 63), st.sampled_from([1, 8, -1, -8, 7, -7])).map("dead_link={0[0]}-{0[1]}".format),
    st.tuples(st.integers(0, 63), st.integers(0, 300)).map("dead_adc={0[0]}:{0[1]}".format),
    st.integers(0, 99).map("seed={}".format),
)
FAULT_ITEM = st.one_of(VALID_FAULT_ITEM, VALID_FAULT_ITEM, VALID_FAULT_ITEM, ANY_FAULT_ITEM)


@given(st.lists(FAULT_ITEM, max_size=4).map(",".join) | st.text(max_size=40))
@PROPERTY
def test_fault_text_parses_or_is_rejected(text):
    faults = _contract(parse_faults, text)
    if faults is not None:
        assert parse_faults(faults.to_text()).describe() == faults.describe()


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "stuck_set": FLOATS,
            "stuck_reset": FLOATS,
            "dead_cores": st.lists(st.integers(-3, 70) | st.text(max_size=2), max_size=3),
            "dead_links": st.lists(st.lists(st.integers(-1, 70), max_size=3), max_size=3),
            "dead_adc": st.lists(st.tuples(st.integers(-1, 70), st.integers(-1, 300)), max_size=3),
            "seed": st.integers(-2, 5) | st.none(),
        },
    )
)
@PROPERTY
def test_faults_validate_or_program(small, kwargs):
    faults = _contract(Faults, **kwargs)
    if faults is not None:
        assert 0 <= faults.stuck_rate <= 1
        chip = _contract(aimc.program, small["chip"].mapping, "hermes-1dev", "odp", 0, faults=faults)
        _check_loaded(chip, small["x"])


@given(st.text(max_size=20))
@PROPERTY
def test_device_names_resolve_or_are_unknown(name):
    model = _contract(aimc.devices.get, name)
    assert model is None or isinstance(model, aimc.devices.DeviceModel)


# ---------------------------------------------------------------------------------------------- run inputs
@st.composite
def run_inputs(draw):
    dtype = draw(st.sampled_from([torch.float32, torch.float64, torch.float16, torch.int64, torch.bool]))
    shape = draw(st.lists(st.integers(0, 50), min_size=0, max_size=4) | st.tuples(st.integers(0, 9), st.just(40)))
    special = draw(st.sampled_from([None, math.nan, math.inf, -math.inf, 1e30, 0.0]))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(draw(st.integers(0, 99)))).to(dtype)
    if special is not None and x.numel() and x.is_floating_point():
        x.view(-1)[0] = special
    return x


@given(
    run_inputs(),
    st.floats(allow_nan=True, allow_infinity=True) | st.integers(-5, 10**12) | st.text(max_size=3),
    st.sampled_from(["four-phase", "one-phase", "two-phase", ""]),
)
@PROPERTY
def test_run_gives_a_finite_output_or_an_aimc_error(small, x, t, mode):
    out = _contract(small["chip"].run, x, t, mode, seed=0)
    if out is not None:
        assert out.shape == (x.shape[0], 10) and bool(torch.isfinite(out).all())


@given(
    st.lists(st.sampled_from([0, 1, 3, 17, 64, 257]), min_size=0, max_size=4),
    st.sampled_from([torch.float32, torch.float64, torch.int32]),
    st.sampled_from(["hermes-1dev", "hermes-2dev", "standard", "ideal", "nope"]),
    st.sampled_from(["odp", "tdp", "xdp"]),
)
@PROPERTY
def test_program_core_programs_or_refuses(shape, dtype, device, strategy):
    w = torch.randn(shape).to(dtype) if math.prod(shape) < 100_000 else torch.randn(1)
    core = _contract(aimc.program_core, w, device, strategy, 0)
    if core is not None:
        assert core.shape == tuple(w.shape[-2:])
