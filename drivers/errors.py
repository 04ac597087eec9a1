"""Exceptions of the instrument layer.

Every message names the resource (VISA address, ``"scripted"``, ...) and, where relevant,
the command. :class:`SafetyError` is raised *before* anything is sent to an instrument.
"""

from __future__ import annotations

from rpuhw.errors import HardwareError


def _with_resource(message: str, resource: str | None) -> str:
    if resource and resource not in message:
        return f"{resource}: {message}"
    return message


class InstrumentError(HardwareError):
    """Base class of all instrument failures; ``resource`` is the address or None."""

    def __init__(self, message: str, resource: str | None = None) -> None:
        super().__init__(_with_resource(message, resource))
        self.resource = resource


class InstrumentTimeout(InstrumentError):
    """No (complete, terminated) reply arrived within the transport timeout."""


class InstrumentConnectionError(InstrumentError):
    """Connection refused, unreachable, closed by the peer or closed locally."""


class InstrumentCommandError(InstrumentError):
    """The instrument's error queue held entries after a command block.

    ``code`` and ``message`` are those of the first entry; ``recent_commands`` are the
    messages sent just before (oldest first), to locate the faulty command.
    """

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


class SafetyError(ValueError):
    """A request was refused by a safety rule (voltage limit, missing compliance, ...).

    Nothing was sent to the instrument for the refused request.
    """

    def __init__(self, message: str, resource: str | None = None) -> None:
        super().__init__(_with_resource(message, resource))
        self.resource = resource
