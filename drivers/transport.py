"""Message transports: real VISA sessions and two in-process test doubles.

* :class:`VisaTransport` -- pyvisa session (pyvisa-py ``@py`` by default) with explicit
  terminations, ``TCP_NODELAY`` on raw sockets, an ``*IDN?`` handshake at open (pyvisa-py
  0.8.1 does not report a refused connection at open), timeout recovery (drain + re-sync
  on the handshake reply, so a late reply can never answer the next query), peer-close
  detection (pyvisa-py would busy-spin for the whole timeout) and error mapping to
  :mod:`rpuhw.drivers.errors`.
* :class:`ScriptedTransport` -- expected-protocol test double: a list of
  ``(expected_message, reply)`` pairs; fails on the first mismatch and on leftovers.
* :class:`LoopbackTransport` -- calls ``handle(message) -> reply | None`` in-process.

Counters ``messages`` / ``queries`` count the caller's messages (writes and queries); the
transport's own handshake and re-sync messages are not counted. Times are in seconds.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .errors import InstrumentConnectionError, InstrumentError, InstrumentTimeout

log = logging.getLogger("rpuhw.drivers.transport")

VI_ERROR_TMO = -1073807339
VI_ERROR_CONN_LOST = -1073807194
VI_ERROR_RSRC_NFOUND = -1073807343
_CONNECTION_CODES = {VI_ERROR_CONN_LOST, VI_ERROR_RSRC_NFOUND}


@runtime_checkable
class Transport(Protocol):
    """What instrument drivers need from a message channel."""

    resource: str
    idn: str | None
    messages: int
    queries: int

    def write(self, message: str) -> None: ...
    def query(self, message: str) -> str: ...
    def read(self) -> str: ...
    def clear(self) -> None: ...
    def reconnect(self) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class TranscriptEntry:
    """One exchange of a recorded session."""

    t_s: float
    """Seconds since the transport was created."""
    sent: str
    """Message sent ("" for a bare read)."""
    reply: str | None
    """Reply text without terminator; None for a write."""


class _Counting:
    """Counters, transcript and debug logging shared by all transports."""

    def __init__(self, resource: str, record: bool) -> None:
        self.resource = resource
        self.idn: str | None = None
        self.messages = 0
        self.queries = 0
        self.record = record
        self.transcript: list[TranscriptEntry] = []
        self._t0 = time.perf_counter()

    def _note(self, sent: str, reply: str | None, *, query: bool) -> None:
        if sent:
            self.messages += 1
        if query:
            self.queries += 1
        log.debug("%s >> %r << %r", self.resource, sent, reply)
        if self.record:
            self.transcript.append(TranscriptEntry(time.perf_counter() - self._t0, sent, reply))

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class VisaTransport(_Counting):
    """A pyvisa message session (``TCPIP::host::port::SOCKET``, GPIB, USB, ...).

    ``timeout_s`` applies to every read and to opening the connection. ``handshake`` is
    queried right after open (None: no handshake and no re-sync after timeouts).
    """

    def __init__(
        self,
        resource: str,
        backend: str = "@py",
        timeout_s: float = 2.0,
        handshake: str | None = "*IDN?",
        read_termination: str = "\n",
        write_termination: str = "\n",
        record: bool = False,
    ) -> None:
        super().__init__(resource, record)
        if not timeout_s > 0:
            raise ValueError(f"{resource}: timeout_s must be > 0, got {timeout_s!r}")
        self.backend = backend
        self.timeout_s = float(timeout_s)
        self.handshake = handshake
        self.read_termination = read_termination
        self.write_termination = write_termination
        self._res: Any = None
        self._rm: Any = None
        self._stale = False
        self._raw: socket.socket | None = None  # pyvisa-py SOCKET: direct socket I/O
        self._rbuf = bytearray()
        self._open()

    # -- connection -------------------------------------------------------------------
    def _open(self) -> None:
        if self._rm is None:
            import pyvisa

            try:
                self._rm = pyvisa.ResourceManager(self.backend)
            except Exception as exc:
                raise InstrumentError(f"cannot load VISA backend {self.backend!r}: {exc}",
                                      self.resource) from exc
        ms = int(self.timeout_s * 1000)
        try:
            self._res = self._rm.open_resource(
                self.resource,
                read_termination=self.read_termination,
                write_termination=self.write_termination,
                timeout=ms,
                open_timeout=ms,
            )
        except Exception as exc:
            raise InstrumentConnectionError(f"cannot open: {exc}", self.resource) from exc
        self._set_nodelay()
        self._raw = self._socket()
        self._rbuf.clear()
        self._stale = False
        if self.handshake is None:
            return
        try:
            self._io_write(self.handshake)
            self.idn = self._io_read().strip()
        except Exception as exc:
            self._close_resource()
            if getattr(exc, "error_code", None) == VI_ERROR_TMO:
                raise InstrumentTimeout(
                    f"no reply to handshake {self.handshake!r} within {self.timeout_s} s",
                    self.resource,
                ) from exc
            raise InstrumentConnectionError(
                f"handshake {self.handshake!r} failed: {exc}", self.resource
            ) from exc

    def _session(self) -> Any:
        """The pyvisa-py session object (private API), or None on other backends."""
        try:
            return self._res.visalib.sessions[self._res.session]
        except Exception:
            return None

    def _socket(self) -> socket.socket | None:
        sock = getattr(self._session(), "interface", None)
        return sock if isinstance(sock, socket.socket) else None

    def _set_nodelay(self) -> None:
        sock = self._socket()
        if sock is None:
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # pragma: no cover - not a TCP socket
            log.debug("%s: TCP_NODELAY not set: %s", self.resource, exc)

    # -- message I/O: straight on the socket for pyvisa-py SOCKET sessions ---------------
    # pyvisa-py's read loop costs ~0.2 ms per reply (several selects and buffer copies);
    # on a raw socket session the same exchange is a sendall and a recv. Terminations,
    # timeouts (VI_ERROR_TMO) and EOF (OSError) behave as through pyvisa.
    def _io_write(self, message: str) -> None:
        if self._raw is None:
            self._res.write(message)
            return
        self._raw.sendall((message + self.write_termination).encode("utf-8"))

    def _io_read(self) -> str:
        if self._raw is None:
            return self._res.read()
        term = self.read_termination.encode("utf-8")
        deadline = time.monotonic() + self.timeout_s
        while True:
            at = self._rbuf.find(term)
            if at >= 0:
                line = bytes(self._rbuf[:at])
                del self._rbuf[:at + len(term)]
                return line.decode("utf-8", errors="replace")
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._raw], [], [], left)[0]:
                from pyvisa.errors import VisaIOError

                raise VisaIOError(VI_ERROR_TMO)
            chunk = self._raw.recv(65536)
            if not chunk:
                raise OSError("connection closed by the instrument")
            self._rbuf += chunk

    def _peer_closed(self) -> bool:
        """True when the peer closed the socket (EOF pending); False if unknown."""
        sock = self._socket()
        if sock is None:
            return False
        try:
            if not select.select([sock], [], [], 0)[0]:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def _close_resource(self) -> None:
        self._raw = None
        self._rbuf.clear()
        if self._res is not None:
            try:
                self._res.close()
            except Exception as exc:
                log.debug("%s: close failed: %s", self.resource, exc)
            self._res = None

    def reconnect(self) -> None:
        """Close and reopen the session (also after :meth:`close`), then handshake again."""
        self._close_resource()
        self._open()

    def close(self) -> None:
        """Close the session (idempotent).

        The ResourceManager is left open: pyvisa-py hands every ResourceManager of a
        process the same default session, so closing it would close every other
        instrument's session too.
        """
        self._close_resource()
        self._rm = None

    # -- I/O --------------------------------------------------------------------------
    def _ready(self, message: str) -> None:
        if self._res is None:
            raise InstrumentConnectionError(f"transport is closed (sending {message!r})",
                                            self.resource)
        if self._stale:
            log.info("%s: reconnecting after a failed re-sync", self.resource)
            self.reconnect()
        # (on a raw socket a closed peer shows as EOF at the read; through pyvisa-py the
        # read would busy-spin for the whole timeout, so look before sending)
        if self._raw is None and self._peer_closed():
            raise InstrumentConnectionError(
                f"connection closed by the instrument (sending {message!r}); call reconnect()",
                self.resource,
            )

    def _map(self, exc: Exception, message: str) -> InstrumentError:
        code = getattr(exc, "error_code", None)
        if code == VI_ERROR_TMO:
            return self._after_timeout(message)
        if code in _CONNECTION_CODES or isinstance(exc, OSError) or "could not connect" in str(
            exc
        ):
            return InstrumentConnectionError(f"connection lost at {message!r}: {exc}",
                                             self.resource)
        return InstrumentError(f"VISA error at {message!r}: {exc}", self.resource)

    def _after_timeout(self, message: str) -> InstrumentError:
        """Drain, re-sync on the handshake reply; return the exception to raise."""
        what = f"no terminated reply to {message!r} within {self.timeout_s} s"
        if self._peer_closed():
            return InstrumentConnectionError(f"{what}: connection closed by the instrument",
                                             self.resource)
        try:
            self._drain()
            ok = self._resync()
        except InstrumentConnectionError as exc:
            return exc
        except Exception as exc:
            log.debug("%s: re-sync failed: %s", self.resource, exc)
            ok = False
        if not ok:
            self._stale = True
            return InstrumentTimeout(f"{what}; re-sync failed, next call reconnects",
                                     self.resource)
        return InstrumentTimeout(f"{what}; session re-synchronised", self.resource)

    def _drain(self) -> None:
        """Discard buffered input (like viClear, but stops at EOF instead of spinning)."""
        sess, sock = self._session(), self._socket()
        if sock is None:
            self._res.clear()
            return
        pending = getattr(sess, "_pending_buffer", None)
        if pending is not None:
            pending.clear()
        self._rbuf.clear()
        deadline = time.monotonic() + max(1.0, self.timeout_s)
        while time.monotonic() < deadline and select.select([sock], [], [], 0.1)[0]:
            if not sock.recv(4096):
                raise InstrumentConnectionError("connection closed by the instrument",
                                                self.resource)

    def _resync(self) -> bool:
        """Send the handshake once and read until its reply comes back (bounded)."""
        if self.handshake is None or self.idn is None:
            return True
        self._io_write(self.handshake)
        deadline = time.monotonic() + 3 * self.timeout_s
        while time.monotonic() < deadline:
            try:
                if self._io_read().strip() == self.idn:
                    return True
            except Exception as exc:
                if getattr(exc, "error_code", None) != VI_ERROR_TMO:
                    raise
                if self._peer_closed():
                    raise InstrumentConnectionError("connection closed by the instrument",
                                                    self.resource) from exc
        return False

    def write(self, message: str) -> None:
        """Send one message (the write termination is appended)."""
        self._ready(message)
        try:
            self._io_write(message)
        except Exception as exc:
            raise self._map(exc, message) from exc
        self._note(message, None, query=False)

    def read(self) -> str:
        """Read one terminated reply (terminator stripped)."""
        self._ready("<read>")
        try:
            reply = self._io_read()
        except Exception as exc:
            raise self._map(exc, "<read>") from exc
        self._note("", reply, query=False)
        return reply

    def query(self, message: str) -> str:
        """Send ``message`` and read one terminated reply."""
        self._ready(message)
        sent = False
        try:
            self._io_write(message)
            sent = True
            if self._raw is None and self._peer_closed():
                raise OSError("connection closed by the instrument")
            reply = self._io_read()
        except Exception as exc:
            if sent:  # it left the host: count it, with no reply
                self._note(message, None, query=True)
            raise self._map(exc, message) from exc
        self._note(message, reply, query=True)
        return reply

    def clear(self) -> None:
        """Discard any pending input."""
        self._ready("<clear>")
        self._drain()


class ScriptMismatch(AssertionError):
    """A :class:`ScriptedTransport` saw an unexpected message or kept leftovers."""


class ScriptedTransport(_Counting):
    """Expected-protocol double: ``script`` is a list of ``(expected_message, reply)``.

    ``write`` needs an entry with reply None; ``query`` an entry with a str reply (None:
    the query times out with :class:`InstrumentTimeout`); ``read`` an entry whose expected
    message is ``""``. ``idn`` is None, so drivers query ``*IDN?`` through the script.
    As a context manager, a clean exit calls :meth:`assert_done`.
    """

    def __init__(self, script: list[tuple[str, str | None]], resource: str = "scripted",
                 record: bool = False) -> None:
        super().__init__(resource, record)
        self.script = list(script)
        self.position = 0
        self.sent: list[str] = []
        self.closed = False

    def _next(self, message: str, kind: str) -> str | None:
        if self.position >= len(self.script):
            raise ScriptMismatch(
                f"{self.resource}: unexpected {kind} #{self.position} {message!r}: script is done"
            )
        expected, reply = self.script[self.position]
        if expected != message:
            raise ScriptMismatch(
                f"{self.resource}: {kind} #{self.position} mismatch\n"
                f"  expected: {expected!r}\n  got:      {message!r}"
            )
        if kind == "write" and reply is not None:
            raise ScriptMismatch(
                f"{self.resource}: #{self.position} {message!r} was written, but the script "
                f"expects a query with reply {reply!r}"
            )
        self.position += 1
        self.sent.append(message)
        return reply

    def write(self, message: str) -> None:
        self._next(message, "write")
        self._note(message, None, query=False)

    def query(self, message: str) -> str:
        reply = self._next(message, "query")
        self._note(message, reply, query=True)
        if reply is None:
            raise InstrumentTimeout(f"no reply to {message!r} (scripted)", self.resource)
        return reply

    def read(self) -> str:
        reply = self._next("", "read")
        self._note("", reply, query=False)
        if reply is None:
            raise InstrumentTimeout("no reply to read (scripted)", self.resource)
        return reply

    def clear(self) -> None:
        pass

    def reconnect(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True

    def assert_done(self) -> None:
        """Fail when scripted messages were never sent."""
        left = self.script[self.position:]
        if left:
            raise ScriptMismatch(
                f"{self.resource}: {len(left)} scripted message(s) never sent, next: {left[0]!r}"
            )

    def __exit__(self, exc_type: object, *exc: object) -> None:
        self.close()
        if exc_type is None:
            self.assert_done()


class LoopbackTransport(_Counting):
    """In-process transport: ``handle(message)`` returns the reply text or None.

    Replies (split on newlines) are queued like a socket's input buffer, so a reply to a
    write stays pending until read. Performs the ``*IDN?`` handshake at construction.
    """

    def __init__(self, handle: Callable[[str], str | None], resource: str = "loopback",
                 handshake: str | None = "*IDN?", record: bool = False) -> None:
        super().__init__(resource, record)
        self.handle = handle
        self.handshake = handshake
        self._pending: deque[str] = deque()
        self.closed = False
        self.reconnect()

    def _send(self, message: str) -> None:
        if self.closed:
            raise InstrumentConnectionError(f"transport is closed (sending {message!r})",
                                            self.resource)
        reply = self.handle(message)
        if reply is not None:
            self._pending.extend(reply.split("\n"))

    def _read(self, message: str) -> str:
        if not self._pending:
            raise InstrumentTimeout(f"no reply to {message!r}", self.resource)
        return self._pending.popleft()

    def write(self, message: str) -> None:
        self._send(message)
        self._note(message, None, query=False)

    def query(self, message: str) -> str:
        self._send(message)
        reply = self._pending.popleft() if self._pending else None
        self._note(message, reply, query=True)
        if reply is None:
            raise InstrumentTimeout(f"no reply to {message!r}", self.resource)
        return reply

    def read(self) -> str:
        reply = self._read("<read>")
        self._note("", reply, query=False)
        return reply

    def clear(self) -> None:
        self._pending.clear()

    def reconnect(self) -> None:
        self.closed = False
        self._pending.clear()
        if self.handshake is not None:
            self._send(self.handshake)
            self.idn = self._read(self.handshake).strip()

    def close(self) -> None:
        self.closed = True
