"""Parametric bootstrap of a state-space fit: simulate replicas of the measurement from the
fitted devices with the measured protocol, for refitting (``calibration/fit.py``).

A replica has the measurement's devices' slots, each slot with its own protocol (the
steps of :class:`~rpuhw.calibration.statespace.StepTable`: which steps follow a pulse,
how many reads each step has, the read-noise rows' degrees of freedom). Slot ``j`` of
replica ``r`` gets the fitted parameters of device ``src[r, j]``, drawn with replacement
from the fitted devices (so the replicas also vary by which devices were measured: the
population parameters' intervals include the device-to-device sampling). The device's
state starts at the slot's first mean read (clipped to the device's bounds) and follows
the simulator's rule (:mod:`rpuhw.devices.base`, the device model's own step rule through
:meth:`FitModel.magnitude`), in normalised units ``u``:

.. math::  x \\leftarrow \\mathrm{clip}(x + d\\,\\mu_d(x)(1 + \\sigma_c\\xi), lo, hi),
           \\qquad \\bar y = x + \\sigma_r \\eta / \\sqrt{k},
           \\qquad ss = \\sigma_r^2 \\chi^2_{k-1}.
"""

from __future__ import annotations

import numpy as np

from rpuhw.calibration.fit_models import FitModel, Frame
from rpuhw.calibration.statespace import StepTable


def simulate(fm: FitModel, frame: Frame, st: StepTable, p: np.ndarray, glob: np.ndarray,
             sigma_c: float, sigma_r: float, replicas: int, seed: int = 0,
             resample: bool = True) -> tuple[StepTable, np.ndarray, np.ndarray]:
    """``replicas`` simulated copies of ``st`` as one :class:`StepTable` of
    ``replicas * D`` devices (device ``r * D + j`` is slot ``j`` of replica ``r``); also
    returns the replica of each device [R D] and the source device of each [R D]."""
    rng = np.random.default_rng(seed)
    n_dev = st.n_dev
    src = (rng.integers(0, n_dev, size=(replicas, n_dev)) if resample
           else np.tile(np.arange(n_dev), (replicas, 1)))
    # each device's steps in protocol order (the table is sorted by device)
    starts = np.searchsorted(st.dev, np.arange(n_dev + 1))
    length = int(np.max(np.diff(starts))) if n_dev else 0
    idx = starts[:-1, None] + np.arange(length)[None, :]
    idx = np.where(idx < starts[1:, None], idx, -1)                 # [D, T]
    rows = src.ravel()                                                # [R D]
    slot = np.tile(np.arange(n_dev), replicas)
    prm = p[rows]
    lo, hi = prm[:, 0], prm[:, 1]
    first = idx[slot, 0]
    x = np.clip(st.ybar[np.maximum(first, 0)], lo, hi)
    ybar = np.zeros((replicas * n_dev, length))
    for t in range(length):
        j = idx[slot, t]
        ok = j >= 0
        jj = np.maximum(j, 0)
        pulse = ok & st.pulsed[jj]
        for up in (True, False):
            sel = np.flatnonzero(pulse & ((st.pol[jj] > 0) == up))
            if not len(sel):
                continue
            mu = fm.magnitude(up, x[sel], prm[sel], glob, frame)
            step = mu * (1.0 + sigma_c * rng.standard_normal(len(sel)))
            x[sel] = np.clip(x[sel] + (step if up else -step), lo[sel], hi[sel])
        ybar[:, t] = x
    valid = idx[slot] >= 0
    j = idx[slot][valid]
    k = st.k[j]
    dev_rows = np.repeat(np.arange(replicas * n_dev), valid.sum(axis=1))
    y = ybar[valid] + sigma_r * rng.standard_normal(len(j)) / np.sqrt(k)
    ss = sigma_r ** 2 * rng.chisquare(np.maximum(k - 1, 1e-12)) * (k > 1)
    half_off = np.repeat(np.arange(replicas) * (int(st.half.max()) + 1 if len(st.half) else 1),
                         n_dev)
    half = st.half[j] + half_off[dev_rows]
    noise_dof = np.tile(st.noise_dof, replicas)
    noise_ss = sigma_r ** 2 * rng.chisquare(np.maximum(noise_dof, 1e-12)) * (noise_dof > 0)
    sim = StepTable(dev=dev_rows, half=half, cycle=st.cycle[j], pol=st.pol[j],
                    pulsed=st.pulsed[j], ybar=y, k=k.copy(), ss=ss, noise_ss=noise_ss,
                    noise_dof=noise_dof)
    return sim, np.repeat(np.arange(replicas), n_dev), rows
