"""``constant_step``: the paper's RPU baseline, a constant step with hard bounds.

.. math::

    \\Delta_{up}(w) = \\Delta w^{up}_{ij},\\qquad \\Delta_{down}(w) = \\Delta w^{down}_{ij}

so n pulses in one direction add :math:`n\\Delta` plus Gaussian noise of
variance :math:`n(\\sigma_{c2c}\\Delta)^2`, then clip to the device's bounds.
"""

from __future__ import annotations

import torch

from rpuhw._jit import njit
from rpuhw.devices._nb import move
from rpuhw.devices.base import DeviceModel, PulsedDeviceParams, State
from rpuhw.devices.registry import register_model


@njit(inline="always")
def _nb_pulse(w, up, xi, prm, i, j, c):
    if up:
        step = prm[i, j, 0] * (1.0 + c[0] * xi)
    else:
        step = prm[i, j, 1] * (1.0 + c[0] * xi)
    return move(w, up, step, prm, i, j)


@register_model
class ConstantStep(DeviceModel):
    """Constant step size per pulse, clipped to per-device hard bounds."""

    name = "constant_step"
    Params = PulsedDeviceParams
    nb_pulse = staticmethod(_nb_pulse)

    def step(self, w: torch.Tensor, up: torch.Tensor, state: State) -> torch.Tensor:
        return torch.where(up, state["dw_up"], state["dw_down"])

    def affine(self, state: State):
        zero = torch.zeros_like(state["dw_up"])
        return zero, state["dw_up"], zero, -state["dw_down"]
