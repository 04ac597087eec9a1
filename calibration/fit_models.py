"""Per-model mean step rules for fitting, in normalised conductance units.

The fit works in a normalised conductance ``u = (g - G0) / S0`` (G0, S0: robust
percentiles of all reads, only for conditioning). Every device ``i`` has its own bounds
``lo_i < hi_i`` and step scales ``s_up_i, s_dn_i`` (first four per-device parameters);
a pulse moves the mean conductance by

.. math::

    \\Delta u_{up} = \\min\\big(s^{up}_i f_{up}(u),\\; hi_i - u\\big),\\qquad
    \\Delta u_{down} = -\\min\\big(s^{dn}_i f_{dn}(u),\\; u - lo_i\\big)

(the simulator clips to the device's bounds after every pulse). The shapes ``f`` are
each registered model's rule (rpuhw/devices) written in ``u``:

============= ========================================================================
constant_step f = 1
soft_bounds   f_up = (hi - u)/(hi - lo), f_dn = (u - lo)/(hi - lo)   (s = step at the far
              bound)
linear_step   f = 1 + a x, x = (u - u_ref)/h_ref (provisional centre and half range),
              a_up <= 0 <= a_dn (aihwkit's decreasing steps, ``allow_increasing: false``)
exp_step      f_up = max(1 - A_up e^{gamma_up z}, 0), f_dn = max(1 - A_dn e^{-gamma_dn z}, 0),
              z = 2 a (u - u_ref)/(hi - lo) + b with aihwkit's a, b held fixed (A and gamma
              absorb any other a, b); A, gamma shared by all devices (the model has no
              device-to-device spread of them)
pow_step      f_up = omega^gamma_up, f_dn = (1 - omega)^gamma_dn,
              omega = clip((hi - u)/(hi - lo), 0, 1); per-device exponents
piecewise     f = linear interpolation of a node table over frac = (u - lo)/(hi - lo), nodes
              shared by all devices, the centre node fixed to 1 (s = step at the centre)
============= ========================================================================

Each model also converts its fitted per-device parameters into the weight units of the
fitted device YAML, where the mean bounds map to ``w = -1`` and ``w = +1``:
``w = 2 (u - U_mid) / dU`` with ``U_mid, dU`` the centre and width of the mean bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_EXP_MAX = 80.0
EXP_A = 0.244
"""aihwkit's default ``a`` of exp_step, held fixed in the fit."""
EXP_B = 0.2425
"""aihwkit's default ``b`` of exp_step, held fixed in the fit."""


@dataclass(frozen=True)
class Frame:
    """Reference points of a fit in normalised units (fixed while optimising)."""

    u_ref: float
    """Centre of the (provisional) mean bounds; w = 0 of the fitted YAML."""
    h_ref: float
    """Half width of the (provisional) mean bounds."""


@dataclass
class Side:
    """The steps of one direction: pre-pulse state, device index and measured step."""

    u: np.ndarray
    """Normalised conductance before the pulse."""
    dev: np.ndarray
    """Index of the device (0..D-1)."""
    du: np.ndarray
    """Measured normalised step (signed)."""


class FitModel:
    """Mean step rule of one registered device model (see the module docstring)."""

    name = ""
    extra_dev: tuple[str, ...] = ()
    """Names of per-device parameters after lo, hi, s_up, s_dn."""
    glob: tuple[str, ...] = ()
    """Names of parameters shared by all devices."""

    def __init__(self, nodes: int = 9):
        self.nodes = nodes

    # ---- shapes -----------------------------------------------------------------------
    def shape(self, up: bool, u: np.ndarray, lo: np.ndarray, hi: np.ndarray, e: np.ndarray,
              g: np.ndarray, frame: Frame) -> np.ndarray:
        """Relative step f(u) of each step (``e``: extras per step [n, k_extra])."""
        return np.ones_like(u)

    def init(self, sides: tuple[Side, Side], base: np.ndarray, frame: Frame
             ) -> tuple[np.ndarray, np.ndarray]:
        """Starting values (extras [D, k_extra], globals [k_glob]); ``base`` is [D, 4]."""
        return np.zeros((len(base), len(self.extra_dev))), np.zeros(len(self.glob))

    def extra_bounds(self) -> tuple[list[float], list[float]]:
        return [-np.inf] * len(self.extra_dev), [np.inf] * len(self.extra_dev)

    def glob_bounds(self) -> tuple[list[float], list[float]]:
        return [-np.inf] * len(self.glob), [np.inf] * len(self.glob)

    # ---- conversion to weight units ------------------------------------------------------
    def weights(self, p: np.ndarray, g: np.ndarray, frame: Frame, u_mid: float, du: float
                ) -> dict[str, np.ndarray]:
        """Per-device parameters in weight units: dw_up, dw_down (and model extras)."""
        return {"dw_up": 2.0 * p[:, 2] / du, "dw_down": 2.0 * p[:, 3] / du}

    def spec_extras(self, g: np.ndarray) -> dict[str, object]:
        """Model keys that come from the global parameters."""
        return {}

    def step(self, up: bool, u: np.ndarray, p: np.ndarray, g: np.ndarray,
             frame: Frame) -> np.ndarray:
        """Signed mean step of devices with parameter rows ``p`` [n, k] at states ``u``."""
        lo, hi = p[:, 0], p[:, 1]
        f = self.shape(up, u, lo, hi, p[:, 4:], g, frame)
        if up:
            return np.minimum(p[:, 2] * f, hi - u)
        return -np.minimum(p[:, 3] * f, u - lo)


class ConstantStepFit(FitModel):
    name = "constant_step"


