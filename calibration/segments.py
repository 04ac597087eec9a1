"""Discontinuities in measured traces (resume boundaries) and cutting traces into segments.

A resumed ``rpuhw characterize`` appends its rows to the CSV of the interrupted run. A
physical array keeps its state across the interruption, but a power-cycled chip, a
reseated probe card or a restarted emulator comes back in another state: every device's
trace then jumps at the resume point. One step per device spans the jump; in the
one-step-ahead fit (:mod:`rpuhw.calibration.fit`) it is an outlier many times the step
size, which drags the least-squares fit of that device off (the fit then reports a
structured residual or a mean step curve that misses the data).

:func:`find_discontinuities` finds the boundaries and measures the jump of each device:

* **From the sidecar**: entries of ``resumed`` with a ``row`` (data rows before the
  resume) give the boundary exactly (:func:`~rpuhw.calibration.measurements.resume_points`).
* **From the data**: every pair of consecutive reads of a device in protocol order
  (cycle, up before down, pulse) is a *step*. A step with a pulse between its reads is
  compared with the running median of the steps of its half-cycle (window
  :data:`WINDOW`; the mean step changes slowly with the state, the median ignores the
  jump itself); a step without a pulse (last read of a half-cycle -> its next ``pulse =
  0`` read) is compared with 0. The residual is divided by a robust scale of the
  device's step residuals (see :func:`_threshold` for the threshold). Outlying steps of
  many devices that all span one row of the file form a boundary. A single bad read (a
  spike: two consecutive outlying steps of opposite sign that cancel) is not a
  discontinuity and is ignored.

The jump of a device at a boundary is the residual of its step that spans the boundary
(the change of conductance there minus the expected pulse step), in conductance units;
reported also in units of the read noise (read-noise rows when the file has them, else
the negative lag-1 covariance of the step residuals, as in the fit).

``rpuhw fit --segments`` cuts the traces at the boundaries (:func:`segment_index`): each
side is a trace of its own, fitted from its own measured states; no step spans a cut.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import numpy as np

from rpuhw.calibration.measurements import (
    Measurements,
    conductance_unit,
    resume_points,
    sidecar_path,
)

WINDOW = 21
"""Steps in the running median that gives a step's expected value (odd)."""

ALPHA = 1e-3
"""Family-wise false-alarm probability of the detection (whole file, no discontinuity)."""

KAPPA = 2.0
"""Safety factor on the Gaussian threshold (see :func:`_threshold`)."""

FLOOR = 0.3
"""The step-noise scale of a device is at least this fraction of its 90th-percentile step
magnitude (a device resting at a noise-free hard bound has a zero MAD)."""


