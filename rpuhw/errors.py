"""Exceptions raised by rpuhw.

Every error a user can cause with bad input is a :class:`ConfigError` (a
``ValueError``) whose message names the file and key, or the argument, at fault.
"""

from __future__ import annotations


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
    line with what to do next (for training: resume from the last checkpoint).
    """
