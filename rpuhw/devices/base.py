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
model's extras) are drawn once per array from a seeded generator, exactly as aihwkit 1.2
draws them (``PulsedRPUDevice::populate``), each :math:`\\xi_k` an independent standard
normal:

.. math::

    g_{ij} = 1 + \\text{dw\\_min\\_dtod}\\,\\xi_1
    \\;(\\text{or } e^{\\text{dw\\_min\\_dtod}\\,\\xi_1}
    \\text{ with dw\\_min\\_dtod\\_log\\_normal}),\\quad
    r_{ij} = \\text{up\\_down\\_dtod}\\,\\xi_2

    \\Delta w^{up}_{ij} = \\text{dw\\_min}\\,(\\min(\\text{up\\_down}, 0) + g_{ij} + r_{ij}),
    \\quad
    \\Delta w^{down}_{ij} = \\text{dw\\_min}\\,(-\\max(\\text{up\\_down}, 0) + g_{ij} - r_{ij})

    b^{max}_{ij} = w_{max}\\,(1 + \\text{w\\_max\\_dtod}\\,\\xi_3),\\quad
    b^{min}_{ij} = w_{min}\\,(1 + \\text{w\\_min\\_dtod}\\,\\xi_4)

So ``up_down`` is one-sided: ``up_down > 0`` shrinks only the down step (mean
``dw_min (1 - up_down)``, the up step stays ``dw_min``), ``up_down < 0`` only the up step;
``up_down_dtod`` enters both directions with opposite signs, in units of ``dw_min``. With
``enforce_consistency`` (default) negative steps are reflected (``|.|``), crossed bounds
swapped, then ``b_max = |b_max|``, ``b_min = -|b_min|``; without it a device whose bounds
cross is pinned at their midpoint and steps keep their sign. :func:`one_sided_from_moments`
is the inverse (population parameters from per-device steps, used by the fitter).

**Write noise** (``write_noise_std`` > 0, models with :class:`WriteNoiseParams`; aihwkit's
``update_once`` of each device and ``PulsedRPUDevice::applyUpdateWriteNoise``): pulses move
a hidden persistent weight :math:`h` (the rule above, clipped to the bounds); the visible
weight, which forward, backward and reads see, is :math:`v = h + \\sigma_w\\xi` with
:math:`\\sigma_w` = ``write_noise_std dw_min`` and :math:`\\xi` drawn anew at every pulse
the device gets (so after an update: one fresh draw per pulsed device; the others keep
theirs), for every device after a decay, and at ``set_weights`` (the bounds clip the set
weights first; ``apply_write_noise_on_set: false`` leaves :math:`v = h` there). :math:`v`
is not clipped.

