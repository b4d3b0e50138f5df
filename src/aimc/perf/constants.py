"""Constants of the latency/energy model that the chip paper does not publish.

Each is either an assumption (a physically motivated value, named and documented here) or a value fitted to
Table I of the chip paper by ``aimc.perf.fit.fit_table1`` — one least-squares fit of all of them at once, never a
per-row correction. ``tests/test_perf.py`` re-runs the fit and checks that these numbers are its result.
"""

from __future__ import annotations

from dataclasses import dataclass

# --- fitted to Table I (aimc.perf.fit.fit_table1; see docs/validation.md for the fit and its residuals) ---
#: Static power of the whole chip (W) while it works (leakage, clocks); Table I counts "static + dynamic" power
#: (docs/physics.md §12).
STATIC_POWER_W = 0.34125
#: Dynamic energy of one MVM on one fully used core (nJ), one-phase and four-phase (array + ADC + PWM).
CORE_MVM_ENERGY_NJ = {"one-phase": 12.615, "four-phase": 50.425}
#: Energy of one value through one LDPU (counts -> FP16 -> affine -> INT8, and its share of the core's digital
#: periphery) (nJ).
LDPU_ENERGY_PER_VALUE_NJ = 0.30055
#: Energy of one LSTM hidden output computed in a GDPU (4 gates, cell state, tanh table) (nJ).
GDPU_ENERGY_PER_OUTPUT_NJ = 0.84825
#: Fixed part of a layer's digital time (ns): ADC read-out into the LDPU, first value through the pipeline,
#: output hand-off.
FIXED_DIGITAL_NS = 144.0
#: Clocks (at the LDPU clock) for a partial sum to pass one core of a chain: link transfer + LDPU pipeline.
HOP_CLOCKS = 16.8

# --- assumptions (not published, not fitted) ---
#: Prior for HOP_CLOCKS in the leave-one-out check (a FP16 FMA pipeline of a few stages per operation, 8 clocks).
HOP_CLOCKS_PRIOR = 8.0
#: Energy of moving one byte over one on-chip link (pJ): short wires at 3.2 Gbit/s (order of 1 pJ/byte).
LINK_ENERGY_PJ_PER_BYTE = 1.0
#: Bandwidth (GB/s) and energy (pJ/byte) of moving activations between layers through the host FPGA, as in the
#: chip paper's experiments.
HOST_LINK_GBYTES_PER_S = 1.0
HOST_ENERGY_PJ_PER_BYTE = 50.0


@dataclass(frozen=True)
class PerfConstants:
    """The model's constants (defaults: the fitted values and assumptions above)."""

    static_power_W: float = STATIC_POWER_W
    core_mvm_energy_one_phase_nJ: float = CORE_MVM_ENERGY_NJ["one-phase"]
    core_mvm_energy_four_phase_nJ: float = CORE_MVM_ENERGY_NJ["four-phase"]
    ldpu_energy_per_value_nJ: float = LDPU_ENERGY_PER_VALUE_NJ
    gdpu_energy_per_output_nJ: float = GDPU_ENERGY_PER_OUTPUT_NJ
    fixed_digital_ns: float = FIXED_DIGITAL_NS
    hop_clocks: float = HOP_CLOCKS
    link_energy_pJ_per_byte: float = LINK_ENERGY_PJ_PER_BYTE
    host_link_GBps: float = HOST_LINK_GBYTES_PER_S
    host_energy_pJ_per_byte: float = HOST_ENERGY_PJ_PER_BYTE

    def core_mvm_energy_nJ(self, mode: str) -> float:
        """Energy of one MVM on one fully used core in ``mode``."""
        return self.core_mvm_energy_one_phase_nJ if mode == "one-phase" else self.core_mvm_energy_four_phase_nJ
