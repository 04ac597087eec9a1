"""VisaTransport through real pyvisa + pyvisa-py sockets against a small line server.

The server is a fixture of the transport (line in, line out, with fault knobs), not an
instrument emulator. Commands it understands (one per line):

* ``*IDN?`` -> ``TEST,LINESERVER,0,1`` (unless ``silent``)
* ``ECHO? text`` -> ``text``
* ``DELAY? seconds text`` -> ``text`` after ``seconds`` (the connection is busy meanwhile)
* ``NOTERM? text`` -> ``text`` without terminator
* ``DROP`` -> the server closes the connection
* anything else: recorded in ``received``, no reply
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time

import pytest

from rpuhw.drivers.errors import InstrumentConnectionError, InstrumentTimeout
from rpuhw.drivers.transport import Transport, VisaTransport

pytestmark = pytest.mark.timeout(20)

IDN = "TEST,LINESERVER,0,1"


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        srv: LineServer = self.server  # type: ignore[assignment]
        srv.connections += 1
        buf = b""
        while True:
            try:
                data = self.request.recv(4096)
            except OSError:
                return
            if not data:
                return
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                if not self._answer(srv, line.decode()):
                    return

    def _answer(self, srv: LineServer, line: str) -> bool:
        srv.received.append(line)
        cmd, _, arg = line.partition(" ")
        reply: bytes | None = None
        if cmd == "*IDN?" and not srv.silent:
            reply = IDN.encode() + b"\n"
        elif cmd == "ECHO?":
            reply = arg.encode() + b"\n"
        elif cmd == "DELAY?":
            seconds, _, text = arg.partition(" ")
            time.sleep(float(seconds))
            reply = text.encode() + b"\n"
        elif cmd == "NOTERM?":
            reply = arg.encode()
        elif cmd == "DROP":
            self.request.shutdown(socket.SHUT_RDWR)
            return False
        if reply is not None:
            try:
                self.request.sendall(reply)
            except OSError:
                return False
        return True


class LineServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.received: list[str] = []
        self.connections = 0
        self.silent = False

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1::{self.server_address[1]}::SOCKET"


@pytest.fixture
def server():
    srv = LineServer()
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def transport(server):
    t = VisaTransport(server.resource, timeout_s=0.5)
    yield t
    t.close()


def _wait_for(pred, timeout_s: float = 2.0) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_handshake_query_write_and_counters(server, transport):
    assert isinstance(transport, Transport)
    assert transport.idn == IDN
    assert (transport.messages, transport.queries) == (0, 0)  # handshake is not counted
    assert transport.query("ECHO? hello world") == "hello world"
    transport.write("SET 1")
    assert transport.query("ECHO? 2") == "2"
    assert (transport.messages, transport.queries) == (3, 2)
    assert _wait_for(lambda: "SET 1" in server.received)
    assert server.received[:2] == ["*IDN?", "ECHO? hello world"]


def test_refused_connection_names_resource_within_timeout():
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens on this port now
    resource = f"TCPIP::127.0.0.1::{port}::SOCKET"
    t0 = time.monotonic()
    with pytest.raises(InstrumentConnectionError) as err:
        VisaTransport(resource, timeout_s=1.0)
    assert time.monotonic() - t0 < 1.0
    assert resource in str(err.value) and err.value.resource == resource


def test_silent_handshake_times_out(server):
    server.silent = True
    with pytest.raises(InstrumentTimeout, match=r"\*IDN\?"):
        VisaTransport(server.resource, timeout_s=0.3)


@pytest.mark.parametrize("delay_s", [0.55, 0.8, 1.3])
def test_timeout_then_resync(server, transport, delay_s):
    """The late reply arrives during the drain, during the re-sync read, or after a
    re-sync read timed out; the next query must get its own reply in every case."""
    t0 = time.monotonic()
    with pytest.raises(InstrumentTimeout) as err:
        transport.query(f"DELAY? {delay_s} late")
    assert time.monotonic() - t0 >= 0.5
    assert server.resource in str(err.value) and "DELAY?" in str(err.value)
    assert "re-synchronised" in str(err.value)
    for k in range(3):
        assert transport.query(f"ECHO? next{k}") == f"next{k}"
    assert (transport.messages, transport.queries) == (4, 4)


def test_missing_terminator_times_out_and_recovers(transport):
    with pytest.raises(InstrumentTimeout, match="NOTERM"):
        transport.query("NOTERM? no newline")
    assert transport.query("ECHO? ok") == "ok"


def test_peer_drop_then_reconnect(server, transport):
    t0 = time.monotonic()
    with pytest.raises(InstrumentConnectionError, match="closed by the instrument") as err:
        transport.query("DROP")
    assert time.monotonic() - t0 < 1.0
    assert server.resource in str(err.value)
    # a later call fails fast instead of busy-spinning for the timeout
    t0 = time.monotonic()
    with pytest.raises(InstrumentConnectionError):
        transport.query("ECHO? x")
    with pytest.raises(InstrumentConnectionError):
        transport.write("SET 2")
    assert time.monotonic() - t0 < 0.3
    transport.reconnect()
    assert transport.idn == IDN
    assert transport.query("ECHO? back") == "back"
    assert server.connections == 2


def test_drop_after_write_is_detected_before_the_next_query(server, transport):
    transport.write("DROP")
    assert _wait_for(lambda: "DROP" in server.received)
    time.sleep(0.05)
    t0 = time.monotonic()
    with pytest.raises(InstrumentConnectionError):
        transport.query("ECHO? x")
    assert time.monotonic() - t0 < 0.3


def test_closed_transport_refuses(transport):
    transport.close()
    with pytest.raises(InstrumentConnectionError, match="closed"):
        transport.write("SET 1")


def test_tcp_nodelay_write_write_query_latency(transport):
    sock = transport._socket()  # private: verifies the option really is on the socket
    assert sock is not None and sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    transport.query("ECHO? warm-up")
    n = 20
    t0 = time.perf_counter()
    for i in range(n):
        transport.write(f"SET {i}")
        transport.write(f"VAL {i}")
        assert transport.query(f"ECHO? {i}") == str(i)
    per_iteration_s = (time.perf_counter() - t0) / n
    # Nagle + delayed ACK cost ~44 ms per iteration here (measured); without it < 1 ms.
    # 30 ms keeps the check immune to a busy machine and still catches the stall.
    assert per_iteration_s < 0.030, f"{per_iteration_s * 1e3:.1f} ms per write, write, query"


def test_transcript_recording(server):
    with VisaTransport(server.resource, timeout_s=0.5, record=True) as t:
        t.write("SET 1")
        assert t.query("ECHO? a") == "a"
        entries = [(e.sent, e.reply) for e in t.transcript]
        assert entries == [("SET 1", None), ("ECHO? a", "a")]
        assert 0 <= t.transcript[0].t_s <= t.transcript[1].t_s
    assert VisaTransport(server.resource, timeout_s=0.5).transcript == []


def test_reconnect_after_close(server, transport):
    transport.close()
    transport.reconnect()
    assert transport.query("ECHO? again") == "again"


def test_closing_one_session_leaves_the_others_open(server):
    """pyvisa-py shares its default ResourceManager session: closing one transport must
    not close another instrument's session."""
    a = VisaTransport(server.resource, timeout_s=1.0)
    b = VisaTransport(server.resource, timeout_s=1.0)
    a.close()
    assert b.query("*IDN?") == b.idn
    b.close()


