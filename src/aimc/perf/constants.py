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

# --- digital operations that are not analog layers (aimc.perf.digital; assumptions, not fitted) ---
# The chip paper's networks have none, so none of this moves Table I. An element-wise op the LDPU or GDPU does costs
# the fitted per-value energies above; everything else runs on a digital unit beside the cores, which the chip paper
# does not describe: the figures below are a small FP16 SIMD unit's, from published per-operation energies.
#: Clock of the digital unit (MHz): the chip's digital clock (LDPUs and GDPUs run at up to 400 MHz, docs/physics.md
#: §10).
DIGITAL_UNIT_CLOCK_MHZ = 400.0
#: FP16 fused multiply-add lanes of the digital unit (assumption: 16 lanes, 2 FLOP each per clock, so
#: 32 FLOP/clock x 400 MHz = 12.8 GFLOP/s; a vector unit the size of a few LDPUs, not a processor).
DIGITAL_UNIT_FMA_LANES = 16
#: FP16 throughput of the digital unit (FLOP/s): 2 x lanes x clock.
DIGITAL_UNIT_FLOPS_PER_S = 2.0 * DIGITAL_UNIT_FMA_LANES * DIGITAL_UNIT_CLOCK_MHZ * 1e6
#: Bytes per clock the digital unit's SRAM buffer reads or writes (assumption: one 64-byte row per clock, the width
#: that feeds 16 lanes two FP16 operands each), so 25.6 GB/s at 400 MHz; an op takes the longer of its FLOPs at the
#: unit's throughput and its bytes at this bandwidth (a roofline).
DIGITAL_UNIT_BYTES_PER_CLOCK = 64
#: Energy per FP16 FLOP on the digital unit (pJ): M. Horowitz, "Computing's energy problem (and what we can do about
#: it)", ISSCC 2014, 45 nm at 0.9 V: FP16 add 0.4 pJ, FP16 multiply 1.1 pJ, so one multiply-add (2 FLOP) 1.5 pJ.
#: Not scaled to the chip's 14 nm node on purpose: scaling would lower it (about 3x under constant-field C·V²
#: scaling), but the figure leaves out the control, register file and operand delivery of a programmable unit, which
#: the same paper shows cost several times the arithmetic; the two corrections roughly cancel.
DIGITAL_ENERGY_PJ_PER_FLOP = 0.75
#: Energy per byte the digital unit reads or writes in its SRAM buffer (pJ): Horowitz, ISSCC 2014, a 64-bit access to
#: a 32 KB SRAM costs 20 pJ (45 nm; an 8 KB one 10 pJ), so 2.5 pJ/byte; not scaled, for the reason above. 32 KB holds
#: a few hundred FP16 rows of keys and values, the buffer attention needs. Layout ops (copies) cost their bytes at
#: this energy and bandwidth, views cost nothing.
DIGITAL_ENERGY_PJ_PER_BYTE = 2.5
#: GDPU inputs per LSTM output: a GDPU slice reads one input per clock, 4 gate values per output (docs/physics.md
#: §9.3), so an element-wise function (one input per output) takes gdpu_clocks_per_output / 4 = 1 clock per value.
GDPU_INPUTS_PER_LSTM_OUTPUT = 4
#: tanh-table evaluations per LSTM output (3 sigmoids and 2 tanh, docs/physics.md §9.3): an element-wise GDPU
#: function (one table evaluation and its multiply-adds) costs GDPU_ENERGY_PER_OUTPUT_NJ / 5 per value.
GDPU_TABLE_LOOKUPS_PER_LSTM_OUTPUT = 5

# --- links between chips (aimc.perf.links; assumptions, not fitted) ---
# A network on several chips (aimc.compile(..., chips=N)) sends the partial sums of the column chains that continue
# on another chip, and (with on-chip transport) layer outputs whose next layer sits on another chip, over a
# chip-to-chip link. The chip paper has one chip; the link is modelled on a published short-reach chip-to-chip I/O:
# IBM Research, "A 1.4 pJ/bit, power-scalable 16x12 Gb/s source-synchronous I/O with DFE receiver in 32 nm SOI CMOS
# technology" (a 2-byte chip-to-chip I/O): 16 lanes at 12 Gb/s, measured 1.4 pJ/bit over 0.75-inch PCB traces
# (1.9 pJ/bit over 20 inches).
#: Bandwidth of one chip-to-chip link (GB/s): 16 lanes x 12 Gb/s = 192 Gb/s.
INTERCHIP_LINK_GBYTES_PER_S = 16 * 12.0 / 8.0
#: Energy per bit over the link (pJ/bit): the short-reach figure of the paper above (1.4 pJ/bit).
INTERCHIP_ENERGY_PJ_PER_BIT = 1.4
#: Fixed latency of one transfer (ns): serialiser, flight, deserialiser, deskew FIFO and the hand-off into the other
#: chip's LDPU (assumption; the paper above does not give it; a source-synchronous link needs no clock recovery, and
#: a few tens of unit intervals plus a few clocks of the 400 MHz digital clock come to about 20 ns).
INTERCHIP_LATENCY_NS = 20.0


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
    digital_unit_flops_per_s: float = DIGITAL_UNIT_FLOPS_PER_S
    digital_unit_bytes_per_s: float = DIGITAL_UNIT_BYTES_PER_CLOCK * DIGITAL_UNIT_CLOCK_MHZ * 1e6
    digital_energy_pJ_per_flop: float = DIGITAL_ENERGY_PJ_PER_FLOP
    digital_energy_pJ_per_byte: float = DIGITAL_ENERGY_PJ_PER_BYTE
    interchip_GBps: float = INTERCHIP_LINK_GBYTES_PER_S
    interchip_energy_pJ_per_bit: float = INTERCHIP_ENERGY_PJ_PER_BIT
    interchip_latency_ns: float = INTERCHIP_LATENCY_NS

    def core_mvm_energy_nJ(self, mode: str) -> float:
        """Energy of one MVM on one fully used core in ``mode``."""
        return self.core_mvm_energy_one_phase_nJ if mode == "one-phase" else self.core_mvm_energy_four_phase_nJ
