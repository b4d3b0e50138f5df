"""Device models: the presets pass the conformance suite, the suite catches wrong models, and bad input is refused.

Statistical tests use fixed seeds and n = 10^5 devices per level; the tolerance is the suite's rtol = 3% (the
standard error of a sample std at n = 10^5 is 0.22%, so a pass is not luck and a fail is not noise).
"""

from __future__ import annotations

import math

import pytest
import torch

from aimc.devices import (
    DeviceModel,
    DeviceModelCheckError,
    DeviceState,
    HermesPCM,
    IdealDevice,
    ProgramVerify,
    StandardPCM,
    StatisticalDeviceModel,
    available,
    check_device_model,
    get,
    register,
)
from aimc.devices.registry import unregister
from aimc.errors import AimcError, ArgumentTypeError, UnknownNameError, ValidationError
from aimc.spec import ChipSpec

PRESETS = ("standard", "hermes-1dev", "hermes-2dev", "ideal")
N_STATS = 100_000
RTOL = 0.03


# ---------------------------------------------------------------------------------------------------- conformance
@pytest.mark.parametrize("name", PRESETS)
def test_preset_passes_conformance_suite_at_1e5_devices(name: str) -> None:
    model = get(name)
    report = check_device_model(model, n=N_STATS, seed=0, rtol=RTOL)
    assert report["model"] == name
    assert [row["g"] for row in report["levels"]] == [0.2, 0.4, 0.6, 0.8, 1.0]
    for check in ("shapes", "bad_input", "non_negative", "drift_monotone", "reproducible", "seed_dependence"):
        assert check in report["checks"]
    for check in ("prog_std", "nu_mean", "read_noise"):
        assert check in report["checks"]
    # restate the three published statistics the brief names: sigma_prog, mean nu, Q_s, each within 3%
    for row in report["levels"]:
        if row["prog_std_expected"] > 0:
            assert row["prog_std_measured"] == pytest.approx(row["prog_std_expected"], rel=RTOL)
        else:
            assert row["prog_std_measured"] == pytest.approx(0.0, abs=1e-12)
        assert row["nu_mean_measured"] == pytest.approx(row["nu_mean_expected"], rel=RTOL, abs=1e-15)
        if name != "ideal":
            assert row["qs_measured"] == pytest.approx(row["qs_expected"], rel=RTOL)


@pytest.mark.parametrize("name", [p + "+verify" for p in PRESETS])
def test_program_verify_variants_pass_conformance_suite(name: str) -> None:
    report = check_device_model(get(name), n=20_000, seed=1)
    assert "prog_std" not in report["checks"]  # the loop's error is not prog_std (prog_std_is_exact = False)
    assert "nu_mean" in report["checks"] and "read_noise" in report["checks"]


def test_suite_report_is_json_like_and_records_the_model() -> None:
    report = check_device_model(get("hermes-2dev", yield_fraction=0.99), n=5_000)
    assert report["description"]["yield_fraction"] == 0.99
    assert report["description"]["devices"] == 2
    assert all(isinstance(v, float | type(None)) for row in report["levels"] for v in row.values())


# ---------------------------------------------------------------------------------------------------- wrong models
class DoubleProgNoise(StandardPCM):
    """Draws twice the programming noise its prog_std states."""

    name = "double-prog-noise"

    def program(self, g_target_uS: torch.Tensor, generator: object = None) -> DeviceState:
        state = super().program(g_target_uS, generator)  # type: ignore[arg-type]
        state.g_prog = (state.g_target + 2.0 * (state.g_prog - state.g_target)).clamp_min(0.0)
        return state


