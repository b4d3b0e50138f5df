"""``check_device_model``: the conformance suite every device model, preset or user-written, must pass.

In the spirit of scikit-learn's ``check_estimator``: it programs and reads the model with fixed seeds and checks the
contract of :class:`~aimc.devices.base.DeviceModel`, then compares sample statistics with the model's own
statistics hooks. A failed check raises :class:`DeviceModelCheckError` naming the check.

Checks, in order:

- ``shapes``: every output has the target's shape for 1-D, 2-D and 3-D targets; ``stuck`` is bool.
- ``bad_input``: non-finite targets, targets outside ``[0, g_max]`` and negative times raise ``ValueError``.
- ``non_negative``: programmed, drifted and read conductances, ``nu`` and read-noise stds are >= 0.
- ``drift_monotone``: ``drift`` never exceeds ``g_prog`` and is non-increasing over t = 0, 1 s, 1 min, 1 h, 1 day,
  1 year.
- ``reproducible``: the same seeds give identical states and reads.
- ``seed_dependence``: different seeds give different states or reads, unless the model is noise-free
  (``prog_std``, ``drift_nu_std`` and read noise all zero).
- per level ``g`` in ``levels``, on ``n`` devices programmed to ``g * g_max`` (stuck devices excluded):
  ``prog_std`` (sample std of ``g_prog`` vs ``prog_std``; where that is 0, ``g_prog`` must equal the target),
  ``prog_mean`` (sample mean vs target, to ``rtol * prog_std``), ``nu_mean`` and ``nu_std`` (vs the folded normal
  of ``drift_nu_mean``/``drift_nu_std``), ``read_noise`` (std of ``(read - drift) / read_noise_std`` at 1 h vs 1,
  the generic form) and, for models with a ``read_noise_time_factor`` (statistical models), ``read_noise_qs``
  (relative std of ``(read - drift) / drift`` over the time factor of docs/physics.md §3.3 vs ``read_noise_qs``).

Both clamps at 0 (programming and reading, docs/physics.md §3.3) are accounted for exactly: expected figures are those
of the censored normal ``max(mu + sigma N, 0)``, so levels close to 0 are tested correctly too.

A model whose ``prog_std`` is not meant to describe its programming error (e.g. program-and-verify) sets the class
attribute ``prog_std_is_exact = False``; ``prog_std`` and ``prog_mean`` are then measured and reported but not
checked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from aimc._validation import check_number
from aimc.devices.base import DeviceModel, DeviceState, folded_normal_mean
from aimc.errors import AimcError, ArgumentTypeError

#: Times (s) at which ``drift_monotone`` evaluates the drift: 0, 1 s, 1 min, 1 h, 1 day, 1 year.
MONOTONE_TIMES_S = (0.0, 1.0, 60.0, 3600.0, 86400.0, 3.15e7)
#: Time (s) after programming at which the read-noise statistics are measured (1 h).
READ_CHECK_TIME_S = 3600.0
#: Absolute slack (as a fraction of g_max) for float round-off in the monotonicity and exactness comparisons.
ROUND_OFF = 1e-9


class DeviceModelCheckError(AimcError, AssertionError):
    """A device model failed a check of :func:`check_device_model`; ``check`` names the failed check."""

    def __init__(self, check: str, model_name: str, message: str) -> None:
        self.check = check
        self.model_name = model_name
        super().__init__(f"device model {model_name!r} failed check {check!r}: {message}")


def _censored_moments(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``E[Y]`` and ``E[Y^2]`` of ``Y = max(Z, a)``, ``Z ~ N(0, 1)`` (elementwise in ``a``)."""
    cdf = torch.special.ndtr(a)
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    a_cdf = torch.where(cdf > 0, a * cdf, torch.zeros_like(a))  # a * Phi(a) -> 0 as a -> -inf
    m1 = a_cdf + pdf
    m2 = a * a_cdf + a * pdf + (1.0 - cdf)
    return m1, m2


