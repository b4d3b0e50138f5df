"""One analog core: noise-free limit, read modes, ODP/TDP, drift compensation, fresh read noise, determinism."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aimc import ChipSpec, CoreConfig, program_core
from aimc.core import cco_counts, fresh_noise_fraction, quantize_input
from aimc.devices import get
from aimc.errors import AimcError, ArgumentTypeError, UnknownNameError, ValidationError
from aimc.experiments.mvm_error import error_metrics, program_test_cores
from aimc.kernels import Backend

from conftest import paper_mvm_problem

SPEC = ChipSpec.hermes()
IDEAL_NO_SAT = CoreConfig.ideal().__class__(**{**CoreConfig.ideal().describe(), "adc_saturation": False})


def _noise_free_bound(core, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """|y - x@W.T| bound of the noise-free core: PWM rounding + ADC count rounding + FP16 rounding (float64).

    - PWM: each input is off by at most half an LSB, x_range/(2*127): sum_j |W_ij| / 254.
    - ADC: the ideal CCO integrates exactly; the count is floored (< 1 count) and the calibrated offset takes
      back about half: < 1.5 counts per counter, two counters, inv_alpha fC per count.
    - FP16: the ~5 rounded operations are each off by <= 2^-11 relative; bounded by 2^-8 * (|q_pos| + |q_neg|).
    """
    v = core.config.read_voltage_V
    out_scale = float(core.w_max.max()) / (core.g_max_uS * v * SPEC.input_levels)
    pwm = w.abs().sum(-1) / (2 * SPEC.input_levels)
    adc = 2.0 * 1.5 * float(core.adc.inv_alpha.max()) * out_scale
    charge = (x.abs() * SPEC.input_levels) @ core.states.g_prog.sum(-3).double().mT * v
    return pwm + adc + 2.0**-8 * charge * out_scale + 1e-9


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 256),
    n=st.integers(1, 256),
    batch=st.integers(1, 8),
    strategy=st.sampled_from(["odp", "tdp"]),
    mode=st.sampled_from(["four-phase", "one-phase"]),
    seed=st.integers(0, 2**16),
)
def test_noise_free_core_equals_matmul_within_quantisation_bound(m, n, batch, strategy, mode, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand((m, n), generator=g) * 2 - 1
    x = torch.rand((batch, n), generator=g) * 2 - 1
    core = program_core(w, "ideal", strategy, seed, config=IDEAL_NO_SAT)
    y = core.prepare(3600.0, mode, seed, read_noise=False, drift_compensation=False).mvm(x)
    exact = x.double() @ w.double().T
    err = (y.double() - exact).abs()
    bound = _noise_free_bound(core, x.double(), w.double())
    assert bool((err <= bound).all()), f"max excess {float((err - bound).max())}"


def test_noise_free_error_is_dominated_by_pwm_rounding():
    """Without noise the error is of the size of the 8-bit input rounding: far below the noisy chip's 1-2%."""
    w, x, y_fp = paper_mvm_problem(cores=1, batch=512)
    core = program_core(w, "ideal", "tdp", 0, config=CoreConfig.ideal())
    y = core.prepare(3600.0, "four-phase", 0, read_noise=False, drift_compensation=False).mvm(x)
    total, _, _ = error_metrics(y, y_fp, x)
    assert total < 0.002


def test_pwm_quantisation_levels_and_saturation():
    x = torch.tensor([[-2.0, -1.0, -0.5, 0.0, 0.004, 0.5, 1.0, 3.0]])
    q = quantize_input(x, 1.0, SPEC)
    assert q.tolist() == [[-127.0, -127.0, -64.0, 0.0, 1.0, 64.0, 127.0, 127.0]]


def test_adc_saturates_at_the_bit_line_limit_and_is_monotone():
    cfg = CoreConfig()
    window = SPEC.integration_time_ns
    currents = torch.linspace(0, 200, 401)
    counts = cco_counts(
        currents * window, window, torch.tensor(SPEC.cco_gain_MHz_per_uA), torch.tensor(20.0), SPEC, cfg
    )
    assert bool((counts[1:] >= counts[:-1]).all())
    sat = counts[currents >= SPEC.adc_saturation_uA]
    assert float(sat.max() - sat.min()) == 0.0  # flat above 100 uA
    # At 100 uA the CCO runs at ~A*i/(1+B*i)+C = 3353 MHz: about one count per 300 ps (docs/physics.md §6).
    assert abs(float(sat[0]) / window - 1 / 0.3) < 0.05 * (1 / 0.3)