class RisingDrift(HermesPCM):
    """Conductance that grows with time."""

    name = "rising-drift"

    def drift(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        return state.g_prog * (1.0 + 0.01 * math.log1p(t_seconds))


class DoubleReadNoise(StandardPCM):
    """Reads with twice the std read_noise_std states."""

    name = "double-read-noise"

    def conductance(self, state: DeviceState, t_seconds: float, generator: object = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(generator))  # type: ignore[call-overload]
        g = self.drift(state, t_seconds)
        return (g + 2.0 * self.read_noise_std(state, t_seconds) * torch.randn(g.shape, generator=gen)).clamp_min(0)


class DoubledNu(StandardPCM):
    """Draws drift exponents twice as large as its statistics state."""

    name = "doubled-nu"

    def program(self, g_target_uS: torch.Tensor, generator: object = None) -> DeviceState:
        state = super().program(g_target_uS, generator)  # type: ignore[arg-type]
        state.nu = 2.0 * state.nu
        return state


class FlatteningModel(IdealDevice):
    """Returns flattened outputs."""

    name = "flattening"

    def drift(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        return state.g_prog.reshape(-1).clone()


class NoValidation(StandardPCM):
    """Skips the target validation."""

    name = "no-validation"

    def check_target(self, g_target_uS: object) -> torch.Tensor:
        return g_target_uS  # type: ignore[return-value]


class IgnoresSeed(StandardPCM):
    """Programs with a fixed internal seed whatever it is given."""

    name = "ignores-seed"

    def program(self, g_target_uS: torch.Tensor, generator: object = None) -> DeviceState:
        return super().program(g_target_uS, 1234)

    def conductance(self, state: DeviceState, t_seconds: float, generator: object = None) -> torch.Tensor:
        return super().conductance(state, t_seconds, 99)


@pytest.mark.parametrize(
    ("model", "failed_check"),
    [
        (DoubleProgNoise(), "prog_std"),
        (RisingDrift(devices=1), "drift_monotone"),
        (DoubleReadNoise(), "read_noise"),
        (DoubledNu(), "nu_mean"),
        (FlatteningModel(), "shapes"),
        (NoValidation(), "bad_input"),
        (IgnoresSeed(), "seed_dependence"),
    ],
    ids=lambda x: x if isinstance(x, str) else x.name,
)
def test_suite_catches_a_wrong_model(model: DeviceModel, failed_check: str) -> None:
    with pytest.raises(DeviceModelCheckError) as info:
        check_device_model(model, n=N_STATS, seed=0)
    assert info.value.check == failed_check
    assert failed_check in str(info.value) and model.name in str(info.value)
    assert isinstance(info.value, AssertionError) and isinstance(info.value, AimcError)


class ConstantStats(StatisticalDeviceModel):
    """A user model: constant statistics, standard-model time axis."""

    name = "constant-stats"

    def __init__(self, **kwargs: object) -> None:
        params = {"g_max_uS": 12.0, "t0_s": 10.0, "t_read_s": 1e-6, "time_offset": False, **kwargs}
        super().__init__(**params)  # type: ignore[arg-type]

    def prog_std(self, g: torch.Tensor) -> torch.Tensor:
        return torch.full_like(g, 0.4)

    def drift_nu_mean(self, g: torch.Tensor) -> torch.Tensor:
        return torch.full_like(g, 0.03)

    def drift_nu_std(self, g: torch.Tensor) -> torch.Tensor:
        return torch.full_like(g, 0.02)

    def read_noise_qs(self, g: torch.Tensor) -> torch.Tensor:
        return torch.full_like(g, 0.05)


def test_user_statistical_model_passes_suite_including_levels_clamped_at_zero() -> None:
    # level 0.02 (0.24 uS with sigma 0.4 uS) is heavily clamped at 0: the suite's censored-normal figures hold
    report = check_device_model(ConstantStats(), n=N_STATS, levels=(0.02, 0.5, 1.0))
    assert "prog_std" in report["checks"] and "read_noise_qs" in report["checks"]
    low = report["levels"][0]
    assert low["prog_std_expected"] < 0.4  # censoring shrinks the std


# ---------------------------------------------------------------------------------------------------- equations
def _ref_standard(g: float) -> tuple[float, float, float, float]:
    """docs/physics.md §3.2 (one device) in plain floats: sigma_prog (uS), mu_nu, sigma_nu, Q_s."""
    lg = math.log(max(g, 1e-12))
    sigma = max(0.26348 + 1.9650 * g - 1.1731 * g * g, 0.0)
    mu = min(max(-0.0155 * lg + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * lg - 0.0059, 0.008), 0.045)
    qs = min(0.0088 / max(g**0.65, 1e-3), 0.2)
    return sigma, mu, sd, qs


def _ref_hermes(g: float, devices: int) -> tuple[float, float, float, float]:
    """docs/physics.md §3.2 (two devices) in plain floats: sigma_prog (uS), mu_nu, sigma_nu, Q_s."""
    lg = math.log(max(g, 1e-12))

    def clip(x: float, lo: float, hi: float) -> float:
        return min(max(x, lo), hi)

    if devices == 2:
        c = [0.16603222, 4.71806468, -8.48101252, 4.68961419]
    else:
        c = [0.15781817, 2.32443916, -2.16310839, 0.68841818]
    sigma = c[0] + c[1] * g + c[2] * g**2 + c[3] * g**3
    mu = clip(-0.0387 * lg - 0.0182, 0.0720, 0.13) if g < 0.0945 else -0.0436 * g**2 - 0.0126 * g + 0.0736
    if devices == 1:
        sd = clip(-0.0120 * lg - 0.0023, 0.0124, 0.04) if g < 0.3039 else -0.0165 * g**2 + 0.0116 * g + 0.0104
        if g < 0.1591:
            qs = clip(-0.0078 * lg + 0.0038, 0.0179, 0.04)
        else:
            qs = 0.0664 * g**3 - 0.1352 * g**2 + 0.0768 * g + 0.0088
    else:
        sd = clip(-0.0117 * lg - 0.0057, 0.0091, 0.04) if g < 0.3055 else -0.0118 * g**2 + 0.0093 * g + 0.0073
        if g < 0.16:
            qs = clip(-0.0117 * lg - 0.0069, 0.015, 0.04)
        else:
            qs = 0.0069 * g**3 - 0.0280 * g**2 + 0.0211 * g + 0.0123
    return sigma, mu, sd, qs


GRID = [0.0, 1e-4, 0.01, 0.05, 0.0945, 0.1, 0.1591, 0.16, 0.2, 0.3039, 0.3055, 0.5, 0.77, 0.95, 1.0]


@pytest.mark.parametrize(
    ("model", "reference"),
    [
        (StandardPCM(), _ref_standard),
        (HermesPCM(devices=1), lambda g: _ref_hermes(g, 1)),
        (HermesPCM(devices=2), lambda g: _ref_hermes(g, 2)),
    ],
    ids=["standard", "hermes-1dev", "hermes-2dev"],
)
def test_statistics_match_spec_equations_in_float64(model: StatisticalDeviceModel, reference) -> None:  # type: ignore[no-untyped-def]
    g = torch.tensor(GRID, dtype=torch.float64)
    got = [model.prog_std(g), model.drift_nu_mean(g), model.drift_nu_std(g), model.read_noise_qs(g)]
    for i, gi in enumerate(GRID):
        expected = reference(gi)
        for k, name in enumerate(("prog_std", "nu_mean", "nu_std", "qs")):
            assert float(got[k][i]) == pytest.approx(expected[k], rel=1e-12, abs=1e-15), (name, gi)


def test_preset_parameters_come_from_spec() -> None:
    spec = ChipSpec.hermes()
    std = StandardPCM()
    assert (std.name, std.g_max_uS, std.t0_s, std.t_read_s, std.time_offset) == ("standard", 25.0, 20.0, 250e-9, False)
    h1, h2 = HermesPCM(devices=1), HermesPCM(devices=2)
    assert (h1.name, h1.g_max_uS, h1.t0_s, h1.devices_per_unit) == ("hermes-1dev", spec.g_max_1dev_uS, 200.0, 1)
    assert (h2.name, h2.g_max_uS, h2.t0_s, h2.devices_per_unit) == ("hermes-2dev", spec.g_max_2dev_uS, 300.0, 2)
    assert h1.t_read_s == h2.t_read_s == 512e-9 and h1.time_offset and h2.time_offset
    ideal = IdealDevice()
    assert (ideal.name, ideal.g_max_uS, ideal.devices_per_unit) == ("ideal", spec.g_max_1dev_uS, 1)
    for model in (std, h1, h2, ideal):
        assert model.describe()["name"] == model.name


def test_prog_std_scales_with_g_max_against_its_reference() -> None:
    g = torch.tensor([0.5], dtype=torch.float64)
    assert float(HermesPCM(devices=1, g_max_uS=5.175).prog_std(g)) == pytest.approx(
        0.5 * float(HermesPCM(devices=1).prog_std(g))
    )
    assert float(StandardPCM(g_max_uS=50.0).prog_std(g)) == pytest.approx(2 * float(StandardPCM().prog_std(g)))


# ---------------------------------------------------------------------------------------------------- time axis
def test_standard_model_does_not_drift_before_t0_and_follows_power_law_after() -> None:
    model = StandardPCM()
    state = model.program(torch.full((1000,), 12.0, dtype=torch.float64), 0)
    assert torch.equal(model.drift(state, 0.0), state.g_prog)
    assert torch.equal(model.drift(state, 19.0), state.g_prog)
    expected = state.g_prog * 4.0 ** (-state.nu)
    torch.testing.assert_close(model.drift(state, 80.0), expected, rtol=1e-12, atol=0.0)
    assert bool((model.read_noise_std(state, 0.0) == 0).all())  # ln((0 + t_read) / (2 t_read)) < 0 -> 0


def test_hermes_model_counts_time_from_t0() -> None:
    model = HermesPCM(devices=2)
    state = model.program(torch.full((1000,), 12.0, dtype=torch.float64), 0)
    assert torch.equal(model.drift(state, 0.0), state.g_prog)
    torch.testing.assert_close(model.drift(state, 300.0), state.g_prog * 2.0 ** (-state.nu), rtol=1e-12, atol=0.0)
    factor = math.sqrt(math.log((300.0 + 512e-9) / (2 * 512e-9)))
    qs = model.read_noise_qs(state.g_target / model.g_max_uS)
    torch.testing.assert_close(model.read_noise_std(state, 0.0), state.g_prog.abs() * qs * factor)


@pytest.mark.parametrize("name", [*PRESETS, "standard+verify"])
def test_zero_targets_give_finite_statistics(name: str) -> None:
    model = get(name)
    state = model.program(torch.zeros(100), 0)
    for t in (state.g_prog, state.nu, model.drift(state, 1e4), model.conductance(state, 1e4, 1)):
        assert bool(torch.isfinite(t).all()) and bool((t >= 0).all())
    if name in ("ideal", "standard+verify"):  # exact programming / a RESET device stays at 0 uS
        assert bool((state.g_prog == 0).all())
    else:  # docs/physics.md §3.2: sigma_prog(0) > 0, so a zero target programs to max(sigma_prog(0) N, 0)
        assert float(state.g_prog.max()) > 0 and float(state.g_prog.min()) == 0


def test_program_keeps_dtype_and_ignores_autograd() -> None:
    model = HermesPCM(devices=1)
    target = torch.full((4, 3), 5.0, dtype=torch.float32, requires_grad=True)
    state = model.program(target, 0)
    assert state.g_prog.dtype == torch.float32 and state.nu.dtype == torch.float32
    assert not state.g_prog.requires_grad and state.stuck.dtype == torch.bool


def test_same_seed_same_chip_and_generator_object_equals_int_seed() -> None:
    model = StandardPCM()
    target = torch.rand(50, dtype=torch.float64) * 25
    a = model.program(target, 7)
    b = model.program(target, torch.Generator().manual_seed(7))
    for x, y in zip(a.tensors().values(), b.tensors().values(), strict=True):
        assert torch.equal(x, y)


# ---------------------------------------------------------------------------------------------------- stuck cells
def test_stuck_fraction_matches_one_minus_yield_within_5_sigma() -> None:
    n, yield_fraction = 200_000, 0.99
    model = HermesPCM(devices=1, yield_fraction=yield_fraction)
    state = model.program(torch.full((n,), 5.0, dtype=torch.float64), 3)
    p = 1.0 - yield_fraction
    frac = float(state.stuck.double().mean())
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)  # binomial, 5 sigma
    stuck_values = state.g_prog[state.stuck]
    assert bool(((stuck_values == 0) | (stuck_values == model.g_max_uS)).all())
    n_stuck = stuck_values.numel()
    set_share = float((stuck_values == model.g_max_uS).double().mean())
    assert abs(set_share - 0.5) < 5 * math.sqrt(0.25 / n_stuck)  # DEFAULT_STUCK_SET_FRACTION = 0.5


def test_full_yield_has_no_stuck_cells_and_yield_does_not_change_other_draws() -> None:
    target = torch.full((10_000,), 5.0, dtype=torch.float64)
    full = StandardPCM().program(target, 4)
    partial = StandardPCM(yield_fraction=0.9, stuck_set_fraction=1.0).program(target, 4)
    assert not bool(full.stuck.any())
    assert torch.equal(full.nu, partial.nu)
    ok = ~partial.stuck
    assert torch.equal(full.g_prog[ok], partial.g_prog[ok])
    assert bool((partial.g_prog[partial.stuck] == 25.0).all())


# ---------------------------------------------------------------------------------------------------- registry
def test_available_lists_presets_and_verify_variants() -> None:
    names = available()
    for p in PRESETS:
        assert p in names and p + "+verify" in names


def test_get_returns_fresh_models_with_overrides() -> None:
    a = get("standard", yield_fraction=0.98)
    assert isinstance(a, StandardPCM) and a.yield_fraction == 0.98
    assert get("standard") is not get("standard")
    pv = get("hermes-1dev+verify", yield_fraction=0.99, max_iterations=5)
    assert isinstance(pv, ProgramVerify) and pv.max_iterations == 5 and pv.base.yield_fraction == 0.99  # type: ignore[attr-defined]
    assert pv.name == "hermes-1dev+verify"


def test_unknown_name_lists_available_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        get("hermes-3dev")
    message = str(info.value)
    assert "hermes-3dev" in message
    for name in available():
        assert repr(name) in message
    with pytest.raises(KeyError):
        get("nope+verify")


def test_get_rejects_unknown_override() -> None:
    with pytest.raises(ArgumentTypeError, match="ideal"):
        get("ideal", yield_fraction=0.9)


def test_register_user_model_and_refuse_builtin_names() -> None:
    register("constant-stats", ConstantStats)
    try:
        assert "constant-stats" in available() and "constant-stats+verify" in available()
        model = get("constant-stats", yield_fraction=0.95)
        assert isinstance(model, ConstantStats) and model.yield_fraction == 0.95
        assert get("constant-stats+verify").name == "constant-stats+verify"
    finally:
        unregister("constant-stats")
    assert "constant-stats" not in available()
    with pytest.raises(ValidationError, match="'standard'"):
        register("standard", ConstantStats)
    with pytest.raises(ValidationError, match=r"\+verify"):
        register("mine+verify", ConstantStats)
    with pytest.raises(ArgumentTypeError, match="factory"):
        register("mine", 3)  # type: ignore[arg-type]


def test_registered_factory_must_return_a_device_model() -> None:
    register("not-a-model", lambda: object())
    try:
        with pytest.raises(ArgumentTypeError, match="not-a-model"):
            get("not-a-model")
    finally:
        unregister("not-a-model")


# ---------------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["standard", "hermes-2dev", "ideal", "standard+verify"])
@pytest.mark.parametrize(
    "target",
    [
        torch.tensor([1.0, float("nan")]),
        torch.tensor([float("inf")]),
        torch.tensor([-0.5]),
        torch.tensor([1e3]),
    ],
    ids=["nan", "inf", "negative", "above-gmax"],
)
def test_bad_targets_raise_validation_error_naming_the_argument(name: str, target: torch.Tensor) -> None:
    with pytest.raises(ValidationError, match="g_target_uS"):
        get(name).program(target, 0)


def test_non_tensor_and_integer_targets_raise_type_errors() -> None:
    model = StandardPCM()
    with pytest.raises(ArgumentTypeError, match="g_target_uS"):
        model.program([1.0, 2.0], 0)  # type: ignore[arg-type]
    with pytest.raises(ArgumentTypeError, match="g_target_uS"):
        model.program(torch.tensor([1, 2]), 0)


@pytest.mark.parametrize("name", PRESETS)
def test_negative_or_non_finite_time_raises(name: str) -> None:
    model = get(name)
    state = model.program(torch.full((3,), 1.0), 0)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValidationError, match="t_seconds"):
            model.drift(state, bad)
        with pytest.raises(ValidationError, match="t_seconds"):
            model.read_noise_std(state, bad)
    with pytest.raises(ArgumentTypeError, match="t_seconds"):
        model.drift(state, "1h")  # type: ignore[arg-type]


