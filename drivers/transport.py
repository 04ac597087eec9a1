"""Message transports: what drivers need of a channel, and real VISA sessions.

* :class:`Transport` -- the protocol drivers use (write, query, read, clear, reconnect).
* :class:`VisaTransport` -- a pyvisa session (pyvisa-py ``@py`` by default) with an
  explicit backend, explicit terminations, ``TCP_NODELAY`` on raw sockets, an ``*IDN?``
  handshake at open (pyvisa-py 0.8.1 does not report a refused connection at open),
  timeout recovery (drain + re-sync on the handshake reply, so a late reply can never
  answer the next query) and error mapping to :mod:`rpuhw.drivers.errors`. It uses
  pyvisa's public API and :class:`pyvisa.constants.StatusCode`.
* :class:`PyvisaPySocket` -- the one class that knows pyvisa-py's internals: on a
  pyvisa-py TCPIP ``SOCKET`` session of a pyvisa-py version in :data:`PYVISA_PY_RANGE`
  it does the message I/O straight on the session's socket (one ``sendall``, one
  ``recv`` per reply instead of pyvisa-py's ~0.2 ms read loop), sets ``TCP_NODELAY``
  (pyvisa-py 0.8.1 refuses the VISA attribute) and sees a closed peer at once (pyvisa-py
  would busy-spin for the whole timeout). Any other version or backend: the public path.

The in-process doubles (``ScriptedTransport``, ``LoopbackTransport``) are in
:mod:`rpuhw.drivers.doubles`. Counters ``messages`` / ``queries`` count the caller's
messages (writes and queries); the transport's own handshake and re-sync messages are
not counted. Times are in seconds.
"""

from __future__ import annotations

import logging
import re
import select
import socket
import time
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Protocol, runtime_checkable

from .errors import InstrumentConnectionError, InstrumentError, InstrumentTimeout

log = logging.getLogger("rpuhw.drivers.transport")

PYVISA_PY_RANGE: tuple[tuple[int, ...], tuple[int, ...]] = ((0, 7), (0, 9))
"""pyvisa-py versions ``>= 0.7, < 0.9`` whose internals :class:`PyvisaPySocket` relies on
(``visalib.sessions[session].interface``, the socket); pyproject.toml pins the same range
(``tests/test_transport_versions.py`` fails when they drift apart or the internals move)."""


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


class TransportBase:
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


# ---- pyvisa, imported on first use (importing it takes ~0.3 s) ---------------------------
def _status(exc: BaseException) -> Any:
    """The :class:`pyvisa.constants.StatusCode` of a VISA error, else None."""
    from pyvisa.errors import VisaIOError

    return exc.error_code if isinstance(exc, VisaIOError) else None


def _is_timeout(exc: BaseException) -> bool:
    from pyvisa.constants import StatusCode

    return _status(exc) == StatusCode.error_timeout


def _timeout_error() -> Exception:
    from pyvisa.constants import StatusCode
    from pyvisa.errors import VisaIOError

    return VisaIOError(StatusCode.error_timeout)


def version_tuple(text: str) -> tuple[int, ...]:
    """``"0.8.1"`` -> ``(0, 8, 1)``: the leading release numbers (``"0.9.0rc1"`` -> (0, 9, 0))."""
    m = re.match(r"\d+(?:\.\d+)*", text.strip())
    return tuple(int(p) for p in m.group(0).split(".")) if m else ()


def pyvisa_py_version() -> tuple[int, ...] | None:
    """The installed pyvisa-py version, or None when it is not installed."""
    try:
        return version_tuple(metadata.version("pyvisa-py"))
    except metadata.PackageNotFoundError:
        return None


def fast_path_supported(version: tuple[int, ...] | None) -> bool:
    """True when ``version`` of pyvisa-py is inside :data:`PYVISA_PY_RANGE`."""
    low, high = PYVISA_PY_RANGE
    return version is not None and low <= version < high


