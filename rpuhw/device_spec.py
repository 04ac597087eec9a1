"""Device YAML files: a device model, its analog I/O, and optionally conductances.

.. code-block:: yaml

    model: soft_bounds        # any registered model (rpuhw.devices.model_names())
    dw_min: 0.002             # the model's keys (aihwkit names)
    w_min: -1.0
    w_max: 1.0
    io:                       # optional: analog behaviour of the array
      out_noise: 0.06
      out_bound: 12
      read_noise: 0.005
    conductance:              # optional: w in [w_min, w_max] <-> g in [g_min, g_max]
      g_min: 1.0e-6           # siemens
      g_max: 1.0e-5

``read_noise`` may also be given at the top level (it then goes into ``io``). The model
keys carry aihwkit 1.2's names and meanings (docs/simulator.md, formula table); a key of the
model's aihwkit twin that rpuhw does not simulate (``diffusion``,
``corrupt_devices_prob``, ...) is refused with one error naming it, unless it sits at the
value where it has no effect (``write_noise_std``, ``lifetime`` and ``reset`` are
simulated: docs/simulator.md, "write noise and decay").
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rpuhw._io import atomic_write
from rpuhw.config import from_mapping, load_yaml, require
from rpuhw.devices import DeviceModel, get_model
from rpuhw.devices.base import check_aihwkit_keys
from rpuhw.errors import ConfigError
from rpuhw.periphery.io import IOConfig


@dataclass
class ConductanceMap:
    """Linear map between weight and measured conductance."""

    g_min: float
    """Conductance (siemens) at the mean lower bound ``w_min``."""
    g_max: float
    """Conductance (siemens) at the mean upper bound ``w_max``."""

    def validate(self) -> None:
        require(self.g_min >= 0, "g_min", f"must be >= 0, got {self.g_min}")
        require(self.g_max > self.g_min, "g_max",
                f"must be > g_min, got g_max={self.g_max} <= g_min={self.g_min}")


@dataclass
class DeviceSpec:
    """Everything a device YAML describes."""

    model: DeviceModel
    """The device model with its parameters."""
    io: IOConfig = field(default_factory=IOConfig)
    """Analog forward/backward/read behaviour."""
    conductance: ConductanceMap | None = None
    """Optional weight <-> conductance map."""
    source: str = "<defaults>"
    """Where it was read from (for messages)."""

    def w_to_g(self, w):
        """Conductance (S) of weight ``w`` (needs the conductance block)."""
        c, p = self._conductance(), self.model.params
        return c.g_min + (w - p.w_min) * (c.g_max - c.g_min) / (p.w_max - p.w_min)

    def g_to_w(self, g):
        """Weight of conductance ``g`` (S)."""
        c, p = self._conductance(), self.model.params
        return p.w_min + (g - c.g_min) * (p.w_max - p.w_min) / (c.g_max - c.g_min)

    def _conductance(self) -> ConductanceMap:
        if self.conductance is None:
            raise ConfigError("no conductance block (g_min, g_max) given", source=self.source,
                              key="conductance")
        return self.conductance

    def to_mapping(self) -> dict[str, Any]:
        """The YAML mapping of this spec (model name first)."""
        out: dict[str, Any] = {"model": self.model.name}
        out.update(dataclasses.asdict(self.model.params))
        out["io"] = dataclasses.asdict(self.io)
        if self.conductance is not None:
            out["conductance"] = dataclasses.asdict(self.conductance)
        return out


def spec_from_mapping(data: dict[str, Any], source: str = "<mapping>") -> DeviceSpec:
    """Build a DeviceSpec from a YAML mapping; every error names ``source`` and the key."""
    data = dict(data)
    if "model" not in data:
        raise ConfigError("missing (e.g. 'model: constant_step')", source=source, key="model")
    name = data.pop("model")
    if not isinstance(name, str):
        raise ConfigError(f"expected a model name, got {name!r}", source=source, key="model")
    try:
        model_cls = get_model(name)
    except ConfigError as exc:
        raise ConfigError(exc.detail, source=source, key="model") from None
    io_data = data.pop("io", None) or {}
    if not isinstance(io_data, dict):
        raise ConfigError(f"expected a mapping, got {io_data!r}", source=source, key="io")
    if "read_noise" in data:
        if "read_noise" in io_data:
            raise ConfigError("given both at the top level and in io:", source=source,
                              key="read_noise")
        io_data = {**io_data, "read_noise": data.pop("read_noise")}
    cond_data = data.pop("conductance", None)
    # aihwkit keys rpuhw does not simulate: one error naming the key, unless at the value
    # where they have no effect
    data = check_aihwkit_keys(model_cls.unsupported, data, source)
    params = from_mapping(model_cls.Params, data, source=source)
    io = from_mapping(IOConfig, io_data, source=source, prefix="io.")
    cond = None
    if cond_data is not None:
        if not isinstance(cond_data, dict):
            raise ConfigError(f"expected a mapping, got {cond_data!r}", source=source,
                              key="conductance")
        cond = from_mapping(ConductanceMap, cond_data, source=source, prefix="conductance.")
    return DeviceSpec(model=model_cls(params), io=io, conductance=cond, source=source)


def load_device(path: str | Path) -> DeviceSpec:
    """Read a device YAML file."""
    return spec_from_mapping(load_yaml(path), source=str(path))


def save_device(spec: DeviceSpec, path: str | Path) -> None:
    """Write ``spec`` as YAML atomically (temporary file + rename)."""
    path = Path(path)
    text = yaml.safe_dump(spec.to_mapping(), sort_keys=False)
    atomic_write(path, text)
