"""Per-model fit parametrisations; every mean step goes through the device model's rule.

The fit works in a normalised conductance ``u = (g - G0) / S0`` (G0, S0: robust
percentiles of all reads, only for conditioning). Every device ``i`` has its own bounds
``lo_i < hi_i`` and step scales ``s_up_i, s_dn_i`` (first four per-device fit parameters,
then the model's extras ``extra_dev``) and there may be parameters shared by all devices
(``glob``).

A fit model only says how its parameters map to the device model's (its
parametrisation), where the fit starts and the parameter bounds. The mean step itself is
the registered device model's one step rule (``DeviceModel.mean_step``, rpuhw/devices)
evaluated in the weight frame ``w = (u - u_ref) / h_ref`` of the fit (:class:`Frame`):

.. math::

    \\Delta u_{up} = \\min\\big(h_{ref}\\,\\Delta_{up}(w),\\; hi_i - u\\big),\\qquad
    \\Delta u_{down} = -\\min\\big(h_{ref}\\,\\Delta_{down}(w),\\; u - lo_i\\big)

(the simulator clips to the device's bounds after every pulse), with the model's
per-device parameters ``w_min = (lo - u_ref)/h_ref``, ``w_max = (hi - u_ref)/h_ref`` and

============= ========================================================================
constant_step ``dw_d = s_d / h_ref``
soft_bounds   ``dw_up = s_up w_max / (hi - lo)``, ``dw_down = -s_dn w_min / (hi - lo)``
              (s = the step at the far bound)
linear_step   ``dw_d = s_d (1 + a_d x_0) / h_ref``, ``gamma_d = a_d rho / (1 + a_d x_0)``;
              in the fit's own frame (x_0 = 0, rho = 1) the step is ``s (1 + a x)``,
              ``x = (u - u_ref)/h_ref``; ``a_up <= 0 <= a_dn`` (aihwkit's decreasing
              steps, ``allow_increasing: false``)
exp_step      ``dw_d = s_d / h_ref``; ``A_d = exp(log_A_d)``, ``gamma_d`` shared by all
              devices (the model has no device-to-device spread of them); aihwkit's
              ``a, b`` held fixed (A and gamma absorb any other a, b)
pow_step      ``dw_d = s_d / h_ref`` (s = the step at the far bound); per-device exponents
              (``pow_gamma``, the one-sided ``pow_up_down`` and their spreads follow from
              them as aihwkit defines them, ``one_sided_from_moments``)
piecewise     ``dw_d = s_d / h_ref``; a node table shared by all devices, the centre node
              fixed to 1 (s = the step at the centre)
============= ========================================================================

The per-device steps become the YAML's population keys with aihwkit's meanings in
``calibration/fit.py`` (``dw_min``: the larger direction's mean step, ``up_down``
one-sided; :func:`rpuhw.devices.base.one_sided_from_moments`, the inverse of the
simulator's draw). The same map into another frame gives the per-device parameters of the
fitted device YAML, where the mean bounds map to ``w = -1`` and ``w = +1``
(:meth:`FitModel.weights`:
``u_ref = U_mid``, ``h_ref = dU / 2``; ``x_0, rho`` above are that frame's centre and
scale in the fit's frame). It is exact for every model but exp_step, whose ``z`` is
relative to the frame's centre (the fit refits it once with the converged centre).

Fit models register by their device model's name in :data:`FIT_MODELS`, which only takes
names of registered device models; ``tests/test_step_rules.py`` checks that every device
model has one and that fitter and simulator engines agree on every model's step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from rpuhw.devices import BASE_STATE, get_model
from rpuhw.devices.rule import Columns
from rpuhw.registry import Registry

EXP_A = 0.244
"""aihwkit's default ``a`` of exp_step, held fixed in the fit."""
EXP_B = 0.2425
"""aihwkit's default ``b`` of exp_step, held fixed in the fit."""


