"""The pulsed device model interface shared by all models.

A device model says what one programming pulse does to one device:

.. math::

    w \\leftarrow \\mathrm{clip}\\big(w + d\\,\\Delta_d(w)\\,(1 + \\sigma_{c2c}\\,\\xi),\\;
    w^{min}_{ij},\\; w^{max}_{ij}\\big)

with direction :math:`d = \\pm 1`, the model's mean step magnitude
:math:`\\Delta_d(w) \\ge 0` (per device, from parameters drawn once per array),
the cycle-to-cycle spread :math:`\\sigma_{c2c}` = ``dw_min_std`` and a fresh
standard normal :math:`\\xi` per pulse. Models override :meth:`DeviceModel.step`
(torch, vectorised) and provide :attr:`DeviceModel.nb_pulse` (the same rule for
one device, compiled by numba); models whose step is affine in ``w`` also
return their coefficients from :meth:`DeviceModel.affine`, which the fast torch
path composes in closed form.

Per-device parameters (``dw_up``, ``dw_down``, ``w_min``, ``w_max`` and each
model's extras) are drawn once per array from a seeded generator:

.. math::

    g_{ij} = [1 + \\sigma_{dtod}\\xi]_+ ,\\quad
    r_{ij} = \\text{up\\_down} + \\text{up\\_down\\_dtod}\\,\\xi'

    \\Delta w^{up}_{ij} = \\text{dw\\_min}\\,g_{ij}\\,[1 + r_{ij}]_+ ,\\quad
    \\Delta w^{down}_{ij} = \\text{dw\\_min}\\,g_{ij}\\,[1 - r_{ij}]_+

    w^{max}_{ij} = w_{max}\\,[1 + \\text{w\\_max\\_dtod}\\,\\xi'']_+ ,\\quad
    w^{min}_{ij} = w_{min}\\,[1 + \\text{w\\_min\\_dtod}\\,\\xi''']_+

(:math:`[\\cdot]_+` truncates at zero, so no device steps against its pulse on
average; a device whose drawn bounds cross is pinned at their midpoint.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from rpuhw.config import require

State = dict[str, torch.Tensor]
"""Per-device parameters of one array: name -> float32 tensor [rows, cols]."""

BASE_STATE = ("dw_up", "dw_down", "w_min", "w_max")


@dataclass
class PulsedDeviceParams:
    """Parameters shared by every pulsed device model (aihwkit's names and meanings)."""

    dw_min: float = 0.001
    """Mean step size of one pulse (weight units), before asymmetry and spreads."""

    dw_min_dtod: float = 0.3
    """Device-to-device spread of the step size, relative to ``dw_min``."""

    dw_min_std: float = 0.3
    """Cycle-to-cycle (pulse-to-pulse) spread of each step, relative to the step."""

    up_down: float = 0.0
    """Systematic up/down asymmetry r: up steps scale by (1 + r), down steps by (1 - r)."""

    up_down_dtod: float = 0.01
    """Device-to-device spread of the asymmetry r (absolute)."""

    w_min: float = -0.6
    """Mean lower weight bound (weight units)."""

    w_max: float = 0.6
    """Mean upper weight bound (weight units)."""

    w_min_dtod: float = 0.3
    """Device-to-device spread of the lower bound, relative to ``w_min``."""

    w_max_dtod: float = 0.3
    """Device-to-device spread of the upper bound, relative to ``w_max``."""

    def validate(self) -> None:
        """Check value ranges; raises ConfigError naming the key."""
        require(self.dw_min > 0, "dw_min", f"must be > 0, got {self.dw_min}")
        for key in ("dw_min_dtod", "dw_min_std", "up_down_dtod", "w_min_dtod", "w_max_dtod"):
            value = getattr(self, key)
            require(value >= 0, key, f"must be >= 0, got {value}")
        require(-1 < self.up_down < 1, "up_down", f"must be in (-1, 1), got {self.up_down}")
        require(self.w_min < self.w_max, "w_min",
                f"must be < w_max, got w_min={self.w_min} >= w_max={self.w_max}")


def _spread(gen: torch.Generator, rows: int, cols: int, sigma: float) -> torch.Tensor:
    """Factor ``[1 + sigma * N(0,1)]_+`` per device (float64)."""
    xi = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    return (1.0 + sigma * xi).clamp_min(0.0)


class DeviceModel:
    """Base of all pulsed device models. Subclasses register with :func:`register_model`."""

    name: ClassVar[str] = ""
    """Registry name, the ``model:`` key of a device YAML."""

    Params: ClassVar[type[PulsedDeviceParams]] = PulsedDeviceParams
    """Dataclass of the model's YAML keys."""

    extra_state: ClassVar[tuple[str, ...]] = ()
    """Names of model-specific per-device tensors (after ``BASE_STATE``)."""

    nb_pulse: ClassVar[Callable | None] = None
    """numba ``njit`` function ``(w, up, xi, prm, i, j, c) -> w_new``: one pulse on device
    (i, j). ``prm`` is float32 [rows, cols, K] holding :attr:`state_names` in order (one
    device's parameters side by side: one cache line per pulsed device), as made by
    :meth:`packed_state`; ``c`` the float64 vector :meth:`constants`."""

    def __init__(self, params: PulsedDeviceParams | None = None):
        self.params = params if params is not None else self.Params()

    # ---- per-device parameters -------------------------------------------------------
    @property
    def state_names(self) -> tuple[str, ...]:
        """Order of the per-device tensors in the numba parameter stack."""
        return BASE_STATE + self.extra_state

    def draw(self, rows: int, cols: int, gen: torch.Generator) -> State:
        """Draw every per-device parameter once for an array of ``rows x cols`` devices."""
        p = self.params
        g = _spread(gen, rows, cols, p.dw_min_dtod)
        r = p.up_down + p.up_down_dtod * torch.randn(rows, cols, generator=gen,
                                                     dtype=torch.float64)
        w_max = p.w_max * _spread(gen, rows, cols, p.w_max_dtod)
        w_min = p.w_min * _spread(gen, rows, cols, p.w_min_dtod)
        crossed = w_min > w_max
        mid = 0.5 * (w_min + w_max)
        w_min = torch.where(crossed, mid, w_min)
        w_max = torch.where(crossed, mid, w_max)
        state = {
            "dw_up": p.dw_min * g * (1.0 + r).clamp_min(0.0),
            "dw_down": p.dw_min * g * (1.0 - r).clamp_min(0.0),
            "w_min": w_min,
            "w_max": w_max,
        }
        state.update(self.draw_extra(state, rows, cols, gen))
        return {k: v.to(torch.float32) for k, v in state.items()}

    def draw_extra(self, state: State, rows: int, cols: int, gen: torch.Generator) -> State:
        """Model-specific per-device tensors (float64); default none."""
        return {}

    def packed_state(self, state: State) -> np.ndarray:
        """The per-device tensors of ``state`` as the ``prm`` array of :attr:`nb_pulse`:
        float32 [rows, cols, K], :attr:`state_names` in order."""
        return np.ascontiguousarray(np.stack([state[k].numpy() for k in self.state_names],
                                             axis=-1), dtype=np.float32)

    def constants(self) -> list[float]:
        """Scalars passed to :attr:`nb_pulse` as ``c``; ``c[0]`` is always ``dw_min_std``."""
        return [self.params.dw_min_std]

    # ---- the pulse rule --------------------------------------------------------------
    def step(self, w: torch.Tensor, up: torch.Tensor, state: State) -> torch.Tensor:
        """Mean step magnitude Delta_d(w) >= 0 of one pulse (direction ``up`` per device)."""
        raise NotImplementedError

    def pulse(self, w: torch.Tensor, up: torch.Tensor, xi: torch.Tensor,
              state: State) -> torch.Tensor:
        """Apply one pulse to every device: ``up`` bool tensor, ``xi`` standard normals."""
        sign = torch.where(up, 1.0, -1.0)
        dw = sign * self.step(w, up, state) * (1.0 + self.params.dw_min_std * xi)
        return torch.minimum(torch.maximum(w + dw, state["w_min"]), state["w_max"])

    def affine(self, state: State) -> tuple[torch.Tensor, ...] | None:
        """Coefficients of an affine step, or None when the step is not affine in w.

        Returns ``(alpha_up, beta_up, alpha_down, beta_down)`` such that the signed
        mean increment of one pulse is ``beta + alpha * w`` (before the multiplicative
        noise ``1 + dw_min_std * xi`` and the clip to the device's bounds).
        """
        return None

    @property
    def noisy(self) -> bool:
        """Whether pulses draw cycle-to-cycle noise at all."""
        return self.params.dw_min_std > 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"
