"""Resume checks: are the devices where the stopped run left them?

A run on physical devices (a bench, a chip) that stops and is resumed continues from
what it recorded: the last rows of a measurement (``rpuhw characterize --resume``), the
weights in a training checkpoint (``rpuhw train --resume``). A chip that was
power-cycled, a probe card that was reseated or an emulator that was restarted can come
back in another state, and the resumed data would then be spliced onto a jump. Before
going on, both commands read the devices and compare; this module holds the statistics
they share.

The test, per device: ``jump = (mean of two reads now) - (recorded value)``. Without a
change of state the jump is read noise (the recorded value is one read, so its standard
deviation is ``sigma_jump = sqrt(1/2 + 1) sigma`` for a read noise ``sigma`` per read)
plus what the protocol may legitimately have done since the record (``allowance``: one
pulse step of a measurement killed between a pulse and its read, the training steps
since a checkpoint). A device is flagged when ``|jump| > allowance + t sigma_jump``.

``t = k f`` where

* ``k`` is the two-sided normal quantile at family-wise false-alarm rate
  :data:`ALPHA` over the ``N`` devices checked (Bonferroni: ``1 - ALPHA / (2 N)``;
  k = 3.3 for 1 device, 4.0 for 16, 4.7 for 416), so that a resume without a jump is
  refused about once in a thousand;
* ``f = 1 + 3 * 1.166 / sqrt(n)`` widens it for the sampling error of ``sigma``
  estimated from ``n`` samples by the median absolute value: that estimator's relative
  standard error is ``sqrt(1.36 / n) = 1.166 / sqrt(n)`` (its efficiency is 37 % of the
  standard deviation's), so ``f sigma_hat`` is an upper 3-standard-error bound on
  ``sigma`` (f = 1.35 for n = 100, 4.5 for n = 1).

``sigma`` comes from samples whose spread is a known multiple of the read noise
(:func:`robust_sigma`): second differences of successive reads of a measurement
(``g[k+1] - 2 g[k] + g[k-1]``: the mean pulse step cancels, the noise has
``sqrt(6) sigma``; the cycle-to-cycle spread of the steps adds to it, which only makes
the test more lenient) and the difference of the two reads taken at the resume
(``sqrt(2) sigma``). The median of absolute values is robust to the few samples a
jump of an earlier resume or a stuck device spoils.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 1e-3
"""Family-wise probability of refusing a resume whose devices did not move."""
MAD_TO_SIGMA = 1.4826
"""sigma = 1.4826 * median(|x|) for x ~ N(0, sigma^2)."""
MAD_REL_SE = 1.166
"""Relative standard error of the median-absolute estimate of sigma times sqrt(n)."""
JUMP_OF_TWO_READS = math.sqrt(1.5)
"""sigma_jump / sigma: the mean of two reads now minus one recorded read."""


def robust_sigma(samples: np.ndarray, scales: np.ndarray | float) -> tuple[float, int]:
    """``(sigma, n)``: the read noise from ``samples`` x_i ~ N(0, (scale_i sigma)^2).

    ``sigma = 1.4826 median(|x_i| / scale_i)`` over the finite samples; ``(0.0, 0)``
    without any.
    """
    x = np.abs(np.asarray(samples, dtype=np.float64)) / np.asarray(scales, dtype=np.float64)
    x = x[np.isfinite(x)]
    if not len(x):
        return 0.0, 0
    return MAD_TO_SIGMA * float(np.median(x)), int(len(x))


def sigmas_allowed(n_devices: int, n_samples: int, alpha: float = ALPHA) -> float:
    """``t = k f`` of the module docstring: the jump (in units of ``sigma_jump``) beyond
    which a device counts as moved, for ``n_devices`` checked and ``sigma`` estimated
    from ``n_samples``."""
    k = NormalDist().inv_cdf(1.0 - alpha / (2 * max(n_devices, 1)))
    f = 1.0 + 3.0 * MAD_REL_SE / math.sqrt(max(n_samples, 1))
    return k * f


@dataclass
class JumpCheck:
    """The comparison of the devices now with what the stopped run recorded."""

    jump: np.ndarray
    """float64 [N]: value now (mean of two reads) minus the recorded value."""
    allowance: np.ndarray
    """float64 [N]: change the protocol may have made since the record."""
    sigma: float
    """Read noise of one read (same unit as ``jump``)."""
    n_samples: int
    """Samples ``sigma`` was estimated from."""
    sigmas: float
    """``t``: the threshold in units of ``sigma_jump`` (:func:`sigmas_allowed`)."""
    noiseless: bool = False
    """The samples showed no noise (``sigma`` is the floor: a noiseless array)."""

    @property
    def limit(self) -> np.ndarray:
        """Largest |jump| per device that is not a jump."""
        return self.allowance + self.sigmas * JUMP_OF_TWO_READS * self.sigma

    @property
    def moved(self) -> np.ndarray:
        """bool [N]: the devices whose |jump| exceeds :attr:`limit`."""
        return np.abs(self.jump) > self.limit

    def worst(self) -> int:
        """Index of the largest |jump| among the moved devices (or overall)."""
        moved = self.moved
        score = np.where(moved, np.abs(self.jump), -1.0) if moved.any() else np.abs(self.jump)
        return int(np.argmax(score))

    def in_sigmas(self, value: float) -> float:
        """``value`` in units of the read noise (inf when it is zero)."""
        return value / self.sigma if self.sigma > 0 else math.copysign(math.inf, value)

    def describe(self, value: float, fmt) -> str:
        """``value`` in units of the read noise, for messages (``fmt`` formats a value
        in its unit): ``"-82.0 x the read noise (0.13 uS from 196 samples)"``."""
        if self.noiseless:
            return f"beyond the resolution of noiseless reads ({self.n_samples} samples)"
        return (f"{self.in_sigmas(value):.1f} x the read noise ({fmt(self.sigma)} from "
                f"{self.n_samples} samples)")


def check_jumps(now_a: np.ndarray, now_b: np.ndarray, recorded: np.ndarray,
                allowance: np.ndarray | float, noise_samples: np.ndarray | None = None,
                noise_scales: np.ndarray | float = 1.0, floor: float = 0.0,
                alpha: float = ALPHA) -> JumpCheck:
    """Compare two reads now (``now_a``, ``now_b``, [N]) with ``recorded`` [N].

    ``noise_samples`` with ``noise_scales`` (see :func:`robust_sigma`) add to the
    read-noise estimate from ``now_a - now_b``; ``floor`` is the smallest ``sigma``
    used (numerical resolution of noiseless arrays).
    """
    a = np.asarray(now_a, dtype=np.float64).reshape(-1)
    b = np.asarray(now_b, dtype=np.float64).reshape(-1)
    rec = np.asarray(recorded, dtype=np.float64).reshape(-1)
    samples, scales = [a - b], [np.full(len(a), math.sqrt(2.0))]
    if noise_samples is not None:
        extra = np.asarray(noise_samples, dtype=np.float64).reshape(-1)
        samples.append(extra)
        scales.append(np.broadcast_to(np.asarray(noise_scales, dtype=np.float64),
                                      extra.shape))
    sigma, n = robust_sigma(np.concatenate(samples), np.concatenate(scales))
    allow = np.broadcast_to(np.asarray(allowance, dtype=np.float64), rec.shape).copy()
    return JumpCheck(jump=(a + b) / 2 - rec, allowance=allow, sigma=max(sigma, floor),
                     n_samples=n, sigmas=sigmas_allowed(len(rec), n, alpha),
                     noiseless=sigma <= floor)