@dataclass(frozen=True)
class Frame:
    """Weight frame ``w = (u - u_ref) / h_ref`` of a fit (fixed while optimising)."""

    u_ref: float
    """Centre of the (provisional) mean bounds; w = 0 (normalised conductance units)."""
    h_ref: float
    """Half width of the (provisional) mean bounds; w = 1 is this far above the centre."""

    def w(self, u: np.ndarray) -> np.ndarray:
        """Weight of normalised conductance ``u`` in this frame."""
        return (u - self.u_ref) / self.h_ref


@dataclass
class Side:
    """The steps of one direction: pre-pulse state, device index and measured step."""

    u: np.ndarray
    """Normalised conductance before the pulse."""
    dev: np.ndarray
    """Index of the device (0..D-1)."""
    du: np.ndarray
    """Measured normalised step (signed)."""


FIT_MODELS: Registry[type[FitModel]] = Registry("fit model", key="--model")
"""Fit parametrisations by registered device model name."""


class FitModel:
    """Parametrisation of one registered device model for the fit (module docstring)."""

    name: ClassVar[str] = ""
    """The device model's registered name."""
    extra_dev: ClassVar[tuple[str, ...]] = ()
    """Names of per-device parameters after lo, hi, s_up, s_dn."""
    glob: tuple[str, ...] = ()
    """Names of parameters shared by all devices."""

    def __init__(self, nodes: int = 9):
        self.nodes = nodes
        self.device = get_model(self.name)
        """The device model class whose rule the fit evaluates."""
        self.state_names = BASE_STATE + self.device.extra_state

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        get_model(cls.name)  # a fit model is the fit of a registered device model

    # ---- parametrisation ----------------------------------------------------------------
    def device_params(self, p: np.ndarray, g: np.ndarray, frame: Frame, out: Frame
                      ) -> dict[str, np.ndarray]:
        """Per-device model parameters (the device model's ``state_names``) of devices with
        fit parameters ``p`` [n, k] and globals ``g`` fitted in ``frame``, in the weight
        frame ``out``."""
        return {"dw_up": p[:, 2] / out.h_ref, "dw_down": p[:, 3] / out.h_ref,
                "w_min": out.w(p[:, 0]), "w_max": out.w(p[:, 1])}

    def spec_extras(self, g: np.ndarray) -> dict[str, object]:
        """Model keys that come from the global parameters."""
        return {}

    def init(self, sides: tuple[Side, Side], base: np.ndarray, frame: Frame
             ) -> tuple[np.ndarray, np.ndarray]:
        """Starting values (extras [D, k_extra], globals [k_glob]); ``base`` is [D, 4]."""
        return np.zeros((len(base), len(self.extra_dev))), np.zeros(len(self.glob))

    def extra_bounds(self) -> tuple[list[float], list[float]]:
        return [-np.inf] * len(self.extra_dev), [np.inf] * len(self.extra_dev)

    def glob_bounds(self) -> tuple[list[float], list[float]]:
        return [-np.inf] * len(self.glob), [np.inf] * len(self.glob)

    # ---- derived: the device model's rule -----------------------------------------------
    def constants(self, g: np.ndarray) -> np.ndarray:
        """The device model's constants ``c`` with the keys of :meth:`spec_extras`."""
        model = self.device(self.device.Params(**self.spec_extras(g)))
        return np.asarray(model.constants(), dtype=np.float64)

    def magnitude(self, up: bool, u: np.ndarray, p: np.ndarray, g: np.ndarray,
                  frame: Frame) -> np.ndarray:
        """Mean step magnitude (u units, >= 0, before the clip to the bounds) of devices with
        parameter rows ``p`` [n, k] at states ``u`` [n]: ``h_ref * Delta_d(w)``."""
        dev = self.device_params(p, g, frame, frame)
        prm = Columns([dev[k] for k in self.state_names])
        return frame.h_ref * self.device.mean_step(frame.w(u), up, prm, None, None,
                                                   self.constants(g))

    def step(self, up: bool, u: np.ndarray, p: np.ndarray, g: np.ndarray,
             frame: Frame) -> np.ndarray:
        """Signed mean step of devices with parameter rows ``p`` [n, k] at states ``u``."""
        mag = self.magnitude(up, u, p, g, frame)
        if up:
            return np.minimum(mag, p[:, 1] - u)
        return -np.minimum(mag, u - p[:, 0])

    def weights(self, p: np.ndarray, g: np.ndarray, frame: Frame, u_mid: float, du: float
                ) -> dict[str, np.ndarray]:
        """Per-device parameters in the weight units of the fitted YAML,
        ``w = 2 (u - u_mid) / du``: dw_up, dw_down, w_min, w_max and model extras."""
        return self.device_params(p, g, frame, Frame(u_ref=u_mid, h_ref=0.5 * du))


