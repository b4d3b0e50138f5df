"""Property tests (hypothesis): drift never raises conductance; conductances are never negative."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aimc.devices import get

NAMES = ["standard", "hermes-1dev", "hermes-2dev", "ideal", "standard+verify", "hermes-2dev+verify"]
MODELS = {name: get(name, **({} if name.startswith("ideal") else {"yield_fraction": 0.9})) for name in NAMES}

fractions = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=40)
times = st.lists(st.floats(0.0, 1e9, allow_nan=False, allow_infinity=False), min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), g=fractions, ts=times, seed=st.integers(0, 2**31 - 1))
def test_drift_never_raises_conductance(name: str, g: list[float], ts: list[float], seed: int) -> None:
    model = MODELS[name]
    state = model.program(torch.tensor(g, dtype=torch.float64) * model.g_max_uS, seed)
    previous = state.g_prog
    for t in sorted(ts):
        now = model.drift(state, t)
        assert bool((now <= state.g_prog).all())
        assert bool((now <= previous).all())
        previous = now


@settings(max_examples=60, deadline=None)
@given(name=st.sampled_from(NAMES), g=fractions, t=st.floats(0.0, 1e9), seed=st.integers(0, 2**31 - 1))
def test_conductances_are_never_negative(name: str, g: list[float], t: float, seed: int) -> None:
    model = MODELS[name]
    state = model.program(torch.tensor(g, dtype=torch.float32) * model.g_max_uS, seed)
    assert bool((state.g_prog >= 0).all()) and bool((state.nu >= 0).all())
    for x in (model.drift(state, t), model.read_noise_std(state, t), model.conductance(state, t, seed + 1)):
        assert bool(torch.isfinite(x).all()) and bool((x >= 0).all())