@dataclass
class Discontinuity:
    """One boundary in the rows of a measurement and every device's jump there."""

    row: int
    """Data rows before the boundary (header excluded): the boundary lies between data rows
    ``row - 1`` and ``row`` counted from 0 (CSV lines ``row + 1`` and ``row + 2`` of a file
    written by rpuhw, which has no blank or comment lines)."""
    at: str | None
    """Time of the resume (sidecar ``resumed``); None when the sidecar does not name it."""
    found_by: str
    """``"sidecar"`` (a ``resumed`` entry with a row), ``"data"`` (detected), or
    ``"sidecar and data"``."""
    devices: np.ndarray
    """Ids of the devices with a step spanning the boundary."""
    jump: np.ndarray
    """Jump of each of ``devices`` (conductance units: S, or weight units): the change of
    conductance across the boundary minus the expected pulse step."""
    z: np.ndarray
    """Each jump divided by its device's step-noise scale."""
    pulsed: np.ndarray
    """Whether a pulse was applied between the two reads around the boundary (a step the
    fit uses; False: the boundary falls between two half-cycles, where the fit does not
    link the traces anyway)."""
    threshold: float
    """|z| above which a jump counts (significant)."""
    read_noise: float | None
    """Read noise (conductance units) of the measurement; None when not resolved."""
    unit: str = "S"
    """``"S"`` or ``"weight"``."""
    sidecar_jumps: dict[int, float] = field(default_factory=dict)
    """Jumps the resumed run measured itself (sidecar ``resumed[].jumps``), if any."""
    names: list[str] | None = None
    """The file's device ids by code (``Measurements.device_ids``); None: the codes."""

    def name(self, code: int) -> str:
        """The device id the file uses for code ``code``."""
        return self.names[code] if self.names is not None else str(code)

    @property
    def jumped(self) -> np.ndarray:
        """Mask of the devices whose jump is significant."""
        return np.abs(self.z) > self.threshold

    @property
    def significant(self) -> bool:
        """Whether any device jumps significantly."""
        return bool(self.jumped.any())

    @property
    def median_jump(self) -> float:
        """Median jump over the devices (conductance units; 0 without devices)."""
        return float(np.median(self.jump)) if len(self.jump) else 0.0

    @property
    def largest(self) -> tuple[int, float]:
        """(device id, jump) of the largest jump in magnitude."""
        if not len(self.jump):
            return -1, 0.0
        k = int(np.argmax(np.abs(self.jump)))
        return int(self.devices[k]), float(self.jump[k])

    def to_dict(self) -> dict[str, Any]:
        """The ``--report`` JSON entry (jumps in conductance units, ``unit`` says which)."""
        dev, big = self.largest
        rn = self.read_noise
        return {
            "row": int(self.row), "csv_line": int(self.row) + 2, "at": self.at,
            "found_by": self.found_by, "significant": self.significant,
            "devices": len(self.devices), "devices_jumped": int(self.jumped.sum()),
            "within_half_cycle": bool(self.pulsed.any()),
            "unit": self.unit, "median_jump": self.median_jump,
            "largest_jump": big, "largest_jump_device": self.name(dev) if dev >= 0 else None,
            "read_noise": rn,
            "median_jump_in_read_noise": (self.median_jump / rn if rn else None),
            "threshold_z": self.threshold,
            "jumps": {self.name(int(d)): float(j) for d, j in zip(self.devices, self.jump,
                                                                   strict=True)},
            "sidecar_jumps": {str(k): v for k, v in self.sidecar_jumps.items()},
        }


# ---- steps in protocol order -----------------------------------------------------------


@dataclass
class _Steps:
    """Consecutive reads of each device in protocol order (pulse rows only)."""

    before: np.ndarray
    """Data-row index (file order) of the earlier read."""
    after: np.ndarray
    """Data-row index of the later read."""
    device: np.ndarray
    polarity: np.ndarray
    """Polarity of the later read's half-cycle."""
    pulsed: np.ndarray
    """Whether a pulse was applied between the two reads."""
    delta: np.ndarray
    """Conductance change (later minus earlier)."""
    resid: np.ndarray
    """``delta`` minus the expected change (running median of the half-cycle, or 0)."""
    scale: np.ndarray
    """Robust step-noise scale of the step's device (and polarity)."""
    group: np.ndarray
    """Half-cycle of the pulsed steps (running-median groups); -1 for unpulsed steps."""