@FIT_MODELS.register
class ConstantStepFit(FitModel):
    name = "constant_step"


@FIT_MODELS.register
class SoftBoundsFit(FitModel):
    name = "soft_bounds"

    def device_params(self, p, g, frame, out):
        dev = super().device_params(p, g, frame, out)
        span = np.maximum(p[:, 1] - p[:, 0], 1e-12)
        # s = the step at the far bound: dw (1 - w / w_max) = s (hi - u) / (hi - lo) / h
        dev["dw_up"] = p[:, 2] * dev["w_max"] / span
        dev["dw_down"] = -p[:, 3] * dev["w_min"] / span
        return dev


@FIT_MODELS.register
class LinearStepFit(FitModel):
    name = "linear_step"
    extra_dev = ("a_up", "a_dn")

    def device_params(self, p, g, frame, out):
        dev = super().device_params(p, g, frame, out)
        x0 = (out.u_ref - frame.u_ref) / frame.h_ref
        rho = out.h_ref / frame.h_ref
        for name, s, a in (("up", p[:, 2], p[:, 4]), ("down", p[:, 3], p[:, 5])):
            base = 1.0 + a * x0
            dev[f"dw_{name}"] = s * base / out.h_ref
            dev[f"gamma_{name}"] = a * rho / np.where(np.abs(base) > 1e-12, base, 1e-12)
        return dev

    def init(self, sides, base, frame):
        out = np.zeros((len(base), 2))
        for k, side in enumerate(sides):
            x = (side.u - frame.u_ref) / frame.h_ref
            slope, icpt = _regress(side.dev, x, side.du, len(base))
            a = np.where(icpt > 0, slope / np.where(icpt > 0, icpt, 1.0), 0.0)
            out[:, k] = np.clip(a, -2.0, 0.0) if k == 0 else np.clip(a, 0.0, 2.0)
        return out, np.zeros(0)

    def extra_bounds(self):
        return [-3.0, 0.0], [0.0, 3.0]


@FIT_MODELS.register
class ExpStepFit(FitModel):
    name = "exp_step"
    glob = ("log_A_up", "log_A_down", "gamma_up", "gamma_down")

    def init(self, sides, base, frame):
        glob = np.zeros(4)
        for k, side in enumerate(sides):
            # unit step scales: the magnitude is the shape f of the step
            unit = np.column_stack([base[side.dev, :2], np.ones((len(side.u), 2))])
            best = (np.inf, -10.0, 1.0)
            for gamma in (0.5, 2.0, 5.0, 10.0, 15.0):
                for log_a in (-12.0, -8.0, -5.0, -3.0, -1.5, -0.5):
                    g = np.array([log_a, log_a, gamma, gamma])
                    f = self.magnitude(k == 0, side.u, unit, g, frame)
                    s = _scale(side.dev, f, side.du, len(base))
                    rss = np.sum((side.du - s[side.dev] * f) ** 2)
                    if rss < best[0]:
                        best = (rss, log_a, gamma)
            glob[k], glob[2 + k] = best[1], best[2]
        return np.zeros((len(base), 0)), glob

    def glob_bounds(self):
        return [-40.0, -40.0, 0.0, 0.0], [5.0, 5.0, 60.0, 60.0]

    def spec_extras(self, g):
        return {"A_up": float(np.exp(g[0])), "A_down": float(np.exp(g[1])),
                "gamma_up": float(g[2]), "gamma_down": float(g[3]), "a": EXP_A, "b": EXP_B}


