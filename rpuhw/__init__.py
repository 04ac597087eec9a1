"""rpuhw: train neural networks on resistive cross-point (RPU) arrays.

One array contract (:class:`CrossPointArray`), an exact and fast stochastic
simulator of the devices (:class:`SimulatedArray`), the digital periphery of
Gokmen, Onen & Haensch 2017 (:mod:`rpuhw.periphery`), and backends for lab
instruments, all opened by a spec string with :func:`open_array`.
"""

from rpuhw.array import Capabilities, CrossPointArray, ProgramReport
from rpuhw.backends import known_specs, open_array, register_backend
from rpuhw.bits import PackedBits
from rpuhw.device_spec import DeviceSpec, load_device, save_device
from rpuhw.errors import ConfigError, RpuhwError
from rpuhw.ideal import IdealArray
from rpuhw.sim.array import SimulatedArray

__version__ = "0.1.0"

__all__ = ["Capabilities", "ConfigError", "CrossPointArray", "DeviceSpec", "IdealArray",
           "PackedBits", "ProgramReport", "RpuhwError", "SimulatedArray", "__version__",
           "known_specs", "load_device", "open_array", "register_backend", "save_device"]
