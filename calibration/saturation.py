"""When has a half-cycle saturated: the trailing-window drift rule of ``--pulses auto``.

A device pulsed in one direction approaches its bound; it has **saturated** when the slope
of its last reads is within their noise. The rule (:func:`saturation_test`), per device
after ``n`` pulses of a half-cycle of polarity ``p`` (+1 up, -1 down):

- ``y_k``: the mean of the K reads after pulse ``k`` (``k = 0`` the read before the first
  pulse); the window is the last ``W`` of them, ``k = n - W + 1 .. n`` (none before
  ``n >= W``).
- ``b``: the least-squares slope of ``y_k`` against ``k`` over the window; the drift over
  the window is ``D = p b (W - 1)`` (the change the line predicts in the pulse direction).
- ``sigma``: the noise of one ``y_k``, ``sigma_read / sqrt(K)``, with ``sigma_read``
  measured: the standard deviation (ddof 1) of the device's read-noise rows (polarity 0,
  ``--read-noise-first``) when it has at least 3, else the pooled scatter of the K reads
  around their mean in the window (K >= 2); with neither, ``sigma`` is the residual
  standard deviation of the line (``W - 2`` degrees of freedom; it includes the
  cycle-to-cycle noise of the steps, so it errs on the high side). Floor: ``1e-6`` of the
  window's largest ``|y|`` (float32 reads of a noiseless array).
- saturated when ``D <= k_sigma * sigma``.

Constants (:class:`SaturationRule`): ``W = 64``, ``k_sigma = 1``. The slope estimate's
own noise is ``sd(D) = sigma (W - 1) / sqrt(W (W^2 - 1) / 12) = 0.43 sigma`` at W = 64,
so a device at its bound (true drift 0) passes with probability ``Phi(1 / 0.43) = 99 %``
at each pulse (it stops within a few pulses of reaching it), and one still drifting by
``2 sigma`` per window passes with 1 % per pulse. On a soft-bounds device whose step is
``dw_min (1 - w / w_max)`` a drift of ``sigma`` per window is a distance
``sigma w_max / ((W - 1) dw_min)`` from the bound. Measured on the demo's hidden device
(read noise 0.13 uS, about one step; 8 devices of ``sim:`` with its YAML, K = 1, 50
read-noise reads): the half-cycles stopped after 700-1700 pulses, 0.4-1.6 uS (0.5-2 %
of the 80 uS range) from the level reached after 4,000 pulses; with W = 32 they stopped
1.4-3.6 uS away.

The same rule applied to a finished file (:func:`half_cycle_ends`) gives what ``rpuhw
characterize`` prints: per device and half-cycle the pulses applied and whether the last
window had saturated (the live decision of ``--pulses auto`` sees the same reads, so it
agrees with it).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from .measurements import Measurements


@dataclass(frozen=True)
class SaturationRule:
    """The trailing-window drift rule (module docstring)."""

    window: int = 64
    """W: trailing pulses (per-pulse means) fitted by a line."""
    k_sigma: float = 1.0
    """Saturated when the line's drift over the window, in the pulse direction, is at most
    this many noise sigmas of a per-pulse mean."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> SaturationRule:
        data = data or {}
        return cls(window=int(data.get("window", cls.window)),
                   k_sigma=float(data.get("k_sigma", cls.k_sigma)))


@dataclass
class WindowTest:
    """The rule's numbers for a batch of devices (arrays of length n_devices)."""

    saturated: np.ndarray
    """bool: ``drift <= k_sigma * sigma``."""
    drift: np.ndarray
    """Drift over the window in the pulse direction (units of the reads)."""
    sigma: np.ndarray
    """Noise of a per-pulse mean used (units of the reads)."""


