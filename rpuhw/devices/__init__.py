"""Device models, registered by name (the ``model:`` key of a device YAML).

Adding a model is one file: subclass :class:`DeviceModel`, decorate it with
:func:`register_model`, and import it below.
"""

from __future__ import annotations

# Built-in models register themselves on import.
from rpuhw.devices import (  # noqa: F401
    constant_step,
    exp_step,
    linear_step,
    piecewise,
    pow_step,
    soft_bounds,
)
from rpuhw.devices.base import BASE_STATE, DeviceModel, PulsedDeviceParams, State
from rpuhw.devices.registry import get_model, model_names, register_model

__all__ = ["BASE_STATE", "DeviceModel", "PulsedDeviceParams", "State", "get_model",
           "model_names", "register_model"]
