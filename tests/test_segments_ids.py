"""Discontinuity reports name devices by the file's own ids (any text), not by codes."""

from __future__ import annotations

import numpy as np

from rpuhw.calibration.measurements import Measurements
from rpuhw.calibration.segments import Discontinuity, find_discontinuities


def _disc(names):
    return Discontinuity(row=10, at=None, found_by="data", devices=np.array([0, 1]),
                         jump=np.array([1e-6, -3e-6]), z=np.array([1.0, -3.0]),
                         pulsed=np.array([True, True]), threshold=2.0, read_noise=1e-7,
                         names=names)


def test_report_keys_are_the_files_ids():
    d = _disc(["chipA-d0", "chipA-d1"]).to_dict()
    assert d["jumps"] == {"chipA-d0": 1e-6, "chipA-d1": -3e-6}
    assert d["largest_jump_device"] == "chipA-d1"
    assert set(_disc(None).to_dict()["jumps"]) == {"0", "1"}  # no ids: the codes


def test_find_discontinuities_carries_the_ids():
    """A jump planted in the middle of two devices' up traces (ids of text): the
    boundary found in the data names them as the file does."""
    rng = np.random.default_rng(0)
    n, ids = 200, ["chipA-d0", "chipA-d1"]
    rows = []
    for _ in range(2):
        g = 50e-6 + 0.2e-6 * np.arange(n) + 1e-9 * rng.standard_normal(n)
        g[n // 2:] += 20e-6  # every read after the middle 100 steps higher
        rows.append(g)
    device = np.repeat([0, 1], n)
    m = Measurements(device=device, pulse=np.tile(np.arange(n), 2),
                     polarity=np.ones(2 * n, np.int8), conductance=np.concatenate(rows),
                     device_ids=ids)
    found = find_discontinuities(m)
    assert found and all(d.names == ids for d in found)
    assert set(found[0].to_dict()["jumps"]) <= set(ids)