def test_affine_correction_recovers_the_charge_of_a_linear_adc():
    cfg = CoreConfig(cco_nonlinearity_per_uA=0.0, adc_quantization=False)
    from aimc.core import sample_adc

    adc = sample_adc((), 64, SPEC, cfg, torch.Generator().manual_seed(3))
    q = torch.linspace(0, 90 * SPEC.integration_time_ns, 50)[:, None]
    c = cco_counts(q, SPEC.integration_time_ns, adc.gain[0], adc.offset[0], SPEC, cfg)
    est = c * adc.inv_alpha[0] - adc.beta[0] * adc.inv_alpha[0]
    assert torch.allclose(est, q.expand_as(est), rtol=1e-4, atol=1e-2)


def test_calibration_range_trades_low_current_accuracy_against_high_current_accuracy():
    """With the non-linear CCO, a line fitted over [0, 25 uA] estimates small charges better and large ones worse
    than a line fitted over the whole [0, 100 uA] (CoreConfig.calibration_max_fraction)."""
    from aimc.core import sample_adc

    window = SPEC.integration_time_ns
    errors = {}
    for fraction in (1.0, 0.25):
        cfg = CoreConfig(adc_quantization=False, calibration_max_fraction=fraction)
        adc = sample_adc((), 64, SPEC, cfg, torch.Generator().manual_seed(3))  # same ADCs for both fits
        for name, current in (("low", 5.0), ("high", 90.0)):
            q = torch.tensor([[current * window]])
            c = cco_counts(q, window, adc.gain[0], adc.offset[0], SPEC, cfg)
            est = c * adc.inv_alpha[0] - adc.beta[0] * adc.inv_alpha[0]
            errors[fraction, name] = float((est - q).abs().mean() / q)
    assert errors[0.25, "low"] < 0.5 * errors[1.0, "low"]
    assert errors[0.25, "high"] > 2.0 * errors[1.0, "high"]


def test_calibration_takes_one_range_per_core_and_rejects_bad_ranges():
    """Per-core tops give each core the fit a fixed range of that size gives; non-positive tops are refused."""
    from aimc.core import calibrate, sample_adc

    cfg = CoreConfig()
    adc = sample_adc((3,), 16, SPEC, cfg, torch.Generator().manual_seed(4))
    tops = torch.tensor([10.0, 40.0, 100.0])
    inv_a, beta = calibrate(adc.gain, adc.offset, SPEC, cfg, tops)
    for i, top in enumerate(tops.tolist()):
        one = CoreConfig(calibration_max_fraction=top / SPEC.adc_saturation_uA)
        ref_a, ref_b = calibrate(adc.gain[i], adc.offset[i], SPEC, one)
        assert torch.allclose(inv_a[i], ref_a, rtol=1e-5) and torch.allclose(beta[i], ref_b, rtol=1e-4, atol=1e-4)
    for bad in (torch.tensor([0.0, 10.0, 10.0]), torch.tensor([float("nan")] * 3)):
        with pytest.raises(ValidationError, match="top_uA"):
            calibrate(adc.gain, adc.offset, SPEC, cfg, bad)
    with pytest.raises(UnknownNameError, match="adc_calibration"):
        CoreConfig(adc_calibration="auto")


#: Programming seeds the paper-test errors are averaged over: one programmed core's errors (its drift-compensation
#: reference read included) move the four-/one-phase ratio by about ±0.015, more than the effect tested.
PAPER_PROGRAMMING_SEEDS = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def paper_errors():
    """ε of the chip paper's MVM test for ODP/TDP x one-/four-phase at 1 h, two cores, each metric averaged over
    :data:`PAPER_PROGRAMMING_SEEDS` (one read seed)."""
    w, x, y_fp = paper_mvm_problem(cores=2)
    out = {}
    for strategy, device in (("odp", "hermes-1dev"), ("tdp", "hermes-2dev")):
        cores = [program_test_cores(w, x, device, strategy, seed) for seed in PAPER_PROGRAMMING_SEEDS]
        for mode in ("one-phase", "four-phase"):
            metrics = [error_metrics(core.mvm(x, 3600.0, mode, 1), y_fp, x) for core in cores]
            out[strategy, mode] = tuple(sum(v) / len(v) for v in zip(*metrics, strict=True))
    return out