def test_missing_or_bad_generator_raises_naming_it() -> None:
    model = HermesPCM(devices=1)
    with pytest.raises(ArgumentTypeError, match="generator"):
        model.program(torch.ones(3))
    with pytest.raises(ValidationError, match="generator"):
        model.program(torch.ones(3), -1)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_bad_yield_raises_validation_error(bad: float) -> None:
    with pytest.raises(ValidationError, match="yield_fraction"):
        StandardPCM(yield_fraction=bad)
    with pytest.raises(ValidationError, match="yield_fraction"):
        get("hermes-2dev+verify", yield_fraction=bad)


def test_bad_constructor_arguments_raise_naming_them() -> None:
    with pytest.raises(ArgumentTypeError, match="yield_fraction"):
        StandardPCM(yield_fraction="0.9")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="stuck_set_fraction"):
        HermesPCM(devices=1, stuck_set_fraction=1.2)
    with pytest.raises(ValidationError, match="devices"):
        HermesPCM(devices=3)
    with pytest.raises(ArgumentTypeError, match="devices"):
        HermesPCM(devices=1.0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="g_max_uS"):
        IdealDevice(g_max_uS=0.0)
    with pytest.raises(ArgumentTypeError, match="time_offset"):
        ConstantStats(time_offset=1)


def test_check_device_model_validates_its_arguments() -> None:
    with pytest.raises(ArgumentTypeError, match="model"):
        check_device_model("standard")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="levels"):
        check_device_model(IdealDevice(), levels=(0.5, 1.5))
    with pytest.raises(ValidationError, match="n"):
        check_device_model(IdealDevice(), n=10)
