"""``piecewise``: the step is a user-given table over the weight range (aihwkit's PiecewiseStep).

The nodes :math:`v^{d}_0, \\dots, v^{d}_{n_d-1}` (``piecewise_up``, ``piecewise_down``)
sit equally spaced between each device's own bounds, the first at
:math:`w^{min}_{ij}`, the last at :math:`w^{max}_{ij}`; between them the relative step
is linearly interpolated:

.. math::

    s = (n_d - 1)\\,\\mathrm{clip}\\Big(\\frac{w - w^{min}_{ij}}{w^{max}_{ij} - w^{min}_{ij}},
    0, 1\\Big),\\quad k = \\min(\\lfloor s \\rfloor, n_d - 2),\\quad q = s - k

    \\Delta_{d}(w) = \\Delta w^{d}_{ij}\\,\\big((1 - q)\\,v^{d}_{k} + q\\,v^{d}_{k+1}\\big)

(a device whose bounds coincide uses :math:`v^{d}_0`). The two tables may have different
lengths (aihwkit requires equal ones). Noise is multiplicative. Not affine in ``w``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rpuhw._jit import njit
from rpuhw.config import require
from rpuhw.devices._nb import move
from rpuhw.devices.base import DeviceModel, PulsedDeviceParams, State
from rpuhw.devices.registry import register_model


@njit(inline="always")
def _nb_pulse(w, up, xi, prm, i, j, c):
    # c = [dw_min_std, n_up, n_down, up nodes..., down nodes...]
    n_up = int(c[1])
    if up:
        off = 3
        n = n_up
        dw = prm[i, j, 0]
    else:
        off = 3 + n_up
        n = int(c[2])
        dw = prm[i, j, 1]
    span = prm[i, j, 3] - prm[i, j, 2]
    frac = 0.0
    if span > 0.0:
        frac = (w - prm[i, j, 2]) / span
        if frac < 0.0:
            frac = 0.0
        if frac > 1.0:
            frac = 1.0
    s = frac * (n - 1)
    k = int(math.floor(s))
    if k > n - 2:
        k = n - 2
    q = s - k
    mean = dw * ((1.0 - q) * c[off + k] + q * c[off + k + 1])
    if up:
        step = mean * (1.0 + c[0] * xi)
    else:
        step = mean * (1.0 + c[0] * xi)
    return move(w, up, step, prm, i, j)


def _interp(frac: torch.Tensor, nodes: list[float]) -> torch.Tensor:
    """Linear interpolation of ``nodes`` (equally spaced on [0, 1]) at ``frac`` in [0, 1]."""
    v = torch.tensor(nodes, dtype=frac.dtype, device=frac.device)
    n_sec = len(nodes) - 1
    s = frac * n_sec
    k = s.floor().clamp(max=n_sec - 1).long()
    q = s - k
    return (1.0 - q) * v[k] + q * v[k + 1]


@dataclass
class PiecewiseParams(PulsedDeviceParams):
    """Parameters of ``piecewise`` (aihwkit's PiecewiseStepDevice names)."""

    piecewise_up: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """Up step at equally spaced nodes from w_min to w_max, relative to the device's dw_up."""

    piecewise_down: list[float] = field(default_factory=lambda: [1.0, 1.0])
    """Down step at equally spaced nodes from w_min to w_max, relative to the device's dw_down."""

    def validate(self) -> None:
        super().validate()
        for key in ("piecewise_up", "piecewise_down"):
            nodes = getattr(self, key)
            require(len(nodes) >= 2, key, f"needs at least 2 nodes, got {len(nodes)}")
            for k, v in enumerate(nodes):
                require(v >= 0, key, f"node {k} must be >= 0, got {v}")


@register_model
class Piecewise(DeviceModel):
    """Step interpolated from a node table spanning each device's bounds."""

    name = "piecewise"
    Params = PiecewiseParams
    nb_pulse = staticmethod(_nb_pulse)

    def constants(self) -> list[float]:
        p: PiecewiseParams = self.params  # type: ignore[assignment]
        return ([p.dw_min_std, float(len(p.piecewise_up)), float(len(p.piecewise_down))]
                + [float(v) for v in p.piecewise_up] + [float(v) for v in p.piecewise_down])

    def step(self, w: torch.Tensor, up: torch.Tensor, state: State) -> torch.Tensor:
        p: PiecewiseParams = self.params  # type: ignore[assignment]
        span = state["w_max"] - state["w_min"]
        frac = torch.where(span > 0, (w - state["w_min"]) / span.clamp_min(1e-12), 0.0)
        frac = frac.clamp(0.0, 1.0)
        return torch.where(up, state["dw_up"] * _interp(frac, p.piecewise_up),
                           state["dw_down"] * _interp(frac, p.piecewise_down))
