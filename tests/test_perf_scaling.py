"""The scaling study (aimc.perf.scaling): one-factor-at-a-time sweeps around the HERMES chip, the clock-rate answer,
the table and the figure. Small subsets of the grid keep the tests fast."""

from __future__ import annotations

import itertools
import json

import pytest

import aimc
from aimc.errors import UnknownNameError, ValidationError
from aimc.perf.scaling import (
    FACTORS,
    clock_rate_answer,
    format_rows,
    plot_scaling,
    scaling_study,
    square_grid,
    variant_chip,
)

SPEC = aimc.ChipSpec.hermes()
KEYS = {
    "network", "factor", "value", "mode", "cores_used", "chips", "utilization", "mvm_time_ns", "latency_us",
    "energy_uj", "throughput_per_s", "tops", "tops_per_w", "tops_per_mm2", "bottleneck",
}  # fmt: skip


@pytest.fixture(scope="module")
def rows():
    """Both networks, a few points of every factor, both modes."""
    return scaling_study(
        tile_sizes=(256, 512, 1024), core_counts=(16,), pwm_bits=(4, 8, 9, 10), adc_bits=(None, 8, 10, 12)
    )


def pick(rows, **match):
    out = [r for r in rows if all(r[k] == v for k, v in match.items())]
    assert out, match
    return out


def test_rows_have_the_documented_fields_and_every_factor(rows):
    for r in rows:
        assert r.keys() >= KEYS
        assert r["latency_us"] > 0 and r["energy_uj"] > 0 and r["throughput_per_s"] > 0
        assert 0 < r["utilization"] <= 1
    assert {r["factor"] for r in rows} == set(FACTORS)
    assert {r["network"] for r in rows} == {"resnet9", "char-lstm"}
    # 2 networks x (3 tiles + 1 core count + 4 PWM + 4 ADC) x 2 modes + 2 x 2 mode rows
    assert len(rows) == 2 * 12 * 2 + 4
    json.dumps(rows)  # JSON-ready (the CLI writes scaling.json)


def test_rows_match_a_fresh_compile_and_estimate_for_the_variant_chip(rows):
    # the study reuses the chip's mapping for PWM variants (the tiling does not depend on the PWM bits)
    spec = variant_chip(pwm_bits=4)
    mapping = aimc.compile(aimc.models.get_model("char-lstm"), spec, aimc.models.example_input("char-lstm", batch=1))
    for mode in ("one-phase", "four-phase"):
        rep = aimc.perf.estimate(mapping, mode)
        (r,) = pick(rows, network="char-lstm", factor="pwm_bits", value=4, mode=mode)
        assert r["cores_used"] == rep.cores == 26 and r["chips"] == 1
        assert r["latency_us"] == pytest.approx(rep.latency_ns * 1e-3)
        assert r["energy_uj"] == pytest.approx(rep.energy_per_inference_uj)
        assert r["throughput_per_s"] == pytest.approx(rep.throughput_per_s)
        assert r["tops_per_w"] == pytest.approx(rep.tops_per_w)
        assert r["mvm_time_ns"] == pytest.approx(aimc.perf.mvm_time_ns(spec, mode))
    for mode in ("one-phase", "four-phase"):  # the chip itself: Table I's MVM times, ResNet-9 on 40 cores
        (r,) = pick(rows, network="resnet9", factor="mode", value=mode)
        assert r["mvm_time_ns"] == pytest.approx(SPEC.mvm_latency_ns(mode))
        assert r["cores_used"] == 40 and r["chips"] == 1


def test_mvm_time_about_doubles_per_extra_pwm_bit_at_high_bit_counts(rows):
    for mode in ("one-phase", "four-phase"):
        t = {r["value"]: r["mvm_time_ns"] for r in pick(rows, network="char-lstm", factor="pwm_bits", mode=mode)}
        assert t[9] / t[8] == pytest.approx(2.0, rel=0.05)
        assert t[10] / t[9] == pytest.approx(2.0, rel=0.03)
        assert t[4] < t[8] / 8  # 4 bits: a 16x shorter window, only the small fixed overheads left


def test_adc_resolution_beyond_the_pwm_window_lengthens_the_mvm_by_its_counting_time(rows):
    for mode, phases in (("one-phase", 1), ("four-phase", 4)):
        t = {r["value"]: r["mvm_time_ns"] for r in pick(rows, network="resnet9", factor="adc_bits", mode=mode)}
        assert t[8] == pytest.approx(t[None])  # 2^8 x 0.3 ns = 77 ns fits in the 128 ns PWM window
        counting = {b: 2.0**b * SPEC.adc_ps_per_lsb * 1e-3 for b in (10, 12)}
        assert counting[10] > SPEC.integration_time_ns
        assert t[12] - t[10] == pytest.approx(phases * (counting[12] - counting[10]))
        assert t[10] - t[None] == pytest.approx(phases * (counting[10] - SPEC.integration_time_ns))


