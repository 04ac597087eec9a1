"""Symmetry points: drive devices to where an up and a down pulse cancel on average.

A device's symmetry point ``w*`` is the weight at which an up pulse and a down pulse change
it by the same mean amount, ``Delta_up(w*) = |Delta_down(w*)|`` (reference/algorithms.md
section 6). Under alternating up and down pulses an asymmetric device drifts to it, and
stays there, wandering by its cycle-to-cycle noise. Tiki-Taka's fast array A decays toward
its devices' symmetry points, not toward 0, so A is centred on them first: this module
does that through the :class:`~rpuhw.array.CrossPointArray` contract alone (``pulse`` with
signed count arrays, ``read_devices``), on any backend, and ``rpuhw characterize
--protocol symmetry-point`` records the same search as a measurement CSV (one
implementation: :class:`SymmetryPointSearch`).

The search, all chosen devices in lockstep, cycle ``c = 0, 1, ...``::

    (c = 0 only) read                            -> read (cycle 0, +1, pulse 0)
    n times: +1 pulse to every active device, read -> (c, +1, pulse k), k = 1..n
    n times: -1 pulse to every active device, read -> (c, -1, pulse k)

(``n`` = ``pulses``, 1 by default: one up, one down, repeated). After each cycle, every
active device's cycle mean ``m_c`` (the mean of its ``2 n`` reads of the cycle; the zig-zag
of the alternation cancels in it) is appended to its history, and the device **settles**
when its history holds at least ``2 K`` cycles (``K`` = ``window``) and the means of the
last two windows of ``K`` cycles differ by less than ``tol`` (weight units; by default
``tolerance * dw_min``): ``|mean(m[c-K+1..c]) - mean(m[c-2K+1..c-K])| < tol``. While a
device is still drifting toward ``w*`` by ``r |w - w*|`` per cycle, the two windows differ
by ``~ K r |w - w*|``; so the criterion holds once ``|w - w*| < tol / (K r)``. A settled
device gets no more pulses; a device that has had ``max_pulses`` pulses stops unsettled.

The symmetry point of a device is the mean of its **settled reads**, the last window of
``K`` cycles, with the standard error of that mean from the cycle means, corrected for
their autocorrelation (:func:`mean_and_stderr`): near ``w*`` a noisy device wanders with a
correlation time of ``1/r`` cycles, and the reads inside a window are not independent.
(The last window, not both: a device still approaching ``w*`` lags in the older window;
the newer one is off by at most ``~ tol e^(-K r) / (1 - e^(-K r))``, 0.2 ``tol`` for
soft bounds with the default ``K``.)

Defaults from the device (``array.info()``): ``K`` = the number of states
``(w_max - w_min) / dw_min`` divided by ``2 n`` (about twice the relaxation time
``1 / r``, which is ``(w_max - w_min) / (4 dw_min)`` cycles for soft bounds with ``n = 1``),
``tol`` = 0.5 ``dw_min``, ``max_pulses`` = 10 x ``2 K n`` per device.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rpuhw.array import CrossPointArray
from rpuhw.errors import ConfigError

Device = tuple[int, int]
"""Array position ``(row, col)``."""

DEFAULT_TOLERANCE = 0.5
"""Default settle tolerance, in units of the array's ``dw_min``."""
MAX_WINDOWS = 10
"""Default ``max_pulses``: this many pairs of windows (``2 K n`` pulses each) per device."""

ReadCallback = Callable[[int, int, int, list[int], np.ndarray], None]
"""``on_read(cycle, polarity, pulse, device_indices, weights)`` after every read:
``device_indices`` into the search's device list, ``weights`` float64 (weight units)."""


