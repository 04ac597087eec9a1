"""Measurement CSV: writer, loader (rpuhw's and users' files), errors, resume, steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rpuhw.calibration.measurements import (
    COLUMNS,
    Measurements,
    MeasurementWriter,
    load_measurements,
    sidecar_path,
    steps,
)
from rpuhw.errors import ConfigError

META = {"settings": {"protocol": "pulse-response", "pulses": 2, "cycles": 1}}


def _rows(n_dev=2, pulses=2, cycles=1, g0=1e-6, dg=1e-7):
    """Rows of a pulse response in COLUMNS order: exact, known conductances."""
    rows = []
    for c in range(cycles):
        for pol in (1, -1):
            for k in range(pulses + 1):
                for d in range(n_dev):
                    level = k if pol > 0 else pulses - k
                    rows.append((d, 0, d, c, k, pol, g0 + d * 1e-8 + level * dg,
                                 0.001 * len(rows), 0.2))
    return rows


def test_round_trip_exact_and_sidecar(tmp_path):
    path = tmp_path / "m.csv"
    rows = _rows(n_dev=3, pulses=4, cycles=2)
    with MeasurementWriter(path, META) as w:
        w.write(rows[:10])
        side = json.loads(sidecar_path(path).read_text())
        assert side["complete"] is False and side["settings"] == META["settings"]
        assert "rpuhw_version" in side and "date" in side
        w.write(rows[10:])
        w.finish()
    side = json.loads((tmp_path / "m.json").read_text())
    assert side["complete"] is True
    text = path.read_text().splitlines()
    assert text[0] == ",".join(COLUMNS) and text.count(",".join(COLUMNS)) == 1
    m = load_measurements(path)
    assert len(m) == len(rows)
    ref = np.array(rows, dtype=object)
    for ci, name in enumerate(COLUMNS[:-1]):  # 9-value rows: read 0, loaded as None
        got = getattr(m, name)
        np.testing.assert_array_equal(got, ref[:, ci].astype(got.dtype), err_msg=name)
    assert m.read is None and m.device_ids == ["0", "1", "2"]
    assert m.meta["complete"] is True and m.source == str(path)


def test_dict_rows_and_empty_optional_fields(tmp_path):
    path = tmp_path / "m.csv"
    with MeasurementWriter(path, {}) as w:
        w.write([{"device": 0, "pulse": 0, "polarity": 1, "conductance": 2e-6},
                 {"device": 0, "pulse": 1, "polarity": -1, "conductance": 1e-6,
                  "time_s": float("nan")}])
        w.finish()
    m = load_measurements(path)
    assert m.polarity.tolist() == [1, -1]
    assert m.row.tolist() == [-1, -1] and np.isnan(m.time_s).all()
    with pytest.raises(ValueError, match="expected 10 values"):
        MeasurementWriter(tmp_path / "x.csv", {}).write([(1, 2, 3)])


def test_user_file_other_column_order_and_words(tmp_path):
    path = tmp_path / "user.csv"
    path.write_text("# my lab's export\nConductance, Polarity ,pulse,device,notes\n"
                    "1e-6,UP,0,7,a\n1.1e-6,pot,1,7,b\n\n1.05e-6,Depression,1,7,c\n"
                    "1.0e-6,reset,2,7,d\n1.0e-6,read,0,7,e\n")
    m = load_measurements(path)
    assert m.polarity.tolist() == [1, 1, -1, -1, 0]
    assert m.device.tolist() == [0] * 5 and m.pulse.tolist() == [0, 1, 1, 2, 0]
    assert m.device_ids == ["7"] and m.device_name(0) == "7" and m.ids().tolist() == [7] * 5
    assert m.read is None  # (device, cycle, polarity, pulse) never repeats
    np.testing.assert_array_equal(m.conductance, [1e-6, 1.1e-6, 1.05e-6, 1e-6, 1e-6])
    assert m.cycle is None and m.cycles().tolist() == [0] * 5
    assert m.row is None and m.time_s is None and m.meta == {}


@pytest.mark.parametrize("polarity,code", [("+1", 1), ("1", 1), ("-1", -1), ("0", 0),
                                           ("Set", 1), ("DEP", -1), ("down", -1)])
def test_polarity_spellings(tmp_path, polarity, code):
    path = tmp_path / "p.csv"
    path.write_text(f"device,pulse,polarity,conductance\n0,1,{polarity},1e-6\n"
                    "0,1,up,1e-6\n0,1,down,1e-6\n")
    assert load_measurements(path).polarity[0] == code


BAD = [  # (file text, line, column number, column name, words in the message)
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,1,1,abc\n0,1,-1,1e-6\n",
     3, 4, "conductance", "expected a number"),
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,1,-1,-2e-6\n", 3, 4, "conductance",
     "must be >= 0"),
    ("device,pulse,polarity,conductance\n0,0,1,nan\n0,1,-1,1e-6\n", 2, 4, "conductance",
     "finite"),
    ("conductance,polarity,pulse,device\n1e-6,1,0,0\n1e-6,sideways,1,0\n", 3, 2, "polarity",
     "sideways"),
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n ,1,-1,1e-6\n", 3, 1, "device",
     "empty device id"),
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n-2,1,-1,1e-6\n", 3, 1, "device",
     "must be >= 0"),
    ("device,pulse,polarity,conductance,read\n0,0,1,1e-6,0\n0,1,-1,1e-6,x\n", 3, 5, "read",
     "integer"),
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,1.5,-1,1e-6\n", 3, 2, "pulse",
     "integer"),
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,-1,-1,1e-6\n", 3, 2, "pulse",
     "must be >= 0"),
]


@pytest.mark.parametrize("text,line,col,name,words", BAD)
def test_malformed_value_names_line_and_column(tmp_path, text, line, col, name, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_measurements(path)
    msg = str(err.value)
    assert msg.startswith(str(path)), msg
    assert f"line {line}, column {col} ('{name}')" in msg, msg
    assert words in msg, msg


def test_missing_column_lists_required_and_found(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("device,pulse,G\n0,0,1e-6\n")
    with pytest.raises(ConfigError) as err:
        load_measurements(path)
    msg = str(err.value)
    assert "line 1" in msg and "missing required column(s) polarity, conductance" in msg
    assert "required: device, pulse, polarity, conductance" in msg and "found: device, pulse, g"\
        in msg


@pytest.mark.parametrize("text,words", [
    ("", "empty file"),
    ("\n\n  \n", "empty file"),
    ("device,pulse,polarity,conductance\n", "no data rows"),
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,1,up,2e-6\n", "needs both up and down"),
    ("device,pulse,polarity,conductance\n0,0,-1,1e-6\n", "every pulse row is down"),
    ("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,1,-1\n", "line 3: expected 4 fields"),
    ("device,pulse,device,conductance\n0,0,1,1e-6\n", "appears twice"),
])
def test_malformed_file(tmp_path, text, words):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_measurements(path)


def test_read_noise_only_file_loads(tmp_path):
    path = tmp_path / "n.csv"
    path.write_text("device,cycle,pulse,polarity,conductance\n0,0,0,0,1e-6\n0,0,1,0,1.1e-6\n")
    assert load_measurements(path).polarity.tolist() == [0, 0]


def test_negative_allowed_only_in_weight_units(tmp_path):
    path = tmp_path / "w.csv"
    path.write_text("device,pulse,polarity,conductance\n0,0,1,-0.5\n0,1,-1,-0.6\n")
    with pytest.raises(ConfigError, match="must be >= 0 siemens"):
        load_measurements(path)
    sidecar_path(path).write_text(json.dumps({"settings": {"conductance_unit": "weight"}}))
    assert load_measurements(path).conductance.tolist() == [-0.5, -0.6]


def test_bad_sidecar_is_named(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("device,pulse,polarity,conductance\n0,0,1,1e-6\n0,1,-1,1e-6\n")
    sidecar_path(path).write_text("{not json")
    with pytest.raises(ConfigError, match="m.json: sidecar is not valid JSON"):
        load_measurements(path)


def test_resume_appends_without_duplicates(tmp_path):
    path = tmp_path / "m.csv"
    rows = _rows(n_dev=2, pulses=3, cycles=2)
    w = MeasurementWriter(path, META)
    w.write(rows[:7])
    w.close()  # the run stopped here (sidecar says complete: false)
    w = MeasurementWriter(path, {**META, "date": "later"}, resume=True)
    assert len(w.existing) == 7 and w.existing.meta["complete"] is False
    w.write(rows[7:])
    w.finish()
    m = load_measurements(path)
    assert len(m) == len(rows) and path.read_text().count("device,row") == 1
    assert m.meta["complete"] is True and len(m.meta["resumed"]) == 1
    assert m.meta["date"] != "later"  # the original start date is kept
    np.testing.assert_array_equal(m.conductance, [r[6] for r in rows])


def test_resume_drops_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "m.csv"
    rows = _rows(n_dev=2, pulses=2)
    w = MeasurementWriter(path, META)
    w.write(rows[:5])
    w.close()
    with open(path, "a") as fh:
        fh.write("1,0,1,0,2,1,1.0")  # half a row, as a SIGKILL mid-write could leave
    stale = tmp_path / ".m.json.x7q.tmp"  # and a sidecar write it cut short
    stale.write_text('{"half": ')
    m = load_measurements(path, partial=True)  # incomplete sidecar: the stub is ignored
    assert len(m) == 5
    w = MeasurementWriter(path, META, resume=True)
    assert len(w.existing) == 5 and not stale.exists()
    w.write(rows[5:])
    w.finish()
    assert len(load_measurements(path)) == len(rows)


def test_resume_refuses_foreign_header(tmp_path):
    path = tmp_path / "user.csv"
    path.write_text("conductance,polarity,pulse,device\n1e-6,1,0,0\n")
    with pytest.raises(ConfigError, match="not an rpuhw measurement header"):
        MeasurementWriter(path, {}, resume=True)
    with pytest.raises(ConfigError, match="nothing to resume"):
        MeasurementWriter(tmp_path / "none.csv", {}, resume=True)


def test_large_file_round_trips(tmp_path):
    """64 devices x 5 cycles x 800 reads = 256k rows, written in per-step blocks, load back
    exactly (their speed is measured by ``python -m benchmarks.fit``, not here)."""
    path = tmp_path / "big.csv"
    n_dev, cycles, reads = 64, 5, 800
    rng = np.random.default_rng(0)
    g = rng.uniform(1e-6, 1e-5, n_dev * cycles * reads)
    half = reads // 2
    rows = [(d, d // 8, d % 8, c, k % half, 1 if k < half else -1,
             float(g[(c * reads + k) * n_dev + d]), 0.25, 0.2)
            for c in range(cycles) for k in range(reads) for d in range(n_dev)]
    with MeasurementWriter(path, META) as w:
        for s in range(0, len(rows), n_dev):
            w.write(rows[s:s + n_dev])
        w.finish()
    m = load_measurements(path)
    assert len(m) == 256_000
    np.testing.assert_array_equal(m.conductance, [r[6] for r in rows])
    np.testing.assert_array_equal(m.polarity, [r[5] for r in rows])


def _m(rows, cycle=True):
    a = np.array(rows, dtype=float)
    return Measurements(device=a[:, 0].astype(np.int64), cycle=a[:, 1].astype(np.int64)
                        if cycle else None, polarity=a[:, 2].astype(np.int8),
                        pulse=a[:, 3].astype(np.int64), conductance=a[:, 4])


def test_steps_with_pulse_zero_reads():
    # (device, cycle, polarity, pulse, g); rows deliberately out of order
    m = _m([(0, 0, 1, 2, 3.0), (0, 0, 1, 0, 1.0), (0, 0, 1, 1, 2.0),
            (0, 0, -1, 0, 3.5), (0, 0, -1, 1, 2.5), (1, 0, 1, 0, 5.0), (1, 0, 1, 1, 5.5),
            (0, 0, 0, 0, 9.0)])  # a read-noise row is ignored
    st = steps(m)
    assert set(st) == {(0, 0, 1), (0, 0, -1), (1, 0, 1)}
    assert st[(0, 0, 1)].pulse.tolist() == [1, 2]
    assert st[(0, 0, 1)].before.tolist() == [1.0, 2.0]
    assert st[(0, 0, 1)].after.tolist() == [2.0, 3.0]
    assert st[(0, 0, -1)].before.tolist() == [3.5] and st[(0, 0, -1)].after.tolist() == [2.5]
    assert st[(1, 0, 1)].after.tolist() == [5.5]


def test_steps_without_pulse_zero_use_previous_half():
    m = _m([(0, 0, 1, 1, 2.0), (0, 0, 1, 2, 3.0),       # first half: no predecessor
            (0, 0, -1, 1, 2.2), (0, 0, -1, 2, 1.4),     # down: starts from 3.0
            (0, 1, 1, 1, 2.0), (0, 1, 1, 3, 4.0)])      # next cycle: pulse 2 missing
    st = steps(m)
    assert st[(0, 0, 1)].pulse.tolist() == [2] and st[(0, 0, 1)].before.tolist() == [2.0]
    assert st[(0, 0, -1)].pulse.tolist() == [1, 2]
    assert st[(0, 0, -1)].before.tolist() == [3.0, 2.2]
    assert st[(0, 1, 1)].pulse.tolist() == [1]          # step 3 dropped (gap)
    assert st[(0, 1, 1)].before.tolist() == [1.4]


def test_steps_duplicates_use_first_row():
    m = _m([(0, 0, 1, 0, 1.0), (0, 0, 1, 1, 2.0), (0, 0, 1, 1, 7.0)], cycle=False)
    st = steps(m)
    assert st[(0, 0, 1)].after.tolist() == [2.0]


# ---- device ids of any text, K reads per pulse, old headers ----------------------------


def test_string_device_ids_round_trip(tmp_path):
    path = tmp_path / "lab.csv"
    path.write_text("device,cycle,pulse,polarity,conductance\n"
                    "chipA-d1,0,0,up,1.0e-6\nchipA-d0,0,0,up,2.0e-6\nchipA-d1,0,1,up,1.1e-6\n"
                    "chipA-d0,0,1,up,2.1e-6\nchipA-d1,0,0,down,1.1e-6\n"
                    "chipA-d0,0,0,down,2.1e-6\n7,0,0,down,3.0e-6\n7.0,0,1,down,2.9e-6\n")
    m = load_measurements(path)
    assert m.device_ids == ["chipA-d1", "chipA-d0", "7"]  # first appearance; 7.0 is 7
    assert m.device.tolist() == [0, 1, 0, 1, 0, 1, 2, 2] and m.device.dtype == np.int64
    assert [m.device_name(c) for c in range(3)] == ["chipA-d1", "chipA-d0", "7"]
    with pytest.raises(ConfigError, match="lab.csv: device id 'chipA-d1' is not an integer"):
        m.ids()
    st = steps(m)  # keyed by code
    assert st[(1, 0, 1)].after.tolist() == [2.1e-6]
    # an rpuhw file keeps its integer ids through the codes
    out = tmp_path / "m.csv"
    with MeasurementWriter(out, META) as w:
        w.write([(d, 0, d, 0, k, p, 1e-6 + k * 1e-8, 0.0, 0.2, 0)
                 for p in (1, -1) for k in range(2) for d in (5, 2, 9)])
        w.finish()
    m = load_measurements(out)
    assert m.device_ids == ["5", "2", "9"] and m.device.tolist()[:3] == [0, 1, 2]
    assert m.ids().tolist()[:3] == [5, 2, 9]


def _k_reads_rows(k_reads, n_dev=2, pulses=3):
    """(device, cycle, polarity, pulse, read, g): K reads after each pulse, read r of
    pulse k at level k + r / 100 (so the K-read mean is level k + (K - 1) / 200)."""
    rows = []
    for pol in (1, -1):
        for k in range(pulses + 1):
            for r in range(k_reads):
                for d in range(n_dev):
                    level = (k if pol > 0 else pulses - k) + r / 100
                    rows.append((d, 0, pol, k, r, 1e-6 + d * 1e-6 + level * 1e-7))
    return rows


@pytest.mark.parametrize("with_column", [True, False])
def test_k_reads_per_pulse_load_and_average(tmp_path, with_column):
    rows = _k_reads_rows(4)
    path = tmp_path / "k.csv"
    head = "device,cycle,polarity,pulse" + (",read" if with_column else "") + ",conductance\n"
    body = "".join(f"{d},{c},{p},{k}" + (f",{r}" if with_column else "") + f",{g!r}\n"
                   for d, c, p, k, r, g in rows)
    path.write_text(head + body)
    m = load_measurements(path)
    # without the column the read index is the repetition order of the same key
    assert m.read is not None and m.read.tolist() == [r[4] for r in rows]
    st = steps(m)
    for d in (0, 1):
        # every step is between K-read means one level apart: exactly 1e-7 (the +r/100
        # offsets cancel in the mean), not the 1e-7 - 3e-9 of read 3 -> read 0
        np.testing.assert_allclose(st[(d, 0, 1)].after - st[(d, 0, 1)].before, 1e-7,
                                   rtol=1e-9)
        np.testing.assert_allclose(st[(d, 0, -1)].after - st[(d, 0, -1)].before, -1e-7,
                                   rtol=1e-9)
        assert st[(d, 0, 1)].before[0] == pytest.approx(1e-6 + d * 1e-6 + 0.015e-7,
                                                        rel=1e-12)


def test_read_column_written_and_loaded(tmp_path):
    path = tmp_path / "m.csv"
    with MeasurementWriter(path, META) as w:
        w.write([(0, 0, 0, 0, k, p, 1e-6 + r * 1e-9, 0.0, 0.2, r)
                 for p in (1, -1) for k in range(2) for r in range(3)])
        w.finish()
    m = load_measurements(path)
    assert m.read.tolist() == [0, 1, 2] * 4 and m.read.dtype == np.int64


def test_old_header_loads_and_resumes(tmp_path):
    """A file written before the ``read`` column (old header) loads and resumes; the
    resumed rows have no read column either."""
    from rpuhw.calibration.measurements import OLD_COLUMNS

    path = tmp_path / "old.csv"
    rows = _rows(n_dev=2, pulses=3)
    path.write_text(",".join(OLD_COLUMNS) + "\n" + "".join(
        ",".join(map(repr, r)) + "\n" for r in rows[:5]))
    sidecar_path(path).write_text(json.dumps({**META, "complete": False}))
    w = MeasurementWriter(path, META, resume=True)
    assert w.columns == OLD_COLUMNS and len(w.existing) == 5
    with pytest.raises(ValueError, match="old header"):
        w.write([(*rows[5], 1)])
    w.write([(*r, 0) for r in rows[5:7]] + rows[7:])
    w.finish()
    lines = path.read_text().splitlines()
    assert lines[0] == ",".join(OLD_COLUMNS) and {ln.count(",") for ln in lines} == {8}
    m = load_measurements(path)
    np.testing.assert_array_equal(m.conductance, [r[6] for r in rows])
    assert m.read is None
