"""Bench YAML validation: every bad file is one error naming the key, and nothing is sent."""

from __future__ import annotations

import socket
import threading

import pytest
import yaml
from bench_yaml import bench_mapping, smu_pulse_mapping

from rpuhw import open_array
from rpuhw.drivers.bench_config import bench_from_mapping, load_bench
from rpuhw.errors import ConfigError


def test_valid_mapping_loads_and_builds_channels():
    cfg = bench_from_mapping(bench_mapping(), source="b.yaml")
    assert (cfg.rows, cfg.cols) == (2, 3)
    assert cfg.instruments["matrix"].tsp_link.node == 2
    # chip row 0 is on matrix column 1:1; the bias terminal is card row B
    assert cfg.channel(cfg.wiring.rows[0], "bias") == "1B01"
    assert cfg.channel(cfg.wiring.cols[2], "sense") == "1A05"
    assert cfg.weights.to_weight(1e-6) == pytest.approx(-0.6)
    assert cfg.weights.to_weight(1e-4) == pytest.approx(0.6)


def _set(d, path, value):
    *head, last = path.split(".")
    for k in head:
        d = d[k]
    if value is _DEL:
        del d[last]
    else:
        d[last] = value


_DEL = object()

BAD = [
    # (path, value, key named in the message, words in the message)
    ("pulse.potentiation.amplitude", 2.5, "pulse.potentiation.amplitude", "exceeds"),
    ("pulse.depression.amplitude", -1.0, "pulse.depression.amplitude", "> 0"),
    ("read.voltage", 3.0, "read.voltage", "v_max"),
    ("read.compliance_a", 0.5, "read.compliance_a", "compliance_max_a"),
    ("pulse.potentiation.width_s", 5e-6, "pulse.potentiation.width_s", "period_s"),
    ("instruments.pulser", _DEL, "terminals.pulse.instrument", "unknown instrument"),
    ("instruments.matrix", _DEL, "instruments", "707b"),
    ("instruments.smu.driver", "keithley9999", "instruments.smu.driver", "known"),
    ("instruments.pulser.resource", "", "instruments.pulser.resource", "missing"),
    ("instruments.matrix.tsp_link.via", "pulser", "instruments.matrix.tsp_link.via",
     "keithley2600b"),
    ("terminals.ground", _DEL, "terminals.ground", "missing"),
    ("terminals.sense.channel", "c", "terminals.sense.channel", "channels"),
    ("terminals.bias.matrix_row", "A", "terminals.bias.matrix_row", "already used"),
    ("terminals.bias.matrix_row", "Z", "terminals.bias.matrix_row", "A-H"),
    ("terminals.pulse.instrument", "matrix", "terminals.pulse.instrument",
     "keysight33500b or keithley2600b"),
    # a pulse generator never shares a card row (only the SMU pulse shares sense's)
    ("terminals.pulse.matrix_row", "A", "terminals.pulse.matrix_row", "already used"),
    # a 2600B pulse terminal must be the sense channel: here its channel 1 is not a 2600B's
    ("terminals.pulse.instrument", "smu", "terminals.pulse.channel", "channels"),
    ("terminals.extra", {"matrix_row": "E"}, "terminals.extra", "unknown terminal"),
    ("wiring.rows", ["1:1"], "wiring.rows", "expected 2"),
    ("wiring.cols", ["1:3", "1:4", "1:1"], "wiring.cols[2]", "already wired"),
    ("wiring.cols", ["1:3", "1:4", "7:1"], "wiring.cols[2]", "SLOT:COLUMN"),
    ("wiring.cols", ["1:3", "1:4", "1:13"], "wiring.cols[2]", "1-12"),
    ("wiring.cols", ["1:3", "1:4", 65], "wiring.cols[2]", "quotes"),
    ("bias_scheme", "v/4", "bias_scheme", "v/2 or v/3"),
    ("limits.v_max", -1.0, "limits.v_max", "> 0"),
    ("weights.g_max", 1e-7, "weights.g_max", "g_min"),
    ("rows", _DEL, "rows", "missing"),
    ("colour", "red", "colour", "unknown key"),
]


@pytest.mark.parametrize("path,value,key,words", BAD, ids=[b[0] + "-" + b[3] for b in BAD])
def test_bad_bench_names_the_key(path, value, key, words):
    m = bench_mapping()
    _set(m, path, value)
    _assert_refused(m, key, words)


