"""Variant chips (``dataclasses.replace(ChipSpec.hermes(), ...)``) compile and run, and more resolution helps.

Regression: a chip with more than 8 PWM bits used to wrap its PWM levels into int8 (the fast input pass and the int8
products assume |level| <= 127), round them to bfloat16 (exact only up to 256) and overflow the LDPU's FP16 charge
(above 65,504 fC): pwm_bits=10 gave chance accuracy and pwm_bits=12 NaN/Inf outputs.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import aimc
from aimc.chip import program
from aimc.core.analog import BF16_EXACT_LEVELS, INT8_LEVELS, readout_kernels_for
from aimc.spec import ChipSpec

from conftest import small_cnn


@pytest.fixture(scope="module")
def problem() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    net = small_cnn(4)  # 32x32 images
    x = torch.randn(32, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = net(x)
    return net, x, ref


def _error(problem, mode: str = "four-phase", **changes: int) -> float:
    """Relative error of the ideal-device chip (converters on, no read noise) against the float model."""
    net, x, ref = problem
    spec = dataclasses.replace(ChipSpec.hermes(), **changes)
    chip = program(aimc.compile(net, spec, x[:16], progress=False), "ideal", "tdp", seed=0)
    out = chip.run(x, t=60.0, mode=mode, seed=1, read_noise=False)
    assert torch.isfinite(out).all(), f"{changes} {mode}: non-finite outputs"
    return float((out - ref).norm() / ref.norm())


@pytest.mark.parametrize("mode", ["four-phase", "one-phase"])
def test_more_pwm_bits_get_closer_to_the_float_model(problem, mode):
    base = _error(problem, mode)
    assert base < 0.15  # the 8-bit chip itself is close (ADC counts and INT8 links dominate the rest)
    # 10 bits: levels up to 511 (past int8 and bfloat16); 12 bits: a 2,048 ns window whose four-phase charge passes
    # FP16's range, with a counter wide enough to count it (7,168 counts at saturation)
    assert _error(problem, mode, pwm_bits=10) < base
    assert _error(problem, mode, pwm_bits=12, adc_bits=14) < base


def test_twelve_pwm_bits_with_the_chips_counter_stay_finite(problem):
    # the 12-bit counter saturates at ~57 uA in a 2,048 ns window: worse, but finite numbers, not NaN/Inf
    assert _error(problem, pwm_bits=12) < 2.0


def test_fewer_pwm_bits_saturate_at_their_own_full_scale(problem):
    # 6 bits: levels clipped at 31 (the input pass used to clip at the 8-bit chip's 127); 9 bits: 255 levels
    assert _error(problem, pwm_bits=6) < 0.2
    assert _error(problem, pwm_bits=9) < 0.15


@pytest.mark.parametrize("changes", [{"tile_rows": 128, "tile_cols": 128}, {"tile_rows": 64, "tile_cols": 1024}])
def test_tile_variants_compile_and_run(problem, changes):
    assert _error(problem, **changes) < 0.15


def test_a_wider_adc_counter_runs(problem):
    assert _error(problem, adc_bits=16) < 0.15  # the counter is wider than the 448 counts of a saturated window


def test_kernels_hold_the_levels_exactly():
    chosen = {"pos_neg_product": "onednn-int8", "aux_product": "bfloat16", "mvm_tail": "numba"}
    assert readout_kernels_for(chosen, ChipSpec.hermes()) == chosen
    nine = readout_kernels_for(chosen, dataclasses.replace(ChipSpec.hermes(), pwm_bits=9))
    assert nine["pos_neg_product"] == "float32" and nine["aux_product"] == "bfloat16"
    ten = readout_kernels_for(chosen, dataclasses.replace(ChipSpec.hermes(), pwm_bits=10))
    assert ten["pos_neg_product"] == "float32" and ten["aux_product"] == "float32"
    assert ChipSpec.hermes().input_levels == INT8_LEVELS and BF16_EXACT_LEVELS == 256
    int8 = {**chosen, "aux_product": "int8"}
    assert readout_kernels_for(int8, ChipSpec.hermes()) == int8
    assert readout_kernels_for(int8, dataclasses.replace(ChipSpec.hermes(), pwm_bits=9))["aux_product"] == "bfloat16"
    assert readout_kernels_for(int8, dataclasses.replace(ChipSpec.hermes(), pwm_bits=10))["aux_product"] == "float32"


def test_ldpu_charge_unit_is_one_fc_on_the_paper_chip():
    w = torch.rand(8, 8) * 2 - 1
    from aimc.core.analog import program_core

    assert program_core(w, "ideal", "tdp", 0).ldpu_charge_unit == 1.0
    spec = dataclasses.replace(ChipSpec.hermes(), pwm_bits=12)
    assert program_core(w, "ideal", "tdp", 0, spec=spec).ldpu_charge_unit == 16.0