def censored_normal_mean_std(mu: float, sigma: float) -> tuple[float, float]:
    """Mean and std of ``max(mu + sigma N, 0)``: the statistics of a clamped-at-zero Gaussian draw (docs/physics.md
    §3.3)."""
    if sigma <= 0:
        return max(mu, 0.0), 0.0
    m1, m2 = _censored_moments(torch.tensor(-mu / sigma, dtype=torch.float64))
    var = max(float(m2 - m1 * m1), 0.0)
    return mu + sigma * float(m1), sigma * math.sqrt(var)


def folded_normal_std(mu: float, sigma: float) -> float:
    """Std of ``|mu + sigma N|``: ``sqrt(mu^2 + sigma^2 - E|X|^2)``."""
    mean = float(folded_normal_mean(torch.tensor(mu, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64)))
    return math.sqrt(max(mu * mu + sigma * sigma - mean * mean, 0.0))


def _rel_close(measured: float, expected: float, rtol: float) -> bool:
    return abs(measured - expected) <= rtol * abs(expected) + 1e-15


class _Checker:
    def __init__(self, model: DeviceModel) -> None:
        self.model = model
        self.passed: list[str] = []

    def fail(self, check: str, message: str) -> None:
        raise DeviceModelCheckError(check, getattr(self.model, "name", type(self.model).__name__), message)

    def run(self, check: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except DeviceModelCheckError:
            raise
        except Exception as exc:  # any crash inside a check is that check failing
            self.fail(check, f"raised {type(exc).__name__}: {exc}")
        if check not in self.passed:
            self.passed.append(check)


def _float_tensors(state: DeviceState) -> dict[str, torch.Tensor]:
    return {"g_target": state.g_target, "g_prog": state.g_prog, "nu": state.nu}


def _states_equal(a: DeviceState, b: DeviceState) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.tensors().values(), b.tensors().values(), strict=True))


def _time_factor(model: DeviceModel, t_seconds: float) -> float | None:
    """The 1/f time factor (docs/physics.md §3.3) if the model exposes one (statistical models), else None."""
    fn = getattr(model, "read_noise_time_factor", None)
    if fn is None:
        return None
    try:
        return float(fn(t_seconds))
    except ArgumentTypeError:
        return None