# ---- message I/O: the public path and the pyvisa-py socket path --------------------------
class PublicIO:
    """Message I/O through pyvisa's public :class:`~pyvisa.resources.MessageBasedResource`
    API (any backend, any interface)."""

    socket: socket.socket | None = None

    def __init__(self, res: Any) -> None:
        self.res = res

    def write(self, message: str) -> None:
        self.res.write(message)

    def read(self) -> str:
        return self.res.read()

    def peer_closed(self) -> bool:
        """Not visible through the public API: False (a closed peer times out instead)."""
        return False

    def drain(self, timeout_s: float) -> None:
        """Discard pending input: read with a short timeout until nothing comes (bounded
        by ``max(1 s, timeout_s)``; viClear would spin at EOF on some backends)."""
        saved = self.res.timeout
        self.res.timeout = 100  # ms
        deadline = time.monotonic() + max(1.0, timeout_s)
        try:
            while time.monotonic() < deadline:
                try:
                    self.res.read_raw()
                except Exception as exc:
                    if _is_timeout(exc):
                        return
                    raise
        finally:
            self.res.timeout = saved


class PyvisaPySocket:
    """Message I/O straight on a pyvisa-py ``SOCKET`` session's socket.

    The only code that uses pyvisa-py internals (the session table ``visalib.sessions``
    and the session's ``interface`` socket). :meth:`attach` checks the installed
    pyvisa-py against :data:`PYVISA_PY_RANGE` and the internals' shape, and returns None
    (use :class:`PublicIO`) when either does not fit. Terminations, timeouts (a
    :class:`~pyvisa.errors.VisaIOError` with ``StatusCode.error_timeout``) and EOF
    (``OSError``) behave as through pyvisa.
    """

    def __init__(self, sock: socket.socket, timeout_s: float, read_termination: str,
                 write_termination: str) -> None:
        self.socket = sock
        self.timeout_s = timeout_s
        self._term = read_termination.encode("utf-8")
        self._write_term = write_termination
        self._buf = bytearray()

    @classmethod
    def attach(cls, res: Any, backend: str, timeout_s: float, read_termination: str,
               write_termination: str) -> PyvisaPySocket | None:
        """The socket path for ``res``, or None (another backend or interface, a pyvisa-py
        outside :data:`PYVISA_PY_RANGE`, or internals that moved)."""
        if not backend.startswith("@py"):
            return None
        version = pyvisa_py_version()
        if not fast_path_supported(version):
            log.info("pyvisa-py %s is outside %s: message I/O through pyvisa's public API",
                     version, PYVISA_PY_RANGE)
            return None
        try:
            sock = res.visalib.sessions[res.session].interface
        except (AttributeError, KeyError, TypeError):
            sock = None
        if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
            return None
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # pragma: no cover - not a TCP socket
            log.debug("TCP_NODELAY not set: %s", exc)
        return cls(sock, timeout_s, read_termination, write_termination)

    def write(self, message: str) -> None:
        self.socket.sendall((message + self._write_term).encode("utf-8"))

    def read(self) -> str:
        term, buf = self._term, self._buf
        deadline = time.monotonic() + self.timeout_s
        while True:
            at = buf.find(term)
            if at >= 0:
                line = bytes(buf[:at])
                del buf[:at + len(term)]
                return line.decode("utf-8", errors="replace")
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.socket], [], [], left)[0]:
                raise _timeout_error()
            chunk = self.socket.recv(65536)
            if not chunk:
                raise OSError("connection closed by the instrument")
            buf += chunk

    def peer_closed(self) -> bool:
        """True when the peer closed the socket (EOF pending)."""
        try:
            if not select.select([self.socket], [], [], 0)[0]:
                return False
            return self.socket.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def drain(self, timeout_s: float) -> None:
        """Discard buffered input (like viClear, but stops at EOF instead of spinning)."""
        self._buf.clear()
        deadline = time.monotonic() + max(1.0, timeout_s)
        while time.monotonic() < deadline and select.select([self.socket], [], [], 0.1)[0]:
            if not self.socket.recv(4096):
                raise OSError("connection closed by the instrument")


