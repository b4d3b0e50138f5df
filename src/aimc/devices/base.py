"""The PCM device-model protocol: programming, drift and 1/f read noise as separate hooks.

A *device model* describes one modelled conductance. For most models that is one physical PCM device; the
HERMES two-device fit describes the pair of devices of one polarity as a whole (``devices_per_unit = 2``).

The contract (checked by :func:`aimc.devices.check_device_model`):

- ``program(g_target_uS, generator) -> DeviceState``: draws programming error, the drift exponent ``nu`` and stuck
  cells, once, at programming time. Any tensor shape; all outputs have the target's shape.
- ``drift(state, t) -> Tensor``: the noise-free conductance ``t`` seconds after programming (never above ``g_prog``).
- ``read_noise_std(state, t) -> Tensor``: the std (uS) of the 1/f read noise of one read at time ``t``.
- ``conductance(state, t, generator) -> Tensor``: one read: ``drift`` plus a fresh read-noise draw, clamped >= 0.
- the statistics ``prog_std(g)``, ``drift_nu_mean(g)``, ``drift_nu_std(g)``, ``read_noise_qs(g)`` of a normalised
  target ``g = g_target / g_max`` so that a conformance suite can compare samples with the model's own equations.

:class:`StatisticalDeviceModel` implements the sampling once from those four statistics and the docs/physics.md §3.3
time evolution; presets only supply their equations.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields

import torch

from aimc._validation import SeedLike, check_number, make_generator
from aimc.errors import ArgumentTypeError, ValidationError


@dataclass
class DeviceState:
    """The programmed state of a set of devices; every tensor has the shape of the programming target.

    Attributes:
        g_target: target conductance (uS).
        g_prog: conductance reached by programming (uS), before any drift.
        nu: drift exponent of each device, drawn once at programming.
        stuck: True where the device could not be programmed (it keeps its stuck conductance).
    """

    g_target: torch.Tensor
    g_prog: torch.Tensor
    nu: torch.Tensor
    stuck: torch.Tensor

    def to(self, device: torch.device | str) -> DeviceState:
        """Move every tensor to ``device``."""
        return DeviceState(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def tensors(self) -> dict[str, torch.Tensor]:
        """The state as a name -> tensor dict (for safetensors)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> DeviceState:
        """Rebuild a state from :meth:`tensors`' output, checking names, shapes and dtypes."""
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in tensors]
        if missing:
            raise ValidationError(f"DeviceState is missing tensor(s) {missing}; expected {names}")
        shape = tensors["g_target"].shape
        for n in names:
            if tensors[n].shape != shape:
                raise ValidationError(
                    f"DeviceState tensor {n!r} has shape {tuple(tensors[n].shape)}, expected {tuple(shape)}"
                )
        if tensors["stuck"].dtype != torch.bool:
            raise ArgumentTypeError(f"DeviceState tensor 'stuck' must be bool, got {tensors['stuck'].dtype}")
        for n in ("g_target", "g_prog", "nu"):
            t = tensors[n]
            if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                raise ValidationError(f"DeviceState tensor {n!r} must be finite floating point")
        return cls(**{n: tensors[n] for n in names})


def check_time(t_seconds: object, name: str = "t_seconds") -> float:
    """Check a time after programming: a finite number >= 0 seconds."""
    return float(check_number(t_seconds, name, low=0.0))


class DeviceModel(ABC):
    """Abstract PCM device model (see the module docstring for the contract)."""

    #: preset name, e.g. ``"hermes-2dev"``
    name: str
    #: conductance that a normalised target g = 1 stands for (uS)
    g_max_uS: float
    #: physical devices represented by one modelled conductance (1, or 2 for a fitted device pair)
    devices_per_unit: int

    @abstractmethod
    def prog_std(self, g: torch.Tensor) -> torch.Tensor:
        """Std (uS) of the programming error at normalised target ``g``."""

    @abstractmethod
    def drift_nu_mean(self, g: torch.Tensor) -> torch.Tensor:
        """Mean of the (unfolded) drift-exponent distribution at normalised target ``g``."""

    @abstractmethod
    def drift_nu_std(self, g: torch.Tensor) -> torch.Tensor:
        """Std of the (unfolded) drift-exponent distribution at normalised target ``g``."""

    @abstractmethod
    def read_noise_qs(self, g: torch.Tensor) -> torch.Tensor:
        """1/f read-noise amplitude Q_s at normalised target ``g`` (relative to the conductance)."""

    @abstractmethod
    def program(self, g_target_uS: torch.Tensor, generator: SeedLike = None) -> DeviceState:
        """Program devices to ``g_target_uS`` (any shape, values in [0, g_max_uS])."""

    @abstractmethod
    def drift(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """Noise-free conductance (uS) ``t_seconds`` after programming."""

    @abstractmethod
    def read_noise_std(self, state: DeviceState, t_seconds: float) -> torch.Tensor:
        """Std (uS) of one read's 1/f noise at ``t_seconds`` after programming."""

    def conductance(self, state: DeviceState, t_seconds: float, generator: SeedLike = None) -> torch.Tensor:
        """One read of every device at ``t_seconds``: drift plus a fresh read-noise draw, clamped >= 0 (docs/physics.md
        §3.3)."""
        gen = make_generator(generator, "generator")
        g = self.drift(state, t_seconds)
        sigma = self.read_noise_std(state, t_seconds)
        noise = torch.randn(g.shape, generator=gen, dtype=g.dtype).to(g.device)
        return (g + sigma * noise).clamp_min(0.0)

    def check_target(self, g_target_uS: object) -> torch.Tensor:
        """Validate a programming target: a finite float tensor with values in [0, g_max_uS]."""
        if not isinstance(g_target_uS, torch.Tensor):
            raise ArgumentTypeError(f"g_target_uS must be a torch.Tensor, got {type(g_target_uS).__name__}")
        if not g_target_uS.is_floating_point():
            raise ArgumentTypeError(f"g_target_uS must have a floating-point dtype, got {g_target_uS.dtype}")
        if not bool(torch.isfinite(g_target_uS).all()):
            raise ValidationError("g_target_uS must be finite; it holds NaN/Inf values")
        if g_target_uS.numel() and (g_target_uS.min() < 0 or g_target_uS.max() > self.g_max_uS * (1 + 1e-6)):
            raise ValidationError(
                f"g_target_uS must lie in [0, {self.g_max_uS:g}] uS for device model {self.name!r}; got values in "
                f"[{float(g_target_uS.min()):g}, {float(g_target_uS.max()):g}]"
            )
        return g_target_uS

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, g_max_uS={self.g_max_uS:g})"


def folded_normal_mean(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E|X| for X ~ N(mu, sigma^2): the mean of nu = |mu + sigma*N| (docs/physics.md §3.3)."""
    sigma = sigma.clamp_min(1e-30)
    z = mu / sigma
    return sigma * math.sqrt(2.0 / math.pi) * torch.exp(-0.5 * z * z) + mu * torch.erf(z / math.sqrt(2.0))
