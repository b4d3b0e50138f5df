"""One analog core: PWM input, PCM crossbar with ODP/TDP device assignment, CCO ADCs, LDPU combination.

The physics and its sources: docs/physics.md §2-§7.
"""

from aimc.core.adc import AdcState, calibrate, cco_counts, cco_counts_, sample_adc
from aimc.core.analog import STRATEGIES, CoreReadout, ProgrammedCore, program_core
from aimc.core.config import CoreConfig
from aimc.core.pwm import quantize_input
from aimc.core.readnoise import fresh_noise_fraction

__all__ = [
    "STRATEGIES",
    "AdcState",
    "CoreConfig",
    "CoreReadout",
    "ProgrammedCore",
    "calibrate",
    "cco_counts",
    "cco_counts_",
    "fresh_noise_fraction",
    "program_core",
    "quantize_input",
    "sample_adc",
]
