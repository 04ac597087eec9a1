"""Bench YAML validation: every bad file is one error naming the key, and nothing is sent."""

from __future__ import annotations

import socket
import threading

import pytest
import yaml
from bench_yaml import bench_mapping

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
    ("terminals.pulse.instrument", "smu", "terminals.pulse.instrument", "keysight33500b"),
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
    with pytest.raises(ConfigError) as info:
        bench_from_mapping(m, source="bench.yaml")
    msg = str(info.value)
    assert msg.startswith("bench.yaml: "), msg
    assert f"'{key}'" in msg, msg
    assert words in msg, msg


@pytest.mark.timeout(20)
def test_bad_bench_contacts_no_instrument(tmp_path):
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
    m = bench_mapping(ports=(port, port, port))
    m["pulse"]["depression"]["amplitude"] = 5.0
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(m))
    with pytest.raises(ConfigError, match="pulse.depression.amplitude"):
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
