"""Name -> device model class registry."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rpuhw.errors import ConfigError

if TYPE_CHECKING:
    from rpuhw.devices.base import DeviceModel

_MODELS: dict[str, type[DeviceModel]] = {}


def register_model(cls: type[DeviceModel]) -> type[DeviceModel]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} has no name")
    _MODELS[cls.name] = cls
    return cls


def get_model(name: str) -> type[DeviceModel]:
    """The model class registered as ``name``; the error lists the known names."""
    try:
        return _MODELS[name]
    except KeyError:
        raise ConfigError(f"unknown device model {name!r} (known: {', '.join(model_names())})",
                          key="model") from None


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)
