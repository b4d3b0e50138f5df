"""ChipSpec: the published numbers, their consistency (the chip paper's Table I), variants and validation."""

from __future__ import annotations

import dataclasses

import pytest

from aimc import ChipSpec
from aimc.errors import ArgumentTypeError, UnknownNameError, ValidationError


def test_hermes_preset_holds_the_published_organisation():
    spec = ChipSpec.hermes()
    assert spec.cores == 64 and spec.grid_rows * spec.grid_cols == 64
    assert spec.weights_per_core == 65_536
    assert spec.total_weights == 4_194_304
    assert spec.total_devices == 16_777_216
    assert spec.input_levels == 127
    assert spec.integration_time_ns == 128.0
    assert spec.adc_max_count == 4095


def test_table_one_full_chip_row_is_consistent():
    """64 x 256 x 256 x 2 ops in 133 ns = 63.1 TOPS; / 0.86 uJ = 9.76 TOPS/W (docs/physics.md §12)."""
    spec = ChipSpec.hermes()
    ops = spec.total_weights * 2
    assert ops / spec.mvm_latency_ns("one-phase") / 1e3 == pytest.approx(63.1, rel=0.002)
    assert ops / spec.mvm_energy_one_phase_uJ / 1e6 == pytest.approx(9.76, rel=0.002)
    assert ops / spec.mvm_latency_ns("four-phase") / 1e3 == pytest.approx(16.1, rel=0.003)
    assert ops / spec.mvm_energy_four_phase_uJ / 1e6 == pytest.approx(2.48, rel=0.003)
    assert ops / spec.mvm_latency_ns("one-phase") / 1e3 / (spec.cores * spec.mvm_area_mm2) == pytest.approx(
        1.55, rel=0.01
    )


def test_a_variant_chip_is_made_with_dataclasses_replace():
    spec = dataclasses.replace(ChipSpec.hermes(), tile_rows=512, pwm_bits=6)
    assert spec.weights_per_core == 512 * 256
    assert spec.input_levels == 31
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.cores = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("changes", "exc", "words"),
    [
        ({"cores": 0}, ValidationError, "ChipSpec.cores"),
        ({"tile_rows": 2.5}, ArgumentTypeError, "ChipSpec.tile_rows"),
        ({"cores": 32}, ValidationError, "grid_rows"),
        ({"pwm_bits": 1}, ValidationError, "pwm_bits"),
        ({"ldpu_clock_MHz": -400.0}, ValidationError, "ldpu_clock_MHz"),
        ({"mvm_latency_one_phase_ns": float("nan")}, ValidationError, "finite"),
        ({"cell_yield": 1.5}, ValidationError, "cell_yield"),
        ({"read_voltage_min_V": 0.5}, ValidationError, "read_voltage_min_V"),
    ],
)
def test_invalid_spec_values_are_rejected(changes, exc, words):
    with pytest.raises(exc, match=words):
        dataclasses.replace(ChipSpec.hermes(), **changes)


def test_unknown_read_mode_is_rejected():
    with pytest.raises(UnknownNameError, match="one-phase"):
        ChipSpec.hermes().mvm_latency_ns("two-phase")
