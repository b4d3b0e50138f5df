"""aimc: simulate IBM's 64-core phase-change-memory analog in-memory computing chip end to end.

Public API (everything else is private and may change):

- :class:`ChipSpec` — every published number of the chip (docs/physics.md), preset ``ChipSpec.hermes()``.
- :mod:`aimc.devices` — PCM device models (``get``, ``available``, ``register``, ``check_device_model``).
- :mod:`aimc.core` — one analog core: ``program_core``, ``ProgrammedCore``, ``CoreReadout``, ``CoreConfig``.
- :mod:`aimc.digital` — FP16 / INT8 arithmetic of the digital units.
- :mod:`aimc.errors` — ``AimcError`` and its subclasses.
- :mod:`aimc.faults` — hardware faults (stuck devices, dead ADC columns, dead cores and links): ``Faults``,
  ``parse_faults``; pass to ``compile(..., **faults.compile_kwargs())`` and ``program(..., faults=...)``.
- :mod:`aimc.models` — the chip paper's networks: ``resnet9``, ``char_lstm``, ``caption_lstm``.
- :func:`compile` -> :class:`~aimc.compiler.Mapping`; :func:`program` -> :class:`ProgrammedChip`;
  ``ProgrammedChip.run`` / ``.save``; :func:`load` (:mod:`aimc.chip`: programming, running, saving).
- :class:`AnalogModule` — a programmed chip as a ``torch.nn.Module`` (``chip.as_module(t, mode, seed)``), fresh
  read noise on every call, reproducible from its seed.
- :mod:`aimc.perf` — latency, energy and throughput of a mapping (``estimate``), Table I, the scaling study.
- :mod:`aimc.chip.adabs` (also ``aimc.adabs``) — adaptive batch-norm statistics on the chip:
  ``aimc.adabs.adabs(chip, x, t)``.
- :mod:`aimc.data` — CIFAR-10 and character-level Penn Treebank.
- :mod:`aimc.tasks` — tasks by name (a network, its data and metric): ``get_task``, ``available_tasks``,
  ``register_task``; what ``aimc eval``, ``aimc reproduce``, sweeps and design spaces run.
- :mod:`aimc.experiments` — ``evaluate`` (accuracy / BPC over time), ``reproduce`` (the chip paper's results),
  ``mvm_error``.
- :mod:`aimc.sweep` — resumable Monte Carlo sweeps, in-process or on Ray (``aimc.sweep.run``, ``write_report``).
- :mod:`aimc.dse` — design-space exploration: accuracy and energy across chip designs, Pareto fronts
  (``aimc.dse.run``, ``write_report``).
"""

from aimc import chip, core, data, devices, digital, dse, errors, experiments, faults, models, perf, sweep, tasks
from aimc._version import __version__
from aimc.chip import AnalogModule, ProgrammedChip, adabs, load, program
from aimc.compiler import Mapping, UnsupportedLayerError, compile
from aimc.core import CoreConfig, ProgrammedCore, program_core
from aimc.errors import AimcError, CorruptFileError
from aimc.spec import READ_MODES, ChipSpec

__all__ = [
    "READ_MODES",
    "AimcError",
    "AnalogModule",
    "ChipSpec",
    "CoreConfig",
    "CorruptFileError",
    "Mapping",
    "ProgrammedChip",
    "ProgrammedCore",
    "UnsupportedLayerError",
    "__version__",
    "adabs",
    "chip",
    "compile",
    "core",
    "data",
    "devices",
    "digital",
    "dse",
    "errors",
    "experiments",
    "faults",
    "load",
    "models",
    "perf",
    "program",
    "program_core",
    "sweep",
    "tasks",
]
