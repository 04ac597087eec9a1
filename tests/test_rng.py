"""The compiled generator: splitmix64 streams and the ziggurat normal are what they claim.

Tolerances: with n draws, a sample mean has standard error 1/sqrt(n), a sample
variance sqrt(2/n), a frequency q has sqrt(q(1-q)/n); we allow 5 standard errors
(two-sided p ~ 6e-7 per check). The KS test uses p > 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from rpuhw._jit import HAVE_NUMBA

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="numba not installed")

N = 2_000_000


@pytest.fixture(scope="module")
def z():
    from rpuhw.sim import kernels

    return kernels.normals(N, 12345)


def test_moments(z):
    assert abs(z.mean()) < 5 / math.sqrt(N)
    assert abs(z.var() - 1) < 5 * math.sqrt(2 / N)
    # fourth moment 3, sd of the sample 4th moment sqrt(96/n)
    assert abs((z**4).mean() - 3) < 5 * math.sqrt(96 / N)


def test_distribution_ks(z):
    assert stats.kstest(z[:500_000], "norm").pvalue > 1e-4


@pytest.mark.parametrize("t", [1.0, 2.5, 3.442619855899, 4.0])
def test_tail_frequencies_both_sides(z, t):
    """Includes the ziggurat's tail (beyond R = 3.4426) and its wedges."""
    q = stats.norm.sf(t)
    se = math.sqrt(q * (1 - q) / N)
    assert abs((z > t).mean() - q) < 5 * se + 1e-7
    assert abs((z < -t).mean() - q) < 5 * se + 1e-7


def test_streams_are_independent_and_reproducible():
    from rpuhw.sim import kernels

    a, b = kernels.normals(100_000, 1), kernels.normals(100_000, 2)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / math.sqrt(100_000)
    assert np.array_equal(a, kernels.normals(100_000, 1))


def test_popcount_matches_python():
    from rpuhw.sim import kernels

    rng = np.random.default_rng(0)
    for v in rng.integers(0, 2**63, 200, dtype=np.uint64).tolist() + [0, 2**64 - 1]:
        assert kernels.popcount(np.uint64(v)) == bin(v).count("1")
