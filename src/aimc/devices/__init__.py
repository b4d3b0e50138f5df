"""PCM device models: the protocol, the published presets, program-and-verify, a registry and a conformance suite.

- :class:`DeviceModel` / :class:`DeviceState`: the protocol (``base.py``).
- :class:`StatisticalDeviceModel`: sampling from four statistics plus the SPEC §4 time evolution.
- :class:`StandardPCM` (``"standard"``, SPEC §4a), :class:`HermesPCM` (``"hermes-1dev"``/``"hermes-2dev"``,
  SPEC §4b), :class:`IdealDevice` (``"ideal"``, noise-free), :class:`ProgramVerify` (``"<name>+verify"``, SPEC §1).
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