**Decay** (``lifetime`` > 0; ``PulsedRPUDevice::decayWeights``, which aihwkit's analog
optimizer calls once per mini-batch through ``post_update_step``): once per update call,
:math:`h \\leftarrow \\mathrm{clip}((h - b_{ij})\\,\\delta_{ij} + b_{ij},\\;w^{min}_{ij},\\;
w^{max}_{ij})` with :math:`t_{ij} = \\text{lifetime}(1 + \\text{lifetime\\_dtod}\\,\\xi_7)`,
:math:`\\delta_{ij} = 1 - 1/t_{ij}` for :math:`t_{ij} > 1`, else 0, and the reset value
:math:`b_{ij} = \\text{reset} + \\text{reset\\_dtod}\\,\\xi_8` (:meth:`DeviceModel.draw_decay`).
``reset_std`` acts only when a device is reset, which rpuhw's arrays never are.
"""

from __future__ import annotations

import math
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
from rpuhw.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a model draws or steps: `rpuhw models` needs none
    import torch

State = dict[str, "torch.Tensor"]
"""Per-device parameters of one array: name -> float32 tensor [rows, cols]."""

BASE_STATE = ("dw_up", "dw_down", "w_min", "w_max")


ANY = object()
"""Marks an unsupported aihwkit key that has no effect whatever its value (it only matters
together with another unsupported key, which is checked itself)."""

AIHWKIT_UNSUPPORTED: dict[str, tuple[object, str]] = {
    "construction_seed": (0, "rpuhw draws the devices from the array's own seed"),
    "corrupt_devices_prob": (0.0, "stuck (corrupt) devices are not simulated"),
    "corrupt_devices_range": (ANY, "only used with corrupt_devices_prob"),
    "diffusion": (0.0, "weight diffusion is not simulated"),
    "diffusion_dtod": (ANY, "only used with diffusion"),
    "drift": (None, "conductance drift is not simulated"),
    "perfect_bias": (False, "rpuhw arrays have no analog bias column"),
    "count_pulses": (ANY, "a diagnostic switch of aihwkit, no effect on the device"),
}
"""aihwkit 1.2 ``PulsedDevice`` keys that rpuhw does not simulate: key -> (the value at which
the key has no effect, or :data:`ANY`; what rpuhw lacks). A device YAML may carry them only
at that value (:func:`check_aihwkit_keys`)."""


@dataclass
class PulsedDeviceParams:
    """Parameters shared by every pulsed device model: aihwkit 1.2's ``PulsedDevice`` names
    with aihwkit's meanings and defaults (module docstring for the draws)."""

    dw_min: float = 0.001
    """Step of one pulse of the mean device in its larger direction (weight units); the
    smaller direction's step is ``dw_min (1 - |up_down|)``."""

    dw_min_dtod: float = 0.3
    """Device-to-device spread of the step gain g, relative (g = 1 + dw_min_dtod xi)."""

    dw_min_dtod_log_normal: bool = False
    """Draw the gain log-normally, g = exp(dw_min_dtod xi), instead of 1 + dw_min_dtod xi."""

    dw_min_std: float = 0.3
    """Cycle-to-cycle (pulse-to-pulse) spread of each step, relative to the step."""

    up_down: float = 0.0
    """One-sided up/down asymmetry (aihwkit): > 0 shrinks the down step to
    dw_min (1 - up_down), < 0 the up step to dw_min (1 + up_down); the other stays dw_min."""

    up_down_dtod: float = 0.01
    """Device-to-device spread of the asymmetry, in units of dw_min: + on the up step,
    - on the down step."""

    w_min: float = -0.6
    """Mean lower weight bound (weight units, <= 0)."""

    w_max: float = 0.6
    """Mean upper weight bound (weight units, >= 0)."""

    w_min_dtod: float = 0.3
    """Device-to-device spread of the lower bound, relative to ``w_min``."""

    w_max_dtod: float = 0.3
    """Device-to-device spread of the upper bound, relative to ``w_max``."""

    enforce_consistency: bool = True
    """aihwkit's consistency of the draws: negative steps reflected (|.|), crossed bounds
    swapped, then w_max >= 0 >= w_min per device. False: crossed bounds pin a device at their
    midpoint and a negative step stays negative (the device moves against its pulse)."""

    lifetime: float = 0.0
    """Weight decay (aihwkit's ``lifetime``), in update cycles (optimizer steps): once per
    update call each device decays as ``w <- (w - b) (1 - 1/t) + b``, ``t`` its own lifetime
    (``lifetime (1 + lifetime_dtod xi)``, ``t <= 1``: back to ``b`` at once); 0 = no decay."""

    lifetime_dtod: float = 0.0
    """Device-to-device spread of ``lifetime``, relative."""

    reset: float = 0.0
    """Mean reset value b (weight units): where a device returns on a reset and towards which
    it decays (``b = reset + reset_dtod xi`` per device)."""

    reset_dtod: float = 0.0
    """Device-to-device spread of the reset value b, absolute (weight units)."""

    reset_std: float = 0.01
    """Cycle-to-cycle spread of a reset (weight units); only a reset uses it, and rpuhw's
    arrays are never reset (aihwkit: ``reset_weights``/``reset_columns``)."""

    def validate(self) -> None:
        """Check value ranges; raises ConfigError naming the key."""
        require(self.dw_min > 0, "dw_min", f"must be > 0, got {self.dw_min}")
        for key in ("dw_min_dtod", "dw_min_std", "up_down_dtod", "w_min_dtod", "w_max_dtod",
                    "lifetime", "lifetime_dtod", "reset_dtod", "reset_std"):
            value = getattr(self, key)
            require(value >= 0, key, f"must be >= 0, got {value}")
        require(-1 < self.up_down < 1, "up_down", f"must be in (-1, 1), got {self.up_down}")
        require(self.w_min < self.w_max, "w_min",
                f"must be < w_max, got w_min={self.w_min} >= w_max={self.w_max}")
        require(self.w_min <= 0, "w_min",
                f"must be <= 0 ([w_min, w_max] must contain 0, as in aihwkit), got {self.w_min}")
        require(self.w_max >= 0, "w_max",
                f"must be >= 0 ([w_min, w_max] must contain 0, as in aihwkit), got {self.w_max}")


