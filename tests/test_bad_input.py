"""Bad input everywhere a user reaches: each case raises its specific AimcError subclass with a clear message.

The table of cases is also docs/validation.md's "Bad input" table: ``test_docs_table_is_in_sync`` regenerates it
from the outcomes here and fails if the docs differ (``AIMC_UPDATE_DOCS=1`` rewrites the section).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import aimc
from aimc._tensorfile import tensor_checksum
from aimc.cli import main
from aimc.errors import AimcError, ArgumentTypeError, CorruptFileError, UnknownNameError, ValidationError
from aimc.models import resnet9
from aimc.weights.io import load_weights_file

DOCS = Path(__file__).resolve().parent.parent / "docs" / "validation.md"
START, END = "<!-- bad_input:start -->", "<!-- bad_input:end -->"


# ---------------------------------------------------------------------------------------------- shared objects
@dataclass
class Env:
    """A small compiled, programmed and saved network, and the folder for crafted files."""

    tmp: Path
    net: nn.Module
    x: torch.Tensor
    mapping: aimc.Mapping
    chip: aimc.ProgrammedChip
    saved: Path


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> Env:
    tmp = tmp_path_factory.mktemp("bad_input")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 10)).eval()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    mapping = aimc.compile(net, example_input=x)
    chip = aimc.program(mapping, "hermes-2dev", "tdp", seed=0)
    saved = tmp / "chip.safetensors"
    chip.save(saved)
    return Env(tmp, net, x, mapping, chip, saved)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())  # noqa: SIM118


def _craft(env: Env, name: str, tensors=None, meta=None, checksum: bool = True) -> Path:
    """A copy of the saved chip with edited tensors / metadata; its checksum recomputed (a crafted file) or not."""
    t, header = _read(env.saved)
    m = json.loads(header["aimc"])
    if tensors is not None:
        tensors(t)
    if meta is not None:
        meta(m)
    header["aimc"] = json.dumps(m)
    if checksum:
        header["checksum"] = tensor_checksum(t, header["aimc"])
    out = env.tmp / name
    save_file(t, str(out), metadata=header)
    return out


def _bytes(env: Env, name: str, edit: Callable[[bytes], bytes]) -> Path:
    out = env.tmp / name
    out.write_bytes(edit(env.saved.read_bytes()))
    return out


def _weights_file(env: Env, name: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    state = {k: v.clone() for k, v in resnet9(seed=0).state_dict().items()}
    edit(state)
    out = env.tmp / name
    save_file(state, str(out), metadata={"aimc_model": "resnet9"})
    return out


def _set(d: dict, path: list, value: object) -> None:
    for key in path[:-1]:
        d = d[key]
    d[path[-1]] = value


# ---------------------------------------------------------------------------------------------- the cases
@dataclass(frozen=True)
class Case:
    """One bad input: ``run(env)`` must raise ``error`` with ``fragment`` in its message."""

    name: str
    run: Callable[[Env], object]
    error: type[AimcError]
    fragment: str


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) if x.sum() > 0 else -self.fc(x)  # control flow on a tensor value


CASES = [
    # --- networks the chip cannot hold
    Case(
        "untraceable model (branch on a tensor value)",
        lambda e: aimc.compile(_Branchy(), example_input=torch.randn(2, 8)),
        aimc.UnsupportedLayerError,
        "could not be captured with torch.export",
    ),
    Case(
        "unsupported layer (transposed convolution)",
        lambda e: aimc.compile(nn.ConvTranspose2d(8, 8, 3), example_input=torch.randn(1, 8, 6, 6)),
        aimc.UnsupportedLayerError,
        "transposed convolutions",
    ),
    Case(
        "too-large network (72 cores on a 64-core chip)",
        lambda e: aimc.compile(nn.Linear(2048, 2304), example_input=torch.randn(2, 2048)),
        ValidationError,
        "needs 72 cores",
    ),
    Case(
        "example input of the wrong shape",
        lambda e: aimc.compile(e.net, example_input=torch.randn(2, 3, 5, 5)),
        ValidationError,
        "cannot run calibration batch 0",
    ),
    Case(
        "empty example input",
        lambda e: aimc.compile(e.net, example_input=torch.zeros(0, 3, 8, 8)),
        ValidationError,
        "calibration batch 0 is empty",
    ),
    Case(
        "empty calibration loader",
        lambda e: aimc.compile(e.net, calibration=[]),
        ValidationError,
        "calibration data is empty",
    ),
    Case(
        "non-finite value in a calibration loader's second batch",
        lambda e: aimc.compile(e.net, calibration=[(e.x, 0), (e.x.clone().fill_(float("inf")), 1)]),
        ValidationError,
        "calibration batch 1, input 0",
    ),
    Case(
        "calibration batch of the wrong type",
        lambda e: aimc.compile(e.net, calibration=[{"x": e.x}]),
        aimc.errors.ArgumentTypeError,
        "calibration batch 0 is a dict",
    ),
    Case(
        "unknown calibration method",
        lambda e: aimc.compile(e.net, calibration=e.x, calibration_method="entropy"),
        aimc.errors.UnknownNameError,
        "calibration_method must be one of 'max', 'percentile', 'mse'",
    ),
    Case(
        "dead core id outside the chip",
        lambda e: aimc.compile(e.net, example_input=e.x, avoid_cores=[64]),
        ValidationError,
        "avoid_cores must be core ids in [0, 63]",
    ),
    Case(
        "dead link between cores that are not neighbours",
        lambda e: aimc.compile(e.net, example_input=e.x, avoid_links=[(0, 9)]),
        ValidationError,
        "not a link",
    ),
    # --- inputs of a run
    Case("NaN input", lambda e: e.chip.run(torch.full((1, 3, 8, 8), float("nan"))), ValidationError, "finite"),
    Case("Inf input", lambda e: e.chip.run(torch.full((1, 3, 8, 8), float("inf"))), ValidationError, "finite"),
    Case("empty input batch", lambda e: e.chip.run(torch.zeros(0, 3, 8, 8)), ValidationError, "must not be empty"),
    Case(
        "integer input to an image network",
        lambda e: e.chip.run(torch.zeros(1, 3, 8, 8, dtype=torch.int64)),
        ArgumentTypeError,
        "floating-point values",
    ),
    Case(
        "input without a batch dimension",
        lambda e: e.chip.run(torch.zeros(3, 8, 8)),
        ValidationError,
        "4 dimensions (batch first)",
    ),
    Case(
        "input with the wrong channel count",
        lambda e: e.chip.run(torch.zeros(1, 1, 8, 8)),
        ValidationError,
        "3 channels/features",
    ),
    Case(
        "input of the wrong spatial size",
        lambda e: e.chip.run(torch.zeros(1, 3, 9, 9)),
        ValidationError,
        "does not fit the mapping",
    ),
    Case("a list instead of a tensor", lambda e: e.chip.run([[1.0, 2.0]]), ArgumentTypeError, "torch.Tensor"),
    Case(
        "token id outside the vocabulary",
        lambda e: aimc.program(
            aimc.compile(aimc.models.char_lstm(seed=0), example_input=torch.zeros(1, 4, dtype=torch.int64)), "ideal"
        ).run(torch.full((1, 4), 50)),
        ValidationError,
        "token ids must be integers in [0, 49]",
    ),
    # --- out-of-range times, bits and settings
    Case(
        "negative time after programming", lambda e: e.chip.run(e.x, t=-1.0), ValidationError, "t must be in [0, inf]"
    ),
    Case("NaN time after programming", lambda e: e.chip.run(e.x, t=float("nan")), ValidationError, "t must be finite"),
    Case("time given as text", lambda e: e.chip.run(e.x, t="1h"), ArgumentTypeError, "t must be a number"),
    Case(
        "PWM with 1 bit",
        lambda e: dataclasses.replace(aimc.ChipSpec.hermes(), pwm_bits=1),
        ValidationError,
        "pwm_bits must be >= 2",
    ),
    Case(
        "ADC with 0 bits",
        lambda e: dataclasses.replace(aimc.ChipSpec.hermes(), adc_bits=0),
        ValidationError,
        "adc_bits must be in [1, inf]",
    ),
    Case(
        "perf model ADC resolution 40 bits",
        lambda e: aimc.perf.estimate(e.mapping, adc_resolution_bits=40),
        ValidationError,
        "adc_resolution_bits must be in [1, 20]",
    ),
    Case(
        "read voltage below zero",
        lambda e: aimc.CoreConfig(read_voltage_V=-0.1),
        ValidationError,
        "read_voltage_V must be in (0, inf]",
    ),
    Case(
        "read voltage outside the chip's 0.1-0.4 V",
        lambda e: aimc.program_core(torch.ones(4, 4), config=aimc.CoreConfig(read_voltage_V=0.6)),
        ValidationError,
        "outside the chip's read voltages [0.1, 0.4] V",
    ),
    Case(
        "unknown ADC calibration",
        lambda e: aimc.CoreConfig(adc_calibration="auto"),
        UnknownNameError,
        "CoreConfig.adc_calibration must be one of 'operating', 'full'",
    ),
    Case(
        "negative seed",
        lambda e: aimc.program(e.mapping, "ideal", seed=-1),
        ValidationError,
        "seed must be a non-negative int",
    ),
    Case(
        "quantize given as a string",
        lambda e: e.chip.run(e.x, quantize="no"),
        ArgumentTypeError,
        "quantize must be a bool",
    ),
    # --- unknown names
    Case(
        "unknown device preset",
        lambda e: aimc.program(e.mapping, "hermes-3dev"),
        UnknownNameError,
        "unknown device model name 'hermes-3dev'",
    ),
    Case("unknown read mode", lambda e: e.chip.run(e.x, mode="two-phase"), UnknownNameError, "mode must be one of"),
    Case(
        "unknown strategy",
        lambda e: aimc.program(e.mapping, "ideal", "qdp"),
        UnknownNameError,
        "strategy must be one of",
    ),
    Case(
        "ODP with a two-device model",
        lambda e: aimc.program(e.mapping, "hermes-2dev", "odp"),
        ValidationError,
        "ODP needs a one-device model",
    ),
    Case("unknown model name", lambda e: aimc.models.get_model("vgg16"), UnknownNameError, "unknown model name"),
    Case(
        "unknown fault key",
        lambda e: aimc.faults.parse_faults("dead_cores=3"),
        UnknownNameError,
        "unknown --faults key",
    ),
    Case(
        "stuck-device rate above 1",
        lambda e: aimc.faults.Faults(stuck_set=1.5),
        ValidationError,
        "stuck_set must be in [0, 1]",
    ),
    Case(
        "program a mapping onto a dead core",
        lambda e: aimc.program(
            e.mapping, "ideal", faults=aimc.faults.Faults(dead_cores=[e.mapping.layers["0"].core_list()[0]])
        ),
        ValidationError,
        "placed on dead core",
    ),
    # --- saved chips: corrupted, truncated, altered, crafted
    Case(
        "saved chip: not a file", lambda e: aimc.load(e.tmp / "missing.safetensors"), ValidationError, "is not a file"
    ),
    Case(
        "saved chip: truncated to half",
        lambda e: aimc.load(_bytes(e, "half.st", lambda b: b[: len(b) // 2])),
        CorruptFileError,
        "truncated or not a readable safetensors file",
    ),
    Case(
        "saved chip: 20 bytes of garbage",
        lambda e: aimc.load(_bytes(e, "garbage.st", lambda b: b"\xff" * 20)),
        CorruptFileError,
        "not a readable safetensors file",
    ),
    Case(
        "saved chip: declared header size 2^40 bytes",
        lambda e: aimc.load(_bytes(e, "huge.st", lambda b: struct.pack("<Q", 2**40) + b[8:])),
        CorruptFileError,
        "1,099,511,627,776-byte header",
    ),
    Case(
        "saved chip: one tensor byte flipped",
        lambda e: aimc.load(_bytes(e, "flip.st", lambda b: b[:-9] + bytes([b[-9] ^ 0x10]) + b[-8:])),
        CorruptFileError,
        "fails its checksum",
    ),
    Case(
        "saved chip: metadata edited (seed), checksum not updated",
        lambda e: aimc.load(_craft(e, "meta.st", meta=lambda m: _set(m, ["seed"], 99), checksum=False)),
        CorruptFileError,
        "fails its checksum",
    ),
    Case(
        "crafted chip: stuck mask stored as float32",
        lambda e: aimc.load(
            _craft(e, "dtype.st", tensors=lambda t: t.update({"core0.state.stuck": t["core0.state.stuck"].float()}))
        ),
        CorruptFileError,
        "has dtype F32, expected BOOL",
    ),
    Case(
        "crafted chip: conductances of the wrong shape",
        lambda e: aimc.load(
            _craft(
                e,
                "shape.st",
                tensors=lambda t: t.update({"core0.state.g_prog": t["core0.state.g_prog"][..., :-1].contiguous()}),
            )
        ),
        CorruptFileError,
        "core0.state.g_prog",
    ),
    Case(
        "crafted chip: NaN conductance",
        lambda e: aimc.load(
            _craft(e, "nan.st", tensors=lambda t: t["core0.state.g_prog"].view(-1).__setitem__(0, float("nan")))
        ),
        CorruptFileError,
        "NaN/Inf",
    ),
    Case(
        "crafted chip: layer weight of the wrong shape",
        lambda e: aimc.load(
            _craft(e, "weight.st", tensors=lambda t: t.update({"mapping.layer0.weight": torch.zeros(8, 26)}))
        ),
        CorruptFileError,
        "weight has shape (8, 26), expected (8, 27)",
    ),
    Case(
        "crafted chip: unknown op kind",
        lambda e: aimc.load(_craft(e, "op.st", meta=lambda m: _set(m, ["mapping", "ops", 1, "kind"], "exec"))),
        CorruptFileError,
        "unknown op kind 'exec'",
    ),
    Case(
        "crafted chip: core id outside the chip",
        lambda e: aimc.load(_craft(e, "core.st", meta=lambda m: _set(m, ["mapping", "layers", 0, "cores"], [[99]]))),
        CorruptFileError,
        "grid of core ids < 64",
    ),
    Case(
        "crafted chip: unsupported format version",
        lambda e: aimc.load(_craft(e, "format.st", meta=lambda m: _set(m, ["format"], "9"))),
        CorruptFileError,
        "unsupported aimc file format '9'",
    ),
    Case(
        "crafted chip: extra tensor",
        lambda e: aimc.load(_craft(e, "extra.st", tensors=lambda t: t.update({"payload": torch.zeros(4)}))),
        CorruptFileError,
        "tensors no part of the chip uses",
    ),
    # --- weights files
    Case(
        "weights file with NaN weights",
        lambda e: load_weights_file(
            _weights_file(e, "nan_w.st", lambda s: s["conv0.weight"].view(-1).__setitem__(3, float("nan"))), resnet9()
        ),
        CorruptFileError,
        "holds 1 NaN/Inf value(s)",
    ),
    Case(
        "weights file with a wrong-shape tensor",
        lambda e: load_weights_file(
            _weights_file(e, "shape_w.st", lambda s: s.update({"fc.weight": torch.zeros(10, 100)})), resnet9()
        ),
        CorruptFileError,
        "tensor 'fc.weight' has shape (10, 100), the model has (10, 224)",
    ),
    Case(
        "weights file with an integer weight tensor",
        lambda e: load_weights_file(
            _weights_file(e, "int_w.st", lambda s: s.update({"fc.bias": torch.zeros(10, dtype=torch.int32)})), resnet9()
        ),
        CorruptFileError,
        "has dtype I32, expected a floating-point dtype",
    ),
    Case(
        "weights file of another network",
        lambda e: load_weights_file(_weights_file(e, "other_w.st", lambda s: s.pop("fc.bias")), resnet9()),
        CorruptFileError,
        "missing ['fc.bias']",
    ),
]


@dataclass(frozen=True)
class CliCase:
    """A bad command line: exit code != 0, ``fragment`` in stderr, no traceback."""

    name: str
    argv: list[str]
    fragment: str


CLI_CASES = [
    CliCase("`aimc eval` with 0 seeds", ["eval", "resnet9", "--seeds", "0"], "--seeds must be at least 1"),
    CliCase("`aimc eval` with a bad --faults text", ["eval", "resnet9", "--faults", "stuck=2"], "[0, 1]"),
    CliCase(
        "`aimc eval` of a weights file holding NaN",
        ["eval", "resnet9", "--weights", "nan.safetensors"],
        "holds 1 NaN/Inf value(s)",
    ),
    CliCase("`aimc map` of a pickle file", ["map", "model.pt"], "never pickle"),
    CliCase("`aimc mvm-error` with a negative time", ["mvm-error", "--times", "-5"], "must be in [0, inf]"),
    CliCase("`aimc mvm-error` with an unknown mode", ["mvm-error", "--modes", "two-phase"], "mode must be one of"),
    CliCase("`aimc perf` with an unknown transport", ["perf", "resnet9", "--transport", "radio"], "invalid choice"),
    CliCase(
        "`aimc mvm-error` writing its JSON where no folder can be made",
        [
            "mvm-error",
            "--cores",
            "1",
            "--inputs",
            "256",
            "--strategies",
            "tdp",
            "--modes",
            "four-phase",
            "--times",
            "60",
            "--json-out",
            "/proc/aimc/x.json",
        ],
        "/proc/aimc",
    ),
    CliCase(
        "`aimc train` drift-aware without --hwa",
        ["train", "resnet9", "--out", "run", "--drift-aware"],
        "--drift-aware is part of hardware-aware training",
    ),
    CliCase(
        "`aimc eval` with a read voltage the chip does not have",
        ["eval", "resnet9", "--read-voltage", "0.05"],
        "outside the chip's read voltages",
    ),
    CliCase("unknown command", ["simulate"], "invalid choice"),
]

OUTCOMES: dict[str, tuple[str, str]] = {}


def _clean(message: str, env: Env | None = None) -> str:
    if env is not None:
        message = message.replace(str(env.tmp), "TMP")
    message = re.sub(r"/tmp/[^\s'\"]+", "TMP", message)
    return message.replace("|", "\\|").replace("\n", " ")


def _check_library_case(case, env: Env) -> None:
    with pytest.raises(case.error) as info:
        case.run(env)
    assert type(info.value).__name__ == case.error.__name__, f"got {type(info.value).__name__}: {info.value}"
    message = str(info.value)
    assert case.fragment in message, message
    OUTCOMES[case.name] = (type(info.value).__name__, _clean(message, env))


def _check_cli_case(case, capsys, folder: Path, monkeypatch) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    monkeypatch.chdir(folder)
    (folder / "model.pt").write_bytes(b"\x80\x04not really a pickle")
    state = resnet9(seed=0).state_dict()
    state["fc.weight"][0, 0] = float("nan")
    save_file(state, str(folder / "nan.safetensors"), metadata={"aimc_model": "resnet9"})
    capsys.readouterr()
    try:
        code = main(case.argv)
    except SystemExit as exc:  # argparse usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code not in (0, None) and "Traceback" not in err
    assert case.fragment in err, err
    OUTCOMES["CLI: " + case.name] = (f"exit {code}", _clean(err.strip().splitlines()[-1]))


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_raises_its_error(case, env):
    _check_library_case(case, env)


@pytest.mark.parametrize("case", CLI_CASES, ids=[c.name for c in CLI_CASES])
def test_bad_command_line_exits_nonzero_without_traceback(case, capsys, tmp_path, monkeypatch):
    _check_cli_case(case, capsys, tmp_path, monkeypatch)


def test_every_case_is_distinct_and_there_are_at_least_25():
    names = [c.name for c in CASES] + [c.name for c in CLI_CASES]
    assert len(set(names)) == len(names) and len(CASES) >= 25


def _table() -> str:
    rows = ["| # | bad input | error raised | message |", "|---|---|---|---|"]
    for i, name in enumerate([c.name for c in CASES] + ["CLI: " + c.name for c in CLI_CASES], 1):
        err, msg = OUTCOMES[name]
        # a saved chip's size depends on the machine that wrote it (its provenance names the CPU and kernels)
        msg = re.sub(r"byte offsets \[\d+, \d+\] outside its [\d,]+ by", "byte offsets [A, B] outside its N by", msg)
        msg = msg if len(msg) <= 160 else msg[:157] + "..."
        rows.append(f"| {i} | {name} | `{err}` | {msg} |")
    return "\n".join(rows)


def test_docs_table_is_in_sync(env, capsys, tmp_path, monkeypatch):
    """docs/validation.md holds the table these cases produce (AIMC_UPDATE_DOCS=1 rewrites it). Cases not yet run
    in this session (e.g. when this test is selected alone) are run here."""
    for case in CASES:
        if case.name not in OUTCOMES:
            _check_library_case(case, env)
    for i, case in enumerate(CLI_CASES):
        if "CLI: " + case.name not in OUTCOMES:
            _check_cli_case(case, capsys, tmp_path / f"cli{i}", monkeypatch)
    table = _table()
    text = DOCS.read_text()
    if os.environ.get("AIMC_UPDATE_DOCS") == "1" and START in text:
        head, rest = text.split(START, 1)
        DOCS.write_text(head + START + "\n" + table + "\n" + END + rest.split(END, 1)[1])
        text = DOCS.read_text()
    assert START in text and END in text, "docs/validation.md lacks the bad_input markers"
    assert text.split(START, 1)[1].split(END, 1)[0].strip() == table, "rerun with AIMC_UPDATE_DOCS=1"
