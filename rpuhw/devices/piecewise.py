"""``piecewise``: the step is a user-given table over the weight range (aihwkit's PiecewiseStep).

The nodes :math:`v^{d}_0, \\dots, v^{d}_{n_d-1}` (``piecewise_up``, ``piecewise_down``)
sit equally spaced between each device's own bounds, the first at
:math:`w^{min}_{ij}`, the last at :math:`w^{max}_{ij}`; between them the relative step
is linearly interpolated:

.. math::

    s = (n_d - 1)\\,\\mathrm{clip}\\Big(\\frac{w - w^{min}_{ij}}{w^{max}_{ij} - w^{min}_{ij}},
    0, 1\\Big),\\quad k = \\min(\\lfloor s \\rfloor, n_d - 2),\\quad q = s - k

    \\Delta_{d}(w) = \\Delta w^{d}_{ij}\\,\\big((1 - q)\\,v^{d}_{k} + q\\,v^{d}_{k+1}\\big)

(a device whose bounds coincide uses :math:`v^{d}_0`). This is aihwkit's
PiecewiseStepDevice update with the same key names and meanings; the one extension is that
the two tables may have different lengths (aihwkit requires equal ones: such a device has
no aihwkit twin). Noise is multiplicative. Not affine in ``w``.
Write noise (``write_noise_std``) and decay (``lifetime``) as aihwkit's
(:mod:`rpuhw.devices.base`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rpuhw.config import require
from rpuhw.devices.base import (
    AIHWKIT_UNSUPPORTED,
    DeviceModel,
    WriteNoiseParams,
)
from rpuhw.devices.registry import register_model
from rpuhw.devices.rule import maximum, minimum

_TINY = 1e-12


def mean_step(w, up, prm, i, j, c):
    """The step rule: ``dw_d`` times the node table of direction d, linearly interpolated
    at ``(w - w_min) / (w_max - w_min)`` clamped to [0, 1].

    ``c = [dw_min_std, n_up, n_down, up nodes..., down nodes...]``.
    """
    lo = prm[i, j, 2]
    frac = minimum(maximum((w - lo) / maximum(prm[i, j, 3] - lo, _TINY), 0.0), 1.0)
    if up:
        n, off, dw = c[1], 3.0, prm[i, j, 0]
    else:
        n, off, dw = c[2], 3.0 + c[1], prm[i, j, 1]
    s = frac * (n - 1.0)
    k = minimum(np.floor(s), n - 2.0)
    q = s - k
    at = np.int64(off + k)
    return dw * ((1.0 - q) * c[at] + q * c[at + 1])


@dataclass
class PiecewiseParams(WriteNoiseParams):
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
    unsupported = {**AIHWKIT_UNSUPPORTED}
    mean_step = mean_step

    def constants(self) -> list[float]:
        p: PiecewiseParams = self.params  # type: ignore[assignment]
        return ([p.dw_min_std, float(len(p.piecewise_up)), float(len(p.piecewise_down))]
                + [float(v) for v in p.piecewise_up] + [float(v) for v in p.piecewise_down])
