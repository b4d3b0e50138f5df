"""Parameters of the analog core that no paper publishes: each one a named, documented assumption.

The chip papers give the structure of these effects (docs/physics.md §5-§7: CCO transfer f = A·i/(1+B·i) + C, a read
voltage in 0.1-0.4 V, a PCM current-voltage polarity asymmetry that makes one-phase reads less accurate, 1/f read
noise); they do not give these values. They are collected here, each with its default as a module constant, so that a
user can vary them (``dataclasses.replace(CoreConfig(), read_voltage_V=0.2)``) and a reader sees every assumption in one
place.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aimc._validation import check_choice, check_number
from aimc.errors import ValidationError

#: Assumption: read voltage (V). The chip paper gives 0.1-0.4 V (docs/physics.md §5) and no value for the experiments.
#: At 0.1 V ResNet-9's cores carry at most 3-14 uA (ODP; 13-60 counts), and the converters alone then cost ODP 2.2
#: points, more than the chip paper's whole ODP loss (1.44): in this model the chip could not have reached its ODP
#: result at 0.1 V. At 0.2 V they cost ODP what they cost TDP (docs/validation.md). Where a core's currents would exceed
#: the ADC range, its G_max is lowered instead (``aimc.chip.limited_w_max``; at 0.2 V so it is for TDP in the chip
#: paper's MVM test and in the char-LSTM, not in ResNet-9).
READ_VOLTAGE_V = 0.2

#: Assumption: CCO non-linearity B (1/uA) in f = A·i/(1+B·i) + C (the chip paper's "mild non-linearity", docs/physics.md
#: §6): 5% gain compression at the 100 uA saturation current.
CCO_NONLINEARITY_PER_UA = 5.0e-4

#: Assumption: CCO free-running frequency C (MHz) and its spread across counters; removed by the affine correction.
CCO_OFFSET_MHZ = 20.0
CCO_OFFSET_SPREAD_MHZ = 5.0

#: Assumption: currents (evenly spaced over [0, saturation]) used to measure each ADC's gain/offset once
#: ("affine correction", docs/physics.md §6); a least-squares line through them is the correction the LDPU applies.
CALIBRATION_POINTS = 16

#: Assumption: the calibration currents span [0, this fraction x saturation] wherever a core's operating range is
#: unknown (a core programmed on its own, ``adc_calibration="full"``). The line fitted to the (mildly non-linear)
#: CCO transfer leaves a current-dependent gain error, smallest over the range that is fitted (docs/validation.md).
CALIBRATION_MAX_FRACTION = 1.0

#: Assumption: how ``aimc.program`` chooses each core's calibration range. ``"operating"``: [0, the largest bit-line
#: current the compiler measured on that core with its calibration inputs] — the affine correction is fitted where
#: the core works (ResNet-9's cores peak at 6-27 uA of the 100 uA range); ``"full"``: [0, CALIBRATION_MAX_FRACTION x
#: saturation] on every core. The chip paper says only that gain/offset are "measured once and corrected digitally".
ADC_CALIBRATION = "operating"
ADC_CALIBRATIONS = ("operating", "full")

#: Assumption: the operating range is never narrower than this fraction of saturation (5 uA: about 22 counts of a
#: 128 ns window), so that the fitted line is not dominated by the counters' one-count flooring.
CALIBRATION_MIN_FRACTION = 0.05

#: Assumption: PCM current-voltage polarity asymmetry: in one-phase mode a device read with the negative voltage
#: conducts G·(1 + a), a ~ N(mean, std) per device (docs/physics.md §7; not quantified in the papers).
POLARITY_ASYMMETRY_MEAN = 0.05
POLARITY_ASYMMETRY_STD = 0.05

#: Assumption: duration (s) of one ``run`` (e.g. a test-set pass). 1/f read noise below 1/run_duration is frozen for
#: the run (drawn once), the rest is fresh on every MVM; the split follows the log-frequency weight of each band.
RUN_DURATION_S = 1.0

#: Assumption: amplitude of the global-drift-compensation calibration input, as a fraction of PWM full scale
#: (all inputs equal; Joshi et al. 2020 apply one known input and sum the outputs).
GDC_INPUT_FRACTION = 0.25


@dataclass(frozen=True)
class CoreConfig:
    """Unpublished parameters of one analog core (see the module constants for sources and reasons).

    Attributes:
        read_voltage_V: read voltage applied during a PWM pulse (V).
        cco_nonlinearity_per_uA: B of the CCO transfer (1/uA); 0 makes the ADC linear.
        cco_offset_MHz, cco_offset_spread_MHz: C of the CCO transfer and its spread across counters.
        cco_gain_spread: relative spread of the CCO gain A; ``None`` takes ``ChipSpec.cco_gain_spread`` (7%).
        calibration_points: number of currents used to fit each ADC's affine correction.
        calibration_max_fraction: the fitted currents span [0, fraction x the saturation current] where a core's
            operating range is unknown or ``adc_calibration`` is ``"full"``.
        adc_calibration: ``"operating"`` (each core fitted over its measured current range, at least
            ``calibration_min_fraction`` x saturation) or ``"full"`` (see :data:`ADC_CALIBRATION`).
        calibration_min_fraction: lower limit of an operating range, fraction of saturation.
        polarity_asymmetry_mean, polarity_asymmetry_std: one-phase negative-voltage conductance factor 1 + a.
        run_duration_s: split of 1/f read noise into a per-run and a per-MVM part.
        gdc_input_fraction: global-drift-compensation calibration input, fraction of full scale.
        adc_quantization: count whole CCO cycles (floor); False keeps fractional counts (for tests).
        adc_saturation: clip the bit-line current at ``ChipSpec.adc_saturation_uA``.
    """

    read_voltage_V: float = READ_VOLTAGE_V
    cco_nonlinearity_per_uA: float = CCO_NONLINEARITY_PER_UA
    cco_offset_MHz: float = CCO_OFFSET_MHZ
    cco_offset_spread_MHz: float = CCO_OFFSET_SPREAD_MHZ
    cco_gain_spread: float | None = None
    calibration_points: int = CALIBRATION_POINTS
    calibration_max_fraction: float = CALIBRATION_MAX_FRACTION
    adc_calibration: str = ADC_CALIBRATION
    calibration_min_fraction: float = CALIBRATION_MIN_FRACTION
    polarity_asymmetry_mean: float = POLARITY_ASYMMETRY_MEAN
    polarity_asymmetry_std: float = POLARITY_ASYMMETRY_STD
    run_duration_s: float = RUN_DURATION_S
    gdc_input_fraction: float = GDC_INPUT_FRACTION
    adc_quantization: bool = True
    adc_saturation: bool = True

    def __post_init__(self) -> None:
        check_number(self.read_voltage_V, "CoreConfig.read_voltage_V", low=0.0, low_inclusive=False)
        check_number(self.cco_nonlinearity_per_uA, "CoreConfig.cco_nonlinearity_per_uA", low=0.0)
        check_number(self.cco_offset_MHz, "CoreConfig.cco_offset_MHz")
        check_number(self.cco_offset_spread_MHz, "CoreConfig.cco_offset_spread_MHz", low=0.0)
        if self.cco_gain_spread is not None:
            check_number(self.cco_gain_spread, "CoreConfig.cco_gain_spread", low=0.0, high=0.5)
        check_number(self.calibration_points, "CoreConfig.calibration_points", low=2, integer=True)
        check_number(
            self.calibration_max_fraction, "CoreConfig.calibration_max_fraction", low=0.0, high=1.0, low_inclusive=False
        )
        check_choice(self.adc_calibration, "CoreConfig.adc_calibration", ADC_CALIBRATIONS)
        check_number(
            self.calibration_min_fraction, "CoreConfig.calibration_min_fraction", low=0.0, high=1.0, low_inclusive=False
        )
        check_number(self.polarity_asymmetry_mean, "CoreConfig.polarity_asymmetry_mean", low=-0.5, high=0.5)
        check_number(self.polarity_asymmetry_std, "CoreConfig.polarity_asymmetry_std", low=0.0, high=0.5)
        check_number(self.run_duration_s, "CoreConfig.run_duration_s", low=0.0, low_inclusive=False)
        check_number(self.gdc_input_fraction, "CoreConfig.gdc_input_fraction", low=0.0, high=1.0, low_inclusive=False)
        for name in ("adc_quantization", "adc_saturation"):
            if not isinstance(getattr(self, name), bool):
                raise ValidationError(f"CoreConfig.{name} must be a bool, got {getattr(self, name)!r}")

    @classmethod
    def ideal(cls) -> CoreConfig:
        """A core whose ADC is linear, offset-free and identical across outputs, with no polarity asymmetry.

        What remains is the quantisation of the PWM input and of the ADC counts (and FP16 in the LDPU): the
        noise-free limit of the chip's core (docs/physics.md §3.5).
        """
        return cls(
            cco_nonlinearity_per_uA=0.0,
            cco_offset_MHz=0.0,
            cco_offset_spread_MHz=0.0,
            cco_gain_spread=0.0,
            polarity_asymmetry_mean=0.0,
            polarity_asymmetry_std=0.0,
        )

    def describe(self) -> dict[str, object]:
        """The configuration as a plain dict (recorded with results)."""
        return dataclasses.asdict(self)
