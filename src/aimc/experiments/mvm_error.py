"""The chip paper's MVM characterisation (Le Gallo et al. 2023, Eqs. 2-4; docs/physics.md §8).

Uniform random weights in [-1, 1] and uniform random inputs in [-1, 1] with 30% of the inputs zero, 2,048 input
vectors per core. With y_fp the exact result and y_exp the chip's:

    ε_total = y_exp - y_fp,   ε_linear = Ŵx - y_fp,   ε_residual = y_exp - Ŵx,

where Ŵ = argmin ||y_exp - Ŵx|| is the best linear fit of the measured outputs (least squares per output over the
2,048 inputs). Each is reported as its standard deviation relative to the output range max(y_fp) - min(y_fp).
The chip is programmed once per (device, strategy) and read at every time after programming, as real hardware is.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from aimc._progress import progress as _progress
from aimc._validation import SeedLike, check_choice, check_number, make_generator
from aimc.chip import limited_w_max, peak_current
from aimc.compiler.calibrate import bit_line_load
from aimc.core.analog import STRATEGIES, ProgrammedCore, program_core
from aimc.core.config import CoreConfig
from aimc.devices.base import check_time
from aimc.devices.registry import get as get_device
from aimc.spec import READ_MODES, ChipSpec

#: Input sparsity of the chip paper's MVM test (docs/physics.md §8).
TEST_SPARSITY = 0.3
#: Input vectors per core in the chip paper's MVM test (docs/physics.md §8).
TEST_INPUTS_PER_CORE = 2048
#: Device model that goes with each strategy by default: the HERMES fits of one and of two devices (docs/physics.md
#: §3.2).
DEFAULT_DEVICE = {"odp": "hermes-1dev", "tdp": "hermes-2dev"}


@dataclass(frozen=True)
class MvmErrorRow:
    """One point of the characterisation: relative standard deviations (fractions, not %)."""

    device: str
    strategy: str
    mode: str
    t_seconds: float
    eps_total: float
    eps_linear: float
    eps_residual: float
    cores: int
    inputs_per_core: int
    seed: int


def error_metrics(y_exp: torch.Tensor, y_fp: torch.Tensor, x: torch.Tensor) -> tuple[float, float, float]:
    """ε_total, ε_linear, ε_residual as std relative to the output range (chip paper Eqs. 2-4).

    Args:
        y_exp, y_fp: ``(C, B, m)`` measured and exact outputs of C cores; x: ``(C, B, n)`` inputs.
    """
    y_exp, y_fp, x = y_exp.double(), y_fp.double(), x.double()
    w_hat_t = torch.linalg.lstsq(x, y_exp).solution  # (C, n, m): best linear fit per core and output
    y_lin = x @ w_hat_t
    out_range = float(y_fp.max() - y_fp.min())
    return (
        float((y_exp - y_fp).std()) / out_range,
        float((y_lin - y_fp).std()) / out_range,
        float((y_exp - y_lin).std()) / out_range,
    )


def program_test_cores(
    w: torch.Tensor,
    x: torch.Tensor,
    device: str,
    strategy: str,
    seed: SeedLike = 0,
    *,
    spec: ChipSpec | None = None,
    config: CoreConfig | None = None,
) -> ProgrammedCore:
    """Program weights ``w`` ``(C, m, n)`` for the test inputs ``x`` ``(C, B, n)`` (within [-1, 1]) as the chip
    would: each core's G_max limited so that its largest one-phase bit-line current on ``x`` stays below the ADC
    limit (:func:`aimc.chip.limited_w_max`)."""
    spec = spec or ChipSpec.hermes()
    config = config or CoreConfig()
    model = get_device(device)
    load = bit_line_load(x, w.unsqueeze(1))[:, 0]  # (C,)
    block_max = w.abs().amax(dim=(-2, -1))
    block_max = torch.where(block_max > 0, block_max, torch.ones_like(block_max))  # an all-zero core: any scale
    w_max = limited_w_max(block_max, peak_current(load, model, strategy, config, spec), spec)
    return program_core(w, model, strategy, seed, spec=spec, config=config, w_max=w_max)


def mvm_error(
    strategies: Sequence[str] = STRATEGIES,
    modes: Sequence[str] = READ_MODES,
    times: Sequence[float] = (60.0, 3600.0, 86400.0, 31536000.0),
    *,
    device: str | None = None,
    seed: int = 0,
    cores: int = 4,
    inputs_per_core: int = TEST_INPUTS_PER_CORE,
    sparsity: float = TEST_SPARSITY,
    spec: ChipSpec | None = None,
    config: CoreConfig | None = None,
    progress: bool = True,
) -> list[MvmErrorRow]:
    """Run the MVM characterisation on ``cores`` full-size cores for every strategy x mode x time.

    Args:
        strategies, modes, times: the grid (times in seconds after programming).
        device: device preset for every strategy; ``None`` pairs ODP with ``hermes-1dev`` and TDP with
            ``hermes-2dev``.
        seed: seeds weights, inputs, programming and reads.
        cores: cores characterised (each ``tile_cols x tile_rows``, all simulated in one batch).
        progress: show the grid points done on stderr (a live bar on a terminal, a line per point otherwise).

    Returns:
        One :class:`MvmErrorRow` per grid point.
    """
    spec = spec or ChipSpec.hermes()
    config = config or CoreConfig()
    for s in strategies:
        check_choice(s, "strategy", STRATEGIES)
    for mode in modes:
        check_choice(mode, "mode", READ_MODES)
    times = [check_time(t, "times") for t in times]
    check_number(cores, "cores", low=1, high=spec.cores, integer=True)
    check_number(inputs_per_core, "inputs_per_core", low=spec.tile_rows, integer=True)
    check_number(sparsity, "sparsity", low=0.0, high=1.0, high_inclusive=False)
    if device is not None:
        get_device(device)  # unknown names fail before any work

    gen = make_generator(seed, "seed")
    m, n = spec.tile_cols, spec.tile_rows
    w = torch.rand((cores, m, n), generator=gen) * 2 - 1
    x = torch.rand((cores, inputs_per_core, n), generator=gen) * 2 - 1
    x = x * (torch.rand(x.shape, generator=gen) >= sparsity)
    y_fp = (x.double() @ w.double().mT).float()
    rows = []
    total = len(strategies) * len(modes) * len(times)
    with _progress(total=total, desc="mvm-error", unit="points", enabled=progress) as bar:
        for strategy in strategies:
            name = device or DEFAULT_DEVICE[strategy]
            core = program_test_cores(w, x, name, strategy, gen, spec=spec, config=config)
            for mode in modes:
                for t in times:
                    y = core.mvm(x, t, mode, gen)
                    tot, lin, res = error_metrics(y, y_fp, x)
                    rows.append(MvmErrorRow(name, strategy, mode, t, tot, lin, res, cores, inputs_per_core, seed))
                    bar.set_postfix_str(f"{strategy} {mode} t={t:g} s: total {100 * tot:.2f}%", refresh=False)
                    bar.update(1)
    return rows


def rows_as_dicts(rows: Sequence[MvmErrorRow]) -> list[dict[str, object]]:
    """Rows as plain dicts (for JSON)."""
    return [dataclasses.asdict(r) for r in rows]


def format_table(rows: Sequence[MvmErrorRow]) -> str:
    """A fixed-width text table of the rows, errors in percent."""
    head = f"{'device':<12} {'strategy':<8} {'mode':<10} {'t (s)':>10} {'total %':>8} {'linear %':>9} {'resid. %':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.device:<12} {r.strategy:<8} {r.mode:<10} {r.t_seconds:>10.4g} {100 * r.eps_total:>8.3f} "
            f"{100 * r.eps_linear:>9.3f} {100 * r.eps_residual:>9.3f}"
        )
    return "\n".join(lines)


def plot(rows: Sequence[MvmErrorRow], path: str) -> None:
    """Save a figure of the three errors vs time after programming, one line per strategy and mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=False)
    keys = sorted({(r.strategy, r.mode) for r in rows})
    for ax, metric, title in zip(
        axes, ("eps_total", "eps_linear", "eps_residual"), ("ε_total", "ε_linear", "ε_residual"), strict=True
    ):
        for strategy, mode in keys:
            pts = sorted((r.t_seconds, getattr(r, metric)) for r in rows if (r.strategy, r.mode) == (strategy, mode))
            ax.plot(
                [max(p[0], 1e-3) for p in pts],
                [100 * p[1] for p in pts],
                marker="o",
                linestyle="-" if mode == "four-phase" else "--",
                label=f"{strategy.upper()} {mode}",
            )
        ax.set_xscale("log")
        ax.set_xlabel("time after programming (s)")
        ax.set_ylabel("std / output range (%)")
        ax.set_title(title)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("MVM error of the simulated core (uniform W and x, 30% sparse inputs)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
