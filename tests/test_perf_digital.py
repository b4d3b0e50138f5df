"""The perf model's digital operations and inter-chip links, and compile(chips="auto").

Table I itself is checked unchanged by tests/test_perf.py: the chip paper's networks have no digital op and fit on
one chip.
"""

from __future__ import annotations

import copy
import dataclasses
import re

import pytest
import torch
from torch import nn

import aimc
from aimc.cli import main
from aimc.compiler.placement import chips_needed
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.perf import PerfConstants, estimate
from aimc.perf.digital import DigitalOpWork, digital_op_cost, digital_work
from aimc.perf.links import LAYER_OUTPUT, PARTIAL_SUMS, interchip_work

SPEC = aimc.ChipSpec.hermes()
C = PerfConstants()


def _compile(model: nn.Module, features: int, **kwargs) -> aimc.compiler.Mapping:
    torch.manual_seed(0)
    return aimc.compile(model, calibration=torch.randn(8, features), progress=False, **kwargs)


@pytest.fixture(scope="module")
def small():
    """The same two Linear layers with nothing, a GELU (GDPU) or a LayerNorm (digital unit) between them."""
    torch.manual_seed(0)
    out = {}
    for name, middle in (("plain", nn.Identity()), ("gelu", nn.GELU()), ("layernorm", nn.LayerNorm(64))):
        out[name] = _compile(nn.Sequential(nn.Linear(64, 64), middle, nn.Linear(64, 64)), 64)
    return out


def _dynamic(rep) -> float:
    return rep.energy_per_inference_uj - rep.energy_uj["static"]


def test_a_gelu_or_layernorm_adds_its_own_cost_to_latency_and_energy(small):
    plain = estimate(small["plain"], "one-phase")
    assert plain.digital["ops"] == 0 and plain.energy_uj["digital"] == 0.0
    for name, unit in (("gelu", "gdpu"), ("layernorm", "digital")):
        (work,) = digital_work(small[name])
        assert work.unit == unit and work.costed and work.flops > 0 and work.bytes > 0
        cost = digital_op_cost(work, SPEC, C)
        rep = estimate(small[name], "one-phase")
        assert rep.digital["ops"] == rep.digital["costed"] == 1
        assert rep.digital["units"][unit]["ops"] == 1
        # the analog layers cost the same with or without the op between them: the difference is the op
        assert rep.latency_ns - plain.latency_ns == pytest.approx(cost.latency_ns)
        assert _dynamic(rep) - _dynamic(plain) == pytest.approx(cost.energy_nJ * 1e-3)
        assert rep.digital["latency_ns"] == pytest.approx(cost.latency_ns) and cost.latency_ns > 0
        assert rep.energy_uj["digital"] == pytest.approx(cost.energy_nJ * 1e-3) and cost.energy_nJ > 0


def test_the_units_cost_what_the_documented_constants_say(small):
    (gelu,) = digital_work(small["gelu"])
    values = gelu.flops / 8  # the compiler counts 8 FLOPs per GELU output
    assert gelu.values == pytest.approx(values)
    cost = digital_op_cost(gelu, SPEC, C)
    clock_ns = 1e3 / SPEC.gdpu_clock_MHz
    assert cost.latency_ns == pytest.approx(values / SPEC.gdpu_slices * clock_ns)  # one value per clock per slice
    assert cost.energy_nJ == pytest.approx(values * C.gdpu_energy_per_output_nJ / 5)
    (norm,) = digital_work(small["layernorm"])
    cost = digital_op_cost(norm, SPEC, C)
    roofline = max(norm.flops / C.digital_unit_flops_per_s, norm.bytes / C.digital_unit_bytes_per_s) * 1e9
    assert cost.latency_ns == pytest.approx(roofline)
    energy_pj = norm.flops * C.digital_energy_pJ_per_flop + norm.bytes * C.digital_energy_pJ_per_byte
    assert cost.energy_nJ == pytest.approx(energy_pj * 1e-3)


