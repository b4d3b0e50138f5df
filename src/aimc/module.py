"""A programmed chip as a ``torch.nn.Module``, to drop into an existing PyTorch evaluation loop.

``chip.as_module(t=3600.0, mode="four-phase", seed=0)`` returns an :class:`AnalogModule`; calling it runs the network
on the chip like :meth:`aimc.ProgrammedChip.run`::

    model = chip.as_module(t=86400.0)          # one day after programming
    with torch.no_grad():
        for x, y in loader:
            correct += int((model(x).argmax(1) == y).sum())

Read noise: the real chip draws fresh read noise on every read, and so does the module: the k-th call (k = 0, 1,
...) seeds its read noise with :meth:`AnalogModule.call_seed` ``(k)``, a seed derived from ``(seed, k)``. The first
call uses ``seed`` itself, so it equals ``chip.run(x, t, mode, seed=seed)``. A module made with the same chip and
seed therefore gives the same sequence of outputs, and :meth:`AnalogModule.reset` starts the sequence again.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from aimc._validation import check_choice, check_number
from aimc.chip import ProgrammedChip
from aimc.devices.base import check_time
from aimc.errors import ArgumentTypeError
from aimc.spec import READ_MODES

#: The keyword arguments of :meth:`ProgrammedChip.run` a module passes on (``quantize``, ``read_noise``, ...).
RUN_OPTIONS = tuple(
    name
    for name, p in inspect.signature(ProgrammedChip.run).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY
)


class AnalogModule(nn.Module):
    """A programmed chip as a ``torch.nn.Module``: ``module(x)`` is the network's forward pass on the chip.

    Made by :meth:`aimc.ProgrammedChip.as_module`. The chip is programmed once (its programming noise is fixed);
    each call reads it ``t`` seconds after programming in read mode ``mode``.

    Attributes a user may change between calls (checked on assignment, as ``chip.run`` checks them):

    - ``t``: seconds after programming (a number >= 0).
    - ``mode``: ``"four-phase"`` or ``"one-phase"``.
    - ``seed``: the read-noise seed (an int >= 0). Setting it restarts the call counter, as :meth:`reset` does.
    - ``run_kwargs``: the other options of :meth:`ProgrammedChip.run` (``quantize``, ``drift_compensation``,
      ``read_noise``, ``recalibrate``, ``backend``), a dict.
    - ``chip``: the :class:`~aimc.ProgrammedChip` that runs.

    Read noise is fresh on every call and reproducible: call k (counted from 0 since the module was made, its seed
    set, or :meth:`reset`) runs with ``seed=self.call_seed(k)``; call 0 uses ``seed`` itself, so the first output
    equals ``chip.run(x, t, mode, seed=seed)``. A call that raises does not count.

    The chip has no trainable parameters: ``parameters()`` and ``state_dict()`` are empty, ``train()`` and
    ``eval()`` change nothing in the simulation, and outputs carry no gradient (run it under ``torch.no_grad()``
    or not, the result is the same). ``module.to(device)``, ``.cpu()`` and ``.cuda()`` (also through a parent
    module) move the chip: ``module.chip`` becomes ``chip.to(device)``, and inputs are moved to the chip's
    device. Dtype conversions (``.half()``, ``.to(torch.float64)``) leave the chip alone: its number formats are
    the hardware's.
    """

    def __init__(
        self,
        chip: ProgrammedChip,
        t: float = 3600.0,
        mode: str = "four-phase",
        seed: int = 0,
        **run_kwargs: Any,
    ) -> None:
        """Wrap ``chip``; ``t``, ``mode``, ``seed`` and ``run_kwargs`` as for :meth:`ProgrammedChip.run`."""
        super().__init__()
        if not isinstance(chip, ProgrammedChip):
            raise ArgumentTypeError(f"chip must be an aimc.ProgrammedChip, got {type(chip).__name__}")
        unknown = sorted(set(run_kwargs) - set(RUN_OPTIONS))
        if unknown:
            raise ArgumentTypeError(
                f"unknown option(s) of chip.run: {', '.join(unknown)}; allowed: t, mode, seed, {', '.join(RUN_OPTIONS)}"
            )
        self.chip = chip
        self.t = t
        self.mode = mode
        self.seed = seed
        self.run_kwargs: dict[str, Any] = dict(run_kwargs)

    @property
    def t(self) -> float:
        """Seconds after programming at which the chip is read (>= 0)."""
        return self._t

    @t.setter
    def t(self, value: float) -> None:
        self._t = check_time(value, "t")

    @property
    def mode(self) -> str:
        """The read mode, ``"four-phase"`` or ``"one-phase"``."""
        return self._mode

    @mode.setter
    def mode(self, value: str) -> None:
        self._mode = check_choice(value, "mode", READ_MODES)

    @property
    def seed(self) -> int:
        """The read-noise seed; setting it restarts the call counter (the next call uses this seed itself)."""
        return self._seed

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = int(check_number(value, "seed", low=0, integer=True))
        self._calls = 0

    @property
    def calls(self) -> int:
        """Calls since the module was made, its seed set or :meth:`reset`: the next call uses ``call_seed(calls)``."""
        return self._calls

    def reset(self) -> None:
        """Restart the read-noise sequence: the next call gives the same output as the first one did."""
        self._calls = 0

    def call_seed(self, k: int) -> int:
        """The read-noise seed of call ``k`` (from 0): ``seed`` for k = 0, else a 63-bit seed derived from
        ``(seed, k)`` (``numpy.random.SeedSequence``), so different calls and different seeds get unrelated noise.

        ``chip.run(x, t, mode, seed=module.call_seed(k))`` reproduces call k outside the module.
        """
        k = int(check_number(k, "k", low=0, integer=True))
        if k == 0:
            return self._seed
        state = np.random.SeedSequence([self._seed, k]).generate_state(1, dtype=np.uint64)[0]
        return int(state) >> 1

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The network's forward pass on the chip, with this call's read noise.

        Args:
            inputs: the network's input batch, shaped as for the PyTorch network (e.g. images ``(B, C, H, W)``,
                token ids ``(B, T)``); several tensors for a network with several inputs. Moved to the chip's
                device.

        Returns:
            The network's output (e.g. logits ``(B, classes)``), on the chip's device, without gradient.
        """
        x = inputs[0] if len(inputs) == 1 else tuple(inputs)
        out = self.chip.run(x, t=self._t, mode=self._mode, seed=self.call_seed(self._calls), **self.run_kwargs)
        self._calls += 1
        return out

    def _apply(self, fn: Callable[[torch.Tensor], torch.Tensor], recurse: bool = True) -> AnalogModule:
        """``to`` / ``cpu`` / ``cuda`` (also from a parent module): move the chip where ``fn`` sends a tensor."""
        here = self.chip.tensor_device
        probe = fn(torch.empty(0, device=here))
        if isinstance(probe, torch.Tensor) and probe.device != here:
            self.chip = self.chip.to(probe.device)
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        """``network=..., cores=..., pcm=..., strategy=..., t=..., mode=..., seed=...`` (and the run options)."""
        chip = self.chip
        parts = [
            f"network={chip.mapping.model_name!r}",
            f"cores={chip.mapping.cores_used}",
            f"pcm={getattr(chip.device, 'name', type(chip.device).__name__)!r}",
            f"strategy={chip.strategy!r}",
            f"t={self._t:g}",
            f"mode={self._mode!r}",
            f"seed={self._seed}",
        ]
        parts += [f"{k}={v!r}" for k, v in self.run_kwargs.items()]
        return ", ".join(parts)