def _steps(m: Measurements) -> _Steps:
    sel = np.flatnonzero(m.polarity != 0)
    dev = m.device[sel]
    pol = m.polarity[sel].astype(np.int64)
    half = 2 * m.cycles()[sel] + (pol < 0)
    pul = m.pulse[sel]
    order = np.lexsort((sel, pul, half, dev))
    idx, dev, half, pul, pol = sel[order], dev[order], half[order], pul[order], pol[order]
    if len(idx) > 1:  # duplicates of (device, half, pulse): the first in the file counts
        keep = np.r_[True, ~((dev[1:] == dev[:-1]) & (half[1:] == half[:-1])
                             & (pul[1:] == pul[:-1]))]
        idx, dev, half, pul, pol = idx[keep], dev[keep], half[keep], pul[keep], pol[keep]
    g = m.conductance[idx]
    same_dev = dev[1:] == dev[:-1]
    same_half = same_dev & (half[1:] == half[:-1]) & (pul[1:] == pul[:-1] + 1)
    next_half = same_dev & (half[1:] == half[:-1] + 1)
    pulsed = same_half | (next_half & (pul[1:] == 1))  # no pulse-0 read: a pulse between
    unpulsed = next_half & (pul[1:] == 0)
    use = pulsed | unpulsed
    j = np.flatnonzero(use)
    st = _Steps(before=idx[j], after=idx[j + 1], device=dev[j + 1], polarity=pol[j + 1],
                pulsed=pulsed[j], delta=g[j + 1] - g[j],
                resid=np.zeros(len(j)), scale=np.ones(len(j)),
                group=np.where(pulsed[j], half[j + 1], -1))
    # half-cycles of the pulsed steps as contiguous runs (steps are in protocol order)
    p = np.flatnonzero(st.pulsed)
    local = np.zeros(len(j))
    if len(p):
        key_d, key_h = st.device[p], st.group[p]
        new = np.r_[True, (key_d[1:] != key_d[:-1]) | (key_h[1:] != key_h[:-1])]
        run = np.cumsum(new) - 1
        start = np.flatnonzero(new)
        end = np.r_[start[1:], len(p)]
        med, mad = _running(st.delta[p], start[run], end[run])
        st.resid[p] = st.delta[p] - med
        local[p] = 1.4826 * mad
    st.resid[~st.pulsed] = st.delta[~st.pulsed]
    st.scale = np.maximum(_scales(st), local)
    return st


def _running(x: np.ndarray, start: np.ndarray, end: np.ndarray, chunk: int = 65536
             ) -> tuple[np.ndarray, np.ndarray]:
    """Running median of ``x`` and the median absolute deviation of ``x`` from it, over a
    window of :data:`WINDOW` entries centred on each entry, within the entry's run
    ``[start, end)`` (positions reflected at the run's ends). In chunks of ``chunk``
    entries (memory)."""
    n = len(x)
    h = WINDOW // 2
    offsets = np.arange(-h, h + 1)[None, :]
    med = np.empty(n)
    mad = np.empty(n)
    for c0 in range(0, n, chunk):
        c1 = min(n, c0 + chunk)
        pos = np.arange(c0, c1)[:, None] + offsets
        s, e = start[c0:c1, None], end[c0:c1, None]
        pos = np.where(pos < s, 2 * s - pos, pos)
        pos = np.where(pos >= e, 2 * (e - 1) - pos, pos)
        win = x[np.clip(pos, s, e - 1)]
        m = np.median(win, axis=1)
        med[c0:c1] = m
        # deviations from each window's median, of the window's own steps' residuals
        mad[c0:c1] = np.median(np.abs(win - m[:, None]), axis=1)
    return med, mad


def _scales(st: _Steps) -> np.ndarray:
    """Per step, the robust noise scale of its device: 1.4826 MAD of the device's residuals
    of the step's polarity (the smaller of the two for unpulsed steps), at least
    :data:`FLOOR` times the 90th percentile of the device's moving pulsed steps'
    magnitudes (steps above 1e-9 of its conductance span; noise-free data have devices
    resting at a bound, where the MAD is 0). A device that never moves gets an infinite
    scale (nothing to detect)."""
    out = np.full(len(st.delta), np.inf)
    order = np.argsort(st.device, kind="stable")
    devs = st.device[order]
    bounds = np.flatnonzero(np.r_[True, devs[1:] != devs[:-1], True])
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        k = order[a:b]
        pulsed = k[st.pulsed[k]]
        if not len(pulsed):
            continue
        mag = np.abs(st.delta[pulsed])
        moving = mag[mag > 1e-9 * max(float(mag.max()), 1e-300)]
        if not len(moving):
            continue
        floor = FLOOR * float(np.percentile(moving, 90))
        scale = {}
        for pol in (1, -1):
            r = st.resid[pulsed[st.polarity[pulsed] == pol]]
            if len(r):
                scale[pol] = max(1.4826 * float(np.median(np.abs(r - np.median(r)))), floor)
        for pol, sc in scale.items():
            out[pulsed[st.polarity[pulsed] == pol]] = sc
        out[k[~st.pulsed[k]]] = min(scale.values())
    return out


