"""Program-and-verify (docs/physics.md §2.4): convergence, iteration counts, stuck cells, defaults."""

from __future__ import annotations

import pytest
import torch

from aimc.devices import HermesPCM, IdealDevice, ProgramVerify, StandardPCM, get
from aimc.errors import ArgumentTypeError, ValidationError
from aimc.spec import ChipSpec

N = 100_000
#: Margin for the verify reads' 1/f noise: a device stops when its *read* error is below the tolerance, so its true
#: error may exceed the tolerance by the read noise; we allow 4 verify-read stds (at the target conductance).
READ_NOISE_MARGIN_SIGMAS = 4.0


def _uniform_targets(g_max: float, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(N, generator=gen, dtype=torch.float64) * g_max


@pytest.mark.parametrize("name", ["standard", "hermes-1dev", "hermes-2dev"])
def test_program_verify_converges_within_tolerance_plus_read_margin(name: str) -> None:
    model = get(name + "+verify")
    assert isinstance(model, ProgramVerify)
    target = _uniform_targets(model.g_max_uS)
    state = model.program(target, 5)
    margin = READ_NOISE_MARGIN_SIGMAS * model.verify_read_std(target, target)
    within = (state.g_prog - target).abs() < model.tolerance_uS + margin
    assert float(within.double().mean()) >= 0.99
    iterations = model.last_iterations
    assert iterations is not None and iterations.shape == target.shape
    assert float(iterations[target > 0].double().mean()) <= 30
    assert int(iterations.max()) <= model.max_iterations == 30
    # the loop approaches from SET and, with gain 1, leaves no large bias
    assert abs(float((state.g_prog - target).mean())) < 0.1 * model.tolerance_uS


def test_program_verify_is_much_tighter_than_open_loop_programming() -> None:
    target = torch.full((N,), 5.0, dtype=torch.float64)
    open_loop = float(HermesPCM(devices=1).program(target, 0).g_prog.std())
    closed_loop = float(get("hermes-1dev+verify").program(target, 0).g_prog.std())
    assert closed_loop < 0.5 * open_loop


def test_noise_free_verify_ends_inside_the_tolerance() -> None:
    model = ProgramVerify(IdealDevice())
    target = _uniform_targets(model.g_max_uS, seed=2)
    state = model.program(target, 0)
    within = (state.g_prog - target).abs() < model.tolerance_uS
    # only devices whose SET conductance lies below their target cannot reach it
    assert float(within.double().mean()) >= 0.99


def test_zero_targets_stay_reset_and_take_no_iterations() -> None:
    model = get("standard+verify")
    target = torch.tensor([[0.0, 10.0], [0.0, 25.0]], dtype=torch.float64)
    state = model.program(target, 0)
    assert state.g_prog.shape == (2, 2)
    assert bool((state.g_prog[:, 0] == 0).all())
    assert model.last_iterations is not None and bool((model.last_iterations[:, 0] == 0).all())
    assert bool((model.last_iterations[:, 1] >= 1).all())


def test_max_iterations_caps_the_loop() -> None:
    model = get("hermes-2dev+verify", max_iterations=1)
    target = _uniform_targets(model.g_max_uS)[:1000]
    model.program(target, 0)
    assert model.last_iterations is not None and int(model.last_iterations.max()) == 1


def test_stuck_cells_follow_base_yield_and_skip_the_loop() -> None:
    model = get("standard+verify", yield_fraction=0.9)
    target = torch.full((20_000,), 10.0, dtype=torch.float64)
    state = model.program(target, 0)
    frac = float(state.stuck.double().mean())
    assert abs(frac - 0.1) < 5 * (0.1 * 0.9 / 20_000) ** 0.5
    assert model.last_iterations is not None and bool((model.last_iterations[state.stuck] == 0).all())
    assert bool(((state.g_prog[state.stuck] == 0) | (state.g_prog[state.stuck] == 25.0)).all())


def test_defaults_come_from_chip_spec_and_statistics_delegate_to_base() -> None:
    spec = ChipSpec.hermes()
    base = StandardPCM()
    model = ProgramVerify(base)
    assert model.tolerance_uS == pytest.approx(spec.pv_tolerance_counts * spec.g_max_1dev_uS / spec.gmax_counts_odp)
    assert model.max_iterations == spec.pv_max_iterations
    assert model.name == "standard+verify" and model.g_max_uS == base.g_max_uS
    g = torch.linspace(0, 1, 11, dtype=torch.float64)
    for hook in ("prog_std", "drift_nu_mean", "drift_nu_std", "read_noise_qs"):
        assert torch.equal(getattr(model, hook)(g), getattr(base, hook)(g))
    assert model.describe()["base"]["name"] == "standard"
    assert model.last_iterations is None


def test_program_verify_rejects_bad_arguments() -> None:
    with pytest.raises(ArgumentTypeError, match="base"):
        ProgramVerify("standard")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="base"):
        ProgramVerify(ProgramVerify(StandardPCM()))
    with pytest.raises(ValidationError, match="tolerance_uS"):
        ProgramVerify(StandardPCM(), tolerance_uS=0.0)
    with pytest.raises(ValidationError, match="max_iterations"):
        ProgramVerify(StandardPCM(), max_iterations=0)
    with pytest.raises(ValidationError, match="g_target_uS"):
        ProgramVerify(StandardPCM()).program(torch.tensor([30.0]), 0)
