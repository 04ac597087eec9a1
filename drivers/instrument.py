"""The common part of every instrument driver, and the registry of drivers.

:class:`Instrument` opens or adopts a transport, checks the model in the ``*IDN?`` reply
before any setting is sent, keeps the recent commands (for error reports) and the
settings sent (:meth:`Instrument.snapshot`), enforces ``v_limit`` (volts) and turns
outputs off on :meth:`Instrument.close` / ``with`` exit / garbage collection. Opening
is itself guarded: whatever fails after the session opened closes it again.

What a bench may do with a driver is a class attribute (:attr:`Instrument.IS_SMU`,
:attr:`Instrument.SPEAKS_TSP`, ...), so the bench and the bench YAML ask the class,
never a name. Drivers register with ``@INSTRUMENTS.register`` under their ``name``.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, ClassVar

from rpuhw.registry import Registry

from .command_table import Commanded, finite, positive
from .errors import InstrumentCommandError, InstrumentError, SafetyError
from .safety import failsafe, run_every
from .transport import Transport, VisaTransport

MAX_ERRORS = 64
"""Bound on error-queue entries read in one drain."""

INSTRUMENTS: Registry[type[Instrument]] = Registry("instrument driver", key="driver",
                                                     case_insensitive=True)
"""Driver name (a bench YAML's ``driver:``) -> driver class."""


class Instrument(Commanded):
    """Common part of all drivers.

    ``resource``: VISA address (a :class:`VisaTransport` is opened with ``backend`` and
    ``timeout_s`` in seconds) or a ready :class:`Transport`. ``v_limit``: volts; any level
    with ``|V| > v_limit`` raises :class:`SafetyError` before sending.
    """

    name: ClassVar[str] = "instrument"
    """Driver name, the registry key (``keithley2600b``)."""
    MODEL: ClassVar[str] = ""
    """Human name of the expected model (for messages)."""
    MODEL_RE: ClassVar[str] = r".*"
    """Regex searched (case-insensitive) in the ``*IDN?`` reply."""

    # -- what the instrument is (asked by the bench and the bench YAML) -----------------
    SPEAKS_TSP: ClassVar[bool] = False
    """Takes TSP (Lua) statements: a bench may combine commands into one message."""
    IS_SMU: ClassVar[bool] = False
    """Sources volts with a current compliance and measures amps (sense/bias terminals)."""
    SMU_PULSES: ClassVar[bool] = False
    """Its SMU channels deliver pulse trains themselves (a ``pulse`` terminal may name
    the sense channel)."""
    IS_PULSE_GENERATOR: ClassVar[bool] = False
    """Delivers triggered bursts of pulses (a ``pulse`` terminal)."""
    IS_SWITCH_MATRIX: ClassVar[bool] = False
    """Routes chip lines to instrument terminals (a bench has exactly one)."""
    TSP_LINK_MASTER: ClassVar[bool] = False
    """Reaches other TSP instruments over TSP-Link through its own session."""
    TSP_LINK_NODE: ClassVar[bool] = False
    """Can be reached over TSP-Link through a master (``via=``, ``node=``)."""
    CHANNELS: ClassVar[tuple[str, ...]] = ("",)
    """Output channels a bench terminal may name (``""``: the instrument has one)."""
    CHANNEL_AT_OPEN: ClassVar[bool] = False
    """The output channel is chosen when the driver opens (``channel=`` argument)."""

    _closed: bool = True

    def __init__(self, resource: str | Transport, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None) -> None:
        where = resource if isinstance(resource, str) else resource.resource
        if v_limit is not None:
            v_limit = positive("v_limit", v_limit, where)
        self.v_limit = v_limit
        self.recent: deque[str] = deque(maxlen=16)
        self.settings: dict[str, Any] = {}
        self.armed = False
        self._owns_transport = isinstance(resource, str)
        if isinstance(resource, str):
            self.transport: Transport = VisaTransport(resource, backend=backend,
                                                      timeout_s=timeout_s)
        else:
            self.transport = resource
        self._closed = False
        with failsafe(self._abandon, what=f"closing {where} after a failed open"):
            self.idn = self._check_model()
            self._after_open()

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
                f"expected a {self.MODEL} ({self.name} driver), found {idn!r}; nothing sent",
                self.resource,
            )
        return idn

    def _after_open(self) -> None:
        """Checks after the model check (e.g. the command set); raise to refuse."""

    def _abandon(self) -> None:
        """A failed open: mark closed and close a transport this driver opened."""
        self._closed = True
        if self._owns_transport:
            self.transport.close()

    def _write(self, message: str) -> None:
        self.recent.append(message)
        self.transport.write(message)

    def _query(self, message: str) -> str:
        self.recent.append(message)
        return self.transport.query(message).strip()

    def _ask(self, message: str) -> str:
        return self._query(message)

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
    def channel(self, name: str | None) -> Any:
        """The output a bench terminal names (``CHANNELS``); the instrument itself when
        it has one output or chose it at open."""
        return self

    def snapshot(self) -> dict[str, Any]:
        """Driver, resource, IDN, v_limit and every setting sent so far (SI units)."""
        return {"driver": self.name, "resource": self.resource, "idn": self.idn,
                "v_limit": self.v_limit, **self.settings}

    def _outputs_off(self) -> None:
        """Turn every output off (overridden by sources)."""

    def close(self) -> None:
        """Turn outputs off (best effort), then close the transport. Idempotent; both
        steps run even when interrupted (the KeyboardInterrupt is re-raised after)."""
        if self._closed:
            return
        self._closed = True
        run_every([(f"{self.resource}: turning outputs off at close", self._outputs_off),
                   (f"{self.resource}: closing the transport", self._close_transport)])

    def _close_transport(self) -> None:
        self.transport.close()

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


class Channel(Commanded):
    """One output of a multi-channel instrument: its own commands, interlock and settings;
    messages go through the instrument."""

    def __init__(self, instrument: Instrument, name: str) -> None:
        self.instrument = instrument
        self.name = name
        self.label = f"{name} "
        self.armed = False
        self.settings: dict[str, Any] = {}

    @property
    def resource(self) -> str:
        return self.instrument.resource

    @property
    def JOIN(self) -> str:  # noqa: N802 - the owner's class constant
        return self.instrument.JOIN

    def level(self, name: str, volts: float) -> float:
        return self.instrument.level(name, volts)

    def _send_block(self, statements: list[str]) -> None:
        self.instrument._send_block(statements)

    def _ask(self, message: str) -> str:
        return self.instrument._ask(message)

    def disarm(self) -> None:
        """Forget the compliance and settings (after an instrument reset)."""
        self.armed = False
        self.settings.clear()