@FIT_MODELS.register
class PowStepFit(FitModel):
    name = "pow_step"
    extra_dev = ("gamma_up", "gamma_dn")

    def device_params(self, p, g, frame, out):
        dev = super().device_params(p, g, frame, out)
        dev["pow_gamma_up"], dev["pow_gamma_down"] = p[:, 4], p[:, 5]
        return dev

    def init(self, sides, base, frame):
        return np.ones((len(base), 2)), np.zeros(0)

    def extra_bounds(self):
        return [0.05, 0.05], [5.0, 5.0]


@FIT_MODELS.register
class PiecewiseFit(FitModel):
    name = "piecewise"

    def __init__(self, nodes: int = 9):
        if nodes < 3 or nodes % 2 == 0:
            raise ValueError(f"piecewise nodes must be odd and >= 3, got {nodes}")
        super().__init__(nodes)
        free = [k for k in range(nodes) if k != nodes // 2]
        self.glob = tuple(f"up_{k}" for k in free) + tuple(f"down_{k}" for k in free)

    def table(self, g: np.ndarray, up: bool) -> np.ndarray:
        """Full node table (centre node 1) of one direction."""
        half = self.nodes - 1
        free = g[:half] if up else g[half:]
        c = self.nodes // 2
        return np.concatenate([free[:c], [1.0], free[c:]])

    def init(self, sides, base, frame):
        n = self.nodes
        grid = np.linspace(0.0, 1.0, n)
        glob = []
        for k, side in enumerate(sides):
            lo, hi = base[side.dev, 0], base[side.dev, 1]
            frac = np.clip((side.u - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
            y = side.du / np.maximum(base[side.dev, 2 + k], 1e-30)
            # hat-function least squares for the node values (a 9 x 9 system)
            pos = frac * (n - 1)
            j = np.minimum(pos.astype(int), n - 2)
            q = pos - j
            ata = np.zeros((n, n))
            aty = np.zeros(n)
            for a_idx, w_a in ((j, 1 - q), (j + 1, q)):
                np.add.at(aty, a_idx, w_a * y)
                for b_idx, w_b in ((j, 1 - q), (j + 1, q)):
                    np.add.at(ata, (a_idx, b_idx), w_a * w_b)
            v = np.linalg.lstsq(ata + 1e-9 * np.eye(n), aty, rcond=None)[0]
            v = np.clip(v, 0.0, None)
            centre = v[n // 2] if v[n // 2] > 1e-9 else max(float(v.mean()), 1e-9)
            v = v / centre
            glob.append(np.delete(v, n // 2))
            base[:, 2 + k] *= centre
        del grid
        return np.zeros((len(base), 0)), np.concatenate(glob)

    def glob_bounds(self):
        m = len(self.glob)
        return [0.0] * m, [50.0] * m

    def spec_extras(self, g):
        return {"piecewise_up": [float(v) for v in self.table(g, True)],
                "piecewise_down": [float(v) for v in self.table(g, False)]}


def _regress(dev: np.ndarray, x: np.ndarray, y: np.ndarray, n_dev: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """Per-device ordinary least squares ``y = icpt + slope x`` (vectorised)."""
    n = np.bincount(dev, minlength=n_dev).astype(float)
    sx = np.bincount(dev, x, n_dev)
    sy = np.bincount(dev, y, n_dev)
    sxx = np.bincount(dev, x * x, n_dev)
    sxy = np.bincount(dev, x * y, n_dev)
    den = n * sxx - sx * sx
    ok = (n > 2) & (np.abs(den) > 1e-30)
    slope = np.where(ok, (n * sxy - sx * sy) / np.where(ok, den, 1.0), 0.0)
    icpt = np.where(n > 0, (sy - slope * sx) / np.maximum(n, 1.0), 0.0)
    return slope, icpt


def _scale(dev: np.ndarray, f: np.ndarray, y: np.ndarray, n_dev: int) -> np.ndarray:
    """Per-device least-squares scale ``s`` of ``y = s f``."""
    num = np.bincount(dev, f * y, n_dev)
    den = np.bincount(dev, f * f, n_dev)
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)