# ---- the VISA transport -------------------------------------------------------------------
class VisaTransport(TransportBase):
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
        self._io: PublicIO | PyvisaPySocket | None = None
        self._stale = False
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
        self._io = PyvisaPySocket.attach(self._res, self.backend, self.timeout_s,
                                         self.read_termination, self.write_termination)
        if self._io is None:
            self._io = PublicIO(self._res)
            self._set_nodelay()
        self._stale = False
        if self.handshake is None:
            return
        try:
            self._io.write(self.handshake)
            self.idn = self._io.read().strip()
        except Exception as exc:
            self._close_resource()
            if _is_timeout(exc):
                raise InstrumentTimeout(
                    f"no reply to handshake {self.handshake!r} within {self.timeout_s} s",
                    self.resource,
                ) from exc
            raise InstrumentConnectionError(
                f"handshake {self.handshake!r} failed: {exc}", self.resource
            ) from exc

    def _set_nodelay(self) -> None:
        """``VI_ATTR_TCPIP_NODELAY`` through the public API (TCPIP sessions that take it)."""
        from pyvisa.constants import ResourceAttribute, VisaBoolean

        try:
            self._res.set_visa_attribute(ResourceAttribute.tcpip_nodelay, VisaBoolean.true)
        except Exception as exc:
            log.debug("%s: TCP_NODELAY not set: %s", self.resource, exc)

    def _socket(self) -> socket.socket | None:
        """The raw socket when the pyvisa-py socket path is in use, else None."""
        return self._io.socket if self._io is not None else None

    def _close_resource(self) -> None:
        self._io = None
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
    def _ready(self, message: str) -> PublicIO | PyvisaPySocket:
        if self._io is None:
            raise InstrumentConnectionError(f"transport is closed (sending {message!r})",
                                            self.resource)
        if self._stale:
            log.info("%s: reconnecting after a failed re-sync", self.resource)
            self.reconnect()
        return self._io

    def _map(self, exc: Exception, message: str) -> InstrumentError:
        from pyvisa.constants import StatusCode

        code = _status(exc)
        if code == StatusCode.error_timeout:
            return self._after_timeout(message)
        if code in (StatusCode.error_connection_lost, StatusCode.error_resource_not_found) \
                or isinstance(exc, OSError) or "could not connect" in str(exc):
            return InstrumentConnectionError(f"connection lost at {message!r}: {exc}",
                                             self.resource)
        return InstrumentError(f"VISA error at {message!r}: {exc}", self.resource)

    def _after_timeout(self, message: str) -> InstrumentError:
        """Drain, re-sync on the handshake reply; return the exception to raise."""
        what = f"no terminated reply to {message!r} within {self.timeout_s} s"
        io = self._io
        if io is not None and io.peer_closed():
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
        try:
            self._ready("<clear>").drain(self.timeout_s)
        except OSError as exc:
            raise InstrumentConnectionError(str(exc), self.resource) from exc

    def _resync(self) -> bool:
        """Send the handshake once and read until its reply comes back (bounded)."""
        if self.handshake is None or self.idn is None:
            return True
        io = self._ready(self.handshake)
        io.write(self.handshake)
        deadline = time.monotonic() + 3 * self.timeout_s
        while time.monotonic() < deadline:
            try:
                if io.read().strip() == self.idn:
                    return True
            except Exception as exc:
                if not _is_timeout(exc):
                    raise
                if io.peer_closed():
                    raise InstrumentConnectionError("connection closed by the instrument",
                                                    self.resource) from exc
        return False

    def write(self, message: str) -> None:
        """Send one message (the write termination is appended)."""
        io = self._ready(message)
        try:
            io.write(message)
        except Exception as exc:
            raise self._map(exc, message) from exc
        self._note(message, None, query=False)

    def read(self) -> str:
        """Read one terminated reply (terminator stripped)."""
        io = self._ready("<read>")
        try:
            reply = io.read()
        except Exception as exc:
            raise self._map(exc, "<read>") from exc
        self._note("", reply, query=False)
        return reply

    def query(self, message: str) -> str:
        """Send ``message`` and read one terminated reply."""
        io = self._ready(message)
        sent = False
        try:
            io.write(message)
            sent = True
            reply = io.read()
        except Exception as exc:
            if sent:  # it left the host: count it, with no reply
                self._note(message, None, query=True)
            raise self._map(exc, message) from exc
        self._note(message, reply, query=True)
        return reply

    def clear(self) -> None:
        """Discard any pending input."""
        self._drain()