def _assert_refused(m: dict, key: str, words: str) -> None:
    """Loading ``m`` raises one ConfigError naming the file, ``key`` and ``words``."""
    with pytest.raises(ConfigError) as info:
        bench_from_mapping(m, source="bench.yaml")
    msg = str(info.value)
    assert msg.startswith("bench.yaml: "), msg
    assert f"'{key}'" in msg, msg
    assert words in msg, msg


def test_smu_pulse_mapping_loads_and_shares_the_sense_row():
    cfg = bench_from_mapping(smu_pulse_mapping(), source="b.yaml")
    assert cfg.pulse_source == "smu"
    assert bench_from_mapping(bench_mapping()).pulse_source == "generator"
    # the pulsed line goes to the sense card row A (the same SMU output)
    assert cfg.channel(cfg.wiring.rows[0], "pulse") == cfg.channel(cfg.wiring.rows[0], "sense")
    m = smu_pulse_mapping()
    m["terminals"]["pulse"]["matrix_row"] = "E"  # a second wire from smua: also fine
    assert bench_from_mapping(m).channel(cfg.wiring.cols[0], "pulse") == "1E03"
    m = smu_pulse_mapping()
    m["pulse"]["potentiation"]["width_s"] = 1e-4  # exactly the minimum is accepted
    m["pulse"]["depression"]["width_s"] = 1.5e-4
    bench_from_mapping(m)


def _add_second_smu(m):
    m["instruments"]["smu2"] = {"driver": "keithley2600b",
                                "resource": "TCPIP::127.0.0.1::9::SOCKET"}
    m["terminals"]["pulse"]["instrument"] = "smu2"


SMU_BAD = [
    # (path, value, key named in the message, words in the message)
    ("bias_scheme", "v/3", "bias_scheme", "v/3 needs both SMU channels"),
    ("terminals.pulse.channel", "b", "terminals.pulse.channel", "sense channel"),
    ("terminals.pulse.matrix_row", "B", "terminals.pulse.matrix_row", "already used by "
     "terminal bias"),
    ("pulse.potentiation.width_s", 5e-5, "pulse.potentiation.width_s", "minimum pulse width"),
    ("pulse.depression.width_s", 1e-6, "pulse.depression.width_s", "keysight33500b"),
    ("pulse.depression.width_s", 2e-4, "pulse.depression.width_s", "period_s"),
    ("pulse.potentiation.amplitude", 2.5, "pulse.potentiation.amplitude", "exceeds"),
    ("pulse.period_s", 1e-4, "pulse.potentiation.width_s", "period_s"),
    ("terminals.pulse", _add_second_smu, "terminals.pulse.instrument", "sense channel"),
]


@pytest.mark.parametrize("path,value,key,words", SMU_BAD,
                         ids=[f"{b[0]}-{b[3]}" for b in SMU_BAD])
def test_bad_smu_pulse_bench_names_the_key(path, value, key, words):
    m = smu_pulse_mapping()
    if callable(value):
        value(m)
    else:
        _set(m, path, value)
    _assert_refused(m, key, words)


@pytest.mark.timeout(20)
@pytest.mark.parametrize("source", ["generator", "smu"])
def test_bad_bench_contacts_no_instrument(tmp_path, source):
    """A limit violation is refused at load: not even a connection is made."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    srv.settimeout(0.2)
    port = srv.getsockname()[1]
    accepted = []

    def accept():
        try:
            accepted.append(srv.accept())
        except OSError:
            pass

    t = threading.Thread(target=accept)
    t.start()
    if source == "generator":
        m = bench_mapping(ports=(port, port, port))
        m["pulse"]["depression"]["amplitude"] = 5.0
        key = "pulse.depression.amplitude"
    else:  # an SMU pulse shorter than the 2600B can make
        m = smu_pulse_mapping(ports=(port, port))
        m["pulse"]["depression"]["width_s"] = 1e-6
        key = "pulse.depression.width_s"
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(m))
    with pytest.raises(ConfigError, match=key):
        open_array(f"bench:{path}", 2, 3)
    t.join()
    srv.close()
    assert accepted == []


def test_unquoted_matrix_column_is_explained(tmp_path):
    text = yaml.safe_dump(bench_mapping()).replace("'1:5'", "1:5")
    path = tmp_path / "b.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="base-60"):
        load_bench(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_bench(tmp_path / "nope.yaml")
