"""rpuhw: train neural networks on resistive cross-point (RPU) arrays.

One array contract (:class:`CrossPointArray`), an exact and fast stochastic
simulator of the devices (:class:`SimulatedArray`), the digital periphery of
Gokmen, Onen & Haensch 2017 (:mod:`rpuhw.periphery`), and backends for lab
instruments, all opened by a spec string with :func:`open_array`.

The names below load on first use: ``import rpuhw`` (or ``import rpuhw.array``)
loads neither the simulator nor numba.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rpuhw.array import ArrayInfo, Capabilities, CrossPointArray, ProgramReport
    from rpuhw.backends import known_specs, open_array, register_backend
    from rpuhw.device_spec import DeviceSpec, load_device, save_device
    from rpuhw.errors import ConfigError, RpuhwError
    from rpuhw.ideal import IdealArray
    from rpuhw.periphery.bits import PackedBits
    from rpuhw.sim.array import SimulatedArray

__version__ = "0.1.0"

_WHERE = {
    "ArrayInfo": "rpuhw.array", "Capabilities": "rpuhw.array",
    "CrossPointArray": "rpuhw.array", "ProgramReport": "rpuhw.array",
    "known_specs": "rpuhw.backends", "open_array": "rpuhw.backends",
    "register_backend": "rpuhw.backends",
    "DeviceSpec": "rpuhw.device_spec", "load_device": "rpuhw.device_spec",
    "save_device": "rpuhw.device_spec",
    "ConfigError": "rpuhw.errors", "RpuhwError": "rpuhw.errors",
    "IdealArray": "rpuhw.ideal", "PackedBits": "rpuhw.periphery.bits",
    "SimulatedArray": "rpuhw.sim.array",
}

__all__ = ["ArrayInfo", "Capabilities", "ConfigError", "CrossPointArray", "DeviceSpec",
           "IdealArray", "PackedBits", "ProgramReport", "RpuhwError", "SimulatedArray",
           "__version__", "known_specs", "load_device", "open_array", "register_backend",
           "save_device"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rpuhw' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