def saturation_test(reads: np.ndarray, polarity: int, sigma_read: np.ndarray | None,
                    rule: SaturationRule) -> WindowTest:
    """Apply the rule to the last ``W`` pulses of each device.

    Args:
        reads: ``[n_devices, W, K]`` reads (the K reads after each of the last W pulses).
        polarity: +1 (up) or -1 (down).
        sigma_read: per-device measured read noise (NaN or None where unknown).
        rule: the constants.
    """
    reads = np.asarray(reads, dtype=np.float64)
    n, w, k = reads.shape
    y = reads.mean(axis=2)
    x = np.arange(w, dtype=np.float64) - (w - 1) / 2
    sxx = float(np.sum(x * x))
    b = (y @ x) / sxx
    drift = polarity * b * (w - 1)
    resid = y - y.mean(axis=1, keepdims=True) - b[:, None] * x
    sigma = np.sqrt(np.sum(resid ** 2, axis=1) / max(w - 2, 1))  # fallback: the line's
    if k >= 2:
        within = np.sqrt(np.sum((reads - y[:, :, None]) ** 2, axis=(1, 2)) / (w * (k - 1)))
        sigma = within / np.sqrt(k)
    if sigma_read is not None:
        meas = np.asarray(sigma_read, dtype=np.float64).reshape(-1)
        sigma = np.where(np.isfinite(meas), meas / np.sqrt(k), sigma)
    sigma = np.maximum(sigma, 1e-6 * np.max(np.abs(y), axis=1))
    return WindowTest(drift <= rule.k_sigma * sigma, drift, sigma)


def read_noise_of(m: Measurements) -> dict[int, float]:
    """Per device code, the standard deviation (ddof 1) of its read-noise rows (polarity
    0) of level (cycle) 0 when it has at least 3."""
    out: dict[int, float] = {}
    sel = (m.polarity == 0) & (m.cycles() == 0)
    for d in np.unique(m.device[sel]).tolist():
        g = m.conductance[sel & (m.device == d)]
        if len(g) >= 3:
            out[int(d)] = float(np.std(g, ddof=1))
    return out


def half_cycle_ends(m: Measurements, rule: SaturationRule | None = None
                    ) -> list[dict[str, Any]]:
    """Per device and half-cycle of a pulse-response file: where it stopped and whether
    its last window had saturated.

    Returns dicts ``{"device": code, "cycle", "polarity", "pulses": last pulse index,
    "saturated": bool, "drift", "sigma"}`` (``saturated`` False with NaN numbers when the
    half-cycle has fewer than ``W`` pulses after its first read).
    """
    rule = rule or SaturationRule.from_dict((m.meta.get("settings") or {}).get("saturation"))
    noise = read_noise_of(m)
    sel = np.flatnonzero(m.polarity != 0)
    dev, cyc, pol = m.device[sel], m.cycles()[sel], m.polarity[sel].astype(np.int64)
    pul, rd, g = m.pulse[sel], m.reads()[sel], m.conductance[sel]
    order = np.lexsort((rd, pul, pol, cyc, dev))
    dev, cyc, pol, pul, rd, g = (a[order] for a in (dev, cyc, pol, pul, rd, g))
    out: list[dict[str, Any]] = []
    if not len(dev):
        return out
    cut = np.flatnonzero(np.r_[True, (dev[1:] != dev[:-1]) | (cyc[1:] != cyc[:-1])
                               | (pol[1:] != pol[:-1])])
    for s, e in zip(cut, np.r_[cut[1:], len(dev)], strict=True):
        d, c, p = int(dev[s]), int(cyc[s]), int(pol[s])
        k, r, gg = pul[s:e], rd[s:e], g[s:e]
        n = int(k.max())
        entry = {"device": d, "cycle": c, "polarity": p, "pulses": n, "saturated": False,
                 "drift": float("nan"), "sigma": float("nan")}
        kk = int(r.max()) + 1
        win = np.arange(n - rule.window + 1, n + 1)
        if n >= rule.window:
            block = np.full((rule.window, kk), np.nan)
            inside = k >= win[0]
            block[k[inside] - win[0], r[inside]] = gg[inside]
            if np.isfinite(block).all():
                t = saturation_test(block[None], p, np.array([noise.get(d, np.nan)]), rule)
                entry.update(saturated=bool(t.saturated[0]), drift=float(t.drift[0]),
                             sigma=float(t.sigma[0]))
        out.append(entry)
    return out
