"""Exceptions of the instrument layer.

Every message names the resource (VISA address, ``"scripted"``, ...) and, where relevant,
the command; each class's ``hint`` says what the user should check (the command line
prints it after the message). :class:`SafetyError` (defined in :mod:`rpuhw.errors`, so
that the command line knows it) is raised *before* anything is sent to an instrument.
"""

from __future__ import annotations

from typing import ClassVar

from rpuhw.errors import HardwareError, SafetyError, with_resource

__all__ = ["InstrumentCommandError", "InstrumentConnectionError", "InstrumentError",
           "InstrumentTimeout", "SafetyError"]


class InstrumentError(HardwareError):
    """Base class of all instrument failures; ``resource`` is the address or None."""

    def __init__(self, message: str, resource: str | None = None) -> None:
        super().__init__(with_resource(message, resource))
        self.resource = resource


class InstrumentTimeout(InstrumentError):
    """No (complete, terminated) reply arrived within the transport timeout."""

    hint: ClassVar[str] = ("check that the instrument is switched on and answers at that "
                           "address, and the timeout_s of the bench YAML")


class InstrumentConnectionError(InstrumentError):
    """Connection refused, unreachable, closed by the peer or closed locally."""

    hint: ClassVar[str] = ("check that the instrument is switched on, connected, and that "
                           "the resource in the bench YAML (host, port) is its address")


class InstrumentCommandError(InstrumentError):
    """The instrument's error queue held entries after a command block.

    ``code`` and ``message`` are those of the first entry; ``recent_commands`` are the
    messages sent just before (oldest first), to locate the faulty command.
    """

    hint: ClassVar[str] = ("the instrument refused a command: check the bench YAML's "
                           "settings for that instrument (its manual lists the error code)")

    def __init__(
        self,
        code: int,
        message: str,
        recent_commands: list[str],
        resource: str | None = None,
    ) -> None:
        self.code = code
        self.message = message
        self.recent_commands = list(recent_commands)
        recent = " | ".join(self.recent_commands[-5:]) or "(none)"
        text = f"instrument error {code}: {message!r}; recent commands: {recent}"
        super().__init__(text, resource)
