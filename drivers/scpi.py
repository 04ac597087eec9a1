"""SCPI driver base (:class:`ScpiInstrument`) and the SCPI error-queue parser.

A configuration block goes out as one message (commands joined with ``;``, each starting
from the root ``:``), followed by one ``:SYST:ERR?``; a non-zero code drains the queue
and raises :class:`InstrumentCommandError`. Commands are declared as a table
(:mod:`rpuhw.drivers.command_table`): each one is sent as such a block, or as one query
with its reply parsed.
"""

from __future__ import annotations

import re
from typing import ClassVar

from .command_table import count_arg, fmt, positive
from .errors import InstrumentError
from .instrument import MAX_ERRORS, Instrument

__all__ = ["ScpiInstrument", "count_arg", "fmt", "parse_scpi_error", "positive"]

_ERR_RE = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$')


def parse_scpi_error(reply: str) -> tuple[int, str]:
    """``-113,"Undefined header"`` -> ``(-113, "Undefined header")``."""
    m = _ERR_RE.match(reply)
    if not m:
        raise ValueError(f"not a SCPI error-queue entry: {reply!r}")
    return int(m.group(1)), m.group(2)


class ScpiInstrument(Instrument):
    """SCPI driver base: configuration blocks followed by one ``:SYST:ERR?``."""

    JOIN = ";"
    ERROR_QUERY: ClassVar[str] = ":SYST:ERR?"

    def check_errors(self) -> None:
        """Query the error queue; on a non-zero code drain it and raise the first entry."""
        first: tuple[int, str] | None = None
        for _ in range(MAX_ERRORS):
            reply = self._query(self.ERROR_QUERY)
            try:
                code, message = parse_scpi_error(reply)
            except ValueError as exc:
                raise InstrumentError(str(exc), self.resource) from None
            if code == 0:
                break
            if first is None:
                first = (code, message)
        if first is not None:
            raise self._command_error(*first)

    def configure(self, commands: list[str]) -> None:
        """Send ``commands`` as one ``;``-joined message, then check the error queue."""
        self._write(self.JOIN.join(commands))
        self.check_errors()

    def _send_block(self, statements: list[str]) -> None:
        self.configure(statements)

    def reset(self) -> None:
        """``*RST`` and check errors; forgets the recorded settings and disarms outputs."""
        self.settings.clear()
        self.armed = False
        self._write("*RST")
        self.check_errors()
