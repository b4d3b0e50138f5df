"""The latency/energy model against Table I of the chip paper, its fit, leave-one-out, and whole networks."""

from __future__ import annotations

import dataclasses
import json

import pytest

import aimc
from aimc.cli import main
from aimc.errors import ArgumentTypeError, UnknownNameError, ValidationError
from aimc.models import example_input, get_model
from aimc.perf import PerfConstants, compare_table1, estimate, fit_table1, leave_lstm_out, mvm_time_ns

SPEC = aimc.ChipSpec.hermes()


@pytest.fixture(scope="module")
def table():
    return compare_table1()


def test_table1_tops_tops_per_mm2_latency_and_tops_per_w_within_3_percent(table):
    assert len(table) == 6
    for row in table:
        for key in ("tops", "tops_per_mm2", "latency_ns", "tops_per_w"):
            assert abs(row.deviation(key)) < 0.03, (row.published.use_case, row.published.mode, key)
        assert row.ours["cores"] == row.published.cores
        assert row.ours["utilization"] == pytest.approx(row.published.utilization, abs=0.006)


def test_table1_energies_full_chip_within_3_and_network_rows_within_15_percent(table):
    for row in table:
        limit = 0.03 if row.published.use_case == "full-chip MVM" else 0.15
        assert abs(row.deviation("energy_uj")) < limit, (row.published.use_case, row.published.mode)


def test_stored_constants_are_the_table1_fit():
    fitted = fit_table1()
    stored = PerfConstants()
    for field in dataclasses.fields(PerfConstants):
        assert getattr(stored, field.name) == pytest.approx(getattr(fitted, field.name), rel=2e-3), field.name


def test_leave_lstm_out_still_predicts_the_lstm_rows_within_10_percent():
    for row in compare_table1(leave_lstm_out()):
        if "LSTM" in row.published.use_case:
            for key in ("tops", "tops_per_w", "latency_ns"):
                assert abs(row.deviation(key)) < 0.10, (row.published.mode, key)


def test_mvm_time_is_set_by_the_pwm_window_and_read_mode():
    assert mvm_time_ns(SPEC, "one-phase") == pytest.approx(133.0)
    assert mvm_time_ns(SPEC, "four-phase") == pytest.approx(520.0)
    six_bit = dataclasses.replace(SPEC, pwm_bits=6)
    assert mvm_time_ns(six_bit, "one-phase") == pytest.approx(133.0 - 96.0)  # 32 ns window instead of 128 ns
    assert mvm_time_ns(SPEC, "one-phase", adc_resolution_bits=10) == pytest.approx(1024 * 0.3 + 5.0)


@pytest.fixture(scope="module")
def reports():
    out = {}
    for name in ("resnet9", "char-lstm"):
        mapping = aimc.compile(get_model(name), example_input=example_input(name), name=name)
        for mode in ("one-phase", "four-phase"):
            out[name, mode] = estimate(mapping, mode)
    return out


def test_whole_network_estimates_are_consistent(reports):
    for (_name, mode), rep in reports.items():
        assert rep.mode == mode and rep.latency_ns > 0 and rep.throughput_per_s > 0
        busiest = max(rep.layers, key=lambda lp: lp.busy_ns)
        assert rep.bottleneck == busiest.name
        assert rep.throughput_per_s == pytest.approx(1e9 / busiest.busy_ns)
        assert rep.energy_per_inference_uj == pytest.approx(sum(rep.energy_uj.values()))
        assert rep.ops == pytest.approx(sum(lp.ops for lp in rep.layers))
    for name in ("resnet9", "char-lstm"):
        one, four = reports[name, "one-phase"], reports[name, "four-phase"]
        assert four.latency_ns > one.latency_ns and four.energy_uj["mvm"] > 3.5 * one.energy_uj["mvm"]
    # ResNet-9: one MVM per output position; conv0/conv1 see 32x32 positions
    r9 = {lp.name: lp for lp in reports["resnet9", "one-phase"].layers}
    assert r9["conv0"].mvms == 1024 and r9["conv5"].mvms == 64 and r9["fc"].mvms == 1


def test_estimate_rejects_bad_input():
    mapping = aimc.compile(get_model("resnet9"), example_input=example_input("resnet9"))
    with pytest.raises(ArgumentTypeError, match="Mapping"):
        estimate("resnet9", "one-phase")  # type: ignore[arg-type]
    with pytest.raises(UnknownNameError, match="mode"):
        estimate(mapping, "two-phase")
    with pytest.raises(UnknownNameError, match="transport"):
        estimate(mapping, "one-phase", transport="wifi")
    with pytest.raises(ValidationError, match="ldpu_clock_MHz"):
        dataclasses.replace(SPEC, ldpu_clock_MHz=0.0)
    with pytest.raises(ValidationError, match="tile_rows"):
        dataclasses.replace(SPEC, tile_rows=-256)
    with pytest.raises(ValidationError, match="adc_resolution_bits"):
        estimate(mapping, "one-phase", adc_resolution_bits=0)


def test_perf_cli_table1_and_model_json(capsys, tmp_path):
    assert main(["perf", "table1", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert len(payload["rows"]) == 6 and all("deviation" in r for r in payload["rows"])
    png = tmp_path / "perf.png"
    assert main(["perf", "char-lstm", "--json", "--plot", str(png)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["mode"] for r in rows] == ["one-phase", "four-phase"]
    for r in rows:
        for key in ("cores", "utilization", "mode", "tops", "tops_per_w", "tops_per_mm2", "energy_uj", "latency_ns"):
            assert key in r
    assert png.stat().st_size > 10_000
