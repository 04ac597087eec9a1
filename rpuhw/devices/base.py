"""The pulsed device model interface shared by all models.

A device model says what one programming pulse does to one device:

.. math::

    w \\leftarrow \\mathrm{clip}\\big(w + d\\,\\Delta_d(w)\\,(1 + \\sigma_{c2c}\\,\\xi),\\;
    w^{min}_{ij},\\; w^{max}_{ij}\\big)

with direction :math:`d = \\pm 1`, the model's mean step magnitude
:math:`\\Delta_d(w) \\ge 0` (per device, from parameters drawn once per array),
the cycle-to-cycle spread :math:`\\sigma_{c2c}` = ``dw_min_std`` and a fresh
standard normal :math:`\\xi` per pulse (a model may replace this noise rule).

Each model writes :math:`\\Delta_d(w)` **once**, as the module-level function it sets
as :attr:`DeviceModel.mean_step` (and its noise rule as :attr:`DeviceModel.noise` when
that is not the multiplicative one), in the ufunc style of :mod:`rpuhw.devices.rule`.
Everything else derives from that: the numba one-pulse rule :attr:`DeviceModel.nb_pulse`
that the simulator's kernels inline, the numpy evaluation behind :meth:`DeviceModel.step`
and :meth:`DeviceModel.pulse` (torch engine, pulse-by-pulse reference), the closed-form
coefficients of :meth:`DeviceModel.affine` for models declared :attr:`DeviceModel.affine_step`,
and the calibration fitter's mean step (``rpuhw.calibration.fit_models``).

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
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from rpuhw.config import require
from rpuhw.devices.rule import (
    AffinePulse,
    Columns,
    Rule,
    affine_pulse,
    compiled_pulse,
    multiplicative,
    pulse_of,
)

if TYPE_CHECKING:  # torch is imported where a model draws or steps: `rpuhw models` needs none
    import torch

State = dict[str, "torch.Tensor"]
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
    import torch

    xi = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    return (1.0 + sigma * xi).clamp_min(0.0)


class _CompiledPulse:
    """:attr:`DeviceModel.nb_pulse` of a model class: :func:`compiled_pulse` of its rules,
    made on first access (one per pair of rules, shared by every class with both)."""

    def __get__(self, obj: object, cls: type) -> Callable | None:
        if cls.mean_step is None:
            return None
        return compiled_pulse(cls.mean_step, cls.noise)


class DeviceModel:
    """Base of all pulsed device models. Subclasses register with :func:`register_model`
    and set :attr:`mean_step` (and, where it differs, :attr:`noise`)."""

    name: ClassVar[str] = ""
    """Registry name, the ``model:`` key of a device YAML."""

    Params: ClassVar[type[PulsedDeviceParams]] = PulsedDeviceParams
    """Dataclass of the model's YAML keys."""

    extra_state: ClassVar[tuple[str, ...]] = ()
    """Names of model-specific per-device tensors (after ``BASE_STATE``)."""

    mean_step: ClassVar[Rule | None] = None
    """The model's one step rule ``(w, up, prm, i, j, c) -> Delta_d(w) >= 0`` (weight
    units; ufunc style, :mod:`rpuhw.devices.rule`): ``prm[i, j, k]`` the device's k-th
    parameter in :attr:`state_names` order, ``c`` the vector :meth:`constants`."""

    noise: ClassVar[Rule] = staticmethod(multiplicative)
    """Cycle-to-cycle noise rule ``(mean, w, up, xi, prm, i, j, c) -> step`` (magnitude
    along the pulse's direction for a standard normal ``xi``); default
    ``mean * (1 + dw_min_std * xi)``."""

    affine_step: ClassVar[bool] = False
    """Declares a pulse's increment affine in w (and in xi), so that the torch engine
    composes pulses in closed form from :meth:`affine` (tested on the rules)."""

    nb_pulse: ClassVar[Callable | None] = _CompiledPulse()
    """Derived from the rules: numba ``(w, up, xi, prm, i, j, c) -> w_new``, one pulse on
    device (i, j), inlined into the simulator's kernels. ``prm`` is float32 [rows, cols, K]
    as made by :meth:`packed_state` (one device's parameters side by side: one cache line
    per pulsed device); ``c`` the float64 vector :meth:`constants`. Made on first use
    (importing a model loads no numba); None for a model without a rule."""

    np_pulse: ClassVar[Callable | None] = None
    """Derived from the rules: the same one-pulse rule for numpy arrays (scalar ``up``)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        for attr in ("mean_step", "noise"):  # rules are plain functions, never methods
            rule = cls.__dict__.get(attr)
            if rule is not None and not isinstance(rule, staticmethod):
                setattr(cls, attr, staticmethod(rule))
        if cls.mean_step is not None:
            cls.np_pulse = staticmethod(pulse_of(cls.mean_step, cls.noise))

    def __init__(self, params: PulsedDeviceParams | None = None):
        self.params = params if params is not None else self.Params()

    # ---- per-device parameters -------------------------------------------------------
    @property
    def state_names(self) -> tuple[str, ...]:
        """Order of the per-device tensors in the numba parameter stack."""
        return BASE_STATE + self.extra_state

    def draw(self, rows: int, cols: int, gen: torch.Generator) -> State:
        """Draw every per-device parameter once for an array of ``rows x cols`` devices."""
        import torch

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

    def columns(self, state: State) -> Columns:
        """The per-device tensors of ``state`` as the numpy ``prm`` of the rules (views)."""
        return Columns([state[k].numpy() for k in self.state_names])

    def constants(self) -> list[float]:
        """Scalars passed to the rules as ``c``; ``c[0]`` is always ``dw_min_std``."""
        return [self.params.dw_min_std]

    # ---- the pulse rule, evaluated by numpy in the weights' dtype ----------------------
    def step(self, w: torch.Tensor, up: torch.Tensor, state: State) -> torch.Tensor:
        """Mean step magnitude Delta_d(w) >= 0 of one pulse (direction ``up`` per device)."""
        wn = w.numpy()
        prm, c, rule = self.columns(state), self._c(wn.dtype), type(self).mean_step
        return _by_direction(up, lambda d: np.array(rule(wn, d, prm, None, None, c)),
                             wn.dtype)

    def pulse(self, w: torch.Tensor, up: torch.Tensor, xi: torch.Tensor,
              state: State) -> torch.Tensor:
        """Apply one pulse to every device: ``up`` bool tensor, ``xi`` standard normals."""
        return self.pulser(state)(w, up, xi)

    def pulser(self, state: State) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor],
                                               torch.Tensor]:
        """:meth:`pulse` as ``f(w, up, xi)`` with ``state``'s parameters gathered once (for
        loops over pulses); computes in the state's dtype."""
        prm, rule = self.columns(state), type(self).np_pulse
        c = self._c(prm.arrays[0].dtype)

        def pulse(w: torch.Tensor, up: torch.Tensor, xi: torch.Tensor) -> torch.Tensor:
            wn, xn = w.numpy(), xi.numpy()
            return _by_direction(up, lambda d: rule(wn, d, xn, prm, None, None, c), wn.dtype)

        return pulse

    def affine(self, state: State) -> tuple[AffinePulse, AffinePulse] | None:
        """Coefficients of one pulse up and one pulse down (float32 tensors per device), or
        None unless the model is declared :attr:`affine_step`.

        Derived from the rules (:func:`rpuhw.devices.rule.affine_pulse`): the signed
        increment of one pulse is ``beta + alpha w + (s_beta + s_alpha w) xi`` before the
        clip to the device's bounds.
        """
        if not self.affine_step:
            return None
        import torch

        prm = Columns([state[k].numpy().astype(np.float64) for k in self.state_names])
        shape = state["w_min"].shape
        cls, c = type(self), self._c(np.float64)
        return tuple(AffinePulse(*(torch.from_numpy(np.broadcast_to(v, shape).astype(np.float32))
                                   for v in affine_pulse(cls.mean_step, cls.noise, d, prm, c)))
                     for d in (True, False))

    def _c(self, dtype: np.dtype) -> np.ndarray:
        return np.asarray(self.constants(), dtype=dtype)

    @property
    def noisy(self) -> bool:
        """Whether pulses draw cycle-to-cycle noise at all."""
        return self.params.dw_min_std > 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.params})"


def _by_direction(up: torch.Tensor | bool, f: Callable[[bool], np.ndarray],
                  dtype: np.dtype) -> torch.Tensor:
    """``f(True)`` where ``up``, ``f(False)`` elsewhere, as a tensor of ``dtype``.

    The rules branch on a scalar direction only: mixed directions evaluate both."""
    import torch

    if not isinstance(up, bool):
        upn = up.numpy()
        if upn.all():
            up = True
        elif not upn.any():
            up = False
        else:
            return torch.from_numpy(np.asarray(np.where(upn, f(True), f(False)), dtype=dtype))
    return torch.from_numpy(np.asarray(f(up), dtype=dtype))