def test_four_phase_is_more_accurate_than_one_phase(paper_errors):
    for strategy in ("odp", "tdp"):
        # measured 0.976 (ODP) and 0.971 (TDP); single programmed cores range 0.963-0.991
        assert paper_errors[strategy, "four-phase"][0] < 0.985 * paper_errors[strategy, "one-phase"][0]


def test_tdp_has_lower_linear_error_than_odp(paper_errors):
    for mode in ("one-phase", "four-phase"):
        assert paper_errors["tdp", mode][1] < 0.9 * paper_errors["odp", mode][1]  # measured 0.85


def test_mvm_error_is_in_the_range_of_the_measured_chip(paper_errors):
    """HERMES-Core measured 1.94% with 8-bit PWM; the simulated errors are of that order (0.5-4%)."""
    for errs in paper_errors.values():
        assert 0.005 < errs[0] < 0.04


def test_fast_four_phase_path_matches_exact_phases():
    w, x, y_fp = paper_mvm_problem(cores=1, batch=1024)
    rng = float(y_fp.max() - y_fp.min())
    for strategy, device in (("odp", "hermes-1dev"), ("tdp", "hermes-2dev")):
        core = program_core(w, device, strategy, 0)
        readout = core.prepare(3600.0, "four-phase", 1, read_noise=False, backend=Backend(aux_product="float32"))
        diff = readout.mvm(x) - readout.mvm(x, exact_phases=True)
        # measured: std 0.08% (ODP) of the output range; the CCO non-linearity at the mean vs per-phase current
        assert float(diff.std()) / rng < 0.002
        assert float(diff.abs().max()) / rng < 0.015


def _output_scale(core, x, y_fp, t, drift_compensation):
    y = core.prepare(t, "four-phase", 7, drift_compensation=drift_compensation).mvm(x, 8)
    return float((y.double() * y_fp).sum() / (y_fp.double() ** 2).sum())


@pytest.mark.parametrize(("device", "strategy"), [("hermes-2dev", "tdp"), ("hermes-1dev", "odp"), ("standard", "odp")])
def test_global_drift_compensation_holds_the_output_scale_for_a_year(device, strategy):
    w, x, y_fp = paper_mvm_problem(cores=2, batch=512)
    core = program_core(w, device, strategy, 0)
    year = 365 * 86400.0
    s0 = _output_scale(core, x, y_fp, 0.0, True)
    with_gdc = _output_scale(core, x, y_fp, year, True)
    without = _output_scale(core, x, y_fp, year, False)
    assert abs(with_gdc / s0 - 1) < 0.02
    assert without / _output_scale(core, x, y_fp, 0.0, False) < 0.9


def test_fresh_read_noise_variance_matches_the_one_matmul_formula():
    """Rows of one MVM batch get independent noise of variance sum_j x_j^2 sigma_fresh_ij^2 (DESIGN.md)."""
    g = torch.Generator().manual_seed(0)
    w = torch.rand((128, 128), generator=g) * 2 - 1
    cfg = CoreConfig(cco_nonlinearity_per_uA=0.0, adc_quantization=False, adc_saturation=False)
    core = program_core(w, "hermes-2dev", "tdp", 0, config=cfg)
    readout = core.prepare(3600.0, "four-phase", 1, drift_compensation=False)
    x = (torch.rand((1, 128), generator=g) * 2 - 1).expand(800, 128).contiguous()
    y = readout.mvm(x, 2)
    tau = quantize_input(x[:1], 1.0, SPEC)
    # independent of the readout: the device model's read-noise std and the fresh share of its variance
    frac = fresh_noise_fraction(core.device, 3600.0, cfg.run_duration_s)
    var_w = frac * (core.device.read_noise_std(core.states, 3600.0) ** 2).sum(-3)  # (m, n) uS^2
    predicted = (tau**2 @ var_w.mT) * core.config.read_voltage_V**2 * float(readout.out_scale) ** 2
    ratio = y.var(dim=0) / predicted[0]
    # 800 samples: each variance estimate has ~5% relative std; the mean over 128 outputs ~0.5%
    assert abs(float(ratio.mean()) - 1.0) < 0.03
    assert 0.0 < fresh_noise_fraction(core.device, 3600.0, cfg.run_duration_s) < 1.0


