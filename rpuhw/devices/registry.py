"""Name -> device model class registry (:class:`rpuhw.registry.Registry`, key ``model``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rpuhw.registry import Registry

if TYPE_CHECKING:
    from rpuhw.devices.base import DeviceModel

MODELS: Registry[type[DeviceModel]] = Registry("device model", key="model")
"""Every device model, by its ``name`` (the ``model:`` key of a device YAML)."""


def register_model(cls: type[DeviceModel]) -> type[DeviceModel]:
    """Class decorator: make ``cls`` available under ``cls.name``."""
    return MODELS.register(cls)


def get_model(name: str) -> type[DeviceModel]:
    """The model class registered as ``name``; the error lists the known names."""
    return MODELS.get(name)


def model_names() -> list[str]:
    """Registered model names, sorted."""
    return MODELS.names()
