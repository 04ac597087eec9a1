"""Exceptions raised by rpuhw.

Every error a user can cause with bad input is a :class:`ConfigError` (a
``ValueError``) whose message names the file and key, or the argument, at fault. An
instrument that fails is a :class:`HardwareError` whose message names the resource and
whose :attr:`~HardwareError.hint` says what to check; a request refused by a safety rule
before anything was sent is a :class:`SafetyError`. The command line prints each as one
line (``rpuhw --help`` lists the exit statuses); :func:`add_hint` attaches what the user
can do next (e.g. how to resume) to any exception on its way out.
"""

from __future__ import annotations

from typing import ClassVar


class RpuhwError(Exception):
    """Base class of rpuhw's own exceptions."""


class ConfigError(RpuhwError, ValueError):
    """Invalid configuration: a YAML file, key, value or spec string.

    The message has the form ``"<source>: <key>: <what is wrong>"`` so that the
    CLI can print it as one line.
    """

    def __init__(self, message: str, *, source: str | None = None, key: str | None = None):
        self.source = source
        self.key = key
        self.detail = message
        parts = [p for p in (source, f"key '{key}'" if key else None, message) if p]
        super().__init__(": ".join(parts))


class HardwareError(RpuhwError):
    """An instrument or board failed: lost connection, timeout, instrument error.

    Raised by the hardware backends (``rpuhw.drivers``); the CLI reports it in one
    line with :attr:`hint` and what to do next (for training: resume from the last
    checkpoint).
    """

    hint: ClassVar[str] = "check that the instruments are switched on, connected and answer"
    """What the user should check, printed after the message by the command line."""


def with_resource(message: str, resource: str | None) -> str:
    """``"RESOURCE: message"`` unless the message already names the resource."""
    if resource and resource not in message:
        return f"{resource}: {message}"
    return message


class SafetyError(RpuhwError, ValueError):
    """A request was refused by a safety rule (voltage limit, missing compliance, ...).

    Nothing was sent to the instrument for the refused request. ``resource`` is the
    instrument's address or None.
    """

    hint: ClassVar[str] = ("nothing was sent; check the requested values against the limits "
                           "in the bench YAML")

    def __init__(self, message: str, resource: str | None = None) -> None:
        super().__init__(with_resource(message, resource))
        self.resource = resource


def add_hint(exc: BaseException, hint: str) -> BaseException:
    """Attach ``hint`` (what the user can do next, e.g. ``"continue with --resume"``) to
    ``exc`` and return it; the command line prints the hints after the message."""
    hints = exc.__dict__.setdefault("rpuhw_hints", [])
    if hint not in hints:
        hints.append(hint)
    return exc


def hints_of(exc: BaseException) -> list[str]:
    """The hints :func:`add_hint` attached to ``exc`` (oldest first)."""
    return list(getattr(exc, "rpuhw_hints", ()))