def test_fresh_noise_fraction_follows_the_log_frequency_weights():
    dev = get("hermes-2dev")
    t, run = 3600.0, 1.0
    t_eff = t + dev.t0_s
    expected = math.log(run / (2 * dev.t_read_s)) / math.log((t_eff + dev.t_read_s) / (2 * dev.t_read_s))
    assert fresh_noise_fraction(dev, t, run) == pytest.approx(expected, rel=1e-12)
    assert fresh_noise_fraction(dev, t, 1e9) == 1.0  # a run longer than the time since programming: all fresh


def test_outputs_differ_between_runs_and_repeat_for_the_same_seed():
    w, x, _ = paper_mvm_problem(cores=1, batch=64)
    core = program_core(w, "hermes-2dev", "tdp", 0)
    a = core.mvm(x, 3600.0, "four-phase", 1)
    b = core.mvm(x, 3600.0, "four-phase", 2)
    c = core.mvm(x, 3600.0, "four-phase", 1)
    assert not torch.equal(a, b)
    assert torch.equal(a, c)


def test_same_seed_gives_bit_identical_outputs_on_one_and_two_threads():
    """With the same kernels and integer products (exact sums), the thread count does not change a bit. The kernels
    are chosen per thread count, so the 2-thread choice of the other operations is fixed for both; a float32 product
    may round its sums differently with the thread count (docs/design.md "Determinism")."""
    from aimc import kernels

    w, x, _ = paper_mvm_problem(cores=2, batch=256)
    torch.set_num_threads(2)
    program_core(w, "hermes-2dev", "tdp", 11).mvm(x, 60.0, "four-phase", 5)
    numerics = ("aux_product", "pos_neg_product", "mvm_tail")
    fixed = kernels.Backend(
        **{**{op: k for op, k in kernels.used().items() if op in numerics}, "pos_neg_product": "int-mm"}
    )
    results = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        core = program_core(w, "hermes-2dev", "tdp", 11, backend=fixed)
        runs = [(t, mode) for t in (60.0, 86400.0) for mode in ("one-phase", "four-phase")]
        results.append([core.mvm(x, t, mode, 5, backend=fixed) for t, mode in runs])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_same_seed_gives_the_same_programmed_chip():
    w, _, _ = paper_mvm_problem(cores=1, batch=1)
    a = program_core(w, "hermes-1dev", "odp", 4)
    b = program_core(w, "hermes-1dev", "odp", 4)
    assert torch.equal(a.states.g_prog, b.states.g_prog)
    assert torch.equal(a.adc.gain, b.adc.gain)


def test_odp_uses_one_device_and_tdp_splits_large_targets_over_two():
    w = torch.tensor([[1.0, -0.25, 0.75]])
    odp = program_core(w, "ideal", "odp", 0)
    tdp = program_core(w, "ideal", "tdp", 0)
    g1 = get("ideal").g_max_uS
    # ODP: units G1+, G2+, G1-, G2-; device 2 of each polarity RESET
    assert torch.allclose(odp.states.g_target[0, 0], torch.tensor([g1, 0.0, 0.75 * g1]))
    assert torch.allclose(odp.states.g_target[2, 0], torch.tensor([0.0, 0.25 * g1, 0.0]))
    assert float(odp.states.g_target[1].abs().sum() + odp.states.g_target[3].abs().sum()) == 0.0
    # TDP: G_max of a polarity is two devices; |W| = 0.75 -> 1.5 devices: device 1 SET, device 2 at 0.5
    assert torch.allclose(tdp.states.g_target[:, 0, 2], torch.tensor([g1, 0.5 * g1, 0.0, 0.0]))
    assert torch.allclose(tdp.target_weights(), w)
    assert torch.allclose(odp.target_weights(), w)


def test_cores_are_batched_with_leading_dimensions():
    w, x, _ = paper_mvm_problem(cores=3, m=32, n=48, batch=16)
    stacked = program_core(w, "ideal", "tdp", 0, config=CoreConfig.ideal())
    y = stacked.prepare(0.0, "four-phase", 0, read_noise=False, drift_compensation=False).mvm(x)
    for c in range(3):
        single = program_core(w[c], "ideal", "tdp", 0, config=CoreConfig.ideal())
        yc = single.prepare(0.0, "four-phase", 0, read_noise=False, drift_compensation=False).mvm(x[c])
        assert torch.allclose(y[c], yc)


