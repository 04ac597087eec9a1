"""``soft_bounds``: the step shrinks linearly to zero at the device's bounds.

.. math::

    \\Delta_{up}(w) = \\Delta w^{up}_{ij}\\,(1 - w / w^{max}_{ij}),\\qquad
    \\Delta_{down}(w) = \\Delta w^{down}_{ij}\\,(1 - w / w^{min}_{ij})

(requires ``w_min < 0 < w_max``). The step is affine in ``w``, so n pulses
compose in closed form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rpuhw._jit import njit
from rpuhw.config import require
from rpuhw.devices._nb import move
from rpuhw.devices.base import DeviceModel, PulsedDeviceParams, State
from rpuhw.devices.registry import register_model

_TINY = 1e-12


@njit(inline="always")
def _nb_pulse(w, up, xi, prm, i, j, c):
    if up:
        step = prm[i, j, 0] * (1.0 - w / prm[i, j, 3]) * (1.0 + c[0] * xi)
    else:
        step = prm[i, j, 1] * (1.0 - w / prm[i, j, 2]) * (1.0 + c[0] * xi)
    return move(w, up, step, prm, i, j)


@dataclass
class SoftBoundsParams(PulsedDeviceParams):
    """Parameters of ``soft_bounds`` (the shared pulsed-device keys)."""

    def validate(self) -> None:
        super().validate()
        require(self.w_max > 0, "w_max", f"soft_bounds needs w_max > 0, got {self.w_max}")
        require(self.w_min < 0, "w_min", f"soft_bounds needs w_min < 0, got {self.w_min}")


@register_model
class SoftBounds(DeviceModel):
    """Step proportional to the distance to the bound in the pulse's direction."""

    name = "soft_bounds"
    Params = SoftBoundsParams
    nb_pulse = staticmethod(_nb_pulse)

    def draw_extra(self, state, rows, cols, gen):
        # keep the bounds strictly on their side of zero so 1/w_max and 1/w_min exist
        state["w_max"] = state["w_max"].clamp_min(_TINY)
        state["w_min"] = state["w_min"].clamp_max(-_TINY)
        return {}

    def step(self, w: torch.Tensor, up: torch.Tensor, state: State) -> torch.Tensor:
        return torch.where(up, state["dw_up"] * (1.0 - w / state["w_max"]),
                           state["dw_down"] * (1.0 - w / state["w_min"]))

    def affine(self, state: State):
        return (-state["dw_up"] / state["w_max"], state["dw_up"],
                state["dw_down"] / state["w_min"], -state["dw_down"])