def _threshold(n: int, alpha: float = ALPHA) -> float:
    """|z| above which one of ``n`` step residuals counts as a jump.

    If the residuals were independent standard normal, the chance that any of ``n``
    exceeds ``t`` in magnitude is at most ``n * 2 (1 - Phi(t))`` (Bonferroni), so
    ``t0 = Phi^-1(1 - alpha / (2 n))`` keeps the chance of a false alarm anywhere in the
    file below ``alpha`` (:data:`ALPHA` = 0.001; t0 = 4.4 for 100 steps, 5.3 for 10^4,
    6.1 for 10^6). Real step residuals are not identically distributed: cycle-to-cycle
    noise is multiplicative, so a step's noise follows its mean step, which changes
    along a half-cycle (the scale is the device's median-like MAD, up to about half the
    largest local noise), and the running median adds its own error. The threshold is
    therefore ``KAPPA * t0`` with :data:`KAPPA` = 2, which covers a local noise twice the
    device's robust scale; on clean simulated measurements of every device model (16 x 16
    devices, 300 pulses, 2 cycles) the largest |z| stayed below half this threshold. The
    price is power: a jump is found when it exceeds ``2 t0`` step-noise scales (about
    10-12 here), far below the jumps of a restarted bench (tens to hundreds).
    """
    t0 = -NormalDist().inv_cdf(alpha / (2.0 * max(n, 1)))
    return KAPPA * t0


def _read_noise(m: Measurements, st: _Steps, outlier: np.ndarray,
                cuts: list[int]) -> float | None:
    """Read noise (conductance units): read-noise rows if any, else -cov(r_s, r_s+1)."""
    sel = np.flatnonzero(m.polarity == 0)
    if len(sel) >= 3:
        seg = np.searchsorted(np.asarray(sorted(cuts), dtype=np.int64), sel, side="right")
        key = (m.device[sel] * 1_000_003 + m.cycles()[sel]) * 1_000 + seg
        _, grp = np.unique(key, return_inverse=True)
        n = np.bincount(grp).astype(float)
        g = m.conductance[sel]
        mean = np.bincount(grp, g) / n
        ss = float(np.bincount(grp, (g - mean[grp]) ** 2).sum())
        dof = float((n - 1).sum())
        if dof >= 2:
            return math.sqrt(ss / dof)
    ok = st.pulsed & ~outlier
    pair = ok[:-1] & ok[1:] & (st.after[:-1] == st.before[1:]) & (st.group[:-1] == st.group[1:])
    prod = (st.resid[:-1] * st.resid[1:])[pair]
    if len(prod) < 10:
        return None
    est, se = -float(prod.mean()), float(prod.std() / math.sqrt(len(prod)))
    return math.sqrt(est) if est > 3 * se else None


# ---- boundaries ------------------------------------------------------------------------