class SoftBoundsFit(FitModel):
    name = "soft_bounds"

    def shape(self, up, u, lo, hi, e, g, frame):
        span = np.maximum(hi - lo, 1e-12)
        return (hi - u) / span if up else (u - lo) / span

    def weights(self, p, g, frame, u_mid, du):
        lo, hi = p[:, 0], p[:, 1]
        span = np.maximum(hi - lo, 1e-12)
        # step at w = 0 (u = u_mid): s (hi - u_mid)/(hi - lo), in weight units x 2/dU
        return {"dw_up": 2.0 / du * p[:, 2] * (hi - u_mid) / span,
                "dw_down": 2.0 / du * p[:, 3] * (u_mid - lo) / span}


class LinearStepFit(FitModel):
    name = "linear_step"
    extra_dev = ("a_up", "a_dn")

    def shape(self, up, u, lo, hi, e, g, frame):
        x = (u - frame.u_ref) / frame.h_ref
        return 1.0 + (e[:, 0] if up else e[:, 1]) * x

    def init(self, sides, base, frame):
        out = np.zeros((len(base), 2))
        for k, side in enumerate(sides):
            x = (side.u - frame.u_ref) / frame.h_ref
            slope, icpt = _regress(side.dev, x, np.abs(side.du), len(base))
            a = np.where(icpt > 0, slope / np.where(icpt > 0, icpt, 1.0), 0.0)
            out[:, k] = np.clip(a, -2.0, 0.0) if k == 0 else np.clip(a, 0.0, 2.0)
        return out, np.zeros(0)

    def extra_bounds(self):
        return [-3.0, 0.0], [0.0, 3.0]

    def weights(self, p, g, frame, u_mid, du):
        x0 = (u_mid - frame.u_ref) / frame.h_ref
        rho = 0.5 * du / frame.h_ref
        out = {}
        for name, s, a in (("up", p[:, 2], p[:, 4]), ("down", p[:, 3], p[:, 5])):
            base = 1.0 + a * x0
            out[f"dw_{name}"] = 2.0 / du * s * base
            out[f"gamma_{name}"] = a * rho / np.where(np.abs(base) > 1e-12, base, 1e-12)
        return out


class ExpStepFit(FitModel):
    name = "exp_step"
    glob = ("log_A_up", "log_A_down", "gamma_up", "gamma_down")

    def shape(self, up, u, lo, hi, e, g, frame):
        z = 2.0 * EXP_A * (u - frame.u_ref) / np.maximum(hi - lo, 1e-12) + EXP_B
        if up:
            arg = np.minimum(g[2] * z + g[0], _EXP_MAX)
        else:
            arg = np.minimum(-g[3] * z + g[1], _EXP_MAX)
        return np.maximum(1.0 - np.exp(arg), 0.0)

    def init(self, sides, base, frame):
        glob = np.zeros(4)
        for k, side in enumerate(sides):
            lo, hi = base[side.dev, 0], base[side.dev, 1]
            best = (np.inf, -10.0, 1.0)
            for gamma in (0.5, 2.0, 5.0, 10.0, 15.0):
                for log_a in (-12.0, -8.0, -5.0, -3.0, -1.5, -0.5):
                    g = np.array([log_a, log_a, gamma, gamma])
                    f = self.shape(k == 0, side.u, lo, hi, None, g, frame)
                    s = _scale(side.dev, f, np.abs(side.du), len(base))
                    rss = np.sum((np.abs(side.du) - s[side.dev] * f) ** 2)
                    if rss < best[0]:
                        best = (rss, log_a, gamma)
            glob[k], glob[2 + k] = best[1], best[2]
        return np.zeros((len(base), 0)), glob

    def glob_bounds(self):
        return [-40.0, -40.0, 0.0, 0.0], [5.0, 5.0, 60.0, 60.0]

    def spec_extras(self, g):
        return {"A_up": float(np.exp(g[0])), "A_down": float(np.exp(g[1])),
                "gamma_up": float(g[2]), "gamma_down": float(g[3]), "a": EXP_A, "b": EXP_B}


class PowStepFit(FitModel):
    name = "pow_step"
    extra_dev = ("gamma_up", "gamma_dn")

    def shape(self, up, u, lo, hi, e, g, frame):
        omega = np.clip((hi - u) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
        return omega ** e[:, 0] if up else (1.0 - omega) ** e[:, 1]

    def init(self, sides, base, frame):
        return np.ones((len(base), 2)), np.zeros(0)

    def extra_bounds(self):
        return [0.05, 0.05], [5.0, 5.0]

    def weights(self, p, g, frame, u_mid, du):
        out = super().weights(p, g, frame, u_mid, du)
        out["pow_gamma_up"] = p[:, 4]
        out["pow_gamma_down"] = p[:, 5]
        return out


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

    def shape(self, up, u, lo, hi, e, g, frame):
        frac = np.clip((u - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
        return np.interp(frac, np.linspace(0.0, 1.0, self.nodes), self.table(g, up))

    def init(self, sides, base, frame):
        n = self.nodes
        grid = np.linspace(0.0, 1.0, n)
        glob = []
        for k, side in enumerate(sides):
            lo, hi = base[side.dev, 0], base[side.dev, 1]
            frac = np.clip((side.u - lo) / np.maximum(hi - lo, 1e-12), 0.0, 1.0)
            y = np.abs(side.du) / np.maximum(base[side.dev, 2 + k], 1e-30)
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


FIT_MODELS: dict[str, type[FitModel]] = {
    cls.name: cls for cls in (ConstantStepFit, LinearStepFit, SoftBoundsFit, ExpStepFit,
                              PowStepFit, PiecewiseFit)}
"""Fit rules by registered model name."""


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