@pytest.mark.parametrize(
    ("call", "exc", "words"),
    [
        (
            lambda c: c.mvm(torch.full((2, 16), float("nan")), 60.0, "four-phase", 0),
            ValidationError,
            "x must be finite",
        ),
        (lambda c: c.mvm(torch.ones(2, 15), 60.0, "four-phase", 0), ValidationError, "x must have shape"),
        (lambda c: c.mvm(torch.ones(2, 16, dtype=torch.int64), 60.0, "four-phase", 0), ArgumentTypeError, "x must"),
        (lambda c: c.mvm(torch.ones(2, 16), -1.0, "four-phase", 0), ValidationError, "t_seconds"),
        (lambda c: c.mvm(torch.ones(2, 16), 60.0, "two-phase", 0), UnknownNameError, "mode"),
        (lambda c: c.mvm(torch.ones(2, 16), 60.0, "four-phase", "abc"), ArgumentTypeError, "generator"),
        (lambda c: c.prepare(60.0, "four-phase", 0).mvm(torch.ones(2, 16), 0, x_range=0.0), ValidationError, "x_range"),
    ],
)
def test_bad_mvm_input_raises_a_specific_error(call, exc, words):
    core = program_core(torch.rand(8, 16), "hermes-2dev", "tdp", 0)
    with pytest.raises(exc, match=words):
        call(core)


def test_bad_programming_input_raises_a_specific_error():
    with pytest.raises(ValidationError, match="exceeds the 256x256 crossbar"):
        program_core(torch.rand(257, 10), "hermes-2dev", "tdp", 0)
    with pytest.raises(ValidationError, match="weights must be finite"):
        program_core(torch.tensor([[1.0, float("inf")]]), "hermes-2dev", "tdp", 0)
    with pytest.raises(UnknownNameError, match="strategy"):
        program_core(torch.rand(4, 4), "hermes-2dev", "qdp", 0)
    with pytest.raises(ValidationError, match="ODP needs a one-device model"):
        program_core(torch.rand(4, 4), "hermes-2dev", "odp", 0)
    with pytest.raises(UnknownNameError, match="hermes-3dev"):
        program_core(torch.rand(4, 4), "hermes-3dev", "tdp", 0)
    with pytest.raises(ArgumentTypeError, match="seed"):
        program_core(torch.rand(4, 4), "hermes-2dev", "tdp", None)
    with pytest.raises(ValidationError, match="w_max"):
        program_core(torch.rand(4, 4), "hermes-2dev", "tdp", 0, w_max=-1.0)
    # every error is one of aimc's own
    with pytest.raises(AimcError):
        program_core(torch.rand(4, 4), "hermes-2dev", "tdp", -3)


@pytest.mark.parametrize("aux", ["bfloat16", "int8"])
def test_fast_auxiliary_products_leave_the_error_statistics_unchanged(aux):
    """pos + neg and the noise variance in bfloat16, or pos + neg as an int8 plane, give the float32 path's ε
    within 2%."""
    w, x, y_fp = paper_mvm_problem(cores=2, batch=1024)
    core = program_core(w, "hermes-2dev", "tdp", 0)
    errs = {}
    for kernel in ("float32", aux):
        y = core.prepare(3600.0, "four-phase", 1, backend=Backend(aux_product=kernel)).mvm(x, 2)
        errs[kernel] = error_metrics(y, y_fp, x)
    for e32, e_fast in zip(errs["float32"], errs[aux], strict=True):
        assert abs(e_fast / e32 - 1) < 0.02


def test_mvm_test_lowers_g_max_only_where_currents_would_exceed_the_adc_range():
    """At 0.2 V the MVM test's inputs would drive TDP's bit lines to ~150 uA at full G_max: its G_max is lowered
    (w_max raised); ODP's peaks (~80 uA) stay under CURRENT_HEADROOM x 100 uA and keep the block's max |W|."""
    w, x, _ = paper_mvm_problem(cores=2, batch=512)
    block_max = w.abs().amax(dim=(-2, -1))
    tdp = program_test_cores(w, x, "hermes-2dev", "tdp", 0)
    odp = program_test_cores(w, x, "hermes-1dev", "odp", 0)
    assert bool((tdp.w_max > 1.3 * block_max).all()) and bool((tdp.w_max < 2.0 * block_max).all())
    assert torch.equal(odp.w_max, block_max)
    zero = program_test_cores(torch.zeros(1, 4, 4), torch.ones(1, 8, 4), "hermes-2dev", "tdp", 0)
    assert float(zero.w_max) == 1.0  # an all-zero core takes any scale