@dataclass
class WriteNoiseParams(PulsedDeviceParams):
    """The shared keys plus aihwkit's write noise (LinearStep, SoftBounds, ExpStep, PowStep
    and PiecewiseStep have it; ConstantStep does not)."""

    write_noise_std: float = 0.0
    """Write noise in units of dw_min (aihwkit's ``write_noise_std``): pulses move a hidden
    weight; a device's visible weight is the hidden one plus a fresh normal of std
    ``write_noise_std dw_min``, drawn anew whenever the device is pulsed (and for every
    device at a decay and at ``set_weights``); 0 = none."""

    apply_write_noise_on_set: bool = True
    """Whether ``set_weights`` (and the array's creation) adds write noise to the visible
    weights (else they equal the set weights until the next pulse)."""

    def validate(self) -> None:
        super().validate()
        require(self.write_noise_std >= 0, "write_noise_std",
                f"must be >= 0, got {self.write_noise_std}")


def _normal(gen: torch.Generator, rows: int, cols: int) -> torch.Tensor:
    """Standard normals [rows, cols] (float64)."""
    import torch

    return torch.randn(rows, cols, generator=gen, dtype=torch.float64)


def one_sided_pair(scale: float, up_down: float, gain, r) -> tuple:
    """aihwkit's one-sided pair: ``(scale (min(up_down, 0) + gain + r),
    scale (-max(up_down, 0) + gain - r))`` (per-device steps, or pow_step's exponents)."""
    return (scale * (min(up_down, 0.0) + gain + r), scale * (-max(up_down, 0.0) + gain - r))


@dataclass(frozen=True)
class OneSided:
    """Population parameters of an aihwkit one-sided pair (:func:`one_sided_pair`)."""

    scale: float
    """``dw_min`` (or ``pow_gamma``): the mean of the larger direction."""
    up_down: float
    """``up_down`` (or ``pow_up_down``)."""
    scale_dtod: float
    """``dw_min_dtod`` (or ``pow_gamma_dtod``): spread of the gain, relative."""
    up_down_dtod: float
    """``up_down_dtod`` (or ``pow_up_down_dtod``): spread of r, in units of the scale."""


def one_sided_from_moments(mean_sum: float, sd_sum: float, mean_diff: float, sd_diff: float
                           ) -> OneSided:
    """Inverse of the one-sided draw (:func:`one_sided_pair` with normal gain and r).

    Per device, with up value u and down value v, the half-sum ``s = (u + v)/2`` and half-
    difference ``a = (u - v)/2`` are ``s = scale (g - |up_down|/2)``,
    ``a = scale (up_down/2 + r)``; so, from their population means and spreads,
    ``scale = E s + |E a|``, ``up_down = 2 E a / scale``, ``scale_dtod = sd(s) / scale``,
    ``up_down_dtod = sd(a) / scale`` (exact without enforce_consistency's reflection,
    which touches only devices with a negative draw).
    """
    scale = float(mean_sum) + abs(float(mean_diff))
    if scale <= 0:
        return OneSided(0.0, 0.0, 0.0, 0.0)
    return OneSided(scale=scale, up_down=2.0 * float(mean_diff) / scale,
                    scale_dtod=float(sd_sum) / scale, up_down_dtod=float(sd_diff) / scale)


