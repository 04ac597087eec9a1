"""In-process transports for tests and dry runs (no VISA, no sockets).

* :class:`ScriptedTransport` -- expected-protocol test double: a list of
  ``(expected_message, reply)`` pairs; fails on the first mismatch and on leftovers.
* :class:`LoopbackTransport` -- calls ``handle(message) -> reply | None`` in-process.

Both count messages and queries like :class:`~rpuhw.drivers.transport.VisaTransport`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .errors import InstrumentConnectionError, InstrumentTimeout
from .transport import TransportBase


class ScriptMismatch(AssertionError):
    """A :class:`ScriptedTransport` saw an unexpected message or kept leftovers."""


class ScriptedTransport(TransportBase):
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


class LoopbackTransport(TransportBase):
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
