"""The programmed chip: programming a compiled network into PCM devices, and the whole network's forward pass on it.

``program(mapping, device, strategy, seed)`` is the only step that draws programming randomness; ``run(x, t, mode,
seed)`` reads the chip at ``t`` seconds after programming with fresh read noise. Each analog layer's cores form one
stack of :class:`~aimc.core.ProgrammedCore` (leading dims = row blocks x column blocks), simulated in one batched
tensor operation. The LDPU work after each MVM follows docs/physics.md §9.2: per-channel affine, ReLU, an added INT8
input (partial sums along a column chain, residuals), a second ReLU, INT8 output; the LSTM cell runs in the GDPUs in
FP16.

Modules, one per job:

- :mod:`aimc.chip.program` — :func:`program`; per-core W_max, ADC calibration range and the G_max limit.
- :mod:`aimc.chip.runtime` — :class:`ProgrammedChip` and its run loop; :class:`AnalogModule`; :func:`load`.
- :mod:`aimc.chip.analog` — one analog layer on its cores (MVM rows, the LDPU chain, conv / linear).
- :mod:`aimc.chip.recurrent` — an LSTM / GRU layer step by step.
- :mod:`aimc.chip.ops` — the non-analog op kinds, a table from kind to function.
- :mod:`aimc.chip.storage` — the file format of a saved chip (safetensors + JSON metadata + checksum).
- :mod:`aimc.chip.adabs` — adaptive batch-norm statistics: the LDPU registers recalibrated on the chip.
"""

from aimc.chip.program import (
    CURRENT_HEADROOM,
    core_adc_range,
    core_w_max,
    limited_w_max,
    peak_current,
    program,
)
from aimc.chip.runtime import AnalogModule, ProgrammedChip, load
from aimc.chip.storage import save_chip

__all__ = [
    "CURRENT_HEADROOM",
    "AnalogModule",
    "ProgrammedChip",
    "core_adc_range",
    "core_w_max",
    "limited_w_max",
    "load",
    "peak_current",
    "program",
    "save_chip",
]
