"""Device models by name: the built-in presets, their program-and-verify variants, and user models.

Names: ``"standard"`` (docs/physics.md §3.1), ``"hermes-1dev"`` and ``"hermes-2dev"`` (docs/physics.md §3.2),
``"ideal"`` (noise-free), any name registered with :func:`register`, and any of these with the suffix ``"+verify"``,
which wraps the model in :class:`~aimc.devices.verify.ProgramVerify` (docs/physics.md §2.4).

Examples:
    >>> from aimc.devices import get
    >>> get("hermes-2dev+verify", yield_fraction=0.99).name
    'hermes-2dev+verify'
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from aimc._registry import Registry
from aimc.devices.base import DeviceModel
from aimc.devices.hermes import HermesPCM
from aimc.devices.ideal import IdealDevice
from aimc.devices.standard import StandardPCM
from aimc.devices.verify import ProgramVerify
from aimc.errors import ArgumentTypeError, ValidationError

#: Suffix of a name that asks for the program-and-verify variant of a model.
VERIFY_SUFFIX = "+verify"

DeviceFactory = Callable[..., DeviceModel]


def _hermes_1dev(**overrides: object) -> DeviceModel:
    return HermesPCM(devices=1, **overrides)  # type: ignore[arg-type]


def _hermes_2dev(**overrides: object) -> DeviceModel:
    return HermesPCM(devices=2, **overrides)  # type: ignore[arg-type]


class _Devices(Registry[DeviceFactory]):
    """The device models' factories; each base name is also available with the ``"+verify"`` suffix."""

    def available(self) -> list[str]:
        return [n for base in super().available() for n in (base, base + VERIFY_SUFFIX)]


_DEVICES = _Devices(
    "device model",
    {"standard": StandardPCM, "hermes-1dev": _hermes_1dev, "hermes-2dev": _hermes_2dev, "ideal": IdealDevice},
)

#: Keyword arguments of :class:`ProgramVerify`; in ``get("x+verify", **overrides)`` these go to the wrapper, the
#: rest to the base model.
_VERIFY_KEYWORDS = frozenset(p for p in inspect.signature(ProgramVerify).parameters if p != "base")


def available() -> list[str]:
    """Every name :func:`get` accepts: each base model followed by its ``"+verify"`` variant."""
    return _DEVICES.available()


def _construct(name: str, factory: DeviceFactory, overrides: dict[str, object]) -> DeviceModel:
    try:
        model = factory(**overrides)
    except ArgumentTypeError:
        raise
    except TypeError as exc:  # an override the constructor does not take
        raise ArgumentTypeError(
            f"device model {name!r} does not accept the override(s) {sorted(overrides)}: {exc}"
        ) from exc
    if not isinstance(model, DeviceModel):
        raise ArgumentTypeError(
            f"the factory of device model {name!r} returned {type(model).__name__}, not a DeviceModel"
        )
    return model


def get(name: str, **overrides: object) -> DeviceModel:
    """A new device model by name, with constructor ``overrides`` (e.g. ``yield_fraction=0.99``).

    For a ``"+verify"`` name, the :class:`ProgramVerify` keywords (``tolerance_uS``, ``max_iterations``, ``spec``,
    ...) go to the wrapper and every other override to the base model.

    Raises:
        UnknownNameError: ``name`` is not one of :func:`available` (the message lists them).
        ArgumentTypeError: an override the model's constructor does not accept.
    """
    if not isinstance(name, str):
        raise ArgumentTypeError(f"device model name must be a str, got {type(name).__name__} {name!r}")
    verify = name.endswith(VERIFY_SUFFIX)
    base_name = name[: -len(VERIFY_SUFFIX)] if verify else name
    if base_name not in _DEVICES:
        raise _DEVICES.unknown(name)
    factory = _DEVICES.get(base_name)
    if not verify:
        return _construct(name, factory, overrides)
    pv_kwargs = {k: v for k, v in overrides.items() if k in _VERIFY_KEYWORDS}
    base_kwargs = {k: v for k, v in overrides.items() if k not in _VERIFY_KEYWORDS}
    base = _construct(base_name, factory, base_kwargs)
    return ProgramVerify(base, **pv_kwargs)  # type: ignore[arg-type]


def register(name: str, factory: DeviceFactory) -> None:
    """Make a user device model available to :func:`get` under ``name`` (and ``name + "+verify"``).

    Args:
        name: a new name; built-in names cannot be overwritten and the ``"+verify"`` suffix is reserved.
            Registering a user name again replaces the earlier factory.
        factory: a callable taking the overrides as keyword arguments and returning a :class:`DeviceModel`
            (a ``DeviceModel`` subclass itself is such a callable).
    """
    if isinstance(name, str) and name.endswith(VERIFY_SUFFIX):
        raise ValidationError(f"name {name!r} must not end with the reserved suffix {VERIFY_SUFFIX!r}")
    if not callable(factory):
        raise ArgumentTypeError(f"factory must be callable, got {type(factory).__name__}")
    _DEVICES.register(name, factory, replace=True)


def unregister(name: str) -> None:
    """Remove a user device model registered with :func:`register` (built-in names cannot be removed)."""
    _DEVICES.unregister(name)
