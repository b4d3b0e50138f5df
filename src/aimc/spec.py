"""``ChipSpec``: every published number of the simulated chip, in one frozen dataclass.

All figures are published: the chip paper (Le Gallo et al., Nat. Electron. 6, 680-693 (2023)) and HERMES-Core
(Khaddam-Aljameh et al., IEEE JSSC 57(4), 2022); docs/physics.md gives the source of each. Nothing else in aimc repeats
them: code reads them from a ``ChipSpec``. A user makes a variant chip with :func:`dataclasses.replace`, e.g.
``dataclasses.replace(ChipSpec.hermes(), tile_rows=512, pwm_bits=6)``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aimc._validation import check_choice, check_number
from aimc.errors import ValidationError

_POSITIVE_INT_FIELDS = (
    "cores",
    "grid_rows",
    "grid_cols",
    "tile_rows",
    "tile_cols",
    "devices_per_weight",
    "pwm_bits",
    "adc_bits",
    "gmax_counts_odp",
    "gmax_counts_tdp",
    "write_heads_per_core",
    "pv_max_iterations",
    "links",
    "max_neighbours",
    "link_channels",
    "gdpu_slices",
    "gdpu_max_inputs",
    "gdpu_max_outputs",
    "gdpu_clocks_per_output",
    "gdpu_tanh_bins",
)


@dataclass(frozen=True)
class ChipSpec:
    """The published parameters of the 64-core PCM AIMC chip (Le Gallo et al. 2023; docs/physics.md).

    Units are in the field names (``_ns``, ``_uA``, ``_uS``, ``_MHz``...). Derived quantities are properties.
    """

    # --- chip organisation (docs/physics.md §10) ---
    cores: int = 64
    grid_rows: int = 8
    grid_cols: int = 8

    # --- one core (docs/physics.md §2, §5-§7) ---
    tile_rows: int = 256  #: inputs (word lines) per crossbar
    tile_cols: int = 256  #: outputs per crossbar, one CCO ADC each
    devices_per_weight: int = 4  #: 8T4R unit cell: G1+, G2+, G1-, G2-
    device_g_min_uS: float = 0.1  #: PCM device range 100 kOhm-10 MOhm
    device_g_max_uS: float = 10.0

    # PWM input: sign + (pwm_bits-1)-bit magnitude, pwm_ns_per_lsb per LSB -> 128 ns integration (docs/physics.md §5)
    pwm_bits: int = 8
    pwm_ns_per_lsb: float = 1.0
    read_voltage_min_V: float = 0.1
    read_voltage_max_V: float = 0.4

    # CCO ADC (docs/physics.md §6): two counts per output, 12 bits each; saturates above ~100 uA bit-line current
    adc_bits: int = 12
    adc_ps_per_lsb: float = 300.0
    adc_saturation_uA: float = 100.0
    cco_gain_MHz_per_uA: float = 35.0
    cco_gain_spread: float = 0.07  #: relative std of the CCO gain across ADCs before calibration

    # Maximum conductance (docs/physics.md §2.2): in ADC counts per device polarity, and the uS values of the HERMES
    # fits (§3.2)
    gmax_counts_odp: int = 80
    gmax_counts_tdp: int = 160
    g_max_1dev_uS: float = 10.35
    g_max_2dev_uS: float = 20.7

    # Programming and yield (docs/physics.md §2.4, §2.5): closed-loop program-and-verify
    write_heads_per_core: int = 32
    pv_tolerance_counts: float = 5.0
    pv_max_iterations: int = 30
    cell_yield: float = 0.99  #: ">99% of unit cells programmable on 63 of 64 cores"
    worst_core_yield: float = 0.984

    # Clocks and supply (docs/physics.md §10)
    mvm_clock_GHz: float = 1.0
    ldpu_clock_MHz: float = 400.0
    gdpu_clock_MHz: float = 400.0
    supply_V: float = 0.85

    # Full-chip MVM latency and energy, array + ADC + PWM only (Table I; docs/physics.md §12)
    mvm_latency_one_phase_ns: float = 133.0
    mvm_latency_four_phase_ns: float = 520.0
    mvm_energy_one_phase_uJ: float = 0.86
    mvm_energy_four_phase_uJ: float = 3.38

    # Areas (docs/physics.md §10)
    die_area_mm2: float = 144.0
    core_area_mm2: float = 1.392
    mvm_area_mm2: float = 0.635

    # On-chip network (docs/physics.md §10): 5-parallel-prism topology, 418 links, <= 6 neighbours, 8 x 1-bit channels
    links: int = 418
    max_neighbours: int = 6
    link_channels: int = 8
    link_rate_Gbps: float = 3.2

    # Global digital processing units (docs/physics.md §9.3)
    gdpu_slices: int = 8
    gdpu_max_inputs: int = 256
    gdpu_max_outputs: int = 64
    gdpu_clocks_per_output: int = 4
    gdpu_tanh_bins: int = 18

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            name = f"ChipSpec.{f.name}"
            if f.name in _POSITIVE_INT_FIELDS:
                check_number(getattr(self, f.name), name, low=1, integer=True)
            elif f.name in ("cell_yield", "worst_core_yield"):
                check_number(getattr(self, f.name), name, low=0.0, high=1.0, low_inclusive=False)
            elif f.name == "cco_gain_spread":
                check_number(getattr(self, f.name), name, low=0.0)
            else:
                check_number(getattr(self, f.name), name, low=0.0, low_inclusive=False)
        if self.grid_rows * self.grid_cols != self.cores:
            raise ValidationError(
                f"ChipSpec: grid_rows*grid_cols = {self.grid_rows * self.grid_cols} must equal cores = {self.cores}"
            )
        if self.pwm_bits < 2:
            raise ValidationError(f"ChipSpec.pwm_bits must be >= 2 (sign + magnitude), got {self.pwm_bits}")
        if self.read_voltage_min_V > self.read_voltage_max_V:
            raise ValidationError("ChipSpec.read_voltage_min_V must not exceed read_voltage_max_V")

    @classmethod
    def hermes(cls) -> ChipSpec:
        """The chip of the chip paper: 64 HERMES cores in 14 nm CMOS with back-end PCM (Le Gallo et al. 2023)."""
        return cls()

    # --- derived figures ---
    @property
    def weights_per_core(self) -> int:
        """Weights in one crossbar: 256 x 256 = 65,536."""
        return self.tile_rows * self.tile_cols

    @property
    def total_weights(self) -> int:
        """Weights on the chip: 4,194,304 for the HERMES chip."""
        return self.cores * self.weights_per_core

    @property
    def total_devices(self) -> int:
        """PCM devices on the chip: 16,777,216 for the HERMES chip."""
        return self.total_weights * self.devices_per_weight

    @property
    def input_levels(self) -> int:
        """Largest PWM magnitude in LSB: 2**(pwm_bits-1) - 1 = 127 (sign + 7-bit magnitude)."""
        return 2 ** (self.pwm_bits - 1) - 1

    @property
    def integration_time_ns(self) -> float:
        """Duration of one PWM read phase: 2**(pwm_bits-1) LSB x ns/LSB = 128 ns."""
        return 2 ** (self.pwm_bits - 1) * self.pwm_ns_per_lsb

    @property
    def adc_max_count(self) -> int:
        """Largest count of one ADC counter: 2**12 - 1."""
        return 2**self.adc_bits - 1

    @property
    def conductance_per_count_uS(self) -> float:
        """uS per ADC count of programmed conductance: 10.35 uS over 80 counts (docs/physics.md §2.2)."""
        return self.g_max_1dev_uS / self.gmax_counts_odp

    def mvm_latency_ns(self, mode: str) -> float:
        """Full-chip MVM latency for a read mode, ``"one-phase"`` or ``"four-phase"`` (Table I)."""
        check_choice(mode, "mode", READ_MODES)
        return self.mvm_latency_one_phase_ns if mode == "one-phase" else self.mvm_latency_four_phase_ns


#: The two operational read modes of the chip (docs/physics.md §7).
READ_MODES: tuple[str, ...] = ("one-phase", "four-phase")
