"""Device models, registered by name (the ``model:`` key of a device YAML).

Adding a model is one file: write its step rule ``mean_step`` once (ufunc style,
:mod:`rpuhw.devices.rule`), subclass :class:`DeviceModel` with it, decorate the class with
:func:`register_model` (the registry :data:`MODELS`), and import the file below. The
simulator's numba kernels, its torch engine and the calibration fitter all derive their
steps from that rule.
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
from rpuhw.devices.registry import MODELS, get_model, model_names, register_model

__all__ = ["BASE_STATE", "MODELS", "DeviceModel", "PulsedDeviceParams", "State", "get_model",
           "model_names", "register_model"]
