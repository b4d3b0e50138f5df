"""PCM device models: the protocol, the published presets, program-and-verify, a registry and a conformance suite.

- :class:`DeviceModel` / :class:`DeviceState`: the protocol (``base.py``).
- :class:`StatisticalDeviceModel`: sampling from four statistics plus the time evolution of docs/physics.md §3.3.
- :class:`StandardPCM` (``"standard"``, docs/physics.md §3.1), :class:`HermesPCM` (``"hermes-1dev"``/``"hermes-2dev"``,
  docs/physics.md §3.2), :class:`IdealDevice` (``"ideal"``, noise-free), :class:`ProgramVerify` (``"<name>+verify"``,
  docs/physics.md §2.4).
- :func:`get`, :func:`available`, :func:`register`: models by name.
- :func:`check_device_model`: the conformance suite every model must pass.
"""

from aimc.devices.base import DeviceModel, DeviceState
from aimc.devices.checks import DeviceModelCheckError, check_device_model
from aimc.devices.hermes import HermesPCM
from aimc.devices.ideal import IdealDevice
from aimc.devices.registry import available, get, register
from aimc.devices.standard import StandardPCM
from aimc.devices.statistical import StatisticalDeviceModel
from aimc.devices.verify import ProgramVerify

__all__ = [
    "DeviceModel",
    "DeviceModelCheckError",
    "DeviceState",
    "HermesPCM",
    "IdealDevice",
    "ProgramVerify",
    "StandardPCM",
    "StatisticalDeviceModel",
    "available",
    "check_device_model",
    "get",
    "register",
]