def mean_and_stderr(history: np.ndarray, last: int | None = None) -> tuple[float, float]:
    """Mean of the last ``last`` cycle means of ``history`` and its standard error.

    A device near its symmetry point is an AR(1) process seen through read noise: its
    cycle mean ``m_c = w*  + u_c + e_c`` with ``u_{c+1} = (1 - r) u_c + eta_c`` (``r``
    the relaxation rate per cycle, ``eta`` the pulse noise, variance ``q``) and ``e`` the
    white read noise of a cycle mean (variance ``v``). The mean of ``N`` successive cycle
    means then has the variance ``v / N`` plus the AR(1) variance of a mean,
    ``sigma^2 / N [(1 + phi)/(1 - phi) - 2 phi (1 - phi^N) / (N (1 - phi)^2)]``,
    ``phi = 1 - r``, ``sigma^2 = q / (1 - phi^2)``. Estimates:

    * ``q`` and ``v`` from the mean squared differences at lag ``L = 1..L_max`` of the
      ``N`` values, ``D(L) = 2 v + L q`` for ``L << 1/r`` (least squares);
    * ``r`` from the whole history (the approach to ``w*`` included): the instrumental-
      variable slope of ``m_{c+1} - m_c`` on ``m_c`` with ``m_{c-1}`` as instrument (the
      read noise of ``m_c`` would bias the plain regression), clipped to
      ``[1 / len(history), 1]``.

    A plain ``s / sqrt(N)`` would understate it many times: the window is only a few
    relaxation times long (docs/calibration.md, "Symmetry points"). NaN when ``N < 2``.
    """
    h = np.asarray(history, dtype=np.float64).reshape(-1)
    h = h[np.isfinite(h)]
    x = h if last is None else h[-last:]
    n = len(x)
    if n == 0:
        return math.nan, math.nan
    m = float(x.mean())
    if n < 4:
        return m, (float(x.std(ddof=1)) if n > 1 else math.nan)
    r = 1.0
    if len(h) >= 4:
        y, xm, z = h[2:] - h[1:-1], h[1:-1], h[:-2]
        zc = z - z.mean()
        den = float(zc @ (xm - xm.mean()))
        r = -float(zc @ (y - y.mean())) / den if den > 0 else 1.0
    r = min(max(r, 1.0 / len(h)), 1.0)
    phi = 1.0 - r
    # variogram D(L) = mean (x[c+L] - x[c])^2 = 2 v + 2 sigma^2 (1 - phi^L), linear in
    # (v, sigma^2) once phi is known; lags up to a quarter of the window
    lmax = max(2, n // 4)
    lags = np.unique(np.round(np.geomspace(1, lmax, 24)).astype(int))
    dl = np.array([float(np.mean((x[k:] - x[:-k]) ** 2)) for k in lags])
    design = np.stack([np.full(len(lags), 2.0), 2.0 * (1.0 - phi ** lags)], axis=1)
    (v, sigma2), *_ = np.linalg.lstsq(design, dl, rcond=None)
    v, sigma2 = max(float(v), 0.0), max(float(sigma2), 0.0)
    if sigma2 == 0.0 and v == 0.0:  # all equal (noiseless)
        return m, 0.0
    q = sigma2 * (1.0 - phi * phi)
    if phi <= 0.0:
        var_ar = q / n
    else:
        sigma2 = q / (1.0 - phi * phi)
        var_ar = sigma2 / n * ((1 + phi) / (1 - phi)
                               - 2 * phi * (1 - phi ** n) / (n * (1 - phi) ** 2))
    return m, math.sqrt(max(var_ar, 0.0) + v / n)


def settled_at(cycle_means: np.ndarray, window: int, tol: float) -> int | None:
    """Index ``c`` of the first cycle at which the criterion of the module docstring holds
    for the series ``cycle_means`` (None: never)."""
    x = np.asarray(cycle_means, dtype=np.float64).reshape(-1)
    if len(x) < 2 * window:
        return None
    cs = np.concatenate([[0.0], np.cumsum(x)])
    ends = np.arange(2 * window, len(x) + 1)
    b = cs[ends] - cs[ends - window]
    a = cs[ends - window] - cs[ends - 2 * window]
    hit = np.flatnonzero(np.abs(b - a) / window < tol)
    return int(ends[hit[0]] - 1) if len(hit) else None


@dataclass
class SymmetrySettings:
    """The resolved settings of a search (what the sidecar stores)."""

    pulses: int
    """Pulses per half-cycle (``n``): n up, then n down, a read after each."""
    window: int
    """``K``: cycles per window of the settle criterion."""
    tol: float
    """Settle tolerance (weight units)."""
    max_pulses: int
    """Most pulses per device (a device that reaches it stops unsettled)."""
    dw_min: float
    """The array's ``dw_min`` the defaults came from (weight units)."""

    @property
    def max_cycles(self) -> int:
        """Cycles a device gets at most: ``max_pulses // (2 n)``."""
        return max(1, self.max_pulses // (2 * self.pulses))

    def to_dict(self) -> dict[str, Any]:
        return {"pulses_per_half": self.pulses, "window_cycles": self.window,
                "settle_tolerance_weight": self.tol, "max_pulses_per_device": self.max_pulses,
                "dw_min": self.dw_min}


def _int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"expected an integer >= {minimum}, got {value!r}", key=name)
    return int(value)


def resolve_settings(array: CrossPointArray, pulses: int = 1, window: int | None = None,
                     tolerance: float = DEFAULT_TOLERANCE, max_pulses: int | None = None
                     ) -> SymmetrySettings:
    """Settings with the device-derived defaults of the module docstring filled in.

    ``tolerance`` is in units of ``array.info().dw_min``; errors name the argument.
    """
    pulses = _int(pulses, "pulses")
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or \
            not (math.isfinite(tolerance) and tolerance > 0):
        raise ConfigError(f"expected a positive number (units of dw_min), got {tolerance!r}",
                          key="tolerance")
    info = array.info()
    dw = abs(float(info.dw_min))
    if not (math.isfinite(dw) and dw > 0):
        raise ConfigError(f"{array!r} reports dw_min {info.dw_min!r}: give window and "
                          "tolerance in weight units through a device with a positive "
                          "dw_min", key="dw_min")
    lo = -1.0 if info.w_min is None else float(info.w_min)
    hi = 1.0 if info.w_max is None else float(info.w_max)
    if window is None:
        states = max((hi - lo) / dw, 2.0)
        window = max(4, math.ceil(states / (2 * pulses)))
    window = _int(window, "window")
    if max_pulses is None:
        max_pulses = MAX_WINDOWS * 2 * window * pulses
    max_pulses = _int(max_pulses, "max_pulses", minimum=2 * pulses)
    return SymmetrySettings(pulses, window, float(tolerance) * dw, max_pulses, dw)


@dataclass
class SymmetryPointResult:
    """What :func:`centre_on_symmetry_point` found and what it cost."""

    devices: list[Device]
    """The devices, in the order of the arrays below."""
    shape: tuple[int, int]
    """``(rows, cols)`` of the array."""
    symmetry_point: np.ndarray
    """float64 [n]: mean of each device's settled reads (weight units)."""
    stderr: np.ndarray
    """float64 [n]: standard error of ``symmetry_point`` (weight units)."""
    reached: np.ndarray
    """float64 [n]: each device's last read: where it is now (weight units)."""
    settled: np.ndarray
    """bool [n]: the settle criterion held (False: stopped at ``max_pulses``)."""
    device_pulses: np.ndarray
    """int64 [n]: pulses each device got."""
    settings: SymmetrySettings
    pulses: int = 0
    """Pulses applied, all devices together."""
    reads: int = 0
    """Device reads (one device read once = 1)."""
    pulse_calls: int = 0
    """``array.pulse`` calls."""
    read_calls: int = 0
    """``array.read_devices`` calls."""
    instrument: dict[str, int] = field(default_factory=dict)
    """Change of ``array.stats()`` during the search (bench: ``messages``, ``queries``);
    empty for simulators."""
    seconds: float = 0.0
    """Wall time of the search (s)."""

    def matrix(self, which: str = "symmetry_point") -> torch.Tensor:
        """``which`` (``symmetry_point``, ``stderr`` or ``reached``) as a float32
        [rows, cols] tensor, NaN at devices not searched."""
        out = torch.full(self.shape, float("nan"))
        values = getattr(self, which)
        for (i, j), v in zip(self.devices, values, strict=True):
            out[i, j] = float(v)
        return out

    def summary(self) -> str:
        """One line: devices settled, symmetry points, cost."""
        sp = self.symmetry_point[np.isfinite(self.symmetry_point)]
        span = (f"symmetry points {sp.min():+.4g} .. {sp.max():+.4g} (mean {sp.mean():+.4g}) "
                "weight units" if len(sp) else "no symmetry point")
        cost = f"{self.pulses} pulses, {self.reads} device reads"
        if self.instrument.get("messages") is not None:
            cost += f", {self.instrument['messages']} instrument messages"
        return (f"{int(self.settled.sum())}/{len(self.devices)} devices settled; {span}; "
                f"median stderr {float(np.nanmedian(self.stderr)):.3g}; {cost}")


def _stats(array: CrossPointArray) -> dict[str, int]:
    try:
        return dict(array.stats())
    except Exception:  # noqa: BLE001 - counters are informative only
        return {}


class SymmetryPointSearch:
    """The lockstep alternating-pulse search of the module docstring, resumable.

    :meth:`restore` feeds reads recorded by an earlier, interrupted search (a measurement
    CSV); :meth:`run` continues it. ``on_read`` is called after every read.
    """

    def __init__(self, array: CrossPointArray, devices: list[Device],
                 settings: SymmetrySettings, on_read: ReadCallback | None = None):
        if not devices:
            raise ConfigError("no devices chosen", key="devices")
        self.array = array
        self.devices = [(int(i), int(j)) for i, j in devices]
        for i, j in self.devices:
            if not (0 <= i < array.rows and 0 <= j < array.cols):
                raise ConfigError(f"device {i}:{j} is outside the {array.rows} x {array.cols} "
                                  "array", key="devices")
        if len(set(self.devices)) != len(self.devices):
            raise ConfigError("a device is listed twice", key="devices")
        self.s = settings
        self.on_read = on_read
        n = len(self.devices)
        self.next_step = np.zeros(n, dtype=np.int64)
        """Per device: the next step to measure (-1 = the initial read, see :meth:`key`)."""
        self.next_step[:] = -1
        self.history: list[list[float]] = [[] for _ in range(n)]
        """Per device: cycle means since the start (or since an accepted jump)."""
        self.partial: list[list[float]] = [[] for _ in range(n)]
        """Per device: reads of the cycle in progress."""
        self.settled = np.zeros(n, dtype=bool)
        self.stopped = np.zeros(n, dtype=bool)
        """Settled or out of pulses: gets no more pulses."""
        self.last = np.full(n, np.nan)
        self.device_pulses = np.zeros(n, dtype=np.int64)
        self.pulses = self.reads = self.pulse_calls = self.read_calls = 0

    # ---- the step sequence ---------------------------------------------------------
    def key(self, step: int) -> tuple[int, int, int, int]:
        """``(cycle, polarity, pulse, signed pulses before the read)`` of ``step``; step -1
        is the initial read ``(0, +1, 0, 0)``."""
        if step < 0:
            return 0, 1, 0, 0
        n = self.s.pulses
        cycle, within = divmod(step, 2 * n)
        pol = 1 if within < n else -1
        return cycle, pol, within % n + 1, pol

    def step_of(self, cycle: int, polarity: int, pulse: int) -> int | None:
        """Inverse of :meth:`key` (None: not a step of this search)."""
        n = self.s.pulses
        if pulse == 0:
            return -1 if (cycle, polarity) == (0, 1) else None
        if polarity not in (1, -1) or not 1 <= pulse <= n or cycle < 0:
            return None
        return cycle * 2 * n + (0 if polarity == 1 else n) + pulse - 1

    def plan_keys(self) -> list[tuple[int, int, int, int]]:
        """Every step a device may get, in order (initial read, then ``max_cycles``
        cycles)."""
        return [self.key(s) for s in range(-1, self.s.max_cycles * 2 * self.s.pulses)]

    # ---- bookkeeping -----------------------------------------------------------------
    def _record(self, d: int, step: int, w: float) -> None:
        """Device ``d`` read ``w`` at ``step``: history, settle check, stop."""
        self.last[d] = w
        self.next_step[d] = step + 1
        if step < 0:
            return
        self.device_pulses[d] += 1  # every step after the initial read follows a pulse
        self.partial[d].append(w)
        n = self.s.pulses
        if step % (2 * n) == 2 * n - 1:  # the cycle is complete
            self.history[d].append(float(np.mean(self.partial[d])))
            self.partial[d] = []
            h, k = self.history[d], self.s.window
            if len(h) >= 2 * k:
                b = float(np.mean(h[-k:]))
                a = float(np.mean(h[-2 * k:-k]))
                if abs(b - a) < self.s.tol:
                    self.settled[d] = True
                    self.stopped[d] = True
            if step // (2 * n) + 1 >= self.s.max_cycles:
                self.stopped[d] = True

    def restore(self, d: int, reads: list[tuple[int, int, int, float]]) -> None:
        """Replay device ``d``'s recorded reads ``(cycle, polarity, pulse, w)`` (weight
        units, in the order measured); refuses a read that is not the next step."""
        for c, p, k, w in reads:
            step = self.step_of(c, p, k)
            if step is None or step != self.next_step[d]:
                i, j = self.devices[d]
                raise ConfigError(f"device {i}:{j}: row (cycle {c}, polarity {p}, pulse {k}) "
                                  "is not the next step of the symmetry-point search with "
                                  f"{self.s.pulses} pulse(s) per half-cycle; resume with the "
                                  "original --pulses", key="--resume")
            if self.stopped[d]:
                i, j = self.devices[d]
                raise ConfigError(f"device {i}:{j} has rows after it settled or ran out of "
                                  "pulses; resume with the original --window, --settle-tol "
                                  "and --max-pulses", key="--resume")
            self._record(d, step, w)

    def forget_history(self, d: int) -> None:
        """Start device ``d``'s settle windows afresh (its state jumped: the reads before
        belong to another state)."""
        self.history[d] = []
        self.partial[d] = []

    # ---- running ---------------------------------------------------------------------
    def _read(self, idx: list[int]) -> np.ndarray:
        w = self.array.read_devices([self.devices[d] for d in idx])
        self.reads += len(idx)
        self.read_calls += 1
        return w.detach().cpu().double().numpy().reshape(-1)

    def active(self) -> list[int]:
        """Devices still to be pulsed."""
        return [d for d in range(len(self.devices)) if not self.stopped[d]]

    def run(self, progress: bool = False, desc: str = "symmetry point") -> None:
        """Continue until every device has settled or run out of pulses."""
        from rpuhw.progress import progress_bar

        total = self.s.max_cycles * 2 * self.s.pulses + 1
        act = self.active()
        done = int(self.next_step[act].min()) + 1 if act else total
        bar = progress_bar(total, initial=min(done, total), desc=desc, unit="step",
                           leave=True, enabled=progress)
        try:
            self._catch_up()
            while True:
                act = self.active()
                if not act:
                    break
                step = int(self.next_step[act[0]])
                _, _, _, sign = self.key(step)
                if sign:
                    counts = torch.zeros(self.array.rows, self.array.cols, dtype=torch.int32)
                    for d in act:
                        counts[self.devices[d]] = sign
                    self.array.pulse(counts)
                    self.pulses += len(act)
                    self.pulse_calls += 1
                self._measure(act, step)
                if bar is not None:
                    bar.update(1)
                    if step % (2 * self.s.pulses) == 2 * self.s.pulses - 1:
                        bar.set_postfix(settled=f"{int(self.settled.sum())}/"
                                                f"{len(self.devices)}")
        finally:
            if bar is not None:
                bar.close()

    def _measure(self, idx: list[int], step: int) -> None:
        w = self._read(idx)
        c, p, k, _ = self.key(step)
        if self.on_read is not None:
            self.on_read(c, p, k, idx, w)
        for q, d in enumerate(idx):
            self._record(d, step, float(w[q]))

    def _catch_up(self) -> None:
        """After :meth:`restore`: devices one step behind the others (a step whose rows
        were written for some devices only) are read at that step without pulsing, so
        that every active device is at the same step."""
        act = self.active()
        if not act:
            return
        ahead = int(self.next_step[act].max())
        behind = [d for d in act if self.next_step[d] < ahead]
        for d in behind:
            if self.next_step[d] != ahead - 1:
                i, j = self.devices[d]
                raise ConfigError(f"device {i}:{j} is {ahead - int(self.next_step[d])} steps "
                                  "behind the others: not a file of one lockstep "
                                  "symmetry-point search", key="--resume")
        if behind:
            self._measure(behind, ahead - 1)

    def result(self, seconds: float = 0.0, instrument: dict[str, int] | None = None
               ) -> SymmetryPointResult:
        """The symmetry points so far (:func:`settled_estimate` of each history)."""
        n = len(self.devices)
        sp, se = np.full(n, np.nan), np.full(n, np.nan)
        for d in range(n):
            sp[d], se[d] = settled_estimate(self.history[d], self.s.window)
        return SymmetryPointResult(
            devices=list(self.devices), shape=(self.array.rows, self.array.cols),
            symmetry_point=sp, stderr=se, reached=self.last.copy(),
            settled=self.settled.copy(), device_pulses=self.device_pulses.copy(),
            settings=self.s, pulses=self.pulses, reads=self.reads,
            pulse_calls=self.pulse_calls, read_calls=self.read_calls,
            instrument=dict(instrument or {}), seconds=seconds)


def settled_estimate(history: list[float] | np.ndarray, window: int) -> tuple[float, float]:
    """Symmetry point and standard error from a device's cycle means: the mean of the last
    ``K`` cycles (the last window of the settle criterion; fewer when the history is
    shorter), its error from :func:`mean_and_stderr`."""
    return mean_and_stderr(np.asarray(history, dtype=np.float64), window)


def centre_on_symmetry_point(array: CrossPointArray, devices: list[Device] | None = None,
                             pulses: int = 1, window: int | None = None,
                             tolerance: float = DEFAULT_TOLERANCE,
                             max_pulses: int | None = None, progress: bool = False,
                             on_read: ReadCallback | None = None) -> SymmetryPointResult:
    """Drive every device of ``array`` (or ``devices``) to its symmetry point.

    Alternating pulses through the contract (``array.pulse`` with signed count arrays, a
    read after each pulse with ``array.read_devices``) until each device settles (module
    docstring). The devices end where the last pulse left them (``result.reached``),
    within the wandering of their noise around ``result.symmetry_point``.

    Args:
        array: any CrossPointArray that can pulse and read.
        devices: ``(row, col)`` positions (default: every device, row-major).
        pulses: pulses per half-cycle ``n`` (n up, n down, repeated).
        window: ``K``, cycles per window of the settle criterion (default from the
            device: ``(w_max - w_min) / dw_min / (2 n)``).
        tolerance: settle tolerance in units of ``array.info().dw_min``.
        max_pulses: most pulses per device (default ``10 x 2 K n``).
        progress: show a progress display (:mod:`rpuhw.progress`).
        on_read: called after every read (see :data:`ReadCallback`).

    Returns:
        the symmetry points, the reached weights and the cost (pulses, reads, calls and,
        on a bench, the instrument messages from ``array.stats()``).
    """
    if devices is None:
        devices = [(i, j) for i in range(array.rows) for j in range(array.cols)]
    settings = resolve_settings(array, pulses, window, tolerance, max_pulses)
    search = SymmetryPointSearch(array, devices, settings, on_read)
    before, t0 = _stats(array), time.monotonic()
    search.run(progress=progress)
    after = _stats(array)
    delta = {k: int(after[k]) - int(before.get(k, 0)) for k in after}
    return search.result(time.monotonic() - t0, delta)


@dataclass
class RelaxResult:
    """What :func:`relax_to_symmetry_points` found and what it cost."""

    symmetry_point: torch.Tensor
    """float32 [rows, cols]: each device's mean read over the last ``window`` cycles."""
    reached: torch.Tensor
    """float32 [rows, cols]: the last read: where each device is now."""
    cycles: int
    """Cycles run (one up and one down pulse to every device, each followed by a read)."""
    window: int
    """Cycles averaged (the last ones)."""
    pulses: int
    """Pulses applied, all devices together."""
    reads: int
    """Whole-array reads (``2 window``: only the averaging window is read)."""
    seconds: float
    """Wall time (s)."""


def relax_to_symmetry_points(array: CrossPointArray, window: int | None = None,
                             cycles: int | None = None) -> RelaxResult:
    """Every device of ``array`` driven to its symmetry point in lockstep, in whole-array
    operations: ``cycles`` cycles of one up pulse and one down pulse to every device
    (``pulse`` with a matrix of +1, then of -1); in the last ``window`` cycles a
    whole-array ``read`` after each pulse, and the symmetry point of a device is the mean
    of those reads.

    The fixed-length form of :class:`SymmetryPointSearch` (no per-device settle test), for
    centring a whole fast array quickly: ``window`` defaults to ``K`` of
    :func:`resolve_settings` (the number of states / 2, about twice the relaxation time
    of soft bounds) and ``cycles`` to ``3 K``: two windows to relax from any start
    within the range (the drift falls by ``e^-4`` or more), one to average. Cost:
    ``2 cycles`` whole-array pulse calls (``2 cycles`` pulses per device) and ``2
    window`` whole-array reads. Lenet's fc1 (128 x 513 simulated devices of
    hidden_device.yaml, K = 286) takes 4.6 s on an idle 2-core machine."""
    settings = resolve_settings(array, 1, window)
    k = settings.window
    n = 3 * k if cycles is None else _int(cycles, "cycles")
    k = min(k, n)
    t0 = time.monotonic()
    up = torch.ones(array.rows, array.cols, dtype=torch.int32)
    down = -up
    total = torch.zeros(array.rows, array.cols, dtype=torch.float64)
    w = None
    for c in range(n):
        for counts in (up, down):
            array.pulse(counts)
            if c >= n - k:  # the averaging window: reads only here
                w = array.read()
                total += w.double()
    return RelaxResult(symmetry_point=(total / (2 * k)).float(), reached=w.float().clone(),
                       cycles=n, window=k, pulses=2 * n * array.rows * array.cols,
                       reads=2 * k, seconds=time.monotonic() - t0)


def save_symmetry_points(data: dict[str, Any], path: str | Path) -> None:
    """Write the mapping of ``rpuhw symmetry-point`` (YAML for .yaml/.yml, else JSON),
    atomically."""
    from rpuhw._io import atomic_write

    path = Path(path)
    clean = json.loads(json.dumps(data, default=float, allow_nan=True).replace("NaN", "null"))
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        text = yaml.safe_dump(clean, sort_keys=False, default_flow_style=None)
    else:
        text = json.dumps(clean, indent=1) + "\n"
    atomic_write(path, text)


def load_symmetry_points(path: str | Path) -> torch.Tensor:
    """The ``symmetry_point`` matrix of a file of ``rpuhw symmetry-point``: float32
    [rows, cols] in weight units, NaN at devices not measured. Errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(exc.strerror or str(exc), source=str(path)) from None
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is one line
        raise ConfigError(f"not YAML/JSON: {exc}".splitlines()[0], source=str(path)) from None
    if not isinstance(data, dict) or data.get("kind") != "symmetry_points" or \
            not isinstance(data.get("symmetry_point"), list):
        raise ConfigError("not a file of rpuhw symmetry-point (expected kind: "
                          "symmetry_points and a symmetry_point matrix)", source=str(path))
    rows = [[math.nan if v is None else float(v) for v in row] for row in data["symmetry_point"]]
    if not rows or len({len(r) for r in rows}) != 1:
        raise ConfigError("symmetry_point: expected a rows x cols matrix", source=str(path))
    return torch.tensor(rows, dtype=torch.float32)
