"""The shared skeleton of every emulated instrument ("personality")."""

from __future__ import annotations

import re
from typing import ClassVar

from rpuhw.drivers.emulators.chip import EmulatedChip

_SPECIAL = re.compile(r"[\"'();]")


def split_outside_quotes(text: str, sep: str = ";") -> list[str]:
    """Split ``text`` on ``sep`` where it is outside "..." / '...' and parentheses."""
    if sep == ";" and not any(c in text for c in "\"'()"):
        return text.split(sep)
    parts, start, quote, depth = [], 0, "", 0
    pattern = _SPECIAL if sep == ";" else re.compile("[\"'()" + re.escape(sep) + "]")
    for m in pattern.finditer(text):  # only the special characters, not every character
        ch = m.group()
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:m.start()])
            start = m.end()
    parts.append(text[start:])
    return parts


class Personality:
    """One emulated instrument: ``handle(message)`` returns the reply text or None.

    Every personality of a bench shares one :class:`EmulatedChip` and takes its
    lock for each message, so the servers' threads see a consistent chip.
    """

    idn: ClassVar[str] = ""
    """Reply to ``*IDN?``."""
    driver: ClassVar[str] = ""
    """rpuhw driver name of the instrument (bench YAML ``driver:``)."""

    def __init__(self, chip: EmulatedChip):
        self.chip = chip
        self.messages = 0
        """Messages handled so far."""

    def handle(self, message: str) -> str | None:
        """Process one message (no terminator); the reply without terminator, or None."""
        with self.chip.lock:
            self.messages += 1
            return self._handle(message.strip())

    def _handle(self, message: str) -> str | None:
        raise NotImplementedError

    def inject_error(self) -> None:
        """Push an instrument error into the queue (the ``error-after`` fault)."""
        raise NotImplementedError

    def error_count(self) -> int:
        """Entries in the error queue."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(messages={self.messages})"