def _clusters(before: np.ndarray, after: np.ndarray) -> list[tuple[int, int]]:
    """Groups of steps whose row intervals ``(before, after]`` share a row: (lo, hi) of
    each group's common rows, the boundary being at ``lo`` (the earliest row after it)."""
    out: list[tuple[int, int]] = []
    for b, a in sorted(zip(before.tolist(), after.tolist(), strict=True)):
        lo, hi = b + 1, a
        if out and max(out[-1][0], lo) <= min(out[-1][1], hi):
            out[-1] = (max(out[-1][0], lo), min(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _jumps_at(st: _Steps, row: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(device ids, jumps, z, pulsed) of the steps spanning ``row`` (one per device: the
    largest)."""
    span = np.flatnonzero((st.before < row) & (st.after >= row))
    if not len(span):
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros(0, bool)
    z = st.resid[span] / st.scale[span]
    order = np.lexsort((-np.abs(z), st.device[span]))
    span, z = span[order], z[order]
    first = np.r_[True, st.device[span][1:] != st.device[span][:-1]]
    span, z = span[first], z[first]
    return st.device[span], st.resid[span], z, st.pulsed[span]


def find_discontinuities(m: Measurements, alpha: float = ALPHA) -> list[Discontinuity]:
    """Resume boundaries of ``m`` (sidecar rows, and jumps found in the data), ordered by
    row, with every device's jump. Boundaries with no significant jump are kept (a bench
    that kept its state across a resume); see :attr:`Discontinuity.significant`."""
    source = str(sidecar_path(m.source))
    points = resume_points(m.meta, source) if m.meta else []
    unit = conductance_unit(m.meta)
    st = _steps(m)
    n = len(st.delta)
    if n == 0:
        return []
    t = _threshold(n, alpha)
    z = st.resid / st.scale
    out = np.abs(z) > t
    # a single bad read: two consecutive outlying steps of one device that cancel
    both = out[:-1] & out[1:] & (st.after[:-1] == st.before[1:]) & \
        (st.device[:-1] == st.device[1:])
    cancel = both & (np.sign(z[:-1]) != np.sign(z[1:])) & \
        (np.abs(st.resid[:-1] + st.resid[1:]) < t * np.maximum(st.scale[:-1], st.scale[1:]))
    spike = np.r_[cancel, False] | np.r_[False, cancel]
    jump_steps = np.flatnonzero(out & ~spike)
    found = _clusters(st.before[jump_steps], st.after[jump_steps])
    # boundaries: the sidecar's rows, then the detected ones (merged when they agree)
    bounds: list[dict[str, Any]] = []
    for p in points:
        if p.row is not None and 0 < p.row < len(m):
            bounds.append({"row": p.row, "at": p.at, "by": "sidecar", "jumps": p.jumps})
    no_row = [p for p in points if p.row is None]
    unmatched = []
    for lo, hi in found:
        match = next((b for b in bounds if lo <= b["row"] <= hi), None)
        if match is not None:
            match["by"] = "sidecar and data"
        else:
            unmatched.append({"row": lo, "at": None, "by": "data", "jumps": {}})
    if len(unmatched) == len(no_row):  # old sidecars: resume times without rows, in order
        for b, p in zip(unmatched, no_row, strict=True):
            b["at"], b["jumps"] = p.at, p.jumps
    bounds += unmatched
    bounds.sort(key=lambda b: b["row"])
    cuts = [b["row"] for b in bounds]
    read_noise = _read_noise(m, st, out, cuts)
    n_dev = len(np.unique(st.device))
    t_known = _threshold(n_dev, alpha)  # a boundary named by the sidecar: one test per device
    result = []
    for b in bounds:
        dev, jump, zz, pulsed = _jumps_at(st, b["row"])
        result.append(Discontinuity(
            row=int(b["row"]), at=b["at"] or None, found_by=b["by"], devices=dev, jump=jump,
            z=zz, pulsed=pulsed, threshold=t if b["by"] == "data" else t_known,
            read_noise=read_noise, unit=unit, sidecar_jumps=dict(b["jumps"]),
            names=getattr(m, "device_ids", None)))
    return result


def segment_index(n_rows: int, cuts: list[int] | np.ndarray) -> np.ndarray:
    """Segment number (0, 1, ...) of each of ``n_rows`` data rows cut before each row in
    ``cuts`` (data-row indices)."""
    c = np.unique(np.asarray(list(cuts), dtype=np.int64))
    return np.searchsorted(c, np.arange(n_rows), side="right").astype(np.int64)
