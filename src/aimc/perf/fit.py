"""Fitting the unpublished constants of the performance model to Table I (one weighted least-squares fit).

All equations are linear in the constants: for energies and powers in (static power, per-core MVM energy of each
mode, LDPU energy per value, GDPU energy per output); for latencies in (fixed digital time, hop time). Each equation
is weighted by 1/published value, so the fit minimises relative deviations. Rows of TOPS and TOPS/mm² need no
constant (they follow from the MVM time, the core count and the utilisation).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

import torch

from aimc.perf.constants import HOP_CLOCKS_PRIOR, PerfConstants
from aimc.perf.model import mvm_time_ns, step_energy, step_timing
from aimc.perf.table1 import TABLE1, PublishedRow, includes_digital, workloads
from aimc.spec import ChipSpec


def fit_table1(
    rows: Iterable[PublishedRow] = TABLE1, *, fixed_hop_clocks: float | None = None, spec: ChipSpec | None = None
) -> PerfConstants:
    """Constants that best reproduce ``rows`` of Table I.

    Args:
        rows: the rows to fit (all six by default; the leave-one-out check passes the four others).
        fixed_hop_clocks: keep the hop time at this value (needed when only one network row is fitted, which cannot
            separate the fixed digital time from the hop time).
    """
    spec = spec or ChipSpec.hermes()
    rows = list(rows)
    work = workloads(spec)
    base = PerfConstants(ldpu_energy_per_value_nJ=0.0, gdpu_energy_per_output_nJ=0.0)
    clk = 1e3 / spec.ldpu_clock_MHz
    # energy unknowns: [P_static (W), e_one (nJ), e_four (nJ), e_ldpu (nJ), e_gdpu (nJ)]
    a_rows, b_rows = [], []
    for row in rows:
        w = work[row.use_case]
        t_mvm = mvm_time_ns(spec, row.mode)
        e_col = [0.0, 0.0, 0.0, 0.0, 0.0]
        e_col[1 if row.mode == "one-phase" else 2] = w.core_equivalents
        # power while MVMs stream: P = P_static + x·e/t_mvm = TOPS / (TOPS/W)
        p_col = list(e_col)
        p_col = [1.0, *(c / t_mvm for c in p_col[1:])]
        target_p = row.tops / row.tops_per_w
        a_rows.append([c / target_p for c in p_col])
        b_rows.append(1.0)
        # energy of the row: P_static·latency + x·e + e_ldpu·V + e_gdpu·G (+ assumed link energy)
        digital = includes_digital(row)
        links = step_energy(w, spec, row.mode, base, digital=digital).links if digital else 0.0
        energy_col = [
            row.latency_ns,
            e_col[1],
            e_col[2],
            w.ldpu_values if digital else 0.0,
            w.gdpu_outputs if digital else 0.0,
        ]
        target_e = row.energy_uj * 1e3 - links
        a_rows.append([c / target_e for c in energy_col])
        b_rows.append(1.0)
    a = torch.tensor(a_rows, dtype=torch.float64)
    b = torch.tensor(b_rows, dtype=torch.float64)
    used = [j for j in range(5) if bool(a[:, j].abs().sum() > 0)]
    sol = torch.linalg.lstsq(a[:, used], b).solution
    theta = [0.0] * 5
    for j, v in zip(used, sol.tolist(), strict=True):
        theta[j] = v
    # latency unknowns: [fixed digital time (ns), hop time (ns)]
    lat_a, lat_b = [], []
    for row in rows:
        if not includes_digital(row):
            continue
        w = work[row.use_case]
        timing = step_timing(w, spec, row.mode, replace(base, fixed_digital_ns=0.0, hop_clocks=0.0))
        rest = row.latency_ns - timing.mvm_ns - timing.digital_ns
        if fixed_hop_clocks is None:
            lat_a.append([1.0 / row.latency_ns, w.hops / row.latency_ns])
            lat_b.append(rest / row.latency_ns)
        else:
            lat_a.append([1.0 / row.latency_ns])
            lat_b.append((rest - w.hops * fixed_hop_clocks * clk) / row.latency_ns)
    lat = torch.linalg.lstsq(torch.tensor(lat_a, dtype=torch.float64), torch.tensor(lat_b, dtype=torch.float64))
    t0 = float(lat.solution[0])
    hop_clocks = float(lat.solution[1]) / clk if fixed_hop_clocks is None else fixed_hop_clocks
    defaults = PerfConstants()
    return replace(
        defaults,
        static_power_W=theta[0],
        core_mvm_energy_one_phase_nJ=theta[1] or defaults.core_mvm_energy_one_phase_nJ,
        core_mvm_energy_four_phase_nJ=theta[2] or defaults.core_mvm_energy_four_phase_nJ,
        ldpu_energy_per_value_nJ=theta[3] or defaults.ldpu_energy_per_value_nJ,
        gdpu_energy_per_output_nJ=theta[4] or defaults.gdpu_energy_per_output_nJ,
        fixed_digital_ns=t0,
        hop_clocks=hop_clocks,
    )


def leave_lstm_out() -> PerfConstants:
    """Constants fitted to the full-chip and ResNet rows only (hop time at its prior): the leave-one-out check."""
    rows = [r for r in TABLE1 if "LSTM" not in r.use_case]
    return fit_table1(rows, fixed_hop_clocks=HOP_CLOCKS_PRIOR)
