"""Line-oriented TCP servers (one per instrument) with latency and fault injection.

Each server listens on 127.0.0.1 with an OS-chosen port, serves every
connection in its own daemon thread, reads messages terminated by ``"\\n"``
(a trailing ``"\\r"`` is ignored) and writes each reply followed by ``"\\n"``.

Faults (``--fault KIND[:ARG]``, each fires once per server, counting that
server's own messages, the handshake ``*IDN?`` being message 1):

* ``latency[:MS]``: the first reply after the handshake (to message 2 or later)
  comes MS ms late (default 3000);
* ``drop-after:N``: when message N+1 arrives the connection is closed without an
  answer; the server keeps listening, so a reconnect works;
* ``no-terminator[:N]``: the first reply to message N+1 or later lacks its
  ``"\\n"`` (default N=1, i.e. right after the handshake);
* ``error-after:N``: message N+1 first pushes an instrument error into the queue;
* ``stuck:R,C``: chip device (R, C) never changes (applied by the Emulator).
"""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field

from rpuhw.drivers.emulators.base import Personality

FAULT_KINDS = ("latency", "drop-after", "no-terminator", "error-after", "stuck")


@dataclass
class Faults:
    """Parsed ``--fault`` specifications."""

    latency_ms: float | None = None
    """One reply after the handshake delayed by this many ms."""
    drop_after: int | None = None
    """Close the connection when message N+1 arrives (once)."""
    no_terminator: int | None = None
    """The reply to message N+1 (or the next reply after it) lacks its terminator (once)."""
    error_after: int | None = None
    """Message N+1 pushes an instrument error (once)."""
    stuck: list[tuple[int, int]] = field(default_factory=list)
    """Devices (row, col) that never change."""


def _count(kind: str, arg: str) -> int:
    try:
        n = int(arg)
    except ValueError:
        raise ValueError(f"fault {kind}:{arg}: expected a message count N >= 0") from None
    if n < 0:
        raise ValueError(f"fault {kind}:{arg}: expected a message count N >= 0")
    return n


def parse_faults(specs) -> Faults:
    """Parse fault strings (``"latency:500"``, ``"stuck:1,2"``); ValueError naming the bad one."""
    faults = Faults()
    for spec in specs:
        kind, sep, arg = str(spec).strip().partition(":")
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault {spec!r}: unknown kind {kind!r} (known: "
                             f"{', '.join(FAULT_KINDS)})")
        if kind == "latency":
            try:
                ms = float(arg) if sep else 3000.0
            except ValueError:
                ms = -1.0
            if not ms >= 0:
                raise ValueError(f"fault {spec!r}: expected latency[:MS] with MS >= 0")
            faults.latency_ms = ms
        elif kind == "drop-after":
            if not sep:
                raise ValueError(f"fault {spec!r}: expected drop-after:N")
            faults.drop_after = _count(kind, arg)
        elif kind == "no-terminator":
            faults.no_terminator = _count(kind, arg) if sep else 1
        elif kind == "error-after":
            if not sep:
                raise ValueError(f"fault {spec!r}: expected error-after:N")
            faults.error_after = _count(kind, arg)
        else:
            parts = arg.split(",")
            try:
                r, c = (int(p) for p in parts)
            except ValueError:
                raise ValueError(f"fault {spec!r}: expected stuck:R,C (device row, column)") \
                    from None
            if r < 0 or c < 0:
                raise ValueError(f"fault {spec!r}: row and column must be >= 0")
            faults.stuck.append((r, c))
    return faults


_DROP = object()


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    owner: InstrumentServer


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        owner: InstrumentServer = self.server.owner  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        owner._track(sock, True)
        buf = b""
        try:
            while True:
                try:
                    data = sock.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    msg = line.decode("utf-8", "replace").rstrip("\r")
                    if not msg.strip():
                        continue
                    out = owner.process(msg)
                    if out is _DROP:
                        return
                    if out:
                        sock.sendall(out)
        except OSError:
            return
        finally:
            owner._track(sock, False)
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _sleep_until(deadline: float) -> None:
    """Sleep to ``deadline`` (perf_counter seconds); the last 0.2 ms are spun, because
    ``time.sleep`` overshoots by ~0.1 ms and the benchmark measures host overhead."""
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            return
        if left > 2e-4:
            time.sleep(left - 2e-4)


class InstrumentServer:
    """Serve one personality on ``127.0.0.1:port`` (port 0 = chosen by the OS).

    Args:
        name: bench name of the instrument (for messages).
        personality: the emulated instrument.
        latency_ms: instrument time (ms) of every message: its reply leaves that long after
            the message arrived (processing included; at least the processing time).
        faults: fault injection (see the module doc); the ``stuck`` part is ignored here.
    """

    def __init__(self, name: str, personality: Personality, latency_ms: float = 0.0,
                 faults: Faults | None = None, host: str = "127.0.0.1", port: int = 0):
        self.name = name
        self.personality = personality
        self.latency_ms = float(latency_ms)
        self.faults = faults or Faults()
        self.host, self._port = host, port
        self.messages = 0
        """Messages received by this server (all connections)."""
        self._lock = threading.Lock()
        self._fired: set[str] = set()
        self._server: _TCPServer | None = None
        self._thread: threading.Thread | None = None
        self._clients: set[socket.socket] = set()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError(f"{self.name}: server not started")
        return self._server.server_address[1]

    @property
    def resource(self) -> str:
        """VISA resource string of this server."""
        return f"TCPIP::{self.host}::{self.port}::SOCKET"

    def start(self) -> InstrumentServer:
        if self._server is None:
            self._server = _TCPServer((self.host, self._port), _Handler)
            self._server.owner = self
            self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,),
                                            name=f"emulator-{self.name}", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            clients = list(self._clients)
        for sock in clients:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._lock:
            (self._clients.add if add else self._clients.discard)(sock)

    def _once(self, kind: str, due: bool) -> bool:
        """True the first time ``due`` holds for fault ``kind`` (caller holds the lock)."""
        if due and kind not in self._fired:
            self._fired.add(kind)
            return True
        return False

    def process(self, message: str):
        """Handle one message: the bytes to send, None, or _DROP to close the connection."""
        f = self.faults
        t_arrival = time.perf_counter()
        with self._lock:
            self.messages += 1
            n = self.messages
            if self._once("drop", f.drop_after is not None and n == f.drop_after + 1):
                return _DROP
            inject = self._once("error", f.error_after is not None and n == f.error_after + 1)
        if inject:
            self.personality.inject_error()
        reply = self.personality.handle(message)
        if self.latency_ms > 0:
            _sleep_until(t_arrival + self.latency_ms / 1000.0)
        if reply is None:
            return None
        with self._lock:
            delay = self._once("latency", f.latency_ms is not None and n >= 2)
            bare = self._once("noterm", f.no_terminator is not None and n >= f.no_terminator + 1)
        if delay:
            time.sleep(f.latency_ms / 1000.0)
        return (reply if bare else reply + "\n").encode("utf-8")

    def __repr__(self) -> str:
        where = f"port {self.port}" if self._server is not None else "stopped"
        return f"InstrumentServer({self.name!r}, {where}, messages={self.messages})"