@pytest.mark.parametrize("unit", ["ldpu", "gdpu", "digital", "layout"])
def test_cost_is_proportional_to_flops_and_bytes(unit):
    one = DigitalOpWork("op", "aten.x.default", unit, 1000.0, 3000.0, 1000.0, 0, None, True)
    two = dataclasses.replace(one, flops=2000.0, bytes=6000.0, values=2000.0)
    a, b = digital_op_cost(one, SPEC, C), digital_op_cost(two, SPEC, C)
    assert a.latency_ns > 0 and a.energy_nJ > 0
    assert b.latency_ns == pytest.approx(2 * a.latency_ns) and b.energy_nJ == pytest.approx(2 * a.energy_nJ)
    view = dataclasses.replace(one, flops=0.0, bytes=0.0, values=0.0)
    assert digital_op_cost(view, SPEC, C).latency_ns == 0.0 and digital_op_cost(view, SPEC, C).energy_nJ == 0.0


def test_layout_ops_cost_their_bytes_only():
    copy_op = DigitalOpWork("cat", "aten.cat.default", "layout", 5000.0, 4096.0, 0.0, 0, None, True)
    cost = digital_op_cost(copy_op, SPEC, C)
    assert cost.latency_ns == pytest.approx(4096 / C.digital_unit_bytes_per_s * 1e9)
    assert cost.energy_nJ == pytest.approx(4096 * C.digital_energy_pJ_per_byte * 1e-3)


def test_ops_without_a_recorded_cost_are_free(small):
    old = copy.deepcopy(small["layernorm"])
    for op in old.ops:
        op.attrs.pop("flops", None)
        op.attrs.pop("bytes", None)
    rep = estimate(old, "one-phase")
    plain = estimate(small["plain"], "one-phase")
    assert rep.digital["ops"] == 1 and rep.digital["costed"] == 0
    assert rep.energy_uj["digital"] == 0.0 and rep.digital["latency_ns"] == 0.0
    assert rep.latency_ns == pytest.approx(plain.latency_ns)
    assert "1 without a recorded cost" in rep.summary()


def test_summary_prints_the_digital_share_of_latency_and_energy_and_per_unit(small):
    rep = estimate(small["layernorm"], "four-phase")
    text = rep.summary()
    line = re.search(r"digital ops: (\d+) ops, ([\d.]+)% of latency, ([\d.]+)% of energy", text)
    assert line, text
    assert int(line.group(1)) == 1
    assert float(line.group(2)) == pytest.approx(100 * rep.digital["latency_ns"] / rep.latency_ns, abs=0.06)
    assert float(line.group(3)) == pytest.approx(100 * rep.energy_uj["digital"] / rep.energy_per_inference_uj, abs=0.06)
    assert re.search(r"^\s+digital\s+1 ops", text, re.MULTILINE), text
    assert "inter-chip" not in text  # one chip
    assert "digital ops" not in estimate(small["plain"], "four-phase").summary()
    d = rep.as_dict()
    assert d["digital"]["per_op"][0]["unit"] == "digital" and d["interchip"]["transfers"] == 0


def test_digital_ops_slower_than_every_layer_are_the_pipeline_bottleneck(small):
    slow = dataclasses.replace(C, digital_unit_flops_per_s=1e6, digital_unit_bytes_per_s=1e6)
    rep = estimate(small["layernorm"], "one-phase", constants=slow)
    assert rep.bottleneck == "digital ops"
    assert rep.throughput_per_s == pytest.approx(1e9 / rep.digital["latency_ns"])
    assert estimate(small["layernorm"], "one-phase").bottleneck in small["layernorm"].layers


# --- chips="auto" ---

BIG = (2500, 2000)  # 10 x 8 blocks = 80 cores, with the 8 of the 2000 x 10 layer 88: 2 chips of 64


def _big() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(*BIG), nn.ReLU(), nn.Linear(BIG[1], 10))


@pytest.fixture(scope="module")
def two_chips():
    return _compile(_big(), BIG[0], chips="auto")