# ---- the pyvisa-py fast path: pinned range, version check, public fallback -------------------
def _pinned_range() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ``pyvisa-py>=A,<B`` dependency of pyproject.toml as version tuples."""
    import re
    from pathlib import Path

    from rpuhw.drivers.transport import version_tuple

    text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    m = re.search(r'"pyvisa-py\s*>=\s*([\d.]+)\s*,\s*<\s*([\d.]+)\s*"', text)
    assert m, "pyproject.toml must pin pyvisa-py to a range: \"pyvisa-py>=A,<B\""
    return version_tuple(m.group(1)), version_tuple(m.group(2))


def test_pinned_pyvisa_py_range_is_the_fast_paths_range():
    from rpuhw.drivers.transport import PYVISA_PY_RANGE

    assert _pinned_range() == PYVISA_PY_RANGE, \
        "pyproject.toml's pyvisa-py range and transport.PYVISA_PY_RANGE must move together"


def test_installed_pyvisa_py_is_inside_the_pinned_range():
    from rpuhw.drivers.transport import fast_path_supported, pyvisa_py_version

    version = pyvisa_py_version()
    low, high = _pinned_range()
    assert version is not None and low <= version < high, \
        f"installed pyvisa-py {version} is outside the pinned range [{low}, {high})"
    assert fast_path_supported(version)


def test_fast_path_finds_the_internals_it_needs(transport):
    """On the installed pyvisa-py the socket path attaches (its internals are where it
    expects them); if pyvisa-py moves them, this fails instead of the path silently
    falling back."""
    from rpuhw.drivers.transport import PyvisaPySocket

    assert isinstance(transport._io, PyvisaPySocket)
    assert transport._socket() is transport._io.socket


def test_version_check():
    from rpuhw.drivers.transport import PYVISA_PY_RANGE, fast_path_supported, version_tuple

    low, high = PYVISA_PY_RANGE
    assert version_tuple("0.8.1") == (0, 8, 1) and version_tuple("0.9.0rc1") == (0, 9, 0)
    assert fast_path_supported(low) and not fast_path_supported(high)
    assert not fast_path_supported((0, 6, 3)) and not fast_path_supported(None)


@pytest.fixture
def public_transport(server, monkeypatch):
    """A transport on the public pyvisa path, as with a pyvisa-py outside the range."""
    from rpuhw.drivers import transport as tr

    monkeypatch.setattr(tr, "pyvisa_py_version", lambda: (0, 6, 3))
    t = VisaTransport(server.resource, timeout_s=0.5)
    assert isinstance(t._io, tr.PublicIO) and t._socket() is None
    yield t
    t.close()


def test_public_path_query_write_and_counters(server, public_transport):
    t = public_transport
    assert t.idn == IDN
    assert t.query("ECHO? hello") == "hello"
    t.write("SET 1")
    assert t.query("ECHO? 2") == "2"
    assert (t.messages, t.queries) == (3, 2)


def test_public_path_timeout_then_resync(server, public_transport):
    t = public_transport
    with pytest.raises(InstrumentTimeout, match="re-synchronised"):
        t.query("DELAY? 0.55 late")
    for k in range(3):
        assert t.query(f"ECHO? next{k}") == f"next{k}"
    with pytest.raises(InstrumentTimeout, match="NOTERM"):
        t.query("NOTERM? no newline")
    assert t.query("ECHO? ok") == "ok"


def test_only_the_transport_names_pyvisa_internals():
    """pyvisa-py's private session table and socket are named in transport.py only."""
    import re
    from pathlib import Path

    private = re.compile(r"visalib\.sessions|\.sessions\[|_pending_buffer|\.interface\b")
    drivers = Path(__file__).resolve().parents[1] / "drivers"
    found = [f"{p.relative_to(drivers)}: {line.strip()}"
             for p in sorted(drivers.rglob("*.py")) if p.name != "transport.py"
             for line in p.read_text().splitlines() if private.search(line)]
    assert not found, "pyvisa internals outside drivers/transport.py:\n" + "\n".join(found)