def migrate_legacy_steps(dw_min: float, dw_min_dtod: float, up_down: float,
                         up_down_dtod: float) -> dict[str, float]:
    """aihwkit-meaning step keys for a device written with rpuhw's old symmetric ``up_down``.

    The old draw was ``dw_up = dw_min g (1 + r)``, ``dw_down = dw_min g (1 - r)`` with
    ``g = 1 + dw_min_dtod xi``, ``r = up_down + up_down_dtod xi'``. The result keeps the
    mean up and down steps exactly and the device-to-device spreads of their half-sum
    (``dw_min dw_min_dtod``) and half-difference
    (``dw_min sqrt(dtod^2 up_down^2 + up_down_dtod^2 (1 + dtod^2))``), i.e. the mean of the
    up and down variances; the old draw's correlation of the two (product form) has no
    aihwkit counterpart.
    """
    var_diff = ((1.0 + dw_min_dtod ** 2) * (up_down ** 2 + up_down_dtod ** 2)
                - up_down ** 2)
    new = one_sided_from_moments(dw_min, dw_min * dw_min_dtod, dw_min * up_down,
                                 dw_min * math.sqrt(max(var_diff, 0.0)))
    return {"dw_min": new.scale, "dw_min_dtod": new.scale_dtod, "up_down": new.up_down,
            "up_down_dtod": new.up_down_dtod}


def migrate_legacy_pow(pow_gamma: float, pow_gamma_dtod: float, pow_up_down: float,
                       pow_up_down_dtod: float) -> dict[str, float]:
    """aihwkit-meaning pow_step exponent keys for a device written with rpuhw's old symmetric
    ``pow_up_down`` (``gamma_up/down = pow_gamma (gain +- beta)``, gain and beta independent
    normals): keeps the means and spreads of both exponents exactly."""
    new = one_sided_from_moments(pow_gamma, pow_gamma * pow_gamma_dtod,
                                 pow_gamma * pow_up_down, pow_gamma * pow_up_down_dtod)
    return {"pow_gamma": new.scale, "pow_gamma_dtod": new.scale_dtod,
            "pow_up_down": new.up_down, "pow_up_down_dtod": new.up_down_dtod}


def migrate_legacy_mapping(data: dict) -> dict:
    """A device YAML mapping written with rpuhw's old (symmetric) ``up_down`` and
    ``pow_up_down``, rewritten with aihwkit's meanings so that its device keeps its per-device
    statistics (:func:`migrate_legacy_steps`, :func:`migrate_legacy_pow`). Keys the mapping
    leaves out take the model's defaults; only the converted keys are (re)written."""
    from rpuhw.devices.registry import get_model

    out = dict(data)
    defaults = get_model(str(data.get("model", "constant_step"))).Params()

    def get(key: str) -> float:
        return float(data.get(key, getattr(defaults, key)))

    old = [get(k) for k in ("dw_min", "dw_min_dtod", "up_down", "up_down_dtod")]
    if old[2] != 0.0:
        out.update({k: _round(v) for k, v in migrate_legacy_steps(*old).items()})
    if hasattr(defaults, "pow_gamma"):
        old = [get(k) for k in ("pow_gamma", "pow_gamma_dtod", "pow_up_down",
                                "pow_up_down_dtod")]
        if old[2] != 0.0:
            out.update({k: _round(v) for k, v in migrate_legacy_pow(*old).items()})
    return out


def _round(v: float) -> float:
    """Six significant digits (for YAML files)."""
    return float(f"{v:.6g}")


def check_aihwkit_keys(unsupported: dict[str, tuple[object, str]], data: dict,
                       source: str) -> dict:
    """``data`` without the aihwkit keys rpuhw does not simulate that sit at their no-effect
    value; any other value of such a key raises one ConfigError naming it."""
    out = dict(data)
    for key in list(out):
        if key not in unsupported:
            continue
        neutral, why = unsupported[key]
        value = out.pop(key)
        if neutral is ANY or _same(value, neutral):
            continue
        shown = "" if neutral is None else f" (or set it to {neutral!r})"
        raise ConfigError(f"aihwkit's {key} = {value!r} is not supported by rpuhw ({why}); "
                          f"remove the key{shown}", source=source, key=key)
    return out


