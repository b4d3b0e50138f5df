"""LDPU arithmetic against a float64 reference with stated error bounds (tinygrad-style op tests)."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aimc.digital import fp16, fp16_fma, ldpu_postprocess, to_int8

HALF_EPS = 2.0**-11  # unit roundoff of IEEE half precision


@settings(max_examples=50, deadline=None)
@given(st.floats(min_value=-6e4, max_value=6e4, allow_nan=False), st.floats(min_value=-100, max_value=100))
def test_fp16_rounding_is_within_half_an_ulp(x, a):
    t = torch.tensor([x], dtype=torch.float64)
    assert abs(float(fp16(t)) - x) <= HALF_EPS * abs(x) + 2.0**-25
    r = float(fp16_fma(t, a, 1.0))
    exact = x * a + 1.0
    if abs(exact) < 6e4:
        assert abs(r - exact) <= HALF_EPS * abs(exact) + 2.0**-24 + 1e-9


def test_fp16_matches_torch_half_exactly():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float32) * 100
    assert torch.equal(fp16(x), x.half().float())


def test_int8_conversion_rounds_and_saturates():
    x = torch.tensor([-1000.0, -128.6, -0.5, 0.49, 1.5, 126.6, 127.4, 1e6])
    codes = to_int8(x, 1.0)
    assert codes.dtype == torch.int8
    assert codes.tolist() == [-128, -128, 0, 0, 2, 127, 127, 127]


def test_ldpu_pipeline_matches_a_float64_reference():
    g = torch.Generator().manual_seed(1)
    y = torch.randn(64, 32, generator=g, dtype=torch.float64) * 20
    scale = torch.rand(32, generator=g, dtype=torch.float64) + 0.5
    bias = torch.randn(32, generator=g, dtype=torch.float64)
    addend = torch.randn(64, 32, generator=g, dtype=torch.float64) * 5
    out = ldpu_postprocess(y, scale, bias, relu=True, addend=addend, relu2=True)
    ref = ((y * scale + bias).clamp_min(0) + addend).clamp_min(0)
    # three FP16 roundings of operands and results: |err| <= 4 * 2^-11 * (|y*scale| + |bias| + |addend|)
    bound = 4 * HALF_EPS * ((y * scale).abs() + bias.abs() + addend.abs()) + 1e-6
    assert bool(((out - ref).abs() <= bound).all())
    q = ldpu_postprocess(y, scale, bias, relu=True, out_scale=0.25)
    assert torch.equal(q, torch.round(q / 0.25) * 0.25)
    assert float(q.max()) <= 127 * 0.25
