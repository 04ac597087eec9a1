"""The contract's declared operations and their defaults (rpuhw/array.py).

Every caller above the contract (scheduler, layers, training, calibration) calls these
on any array without asking ``hasattr``; a backend that offers only native ``pulse`` and
``read`` (the minimum of a test chip) gets working defaults, checked here on a small
exact device whose every pulse moves a weight by exactly ``STEP``.
"""

from __future__ import annotations

import pytest
import torch

import rpuhw
from rpuhw.array import ArrayInfo, Capabilities, CrossPointArray
from rpuhw.periphery import Periphery, PeripheryConfig

STEP = 0.01


class PulseAndRead(CrossPointArray):
    """Native pulse and read only, exact steps, counting whole-array reads."""

    capabilities = Capabilities(pulse=True, read=True)

    def __init__(self, rows: int = 3, cols: int = 4):
        super().__init__(rows, cols)
        self.w = torch.zeros(rows, cols)
        self.reads = 0
        self.pulses = 0

    def nominal_step(self) -> float:
        return STEP

    def _pulse(self, counts):
        self.pulses += int(counts.abs().sum())
        self.w += STEP * counts.float()

    def _read(self):
        self.reads += 1
        return self.w.clone()


class SerialReader(PulseAndRead):
    """Addresses one device per read: read_devices reads only the chosen ones."""

    serial_reads = True

    def __init__(self, rows: int = 3, cols: int = 4):
        super().__init__(rows, cols)
        self.device_reads: list[tuple[int, int]] = []

    def _read_devices(self, devices):
        self.device_reads += devices
        return torch.stack([self.w[i, j] for i, j in devices]) if devices else torch.zeros(0)


def test_info_defaults_to_the_nominal_step_only():
    info = PulseAndRead().info()
    assert info == ArrayInfo(dw_min=STEP)
    assert (info.w_min, info.w_max, info.g_min, info.g_max, info.read_voltage,
            info.out_bound) == (None,) * 6


def test_simulated_array_info_has_the_model_bounds_io_and_conductance(tmp_path):
    yaml = tmp_path / "dev.yaml"
    yaml.write_text("model: soft_bounds\ndw_min: 0.002\nw_min: -0.5\nw_max: 0.7\n"
                    "io: {out_bound: 8.0}\nconductance: {g_min: 1.0e-6, g_max: 5.0e-5}\n")
    info = rpuhw.open_array(f"sim:{yaml}", 2, 3, seed=0).info()
    assert (info.dw_min, info.w_min, info.w_max, info.out_bound) == (0.002, -0.5, 0.7, 8.0)
    assert (info.g_min, info.g_max, info.read_voltage) == (1.0e-6, 5.0e-5, None)


def test_set_weights_default_is_a_short_write_verify():
    arr = PulseAndRead()
    target = torch.linspace(-0.2, 0.2, 12).reshape(3, 4)
    arr.set_weights(target)
    assert arr.pulses > 0  # it pulsed the devices (there is no direct write)
    assert (arr.w - target).abs().max() <= 2 * STEP


def test_state_dict_round_trip_by_read_and_write_verify():
    src = PulseAndRead()
    src.pulse(torch.arange(12, dtype=torch.int32).reshape(3, 4) - 6)
    state = src.state_dict()
    assert set(state) == {"weights"} and torch.equal(state["weights"], src.w)
    dst = PulseAndRead()
    dst.load_state_dict(state)
    assert (dst.w - src.w).abs().max() <= 2 * STEP
    with pytest.raises(ValueError, match="weights"):
        dst.load_state_dict({"rng": 1})
    with pytest.raises(ValueError, match=r"expected shape \[3, 4\]"):
        dst.load_state_dict({"weights": torch.zeros(2, 2)})


def test_stats_and_snapshot_defaults():
    arr = PulseAndRead()
    assert arr.stats() == {}
    assert arr.snapshot() == repr(arr)


def test_read_devices_picks_from_one_whole_read():
    arr = PulseAndRead()
    arr.pulse(torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], dtype=torch.int32))
    got = arr.read_devices([(0, 1), (2, 3), (1, 0)])
    assert got.dtype == torch.float32
    assert torch.allclose(got, torch.tensor([0.02, 0.12, 0.05]))
    assert arr.reads == 1


def test_read_devices_reads_only_the_chosen_devices_on_a_serial_backend():
    arr = SerialReader()
    arr.read_devices([(2, 1), (0, 0)])
    assert arr.device_reads == [(2, 1), (0, 0)] and arr.reads == 0


def test_read_devices_refuses_a_device_outside_the_array_before_reading():
    for arr in (PulseAndRead(), SerialReader()):
        with pytest.raises(ValueError, match=r"\(3, 0\) is outside the 3 x 4 array"):
            arr.read_devices([(0, 0), (3, 0)])
        assert arr.reads == 0


class Bounded(PulseAndRead):
    """Outputs saturate at 2 (its info says so): bound management must use that bound."""

    capabilities = Capabilities(pulse=True, read=True, forward=True)

    def info(self) -> ArrayInfo:
        return ArrayInfo(dw_min=STEP, out_bound=2.0)

    def _forward(self, x):
        return (x @ self.w.T).clamp(-2.0, 2.0)


def test_bound_management_uses_the_out_bound_from_info():
    arr = Bounded(1, 4)
    arr.w.fill_(1.0)
    per = Periphery(arr, PeripheryConfig(noise_management=True, bound_management=True))
    assert per.out_bound == 2.0
    y = per.forward(torch.ones(1, 4))  # W x = 4 > 2: one halving gives 2 (still at the
    assert per.stats.bm_halvings >= 1  # bound), two give 1: the exact 4 comes back
    assert torch.allclose(y, torch.tensor([[4.0]]))


def test_pulse_counts_are_unbiased_stochastic_rounding():
    """-lr d^T x / dw_min = -1.3 for every device: counts are -1 or -2, -2 with p = 0.3.
    Over 2,000 draws of 12 devices the mean has sd sqrt(0.21 / 24,000) = 0.003: 5 sd."""
    per = Periphery(PulseAndRead(), seed=0)
    x, d = torch.ones(1, 4), torch.ones(1, 3)
    lr = 1.3 * STEP
    draws = torch.stack([per.pulse_counts(x, d, lr) for _ in range(2000)]).double()
    assert set(draws.unique().tolist()) == {-2.0, -1.0}
    assert abs(draws.mean().item() + 1.3) < 5 * (0.21 / draws.numel()) ** 0.5


def test_update_tiles_gives_every_listed_line_the_same_pulses():
    """Two ideal tiles fed from one encoding: tile b holds rows (1, 0, 1) of the logical
    2 x 3 update, so its rows equal tile a's rows 1, 0, 1 exactly, pulse for pulse."""
    import numpy as np

    from rpuhw.periphery.management import TileLines

    a, b = rpuhw.IdealArray(2, 3), rpuhw.IdealArray(3, 3)
    pa, pb = Periphery(a, seed=1), Periphery(b, seed=2)
    x, d = torch.rand(50, 3) - 0.5, torch.rand(50, 2) - 0.5
    pa.update_tiles(x, d, 0.01, [TileLines(pa, np.arange(2), slice(0, 3)),
                                 TileLines(pb, np.array([1, 0, 1]), slice(0, 3))])
    assert a.weights.abs().sum() > 0
    assert torch.equal(b.weights, a.weights[[1, 0, 1]])
    assert pa.stats.updates == pb.stats.updates == 50
