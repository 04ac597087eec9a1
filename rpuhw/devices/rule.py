"""One pulse of a device model, composed from the model's one step rule.

A model writes its mean step once, as a module-level function in "ufunc style"
(numpy ufuncs such as ``np.exp``, ``np.floor``, ``abs``, and this module's :func:`minimum`
and :func:`maximum`; Python ``if`` only on the scalar direction ``up`` and on constants)::

    def mean_step(w, up, prm, i, j, c):
        \"\"\"Mean step magnitude Delta_d(w) >= 0 of one pulse on device (i, j).\"\"\"

with ``prm[i, j, k]`` the device's k-th parameter (:attr:`DeviceModel.state_names` order)
and ``c`` the model's constants (``c[0]`` = ``dw_min_std``). The same source then runs

* compiled by numba for one device (scalars; inlined into the simulator's update and
  pulse kernels through :func:`compiled_pulse`),
* by numpy on whole arrays (the torch engine, the pulse-by-pulse reference and the
  calibration fitter), with ``prm`` a :class:`Columns` whose columns are already aligned
  with ``w`` (``i``, ``j`` are then unused).

Cycle-to-cycle noise is a second rule of the same form, ``noise(mean, w, up, xi, prm, i,
j, c)``, returning the step magnitude of a pulse with standard normal ``xi``;
:func:`multiplicative` is the default. One pulse is then

.. math::  w \\leftarrow \\mathrm{clip}\\big(w + d\\,\\mathrm{noise}(\\Delta_d(w), w, \\xi),
           \\; w^{min}_{ij},\\; w^{max}_{ij}\\big)

(:func:`pulse_of`), the one composition both engines use.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

Rule = Callable[..., object]
"""``mean_step(w, up, prm, i, j, c)`` or ``noise(mean, w, up, xi, prm, i, j, c)``."""

W_MIN, W_MAX = 2, 3
"""Indices of the device bounds in ``prm`` (after ``dw_up``, ``dw_down``)."""


def minimum(a, b):
    """``np.minimum(a, b)``; compiled by numba as one comparison, ``b if b < a else a``
    (the kernels' hot loop: numba's ``np.minimum`` also tests both for NaN)."""
    return np.minimum(a, b)


def maximum(a, b):
    """``np.maximum(a, b)``; compiled by numba as one comparison, ``b if a < b else a``."""
    return np.maximum(a, b)


@functools.cache
def _register_overloads() -> None:
    """numba's versions of :func:`minimum` and :func:`maximum` (registered before the
    first rule compiles; importing the rules needs no numba)."""
    from numba.extending import overload

    @overload(minimum)
    def _minimum_nb(a, b):
        return lambda a, b: b if b < a else a

    @overload(maximum)
    def _maximum_nb(a, b):
        return lambda a, b: b if a < b else a


def multiplicative(mean, w, up, xi, prm, i, j, c):
    """Default cycle-to-cycle noise: the step ``mean * (1 + dw_min_std * xi)``."""
    return mean * (1.0 + c[0] * xi)


class Columns:
    """numpy stand-in for ``prm``: ``prm[i, j, k]`` is ``arrays[k]`` (already aligned).

    Args:
        arrays: one array per per-device parameter, in ``state_names`` order, each
            broadcastable against the weights the rule is evaluated at.
    """

    __slots__ = ("arrays",)

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = arrays

    def __getitem__(self, key: tuple) -> np.ndarray:
        return self.arrays[key[2]]


def pulse_of(mean_step: Rule, noise: Rule, jit: Callable[[Rule], Rule] = lambda f: f) -> Rule:
    """The one-pulse rule ``pulse(w, up, xi, prm, i, j, c) -> w_new`` of a model.

    ``jit`` wraps the two rules and the result (numba's ``njit(inline="always")`` for
    the kernels; the identity for numpy, where ``up`` must be a scalar).
    """
    step_of, noisy_step = jit(mean_step), jit(noise)

    def pulse(w, up, xi, prm, i, j, c):
        step = noisy_step(step_of(w, up, prm, i, j, c), w, up, xi, prm, i, j, c)
        w = w + step if up else w - step
        return minimum(maximum(w, prm[i, j, W_MIN]), prm[i, j, W_MAX])

    return jit(pulse)


_COMPILED: dict[tuple[Rule, Rule], Rule] = {}


def compiled_pulse(mean_step: Rule, noise: Rule) -> Rule:
    """:func:`pulse_of` compiled by numba for one device (inlined where called; one
    compiled function per pair of rules). Without numba, the Python function.

    numba compiles it only inside the kernels that inline it; they are cached on disk
    keyed by the sources of both rules (:mod:`rpuhw._kernel_cache`)."""
    key = (mean_step, noise)
    if key not in _COMPILED:
        from rpuhw._jit import HAVE_NUMBA, njit

        if HAVE_NUMBA:
            _register_overloads()
        _COMPILED[key] = pulse_of(mean_step, noise,
                                  lambda f: njit(inline="always", cache=False)(f))
    return _COMPILED[key]


class AffinePulse(NamedTuple):
    """One pulse of an affine model in direction d, before the clip (arrays per device):

    .. math::  w \\leftarrow w + d\\,\\mathrm{noise}(\\Delta_d(w), w, \\xi)
               = w + (\\beta + \\alpha w) + (s_\\beta + s_\\alpha w)\\,\\xi

    Coefficients are signed (they include d), per direction.
    """

    alpha: np.ndarray
    """Slope of the mean increment in w (per pulse)."""
    beta: np.ndarray
    """Mean increment at w = 0 (weight units)."""
    s_alpha: np.ndarray
    """Slope in w of the increment's noise part (per unit of xi)."""
    s_beta: np.ndarray
    """Noise part of the increment at w = 0 (weight units per unit of xi)."""


def affine_pulse(mean_step: Rule, noise: Rule, up: bool, prm: Columns, c: np.ndarray
                 ) -> AffinePulse:
    """Coefficients of one pulse of a model whose increment is affine in w and in xi,
    read off the rules at w, xi in {0, 1} (``tests/test_step_rules.py`` checks that
    every model declared affine is)."""
    sign = 1.0 if up else -1.0

    def inc(w: float, xi: float) -> np.ndarray:
        return sign * noise(mean_step(w, up, prm, None, None, c), w, up, xi, prm, None, None, c)

    b0, b1 = inc(0.0, 0.0), inc(1.0, 0.0)
    n0, n1 = inc(0.0, 1.0) - b0, inc(1.0, 1.0) - b1
    return AffinePulse(alpha=b1 - b0, beta=b0, s_alpha=n1 - n0, s_beta=n0)