def _same(value: object, neutral: object) -> bool:
    if neutral is None:  # a block such as drift: absent, empty, or all zero
        return value is None or value == {} or (
            isinstance(value, dict) and all(not v for v in value.values()))
    if isinstance(neutral, bool) or isinstance(value, bool):
        return value is neutral
    try:
        return float(value) == float(neutral)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


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

    unsupported: ClassVar[dict[str, tuple[object, str]]] = AIHWKIT_UNSUPPORTED
    """Keys of the model's aihwkit twin that rpuhw does not simulate (key -> no-effect
    value, reason); a device YAML may carry them only at that value."""

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

    write_noise_skips_pinned: ClassVar[bool] = False
    """aihwkit's ExpStep and PowStep leave a device whose bounds coincide untouched by a
    pulse, its write noise included (``update_once`` returns early); the other models
    redraw it."""

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
        """Draw every per-device parameter once for an array of ``rows x cols`` devices
        (aihwkit 1.2's ``populate``, module docstring)."""
        import torch

        p = self.params
        xi = _normal(gen, rows, cols)
        g = torch.exp(p.dw_min_dtod * xi) if p.dw_min_dtod_log_normal else 1.0 + p.dw_min_dtod * xi
        r = p.up_down_dtod * _normal(gen, rows, cols)
        dw_up, dw_down = one_sided_pair(p.dw_min, p.up_down, g, r)
        w_max = p.w_max * (1.0 + p.w_max_dtod * _normal(gen, rows, cols))
        w_min = p.w_min * (1.0 + p.w_min_dtod * _normal(gen, rows, cols))
        crossed = w_min > w_max
        if p.enforce_consistency:
            dw_up, dw_down = dw_up.abs(), dw_down.abs()
            w_min, w_max = torch.where(crossed, w_max, w_min), torch.where(crossed, w_min, w_max)
            w_min, w_max = -w_min.abs(), w_max.abs()
        else:
            mid = 0.5 * (w_min + w_max)
            w_min = torch.where(crossed, mid, w_min)
            w_max = torch.where(crossed, mid, w_max)
        state = {"dw_up": dw_up, "dw_down": dw_down, "w_min": w_min, "w_max": w_max}
        state.update(self.draw_extra(state, rows, cols, gen))
        if p.lifetime > 0:  # drawn last: devices without decay keep their draws
            state.update(self.draw_decay(rows, cols, gen))
        return {k: v.to(torch.float32) for k, v in state.items()}

    def draw_decay(self, rows: int, cols: int, gen: torch.Generator) -> State:
        """Per-device decay scale and reset value (float64), as aihwkit 1.2's
        ``PulsedRPUDevice::populate`` draws them (``rpu_pulsed_device.cpp``):
        ``t = lifetime (1 + lifetime_dtod xi)``, ``decay_scale = 1 - 1/t`` where ``t > 1``
        else 0; ``reset_bias = reset + reset_dtod xi'`` (additive, whatever aihwkit's Python
        docstring says)."""
        import torch

        p = self.params
        t = p.lifetime * (1.0 + p.lifetime_dtod * _normal(gen, rows, cols))
        scale = torch.where(t > 1.0, 1.0 - 1.0 / torch.where(t > 1.0, t, 2.0), 0.0)
        bias = p.reset + p.reset_dtod * _normal(gen, rows, cols)
        return {"decay_scale": scale, "reset_bias": bias}

    @property
    def write_noise(self) -> float:
        """Std of the write noise in weight units, aihwkit's ``getScaledWriteNoise``:
        ``write_noise_std dw_min`` (0 for a model or device without write noise)."""
        return float(getattr(self.params, "write_noise_std", 0.0)) * float(self.params.dw_min)

    @property
    def decays(self) -> bool:
        """Whether the devices decay once per update call (``lifetime > 0``)."""
        return self.params.lifetime > 0

    def granularity(self) -> float:
        """aihwkit's weight granularity (``calcWeightGranularity``, weight units): the step
        its update management and BL management assume for one coincidence. ``dw_min`` here;
        models whose step at w = 0 differs from ``dw_min`` override it."""
        return float(self.params.dw_min)

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