def test_larger_tiles_use_fewer_cores_and_give_more_tops_per_core(rows):
    for net in ("resnet9", "char-lstm"):
        for mode in ("one-phase", "four-phase"):
            pts = sorted(pick(rows, network=net, factor="tile_size", mode=mode), key=lambda r: r["value"])
            cores = [r["cores_used"] for r in pts]
            assert cores == sorted(cores, reverse=True) and cores[0] > cores[-1]
            vals = [r["peak_core_tops"] for r in pts]
            assert all(b > a for a, b in itertools.pairwise(vals)), (net, mode, vals)
            assert len({round(r["mvm_time_ns"], 9) for r in pts}) == 1  # the MVM time does not depend on the tile
            assert pts[-1]["peak_core_tops"] / pts[0]["peak_core_tops"] == pytest.approx(16.0)  # 256² -> 1024²


def test_four_phase_has_lower_tops_per_w_than_one_phase_in_every_comparable_row(rows):
    one = {(r["network"], r["factor"], r["value"]): r for r in rows if r["mode"] == "one-phase"}
    four = {(r["network"], r["factor"], r["value"]): r for r in rows if r["mode"] == "four-phase"}
    common = one.keys() & four.keys()
    assert len(common) == 2 * 12
    for k in common:
        assert four[k]["tops_per_w"] < one[k]["tops_per_w"], k
        assert four[k]["mvm_time_ns"] > one[k]["mvm_time_ns"], k


def test_core_count_uses_a_square_grid_and_the_fewest_chips_that_fit(rows):
    assert square_grid(16) == (4, 4) and square_grid(64) == (8, 8) and square_grid(256) == (16, 16)
    assert square_grid(32) == (4, 8)
    spec = variant_chip(cores=16)
    assert (spec.cores, spec.grid_rows, spec.grid_cols, spec.tile_rows) == (16, 4, 4, 256)
    (r,) = pick(rows, network="resnet9", factor="core_count", value=16, mode="four-phase")
    assert r["cores_used"] == 40 and r["chips"] == 3  # 40 cores need 3 chips of 16
    (r,) = pick(rows, network="char-lstm", factor="core_count", value=16, mode="four-phase")
    assert r["cores_used"] == 26 and r["chips"] == 2
    (r,) = pick(rows, network="char-lstm", factor="tile_size", value=1024, mode="one-phase")
    assert r["chips"] == 1


def test_a_fast_mvm_leaves_the_network_limited_by_its_digital_units(rows):
    fast = pick(rows, network="resnet9", factor="pwm_bits", value=4, mode="one-phase")[0]
    chip = pick(rows, network="resnet9", factor="pwm_bits", value=8, mode="one-phase")[0]
    assert fast["mvm_time_ns"] < chip["mvm_time_ns"] / 5
    assert fast["limited_by"] == chip["limited_by"] == "digital"
    assert fast["throughput_per_s"] == pytest.approx(chip["throughput_per_s"])  # 10x faster MVM, same rate
    assert fast["bottleneck_slot_ns"] > fast["mvm_time_ns"]


def test_clock_rate_answer_is_computed_from_the_rows(rows):
    text = clock_rate_answer(rows)
    assert "PWM duration" in text and "2^(bits-1)" in text
    assert "digital units" in text and "400 MHz" in text
    r9 = pick(rows, network="resnet9", factor="pwm_bits", value=4, mode="one-phase")[0]
    assert f"{r9['throughput_per_s']:,.0f}" in text
    assert "1024x1024" in text
    other = clock_rate_answer(pick(rows, network="char-lstm"))
    assert other != text and "PWM duration" in other
    with pytest.raises(ValidationError):
        clock_rate_answer([])


def test_format_rows_is_a_fixed_width_table(rows):
    lines = format_rows(rows).splitlines()
    assert len(lines) == len(rows) + 2
    end = lines[0].index("TOPS/W") + len("TOPS/W")  # right-aligned columns end under their headers
    assert all(line[end - 1].isdigit() and line[end] == " " for line in lines[2:])
    assert all(line == line.rstrip() for line in lines)
    assert "TOPS/W" in lines[0] and "chip" in format_rows(pick(rows, value=None))


def test_plot_scaling_writes_a_png(rows, tmp_path):
    path = tmp_path / "figs" / "scaling.png"
    plot_scaling(rows, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValidationError):
        plot_scaling(pick(rows, factor="mode"), tmp_path / "none.png")


def test_results_are_deterministic():
    kw = {"tile_sizes": (), "core_counts": (), "pwm_bits": (6,), "adc_bits": (10,)}
    assert scaling_study(("char-lstm",), **kw) == scaling_study(("char-lstm",), **kw)


def test_bad_arguments_are_refused():
    with pytest.raises(UnknownNameError):
        scaling_study(("resnet9",), tile_sizes=(), core_counts=(), pwm_bits=(), adc_bits=(), modes=("two-phase",))
    with pytest.raises(ValidationError):
        scaling_study(("resnet9",), tile_sizes=(0,))
    with pytest.raises(ValidationError):
        scaling_study(("resnet9",), pwm_bits=(1,))
    with pytest.raises(UnknownNameError):
        scaling_study(("no-such-net",), tile_sizes=(), core_counts=(), pwm_bits=(), adc_bits=())
