"""Instrument base classes: :class:`Instrument` (IEEE 488.2 common part) and SCPI.

:class:`Instrument` opens or adopts a transport, checks the model in the ``*IDN?`` reply
before any setting is sent, keeps the recent commands (for error reports) and the
settings sent (:meth:`Instrument.snapshot`), enforces ``v_limit`` (volts) and turns
outputs off on :meth:`Instrument.close` / ``with`` exit / garbage collection.

:class:`ScpiInstrument` sends one message per configuration block (commands joined with
``;``, each starting from the root ``:``) and then queries ``:SYST:ERR?`` once; a
non-zero code drains the queue and raises :class:`InstrumentCommandError`.
"""

from __future__ import annotations

import logging
import math
import numbers
import re
from collections import deque
from typing import Any, ClassVar

from .errors import InstrumentCommandError, InstrumentError, SafetyError
from .transport import Transport, VisaTransport

log = logging.getLogger("rpuhw.drivers")

MAX_ERRORS = 64
"""Bound on error-queue entries read in one drain."""


def fmt(x: float) -> str:
    """Number format of every driver message (``0.0001``, ``1e-07``, ``1.2``)."""
    return format(x, ".6g")


def finite(name: str, value: float, resource: str | None = None) -> float:
    """``value`` as float, or ValueError naming ``name`` when not a finite number."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    x = float(value) if ok else math.nan
    if not math.isfinite(x):
        raise ValueError(f"{resource + ': ' if resource else ''}{name} must be a finite "
                         f"number, got {value!r}")
    return x


def positive(name: str, value: float, resource: str | None = None) -> float:
    """Finite and > 0, or ValueError naming ``name``."""
    x = finite(name, value, resource)
    if x <= 0:
        raise ValueError(f"{resource + ': ' if resource else ''}{name} must be > 0, got {value!r}")
    return x


def count_arg(name: str, value: int, resource: str | None = None) -> int:
    """A positive int (bool refused), or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{resource + ': ' if resource else ''}{name} must be a positive "
                         f"int, got {value!r}")
    return value


class Instrument:
    """Common part of all drivers.

    ``resource``: VISA address (a :class:`VisaTransport` is opened with ``backend`` and
    ``timeout_s`` in seconds) or a ready :class:`Transport`. ``v_limit``: volts; any level
    with ``|V| > v_limit`` raises :class:`SafetyError` before sending.
    """

    DRIVER: ClassVar[str] = "instrument"
    MODEL: ClassVar[str] = ""
    """Human name of the expected model (for messages)."""
    MODEL_RE: ClassVar[str] = r".*"
    """Regex searched (case-insensitive) in the ``*IDN?`` reply."""

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None) -> None:
        name = resource if isinstance(resource, str) else getattr(resource, "resource", "?")
        if v_limit is not None:
            v_limit = positive("v_limit", v_limit, name)
        self.v_limit = v_limit
        self.recent: deque[str] = deque(maxlen=16)
        self._settings: dict[str, Any] = {}
        self._closed = True
        self._owns_transport = isinstance(resource, str)
        if isinstance(resource, str):
            self.transport: Transport = VisaTransport(resource, backend=backend,
                                                      timeout_s=timeout_s)
        else:
            self.transport = resource
        self._closed = False
        try:
            self.idn = self._check_model()
        except BaseException:
            self._closed = True
            if self._owns_transport:
                self.transport.close()
            raise

    @property
    def resource(self) -> str:
        return self.transport.resource

    # -- plumbing ---------------------------------------------------------------------
    def _check_model(self) -> str:
        idn = self.transport.idn
        if idn is None:
            idn = self.transport.query("*IDN?").strip()
        if not re.search(self.MODEL_RE, idn, re.IGNORECASE):
            raise InstrumentError(
                f"expected a {self.MODEL} ({self.DRIVER} driver), found {idn!r}; nothing sent",
                self.resource,
            )
        return idn

    def _write(self, message: str) -> None:
        self.recent.append(message)
        self.transport.write(message)

    def _query(self, message: str) -> str:
        self.recent.append(message)
        return self.transport.query(message).strip()

    def _float(self, message: str) -> float:
        reply = self._query(message)
        try:
            return float(reply)
        except ValueError:
            raise InstrumentError(f"reply {reply!r} to {message!r} is not a number",
                                  self.resource) from None

    def level(self, name: str, volts: float) -> float:
        """Validate a voltage argument against finiteness and ``v_limit``."""
        try:
            v = finite(name, volts, self.resource)
        except ValueError as exc:
            raise SafetyError(str(exc), self.resource) from None
        if self.v_limit is not None and abs(v) > self.v_limit:
            raise SafetyError(f"{name}={v!r} V exceeds v_limit={self.v_limit!r} V; nothing sent",
                              self.resource)
        return v

    def _command_error(self, code: int, message: str) -> InstrumentCommandError:
        return InstrumentCommandError(code, message, list(self.recent), self.resource)

    # -- public -----------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """Driver, resource, IDN, v_limit and every setting sent so far (SI units)."""
        return {"driver": self.DRIVER, "resource": self.resource, "idn": self.idn,
                "v_limit": self.v_limit, **{k: v for k, v in self._settings.items()}}

    def _outputs_off(self) -> None:
        """Turn every output off (overridden by sources)."""

    def close(self) -> None:
        """Turn outputs off (best effort), then close the transport. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self._outputs_off()
        except Exception as exc:
            log.warning("%s: turning outputs off at close failed: %s", self.resource, exc)
        self._close_transport()

    def _close_transport(self) -> None:
        try:
            self.transport.close()
        except Exception as exc:
            log.warning("%s: closing the transport failed: %s", self.resource, exc)

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Only for transports this driver opened; a caller's transport is the caller's.
        try:
            if not self._closed and self._owns_transport:
                self.close()
        except Exception:
            pass


_ERR_RE = re.compile(r'^\s*([+-]?\d+)\s*,\s*"?(.*?)"?\s*$')


def parse_scpi_error(reply: str) -> tuple[int, str]:
    """``-113,"Undefined header"`` -> ``(-113, "Undefined header")``."""
    m = _ERR_RE.match(reply)
    if not m:
        raise ValueError(f"not a SCPI error-queue entry: {reply!r}")
    return int(m.group(1)), m.group(2)


class ScpiInstrument(Instrument):
    """SCPI driver base: configuration blocks followed by one ``:SYST:ERR?``."""

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
        self._write(";".join(commands))
        self.check_errors()

    def reset(self) -> None:
        """``*RST`` and check errors; forgets the recorded settings."""
        self._settings.clear()
        self._write("*RST")
        self.check_errors()

    def opc(self, message: str = "*OPC?") -> None:
        """Query ``message`` (ending with ``*OPC?``) and require the reply ``1``."""
        reply = self._query(message)
        if reply not in ("1", "+1"):
            raise InstrumentError(f"reply {reply!r} to {message!r}, expected '1'", self.resource)