def check_device_model(
    model: DeviceModel,
    *,
    n: int = 100_000,
    seed: int = 0,
    rtol: float = 0.03,
    levels: Sequence[float] = (0.2, 0.4, 0.6, 0.8, 1.0),
) -> dict[str, Any]:
    """Run the conformance suite on ``model`` (see the module docstring for the checks).

    Args:
        model: the device model to check.
        n: devices per level for the statistics; the relative standard error of a std is about ``1/sqrt(2n)``, so
            keep ``rtol`` well above that (the default n = 10^5 gives 0.22% against rtol = 3%).
        seed: base seed; the suite uses ``seed``, ``seed + 1``, ... for its draws.
        rtol: relative tolerance of the statistical comparisons.
        levels: normalised targets ``g`` in (0, 1] at which the statistics are compared.

    Returns:
        ``{"model", "description", "n", "seed", "rtol", "read_check_time_s", "checks", "levels"}`` where
        ``checks`` lists the passed checks and ``levels`` holds, per level, the measured and expected figures.

    Raises:
        DeviceModelCheckError: a check failed (``.check`` names it).
    """
    if not isinstance(model, DeviceModel):
        raise ArgumentTypeError(f"model must be a DeviceModel, got {type(model).__name__}")
    n = int(check_number(n, "n", low=1000, integer=True))
    seed = int(check_number(seed, "seed", low=0, integer=True))
    rtol = float(check_number(rtol, "rtol", low=0.0, low_inclusive=False))
    if isinstance(levels, str) or not isinstance(levels, Sequence) or len(levels) == 0:
        raise ArgumentTypeError(f"levels must be a non-empty sequence of numbers in (0, 1], got {levels!r}")
    levels = [float(check_number(v, "levels[i]", low=0.0, high=1.0, low_inclusive=False)) for v in levels]

    ck = _Checker(model)
    g_max = float(model.g_max_uS)
    dt = torch.float64

    def targets(shape: tuple[int, ...], s: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(s)
        t = torch.rand(shape, generator=gen, dtype=dt) * g_max
        flat = t.view(-1)
        flat[0], flat[-1] = 0.0, g_max  # the two ends of the range
        return t

    # ------------------------------------------------------------------ contract checks
    def check_shapes() -> None:
        for shape in ((7,), (3, 5), (2, 3, 4)):
            state = model.program(targets(shape, seed), seed)
            for name, t in state.tensors().items():
                if tuple(t.shape) != shape:
                    ck.fail("shapes", f"state.{name} has shape {tuple(t.shape)} for a target of shape {shape}")
            if state.stuck.dtype != torch.bool:
                ck.fail("shapes", f"state.stuck has dtype {state.stuck.dtype}, expected torch.bool")
            for name, t in _float_tensors(state).items():
                if not t.is_floating_point():
                    ck.fail("shapes", f"state.{name} has dtype {t.dtype}, expected floating point")
            outs = {
                "drift": model.drift(state, READ_CHECK_TIME_S),
                "read_noise_std": model.read_noise_std(state, READ_CHECK_TIME_S),
                "conductance": model.conductance(state, READ_CHECK_TIME_S, seed + 1),
            }
            for name, t in outs.items():
                if tuple(t.shape) != shape:
                    ck.fail("shapes", f"{name} returned shape {tuple(t.shape)} for a target of shape {shape}")

    def check_bad_input() -> None:
        good = targets((4,), seed)
        bad_targets = {
            "NaN target": torch.tensor([1.0, float("nan")], dtype=dt),
            "infinite target": torch.tensor([float("inf")], dtype=dt),
            "negative target": torch.tensor([-0.1 * g_max], dtype=dt),
            "target above g_max": torch.tensor([1.5 * g_max], dtype=dt),
        }
        for what, t in bad_targets.items():
            try:
                model.program(t, seed)
            except ValueError:
                continue
            ck.fail("bad_input", f"program() accepted a {what} without raising ValueError")
        state = model.program(good, seed)
        for fn_name in ("drift", "read_noise_std"):
            try:
                getattr(model, fn_name)(state, -1.0)
            except ValueError:
                continue
            ck.fail("bad_input", f"{fn_name}() accepted a negative time without raising ValueError")

    def check_non_negative() -> None:
        state = model.program(targets((2000,), seed + 2), seed)
        figures = {"g_prog": state.g_prog, "nu": state.nu}
        for t in MONOTONE_TIMES_S:
            figures[f"drift(t={t:g})"] = model.drift(state, t)
            figures[f"read_noise_std(t={t:g})"] = model.read_noise_std(state, t)
            figures[f"conductance(t={t:g})"] = model.conductance(state, t, seed + 3)
        for name, x in figures.items():
            if not bool(torch.isfinite(x).all()):
                ck.fail("non_negative", f"{name} holds non-finite values")
            if bool((x < 0).any()):
                ck.fail("non_negative", f"{name} has negative values (min {float(x.min()):g})")

    def check_drift_monotone() -> None:
        state = model.program(targets((2000,), seed + 4), seed)
        slack = ROUND_OFF * g_max
        previous, previous_name = state.g_prog, "g_prog"
        for t in MONOTONE_TIMES_S:
            g = model.drift(state, t)
            for ref, ref_name in ((state.g_prog, "g_prog"), (previous, previous_name)):
                worst = float((g - ref).max())
                if worst > slack:
                    ck.fail(
                        "drift_monotone", f"drift(t={t:g}) exceeds {ref_name} by up to {worst:g} uS (must not rise)"
                    )
            previous, previous_name = g, f"drift(t={t:g})"

    def check_reproducible() -> None:
        t = targets((500,), seed + 5)
        a, b = model.program(t, seed), model.program(t, seed)
        if not _states_equal(a, b):
            ck.fail("reproducible", "programming twice with the same seed gave different states")
        ra, rb = model.conductance(a, READ_CHECK_TIME_S, seed + 1), model.conductance(a, READ_CHECK_TIME_S, seed + 1)
        if not torch.equal(ra, rb):
            ck.fail("reproducible", "reading twice with the same seed gave different conductances")

    def noise_free(state: DeviceState) -> bool:
        g = torch.tensor(levels, dtype=dt)
        return (
            bool((model.prog_std(g) == 0).all())
            and bool((model.drift_nu_std(g) == 0).all())
            and bool((model.read_noise_std(state, READ_CHECK_TIME_S) == 0).all())
        )

    def check_seed_dependence() -> None:
        t = targets((500,), seed + 6)
        a, b = model.program(t, seed), model.program(t, seed + 1)
        if noise_free(a):
            return
        ra, rb = model.conductance(a, READ_CHECK_TIME_S, seed + 2), model.conductance(a, READ_CHECK_TIME_S, seed + 3)
        if _states_equal(a, b) and torch.equal(ra, rb):
            ck.fail("seed_dependence", "different seeds gave identical states and reads for a noisy model")

    for name, fn in (
        ("shapes", check_shapes),
        ("bad_input", check_bad_input),
        ("non_negative", check_non_negative),
        ("drift_monotone", check_drift_monotone),
        ("reproducible", check_reproducible),
        ("seed_dependence", check_seed_dependence),
    ):
        ck.run(name, fn)

    # ------------------------------------------------------------------ statistics per level
    prog_exact = bool(getattr(model, "prog_std_is_exact", True))
    level_rows: list[dict[str, float | None]] = []

    def check_level(i: int, level: float) -> None:
        target_uS = level * g_max
        target = torch.full((n,), target_uS, dtype=dt)
        state = model.program(target, seed + 10 + i)
        ok = ~state.stuck
        if int(ok.sum()) < n // 2:
            ck.fail("statistics", f"level g={level:g}: only {int(ok.sum())} of {n} devices are not stuck")
        g_one = torch.tensor([level], dtype=dt)
        row: dict[str, float | None] = {"g": level, "target_uS": target_uS, "n_used": float(ok.sum())}

        # programming error (docs/physics.md §3.3: g_prog = max(g_T + sigma_prog N, 0))
        sigma = float(model.prog_std(g_one)[0])
        exp_mean, exp_std = censored_normal_mean_std(target_uS, sigma)
        g_prog = state.g_prog[ok]
        row.update(
            prog_std_model=sigma,
            prog_std_expected=exp_std,
            prog_std_measured=float(g_prog.std()),
            prog_mean_expected=exp_mean,
            prog_mean_measured=float(g_prog.mean()),
        )
        if prog_exact:
            if sigma == 0:
                err = float((g_prog - target_uS).abs().max())
                if err > ROUND_OFF * g_max:
                    ck.fail("prog_std", f"level g={level:g}: prog_std is 0 but g_prog misses the target by {err:g} uS")
            else:
                if not _rel_close(row["prog_std_measured"], exp_std, rtol):  # type: ignore[arg-type]
                    ck.fail(
                        "prog_std",
                        f"level g={level:g}: sample std of g_prog {row['prog_std_measured']:.6g} uS, expected "
                        f"{exp_std:.6g} uS from prog_std (rtol {rtol:g})",
                    )
                if abs(row["prog_mean_measured"] - exp_mean) > rtol * sigma:  # type: ignore[operator]
                    ck.fail(
                        "prog_mean",
                        f"level g={level:g}: sample mean of g_prog {row['prog_mean_measured']:.6g} uS, expected "
                        f"{exp_mean:.6g} uS (tolerance rtol * prog_std = {rtol * sigma:.3g} uS)",
                    )

        # drift exponent (docs/physics.md §3.3: nu = |mu_nu + sigma_nu N|)
        mu_nu, sd_nu = float(model.drift_nu_mean(g_one)[0]), float(model.drift_nu_std(g_one)[0])
        nu = state.nu[ok]
        exp_nu_mean = float(folded_normal_mean(torch.tensor(mu_nu, dtype=dt), torch.tensor(sd_nu, dtype=dt)))
        exp_nu_std = folded_normal_std(mu_nu, sd_nu)
        row.update(
            nu_mean_expected=exp_nu_mean,
            nu_mean_measured=float(nu.mean()),
            nu_std_expected=exp_nu_std,
            nu_std_measured=float(nu.std()),
        )
        if not _rel_close(row["nu_mean_measured"], exp_nu_mean, rtol):  # type: ignore[arg-type]
            ck.fail(
                "nu_mean",
                f"level g={level:g}: sample mean of nu {row['nu_mean_measured']:.6g}, expected {exp_nu_mean:.6g} "
                f"(folded normal of mu={mu_nu:.4g}, sigma={sd_nu:.4g}; rtol {rtol:g})",
            )
        if not _rel_close(row["nu_std_measured"], exp_nu_std, rtol):  # type: ignore[arg-type]
            ck.fail(
                "nu_std",
                f"level g={level:g}: sample std of nu {row['nu_std_measured']:.6g}, expected {exp_nu_std:.6g} "
                f"(rtol {rtol:g})",
            )

        # read noise at 1 h (docs/physics.md §3.3: g(t) = max(g_drift + |g_drift| sigma_read N, 0))
        read = model.conductance(state, READ_CHECK_TIME_S, seed + 100 + i)[ok]
        drift = model.drift(state, READ_CHECK_TIME_S)[ok]
        s = model.read_noise_std(state, READ_CHECK_TIME_S)[ok]
        noisy = s > 0
        if bool((~noisy).any()):
            quiet_err = float((read[~noisy] - drift[~noisy]).abs().max())
            if quiet_err > ROUND_OFF * g_max:
                ck.fail(
                    "read_noise", f"level g={level:g}: read_noise_std is 0 but reads differ from drift by {quiet_err:g}"
                )
        if int(noisy.sum()) >= n // 2:
            z = (read[noisy] - drift[noisy]) / s[noisy]
            m1, m2 = _censored_moments(-drift[noisy] / s[noisy])
            exp_z_std = math.sqrt(max(float(m2.mean() - m1.mean() ** 2), 0.0))
            row["read_std_ratio"] = float(z.std()) / exp_z_std
            if not _rel_close(row["read_std_ratio"], 1.0, rtol):
                ck.fail(
                    "read_noise",
                    f"level g={level:g}: std of (read - drift) / read_noise_std is {row['read_std_ratio']:.4g} "
                    f"times its expected value (rtol {rtol:g})",
                )
        else:
            row["read_std_ratio"] = None

        # Q_s (docs/physics.md §3.3: sigma_read = Q_s sqrt(ln((t + t_read) / (2 t_read))), relative to g_drift)
        factor = _time_factor(model, READ_CHECK_TIME_S)
        qs = float(model.read_noise_qs(g_one)[0])
        row["qs_expected"] = qs
        row["qs_measured"] = None
        positive = drift > 0
        if factor is not None and factor > 0 and qs > 0 and int(positive.sum()) >= n // 2:
            rel = (read[positive] - drift[positive]) / drift[positive]
            sigma_rel = qs * factor
            m1, m2 = _censored_moments(torch.tensor(-1.0 / sigma_rel, dtype=dt))
            clamp_factor = math.sqrt(max(float(m2 - m1 * m1), 0.0))
            row["qs_measured"] = float(rel.std()) / factor / clamp_factor
            if not _rel_close(row["qs_measured"], qs, rtol):
                ck.fail(
                    "read_noise_qs",
                    f"level g={level:g}: measured Q_s {row['qs_measured']:.6g}, read_noise_qs gives {qs:.6g} "
                    f"(rtol {rtol:g})",
                )
        level_rows.append(row)

    for i, level in enumerate(levels):
        ck.run("statistics", lambda i=i, level=level: check_level(i, level))
    names = ["prog_std", "prog_mean"] if prog_exact else []
    names += ["nu_mean", "nu_std", "read_noise"]
    if any(r["qs_measured"] is not None for r in level_rows):
        names.append("read_noise_qs")
    passed = [c for c in ck.passed if c != "statistics"] + names

    describe = getattr(model, "describe", None)
    return {
        "model": getattr(model, "name", type(model).__name__),
        "description": describe() if callable(describe) else None,
        "n": n,
        "seed": seed,
        "rtol": rtol,
        "read_check_time_s": READ_CHECK_TIME_S,
        "checks": passed,
        "levels": level_rows,
    }


__all__ = ["DeviceModelCheckError", "censored_normal_mean_std", "check_device_model", "folded_normal_std"]
