"""The simulator's sparse pulse path (``SimulatedArray._pulse_sparse``, mp's and the
transfers' route for a few non-zero counts) against the dense one (``_pulse``): the same
pulses and the same random draws, so the same weights to the last bit, for models with
cycle-to-cycle noise, write noise (hidden weights) and state-dependent steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rpuhw import open_array
from rpuhw._jit import HAVE_NUMBA

SPECS = ["sim:drivers/emulators/hidden_device.yaml",  # soft bounds, c2c noise
         "sim:preset:ReRamSB",  # write noise: a hidden weight per device
         "sim:preset:ReRamES",  # exponential steps, write noise
         "sim:preset:PCM",  # one-directional steps
         "sim:constant_step"]


@pytest.mark.skipif(not HAVE_NUMBA, reason="the sparse path needs the compiled engine")
@pytest.mark.parametrize("spec", SPECS)
def test_sparse_pulses_equal_dense_pulses(spec):
    rows, cols = 12, 20
    dense, sparse = open_array(spec, rows, cols, seed=5), open_array(spec, rows, cols, seed=5)
    start = torch.empty(rows, cols).uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(2))
    dense.set_weights(start)
    sparse.set_weights(start)
    rng = np.random.default_rng(0)
    for _ in range(5):
        counts = rng.integers(-5, 6, size=(rows, cols)).astype(np.int32)
        counts[rng.random((rows, cols)) < 0.7] = 0  # mostly zero, as mp's counts
        r, c = np.nonzero(counts)  # row-major order
        before = dense.weights.clone()
        dense._pulse(torch.from_numpy(counts))
        assert sparse._pulse_sparse(r.astype(np.int32), c.astype(np.int32),
                                    counts[r, c].astype(np.int32), len(r))
        assert torch.equal(dense.weights, sparse.weights)
        if dense._hidden is not None:
            assert torch.equal(dense._hidden, sparse._hidden)
        moved = (dense.weights != before).numpy()
        assert moved[counts != 0].mean() > 0.5  # pulses landed (a test that can fail)
        if dense._hidden is None:
            assert not moved[counts == 0].any()  # and only where asked
    if "ReRam" in spec:
        assert dense._hidden is not None  # the write-noise path was the one compared
