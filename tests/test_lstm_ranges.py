"""LSTM conversion ranges: the off-chip input is scaled to h's PWM range; gate INT8 range capped at the GDPU table."""

from __future__ import annotations

import torch

import aimc
from aimc.compiler.calibrate import GATE_RANGE_LIMIT, MAX_INPUT_SCALE
from aimc.models import get_model


def test_lstm_input_scaled_to_h_range_and_function_unchanged():
    model = get_model("char-lstm").eval()
    with torch.no_grad():  # large gate pre-activations, as a trained network has
        model.lstm.weight_hh_l0.mul_(8.0)
    tokens = torch.randint(0, 50, (4, 40), generator=torch.Generator().manual_seed(0))
    mapping = aimc.compile(model, example_input=tokens)
    layer = mapping.layers["lstm"]
    emb_peak = float(model.embedding.weight.abs().max())
    scale = layer.geometry["input_scale"]
    assert abs(scale - min(1.0 / emb_peak, MAX_INPUT_SCALE)) < 1e-4 and scale > 2.0
    assert layer.out_range <= GATE_RANGE_LIMIT
    # with exact devices and ideal converters the scaled layer computes the same function
    chip = aimc.program(mapping, "ideal", "tdp", seed=0)
    out = chip.run(tokens, t=60.0, quantize=False, read_noise=False, drift_compensation=False)
    with torch.no_grad():
        ref = model(tokens)
    torch.testing.assert_close(out, ref, atol=2e-4, rtol=1e-3)