def test_auto_takes_the_chip_count_that_the_one_chip_error_names(two_chips):
    with pytest.raises(ValidationError, match=r"needs 88 cores .* chips=2"):
        _compile(_big(), BIG[0])
    assert two_chips.chips == 2 and two_chips.cores_used == 88
    assert chips_needed(two_chips.layers, SPEC) == 2
    assert chips_needed(list(two_chips.layers.values()), SPEC) == 2 and chips_needed([], SPEC) == 1
    small = _compile(nn.Linear(8, 4), 8, chips="auto")
    assert small.chips == 1


@pytest.mark.parametrize("bad", [0, -1])
def test_chips_below_one_are_refused(bad):
    with pytest.raises(ValidationError, match=r"chips must be an int >= 1 .* or 'auto'"):
        _compile(nn.Linear(4, 4), 4, chips=bad)


@pytest.mark.parametrize("bad", ["two", "AUTO", True, 1.5, None])
def test_chips_of_another_type_are_refused(bad):
    with pytest.raises(ArgumentTypeError, match=r"chips must be an int >= 1 .* or 'auto'"):
        _compile(nn.Linear(4, 4), 4, chips=bad)


# --- inter-chip links ---


def test_partial_sums_crossing_chips_cost_link_latency_and_energy(two_chips, small):
    crossing = [link for link in two_chips.links_used() if link["kind"] == "inter-chip"]
    assert crossing  # a column chain of layer 0 continues on the second chip
    rep = estimate(two_chips, "one-phase")
    x = rep.interchip
    assert x["chips"] == 2 and x["transfers"] == len(crossing)
    assert x["energy_uj"] > 0 and x["latency_ns"] > 0 and rep.energy_uj["inter-chip"] == x["energy_uj"]
    per_value = 8 * C.interchip_energy_pJ_per_bit * 1e-6  # µJ per INT8 value
    assert x["energy_uj"] == pytest.approx(x["bytes"] * per_value)
    assert "inter-chip transfers (2 chips)" in rep.summary()
    # the same network with no link cost: the crossing adds its latency and energy only
    free = estimate(
        two_chips,
        "one-phase",
        constants=dataclasses.replace(C, interchip_latency_ns=0.0, interchip_GBps=1e12, interchip_energy_pJ_per_bit=0),
    )
    assert rep.latency_ns > free.latency_ns
    assert _dynamic(rep) - _dynamic(free) == pytest.approx(x["energy_uj"])
    one = estimate(small["plain"], "one-phase")
    assert one.interchip["transfers"] == 0 and one.interchip["energy_uj"] == 0.0 and one.energy_uj["inter-chip"] == 0.0


def test_a_layer_output_crosses_chips_only_with_on_chip_transport():
    torch.manual_seed(0)
    mapping = _compile(nn.Sequential(nn.Linear(2048, 2048), nn.Linear(2048, 10)), 2048, chips="auto")
    assert mapping.chips == 2  # the first layer fills chip 0, the second sits on chip 1
    assert not [link for link in mapping.links_used() if link["kind"] == "inter-chip"]
    from aimc.perf.workload import network_work

    works = network_work(mapping)
    assert interchip_work(mapping, works, "host") == []
    (output,) = interchip_work(mapping, works, "on-chip")
    assert output.what == LAYER_OUTPUT and output.layer == "0" and output.bytes == 2048
    assert estimate(mapping, "one-phase").interchip["energy_uj"] == 0.0
    rep = estimate(mapping, "one-phase", transport="on-chip")
    assert rep.interchip["bytes"] == 2048 and rep.interchip["energy_uj"] > 0
    assert rep.interchip["latency_ns"] == pytest.approx(C.interchip_latency_ns + 2048 / C.interchip_GBps)
    assert PARTIAL_SUMS not in {entry["what"] for entry in rep.interchip["per_layer"]}


def test_perf_cli_takes_chips_and_prints_the_link_line(capsys):
    assert main(["perf", "char-lstm", "--mode", "one-phase", "--chips", "2"]) == 0
    out = capsys.readouterr().out
    assert "inter-chip transfers (2 chips)" in out and "digital ops" not in out
    with pytest.raises(SystemExit):
        main(["perf", "char-lstm", "--chips", "zero"])
    assert "'auto'" in capsys.readouterr().err
