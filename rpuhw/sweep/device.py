"""``device.KEY`` axes: a key of the backend's device YAML, set per trial.

The trial's ``backend`` (the spec of every layer not placed elsewhere) must be
simulated: ``sim`` (the paper's constant-step device), ``sim:MODEL``,
``sim:preset:NAME`` or ``sim:PATH.yaml``. Its device mapping (the YAML's keys) gets the
trial's values and is written as ``device.yaml`` in the trial's folder; the trial then
trains on ``sim:TRIAL/device.yaml``. Keys: the device model's parameters (``rpuhw
models``), ``read_noise``, ``io.KEY`` and ``conductance.KEY``. An unknown key is refused
before anything starts; a bad value (``dw_min: -1``) fails that trial only.
"""

from __future__ import annotations

import dataclasses
from functools import lru_cache
from pathlib import Path
from typing import Any

from rpuhw.errors import ConfigError

PREFIX = "device."


@lru_cache(maxsize=64)
def _base_mapping(backend: str) -> tuple[tuple[str, Any], ...]:
    from rpuhw.config import load_yaml
    from rpuhw.device_spec import DeviceSpec
    from rpuhw.devices import DeviceModel, get_model, model_names

    prefix, _, arg = backend.partition(":")
    if prefix != "sim":
        raise ConfigError(f"device.KEY axes need a simulated backend (sim, sim:MODEL, "
                          f"sim:preset:NAME, sim:FILE.yaml); the trial's backend is "
                          f"{backend!r}", key="backend")
    if not arg:
        data = DeviceSpec(model=get_model("constant_step")()).to_mapping()
    elif arg in model_names():
        data = DeviceSpec(model=get_model(arg)()).to_mapping()
    elif arg.startswith("preset:"):
        from rpuhw.interop.presets import load_preset

        got = load_preset(arg[len("preset:"):])
        data = (DeviceSpec(model=got) if isinstance(got, DeviceModel) else got).to_mapping()
    else:
        data = load_yaml(arg)
    return tuple(data.items())


def base_mapping(backend: str) -> dict[str, Any]:
    """The device YAML mapping of a simulated backend spec (a copy)."""
    import copy

    return copy.deepcopy(dict(_base_mapping(backend)))


def allowed_keys(mapping: dict[str, Any]) -> list[str]:
    """Keys ``device.KEY`` may set for a device mapping: its model's parameters,
    ``read_noise``, ``io.*`` and ``conductance.*``."""
    from rpuhw.device_spec import ConductanceMap
    from rpuhw.devices import get_model
    from rpuhw.periphery.io import IOConfig

    model = get_model(mapping.get("model", "constant_step"))
    keys = [f.name for f in dataclasses.fields(model.Params)]
    keys += ["read_noise"] + [f"io.{f.name}" for f in dataclasses.fields(IOConfig)]
    keys += [f"conductance.{f.name}" for f in dataclasses.fields(ConductanceMap)]
    return keys


def apply(backend: str, overrides: dict[str, Any], source: str) -> dict[str, Any]:
    """The backend's device mapping with ``overrides`` (KEY -> value, without the
    ``device.`` prefix) set; an unknown key is one ConfigError naming the allowed ones."""
    try:
        data = base_mapping(backend)
    except ConfigError as exc:
        raise ConfigError(exc.detail, source=source,
                          key=f"{PREFIX}{next(iter(overrides))}") from None
    allowed = allowed_keys(data)
    for key, value in overrides.items():
        if key not in allowed:
            raise ConfigError(f"the device model {data.get('model', 'constant_step')} of "
                              f"backend {backend} has no such key (allowed: "
                              f"{', '.join(allowed)})", source=source, key=f"{PREFIX}{key}")
        head, dot, rest = key.partition(".")
        if dot:
            block = data.get(head) or {}
            data[head] = {**block, rest: value}
        elif key == "read_noise" and "read_noise" not in data:
            data["io"] = {**(data.get("io") or {}), "read_noise": value}
        else:
            data[key] = value
    return data


def write(mapping: dict[str, Any], folder: str | Path) -> Path:
    """Write the trial's device YAML (atomically) into its folder; returns the path."""
    import yaml

    from rpuhw._io import atomic_write

    path = Path(folder) / "device.yaml"
    atomic_write(path, yaml.safe_dump(mapping, sort_keys=False))
    return path
