"""TSP (Lua) driver base for Keithley 2600B / 707B.

Statements of one message are joined with ``"; "``; only ``print()`` replies. Numbers
print ``%e``-style (``0.00000e+00``). A configuration block ends with
``print(errorqueue.count)``; a non-zero count is drained with ``print(errorqueue.next())``
(reply ``code\\tmessage\\tseverity\\tnode``) and raised as
:class:`InstrumentCommandError` (first entry).

TSP-Link: a driver with ``node=N`` prefixes every instrument call with ``node[N].``
(including its error queue: ``print(node[N].errorqueue.count)``) and writes relay waits as
``waitcomplete(0)`` (wait for all nodes), e.g. for a 707B as node 2 behind a 2600B::

    node[2].channel.exclusiveclose("1A01,1C05"); waitcomplete(0); print(node[2].errorqueue.count)

Without a node: ``channel.exclusiveclose("1A01,1C05"); waitcomplete(); print(errorqueue.count)``.
Command templates use the fields ``{prefix}`` and ``{waitcomplete}``.
"""

from __future__ import annotations

from typing import ClassVar

from .command_table import Command, done
from .errors import InstrumentError
from .instrument import MAX_ERRORS, Instrument
from .transport import Transport


def parse_tsp_number(reply: str) -> float:
    """``1.23456e-06`` -> float; ValueError on ``nil`` or text."""
    return float(reply.strip())


def parse_tsp_error(reply: str) -> tuple[int, str, int, int]:
    """``-2.85000e+02\\tmsg\\t2.00000e+00\\t0.00000e+00`` -> (code, message, severity, node)."""
    fields = reply.strip("\r\n").split("\t")
    if len(fields) != 4:
        raise ValueError(f"not a TSP error-queue entry (4 tab-separated fields): {reply!r}")
    code, message, severity, node = fields
    return int(float(code)), message, int(float(severity)), int(float(node))


class TspInstrument(Instrument):
    """TSP driver base; ``node`` (TSP-Link node number) prefixes calls with ``node[N].``."""

    JOIN = "; "
    SPEAKS_TSP = True
    MAX_NODE: ClassVar[int] = 64

    waitcomplete = Command("{waitcomplete}", "print(1)", reply=done,
                           doc="Block until pending operations (relays) finished.")

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None,
                 node: int | None = None) -> None:
        if node is not None and (isinstance(node, bool) or not isinstance(node, int)
                                 or not 1 <= node <= self.MAX_NODE):
            raise ValueError(f"node must be an int in 1..{self.MAX_NODE}, got {node!r}")
        self.node = node
        super().__init__(resource, backend=backend, timeout_s=timeout_s, v_limit=v_limit)

    @property
    def prefix(self) -> str:
        """``"node[N]."`` over TSP-Link, else ``""``."""
        return f"node[{self.node}]." if self.node is not None else ""

    @property
    def count_errors(self) -> str:
        """The statement that ends a checked block: ``print(errorqueue.count)``."""
        return f"print({self.prefix}errorqueue.count)"

    def _fields(self) -> dict[str, str]:
        # relay waits: waitcomplete(0) waits for every TSP-Link node
        wait = "waitcomplete(0)" if self.node is not None else "waitcomplete()"
        return {"prefix": self.prefix, "waitcomplete": wait}

    def print_query(self, expression: str) -> str:
        """Query ``print(expression)`` and return the reply text."""
        return self._query(f"print({expression})")

    def print_number(self, expression: str) -> float:
        """Query ``print(expression)`` and parse the number."""
        reply = self.print_query(expression)
        try:
            return parse_tsp_number(reply)
        except ValueError:
            raise InstrumentError(f"reply {reply!r} to print({expression}) is not a number",
                                  self.resource) from None

    def _error_count(self, reply: str) -> int:
        try:
            x = parse_tsp_number(reply)
        except ValueError:
            x = -1.0
        if x < 0 or x != int(x):
            raise InstrumentError(f"bad errorqueue.count reply {reply!r}", self.resource)
        return int(x)

    def _drain(self, count: int) -> None:
        first: tuple[int, str] | None = None
        for _ in range(min(count, MAX_ERRORS)):
            reply = self.print_query(f"{self.prefix}errorqueue.next()")
            try:
                code, message, _severity, _node = parse_tsp_error(reply)
            except ValueError as exc:
                raise InstrumentError(str(exc), self.resource) from None
            if first is None:
                first = (code, message)
        if first is not None:
            raise self._command_error(*first)

    def run(self, statements: list[str]) -> None:
        """Send ``statements`` plus ``print(errorqueue.count)`` as one message; raise errors."""
        self._drain(self._error_count(self._query(self.JOIN.join([*statements,
                                                                   self.count_errors]))))

    def _send_block(self, statements: list[str]) -> None:
        self.run(statements)

    def check_errors(self) -> None:
        """``print(errorqueue.count)`` alone; drain and raise when non-zero."""
        self._drain(self._error_count(self._query(self.count_errors)))

    def reset(self) -> None:
        """``reset()`` (this node only over TSP-Link) and check errors."""
        self.settings.clear()
        self.armed = False
        self.run([f"{self.prefix}reset()"])
