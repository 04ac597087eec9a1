"""ArC TWO backend (drivers/arc2.py) against a fake board over a simulated chip.

The fake is ``create_autospec(pyarc2.Instrument, instance=True)`` (misspelt methods
fail) whose calls are served by :class:`SimChip`: a :class:`SimulatedArray` holds
the device states; reads return the currents the board would measure (from
libarc2's conventions: a read line at ``-vread``, results in board index order,
``read_all(v, Rows)`` indexed ``[word-line, bit-line]``) and pulses move the
device between the two pulsed channels in the direction of ``V(row) - V(col)``,
only when the queued commands are executed. A wrong channel map, polarity,
orientation or a missing ``execute()`` therefore changes the wrong devices or
none, and the tests below see it.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from unittest.mock import call, create_autospec

import numpy as np
import pytest
import torch
import yaml

from rpuhw import open_array
from rpuhw.errors import ConfigError
from rpuhw.sim.array import SimulatedArray

pyarc2 = pytest.importorskip("pyarc2")

from rpuhw.drivers import arc2  # noqa: E402  (after the importorskip)
from rpuhw.drivers.arc2 import ArcTwoArray, arc2_from_mapping  # noqa: E402
from rpuhw.drivers.errors import InstrumentConnectionError, SafetyError  # noqa: E402

pytestmark = pytest.mark.timeout(120)

# the board as libarc2 defines it, written out independently of the driver
BITS = [*range(0, 16), *range(32, 48)]     # bit-lines (rows), board index order
WORDS = [*range(16, 32), *range(48, 64)]   # word-lines (columns), board index order
FLOAT = call.finalise_operation(pyarc2.IdleMode.Float)


class SimChip:
    """A simulated chip wired to an ArC TWO board, behind a fake ``pyarc2.Instrument``.

    Args:
        sim: the device states (its shape is the wired chip).
        wmap: the weight <-> conductance map (the config's ``weights``).
        row_channels, col_channels: the board channel of each chip row / column.
        v_switch: |V| (volts) below which a pulse does nothing (half-selected devices).
    """

    METHODS = ("read_all", "read_slice", "read_one", "pulse_one", "pulse_slice",
               "pulse_slice_masked", "execute", "wait", "finalise_operation", "float_all",
               "ground_all", "ground_all_fast")

    def __init__(self, sim: SimulatedArray, wmap, row_channels, col_channels,
                 v_switch: float = 0.8):
        self.sim, self.wmap, self.v_switch = sim, wmap, v_switch
        self.row_of = {ch: i for i, ch in enumerate(row_channels)}
        self.col_of = {ch: j for j, ch in enumerate(col_channels)}
        self._bit_idx = np.array([BITS.index(ch) for ch in row_channels])
        self._word_idx = np.array([WORDS.index(ch) for ch in col_channels])
        self.pending = np.zeros(sim.shape, np.int64)
        self.applied = np.zeros(sim.shape, np.int64)
        """Net signed pulses that reached each device (executed)."""
        self.biased = False
        """Some line was driven since the last float/ground."""
        self.calls: Counter = Counter()
        self.fail_on: tuple[str, int] | None = None
        """(method, n): the n-th call of method raises ArC2Error (1-based)."""
        self.fake = create_autospec(pyarc2.Instrument, instance=True)
        for name in self.METHODS:
            getattr(self.fake, name).side_effect = self._serve(name)

    def _serve(self, name):
        impl = getattr(self, "_" + name)

        def side_effect(*args, **kwargs):
            self.calls[name] += 1
            if self.fail_on == (name, self.calls[name]):
                raise pyarc2.ArC2Error(f"simulated USB failure in {name}")
            return impl(*args, **kwargs)
        return side_effect

    # ---- reads ---------------------------------------------------------------------------
    def board_currents(self, vread: float) -> np.ndarray:
        """[bit-line index, word-line index] currents; 0 where no device is wired."""
        g = self.wmap.to_conductance(self.sim.read().numpy().astype(np.float64))
        out = np.zeros((32, 32))
        out[np.ix_(self._bit_idx, self._word_idx)] = -g * vread  # sunk by the line at -vread
        return out

    def _read_slice(self, chan, vread):
        self.biased = True
        board = self.board_currents(vread)
        if chan in BITS:
            return board[BITS.index(chan)].astype(np.float32)
        assert chan in WORDS, f"read_slice on channel {chan}"
        return board[:, WORDS.index(chan)].astype(np.float32)

    def _read_all(self, vread, order):
        self.biased = True
        board = self.board_currents(vread)
        # BiasOrder.Rows: every word-line in turn is the low channel -> [word, bit]
        return (board.T if order is pyarc2.BiasOrder.Rows else board).astype(np.float32)

    def _read_one(self, low, high, vread):
        self.biased = True
        board = self.board_currents(vread)
        if low in BITS:
            return float(board[BITS.index(low), WORDS.index(high)])
        return float(board[BITS.index(high), WORDS.index(low)])

    # ---- pulses --------------------------------------------------------------------------
    def _pulse_pair(self, low: int, high: int, voltage: float) -> None:
        low, high = int(low), int(high)
        if low in WORDS and high in BITS:      # V(row) - V(col) = V(high) - V(low)
            row_ch, col_ch, v_dev = high, low, voltage
        elif low in BITS and high in WORDS:
            row_ch, col_ch, v_dev = low, high, -voltage
        else:
            raise AssertionError(f"no device between channels {low} and {high}")
        self.biased = True
        i, j = self.row_of.get(row_ch), self.col_of.get(col_ch)
        if i is None or j is None or abs(v_dev) < self.v_switch:
            return
        sign = 1 if v_dev > 0 else -1
        if self.pending[i, j] * sign < 0:  # keep the order of opposite pulses
            self._apply()
        self.pending[i, j] += sign

    def _pulse_one(self, low, high, voltage, nanos):
        assert isinstance(nanos, int) and nanos > 0, nanos
        self._pulse_pair(low, high, voltage)
        return self.fake

    def _pulse_slice_masked(self, chan, voltage, nanos, mask):
        assert isinstance(nanos, int) and nanos > 0, nanos
        for high in mask:
            self._pulse_pair(chan, high, voltage)
        return self.fake

    def _pulse_slice(self, chan, voltage, nanos):
        return self._pulse_slice_masked(chan, voltage, nanos, WORDS if chan in BITS else BITS)

    def _apply(self) -> None:
        if self.pending.any():
            self.sim.pulse(torch.from_numpy(self.pending.astype(np.int32)))
            self.applied += self.pending
            self.pending[:] = 0

    def _execute(self):
        self._apply()
        return self.fake

    def _wait(self):
        return None

    # ---- channel control -----------------------------------------------------------------
    def _finalise_operation(self, mode=None, control=None):
        if mode is not None:  # the real one ends with execute()
            self._apply()
            self.biased = False

    def _float_all(self):
        self.biased = False
        return self.fake

    _ground_all = _ground_all_fast = _float_all


# ---- builders -----------------------------------------------------------------------------
def config_dict(rows: int = 4, cols: int = 5, **extra) -> dict:
    d = {"device_id": 0, "rows": rows, "cols": cols, "read": {"voltage": 0.2},
         "pulse": {"potentiation": {"amplitude": 1.1, "width_s": 1e-6},
                   "depression": {"amplitude": 1.3, "width_s": 2e-6}},
         "weights": {"g_min": 1e-6, "g_max": 1e-4, "w_min": -2.0, "w_max": 2.0,
                     "dw_min": 0.001},
         "limits": {"v_max": 2.0}}
    d.update(extra)
    return d


def make(rows: int = 4, cols: int = 5, *, wired: tuple[int, int] | None = None, seed: int = 0,
         device=None, chip_map: dict | None = None, **extra) -> tuple[ArcTwoArray, SimChip]:
    """An ArcTwoArray (block rows x cols) on a fake board over a wired chip."""
    wr, wc = wired or (rows, cols)
    cfg = arc2_from_mapping(config_dict(wr, wc, **extra), source="bench/arc2.yaml")
    chip_map = chip_map or {"rows": cfg.row_channels(), "cols": cfg.col_channels()}
    sim = SimulatedArray(wr, wc, device=device, seed=seed)
    chip = SimChip(sim, cfg.weights, chip_map["rows"], chip_map["cols"])
    return ArcTwoArray(cfg, rows, cols, instrument=chip.fake), chip


def fake_arc2_array(rows: int, cols: int, seed: int | None) -> ArcTwoArray:
    """Conformance factory: default simulator devices behind a fake ArC TWO.

    The board returns float32 currents, so a read quantises weights (~1e-7 here); the
    suite compares a fresh array's zero weights exactly, so this map makes w = 0 round-trip
    exactly: powers of two throughout (g = 2**-14 S at w = 0, I = 2**-16 A at 0.25 V)."""
    return make(rows, cols, seed=0 if seed is None else seed, read={"voltage": 0.25},
                weights={"g_min": 0.0, "g_max": 2.0**-13, "w_min": -2.0, "w_max": 2.0,
                         "dw_min": 0.001})[0]


def random_weights(chip: SimChip, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    chip.sim.set_weights(torch.rand(chip.sim.shape, generator=g) * 0.8 - 0.4)
    return chip.sim.weights.clone()


def pulse_calls(chip: SimChip) -> list:
    return [c for c in chip.fake.method_calls if c[0] in ("pulse_one", "pulse_slice_masked")]


def device_voltages(chip: SimChip) -> set[tuple[int, int, float, int]]:
    """(row channel, col channel, V(row) - V(col), nanos) of every pulsed device."""
    out = set()
    for name, args, _ in pulse_calls(chip):
        if name == "pulse_one":
            low, high, v, nanos = args
            pairs = [(low, high)]
        else:
            low, v, nanos, mask = args
            pairs = [(low, int(h)) for h in mask]
        for lo, hi in pairs:
            out.add((hi, lo, v, nanos) if hi in BITS else (lo, hi, -v, nanos))
    return out


# ---- reads --------------------------------------------------------------------------------
def test_read_equals_chip_weights_by_row_slices():
    arr, chip = make()
    w = random_weights(chip)
    got = arr.read()
    assert got.dtype == torch.float32 and got.shape == (4, 5)
    torch.testing.assert_close(got, w, atol=2e-5, rtol=0)
    assert chip.calls["read_slice"] == 4 and chip.calls["read_all"] == 0
    assert [c.args for c in chip.fake.read_slice.call_args_list] == [(ch, 0.2) for ch in
                                                                     (0, 1, 2, 3)]


def test_read_of_a_block_of_a_larger_chip():
    arr, chip = make(3, 2, wired=(32, 32))
    w = random_weights(chip)
    torch.testing.assert_close(arr.read(), w[:3, :2], atol=2e-5, rtol=0)


def test_read_noise_is_the_chips():
    spec = SimulatedArray(4, 5).spec
    spec.io.read_noise = 0.01
    arr, chip = make(device=spec)
    w = random_weights(chip)
    reads = torch.stack([arr.read() for _ in range(64)])
    assert reads.std(0).mean() == pytest.approx(0.01, rel=0.25)
    assert (reads.mean(0) - w).abs().max() < 5 * 0.01 / 8


def test_full_board_read_uses_read_all_with_its_orientation():
    arr, chip = make(32, 32)
    w = random_weights(chip)
    torch.testing.assert_close(arr.read(), w, atol=2e-5, rtol=0)
    assert chip.fake.read_all.call_args_list == [call(0.2, pyarc2.BiasOrder.Rows)]
    assert chip.calls["read_slice"] == 0
    assert not torch.allclose(w, w.T, atol=0.05)  # a transposed read would fail above


# ---- pulses -------------------------------------------------------------------------------
def test_pulse_direction_and_counts_per_device():
    arr, chip = make()
    counts = torch.tensor([[3, -2, 0, 7, 7],
                           [0, 0, 0, 0, -5],
                           [1, 1, 1, 1, 1],
                           [-4, 2, -4, 0, 9]], dtype=torch.int32)
    before = arr.read()
    arr.pulse(counts)
    assert np.array_equal(chip.applied, counts.numpy())
    delta = arr.read() - before
    assert (delta[counts > 0] > 0).all() and (delta[counts < 0] < 0).all()
    assert (delta[counts == 0] == 0).all()
    # batching: per row and polarity, max |count| calls (the staircase), not the sum
    expect = sum(int(r[r > 0].max(initial=0)) + int((-r[r < 0]).max(initial=0))
                 for r in counts.numpy())
    assert len(pulse_calls(chip)) == expect == 7 + 2 + 5 + 1 + 4 + 9
    assert counts.abs().sum() > expect


def test_pulse_voltages_widths_and_channels():
    arr, chip = make()
    counts = torch.zeros(4, 5, dtype=torch.int32)
    counts[1, 3], counts[2, 0], counts[2, 4] = 2, -3, -1
    arr.pulse(counts)
    # potentiation: row 1.1 V above the column for 1000 ns; depression: row 1.3 V below, 2 us
    assert device_voltages(chip) == {(1, 19, 1.1, 1000), (2, 16, -1.3, 2000),
                                     (2, 20, -1.3, 2000)}
    assert chip.calls["execute"] >= 1 and chip.calls["wait"] >= 1


def test_pulse_polarity_matters():
    """Sanity check of the fake: the opposite voltage moves the device the other way."""
    arr, chip = make()
    chip.fake.pulse_one(16, 0, 1.1, 1000)   # row 0 high
    chip.fake.pulse_one(0, 17, 1.1, 1000)   # column 1 high
    chip.fake.pulse_one(16, 0, 0.5, 1000)   # half-selected: nothing
    chip.fake.execute()
    assert chip.applied[0, 0] == 1 and chip.applied[0, 1] == -1 and chip.applied.sum() == 0


def test_many_pulses_are_executed_in_chunks():
    arr, chip = make()
    counts = torch.zeros(4, 5, dtype=torch.int32)
    counts[0, 0] = arc2.MAX_QUEUE * 2 + 5
    counts[3, 1:3] = -700
    arr.pulse(counts)
    assert np.array_equal(chip.applied, counts.numpy())
    assert chip.calls["execute"] >= 3


def test_staircase_gives_each_device_its_count():
    need = np.array([0, 5, 2, 5, 1])
    steps = arc2._staircase(need)
    got = np.zeros(5, int)
    for cols, n in steps:
        got[cols] += n
    assert np.array_equal(got, need)
    assert sum(n for _, n in steps) == 5
    assert arc2._staircase(np.zeros(3, int)) == []


# ---- channel maps -------------------------------------------------------------------------
MAP = {"rows": [33, 2, 47, 15], "cols": [63, 16, 50, 31, 20]}


def test_channel_map_4x5():
    arr, chip = make(channel_map=MAP, chip_map=MAP)
    assert arr.row_channels == MAP["rows"] and arr.col_channels == MAP["cols"]
    w = random_weights(chip)
    torch.testing.assert_close(arr.read(), w, atol=2e-5, rtol=0)
    counts = torch.zeros(4, 5, dtype=torch.int32)
    counts[2, 3], counts[0, 0] = 6, -2
    arr.pulse(counts)
    assert np.array_equal(chip.applied, counts.numpy())
    assert device_voltages(chip) == {(47, 31, 1.1, 1000), (33, 63, -1.3, 2000)}


def test_wrong_channel_map_is_caught():
    """The fake is wired by MAP; an array using the default map reads other devices."""
    arr, chip = make(chip_map=MAP)
    w = random_weights(chip)
    assert not torch.allclose(arr.read(), w, atol=0.01)


def test_channel_map_full_32x32():
    arr, chip = make(32, 32)
    assert arr.row_channels == BITS and arr.col_channels == WORDS
    w = random_weights(chip, seed=3)
    torch.testing.assert_close(arr.read(), w, atol=2e-5, rtol=0)
    counts = torch.zeros(32, 32, dtype=torch.int32)
    for (i, j), n in {(0, 0): 3, (31, 31): -4, (15, 16): 5, (16, 15): -6, (20, 3): 2}.items():
        counts[i, j] = n
    arr.pulse(counts)
    assert np.array_equal(chip.applied, counts.numpy())
    assert {(r, c) for r, c, _, _ in device_voltages(chip)} == {
        (0, 16), (47, 63), (15, 48), (32, 31), (36, 19)}


def test_larger_block_than_wired_is_refused():
    cfg = arc2_from_mapping(config_dict(4, 5), source="bench/arc2.yaml")
    fake = create_autospec(pyarc2.Instrument, instance=True)
    with pytest.raises(ConfigError) as info:
        ArcTwoArray(cfg, 5, 5, instrument=fake)
    assert "key 'rows'" in str(info.value) and "bench/arc2.yaml" in str(info.value)
    assert fake.method_calls == []


def test_a_tile_takes_the_block_at_its_offset():
    """A tile of a layer (``offset``) uses the wired lines from its offset on, so the
    tiles of one layer take disjoint blocks; past the wired lines it is refused."""
    cfg = arc2_from_mapping(config_dict(4, 5), source="bench/arc2.yaml")
    fake = create_autospec(pyarc2.Instrument, instance=True)
    arr = ArcTwoArray(cfg, 2, 3, instrument=fake, offset=(2, 1))
    assert arr.row_channels == cfg.row_channels()[2:4]
    assert arr.col_channels == cfg.col_channels()[1:4]
    with pytest.raises(ConfigError, match="2 cols from line 4 requested but only 5"):
        ArcTwoArray(cfg, 2, 2, instrument=fake, offset=(0, 4))


# ---- safety -------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [
    ("pulse.potentiation.amplitude", 2.5),
    ("pulse.depression.amplitude", 3.0),
    ("read.voltage", 2.1),
])
def test_voltage_above_v_max_refused_at_load(tmp_path, key, value):
    d = config_dict()
    block, *path, last = key.split(".")
    node = d[block]
    for p in path:
        node = node[p]
    node[last] = value
    f = tmp_path / "arc2.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as info:
        open_array(f"arc2:{f}", 4, 5)
    msg = str(info.value)
    assert str(f) in msg and f"key '{key}'" in msg and "v_max" in msg


@pytest.mark.parametrize("attr,value", [
    (("pulse", "potentiation", "amplitude"), 2.5),
    (("pulse", "depression", "amplitude"), 9.0),
    (("pulse", "potentiation", "amplitude"), -1.1),
    (("read", "voltage"), 5.0),
])
def test_voltage_above_v_max_refused_before_any_call(attr, value):
    arr, chip = make()
    node = arr.config
    for a in attr[:-1]:
        node = getattr(node, a)
    setattr(node, attr[-1], value)
    counts = torch.ones(4, 5, dtype=torch.int32)
    for op in (lambda: arr.pulse(counts), arr.read):
        with pytest.raises(SafetyError) as info:
            op()
        assert ".".join(attr) in str(info.value)
    assert chip.fake.method_calls == []  # nothing at all reached the instrument
    assert not chip.applied.any()


# ---- bad YAML -----------------------------------------------------------------------------
BAD_YAML = [
    ("unknown-top", {"row": 4}, "row"),
    ("unknown-nested", {"pulse": {"potentiation": {"amplitud": 1.0}}},
     "pulse.potentiation.amplitud"),
    ("rows-33", {"rows": 33}, "rows"),
    ("cols-0", {"cols": 0}, "cols"),
    ("rows-type", {"rows": "four"}, "rows"),
    ("map-length", {"channel_map": {"rows": [0, 1, 2]}}, "channel_map.rows"),
    ("map-duplicate", {"channel_map": {"cols": [16, 17, 18, 17, 20]}}, "channel_map.cols[3]"),
    ("map-range", {"channel_map": {"rows": [0, 1, 2, 64]}}, "channel_map.rows[3]"),
    ("map-word-as-row", {"channel_map": {"rows": [0, 1, 16, 3]}}, "channel_map.rows[2]"),
    ("map-bit-as-col", {"channel_map": {"cols": [16, 17, 18, 19, 32]}}, "channel_map.cols[4]"),
    ("g-range", {"weights": {"g_min": 1e-4, "g_max": 1e-5}}, "weights.g_max"),
    ("dw-zero", {"weights": {"dw_min": 0}}, "weights.dw_min"),
    ("v_max", {"limits": {"v_max": -1}}, "limits.v_max"),
    ("width-zero", {"pulse": {"depression": {"width_s": 0}}}, "pulse.depression.width_s"),
    ("amplitude-zero", {"pulse": {"potentiation": {"amplitude": 0}}},
     "pulse.potentiation.amplitude"),
    ("read-negative", {"read": {"voltage": -0.2}}, "read.voltage"),
    ("device-id", {"device_id": -1}, "device_id"),
]


@pytest.mark.parametrize("extra,key", [b[1:] for b in BAD_YAML], ids=[b[0] for b in BAD_YAML])
def test_bad_yaml_names_file_and_key(tmp_path, extra, key):
    d = config_dict()
    for k, v in extra.items():  # merge one level deep so the other keys stay valid
        d[k] = {**d[k], **v} if isinstance(v, dict) and isinstance(d.get(k), dict) else v
    f = tmp_path / "arc2.yaml"
    f.write_text(yaml.safe_dump(d))
    with pytest.raises(ConfigError) as info:
        arc2.load_arc2(f)
    assert info.value.key == key and info.value.source == str(f)
    assert str(f) in str(info.value) and f"key '{key}'" in str(info.value)


def test_missing_firmware_is_a_config_error(tmp_path, monkeypatch, mocker):
    monkeypatch.delenv(arc2.FIRMWARE_ENV, raising=False)
    inst = mocker.patch("pyarc2.Instrument")
    f = tmp_path / "arc2.yaml"
    f.write_text(yaml.safe_dump(config_dict()))
    with pytest.raises(ConfigError, match="key 'firmware'"):
        open_array(f"arc2:{f}", 4, 5)
    f.write_text(yaml.safe_dump(config_dict(firmware="nope.bin")))
    with pytest.raises(ConfigError, match="nope.bin"):
        open_array(f"arc2:{f}", 4, 5)
    inst.assert_not_called()


# ---- lines left floating ------------------------------------------------------------------
def test_lines_floated_after_every_operation():
    arr, chip = make()
    set_counts = torch.tensor([[1, -1, 0, 2, 0]] * 4, dtype=torch.int32)
    for op in (arr.read, lambda: arr.pulse(set_counts),
               lambda: arr.forward(torch.ones(2, 5)),
               lambda: arr.update(torch.ones(1, 2, 5, dtype=torch.int8),
                                  torch.ones(1, 2, 4, dtype=torch.int8))):
        op()
        assert chip.fake.method_calls[-1] == FLOAT
        assert not chip.biased


@pytest.mark.parametrize("method,n", [("pulse_slice_masked", 3), ("pulse_one", 2),
                                      ("execute", 1), ("wait", 1)])
def test_failure_mid_pulse_floats_the_lines(method, n):
    arr, chip = make()
    chip.fail_on = (method, n)
    counts = torch.tensor([[5, 5, 0, 0, 0], [0, 0, 0, 0, 3]] + [[0] * 5] * 2, dtype=torch.int32)
    with pytest.raises(pyarc2.ArC2Error):
        arr.pulse(counts)
    assert chip.fake.method_calls[-1] == FLOAT and not chip.biased
    assert not arr.closed  # still usable
    arr.read()


def test_failure_mid_read_floats_the_lines():
    arr, chip = make()
    chip.fail_on = ("read_slice", 3)
    with pytest.raises(pyarc2.ArC2Error):
        arr.read()
    assert chip.fake.method_calls[-1] == FLOAT and not chip.biased


def test_close_floats_and_releases():
    arr, chip = make()
    arr.read()
    arr.close()
    assert chip.fake.method_calls[-1] == FLOAT and not chip.biased
    assert arr.closed
    with pytest.raises(RuntimeError, match="closed"):
        arr.read()
    with pytest.raises(RuntimeError, match="closed"):
        arr.pulse(torch.ones(4, 5, dtype=torch.int32))
    n = len(chip.fake.method_calls)
    arr.close()  # idempotent, sends nothing more
    assert len(chip.fake.method_calls) == n


def test_context_manager_floats_on_exception():
    arr, chip = make()
    chip.fail_on = ("read_slice", 2)
    with pytest.raises(pyarc2.ArC2Error), arr as a:
        a.read()
    assert arr.closed and not chip.biased
    assert chip.fake.method_calls[-2:] == [FLOAT, FLOAT]  # the read's, then close()'s


def test_capabilities_and_nominal_step():
    arr, _ = make()
    assert arr.capabilities.native() == ["pulse", "read"]
    assert arr.nominal_step() == 0.001


# ---- open_array ---------------------------------------------------------------------------
def _yaml_with_firmware(tmp_path: Path, **extra) -> tuple[Path, Path]:
    fw = tmp_path / "fw" / "arc2fw.bin"
    fw.parent.mkdir()
    fw.write_bytes(b"\0")
    f = tmp_path / "arc2.yaml"
    f.write_text(yaml.safe_dump(config_dict(8, 8, firmware="fw/arc2fw.bin", **extra)))
    return f, fw


def test_open_array_spec(tmp_path, mocker):
    f, fw = _yaml_with_firmware(tmp_path)
    cfg = arc2.load_arc2(f)
    chip = SimChip(SimulatedArray(8, 8, seed=5), cfg.weights, cfg.row_channels(),
                   cfg.col_channels())
    find = mocker.patch("pyarc2.find_ids", return_value=[0])
    inst = mocker.patch("pyarc2.Instrument", return_value=chip.fake)
    arr = open_array(f"arc2:{f}", 4, 5)
    assert isinstance(arr, ArcTwoArray) and arr.shape == (4, 5)
    find.assert_called_once()
    inst.assert_called_once_with(0, str(fw))
    w = random_weights(chip)
    torch.testing.assert_close(arr.read(), w[:4, :5], atol=2e-5, rtol=0)
    arr.close()
    assert chip.fake.method_calls[-1] == FLOAT


def test_open_array_without_a_board(tmp_path, mocker):
    f, _ = _yaml_with_firmware(tmp_path, device_id=1)
    mocker.patch("pyarc2.find_ids", return_value=[0])
    inst = mocker.patch("pyarc2.Instrument")
    with pytest.raises(InstrumentConnectionError, match="device_id 1"):
        open_array(f"arc2:{f}", 4, 5)
    inst.assert_not_called()


def test_open_array_needs_a_file():
    with pytest.raises(ConfigError, match="arc2:PATH.yaml"):
        open_array("arc2", 4, 5)
