"""Keithley 707B / 708B switching matrix (TSP; 707B-901-01).

Channel specifier: slot ``1``-``6``, card row ``A``-``H``, card column ``01``-``12``
(``"1A05"``). Direct: ``Keithley707B("TCPIP::...::SOCKET")``. Over TSP-Link as node N of
a 2600B: ``Keithley707B(None, via=smu, node=2)`` shares the 2600B's transport, prefixes
every call with ``node[2].`` and waits with ``waitcomplete(0)``, e.g.
``node[2].channel.exclusiveclose("1A01,1C05"); waitcomplete(0);
print(node[2].errorqueue.count)``. A linked matrix has no ``*IDN?`` of its own: its model
is not checked (the 2600B's is), and :meth:`close` leaves the 2600B's transport open.
The matrix has no outputs; close() does not move relays.
"""

from __future__ import annotations

import re

from ..transport import Transport
from ..tsp import TspInstrument

CHANNEL_RE = re.compile(r"^[1-6][A-H](0[1-9]|1[0-2])$")


class Keithley707B(TspInstrument):
    """Keithley 707B (or 708B) matrix, direct or behind a TSP-Link master (``via``)."""

    DRIVER = "keithley707b"
    MODEL = "Keithley 707B/708B"
    MODEL_RE = r"Model 70[78]B\b"

    def __init__(self, resource: str | Transport | None = None, *, backend: str = "@py",
                 timeout_s: float = 2.0, v_limit: float | None = None,
                 via: TspInstrument | None = None, node: int | None = None) -> None:
        if (via is None) != (node is None):
            raise ValueError("via (the TSP-Link master driver) and node (this matrix's "
                             "TSP-Link node number) go together")
        if via is None and resource is None:
            raise ValueError("resource is required unless via= and node= are given")
        self.via = via
        super().__init__(via.transport if via is not None else resource, backend=backend,
                         timeout_s=timeout_s, v_limit=v_limit, node=node)

    @property
    def resource(self) -> str:
        base = self.transport.resource
        return f"{base} node[{self.node}]" if self.via is not None else base

    def _check_model(self) -> str:
        if self.via is None:
            return super()._check_model()
        return f"TSP-Link node {self.node} via {self.via.idn}"

    def _close_transport(self) -> None:
        if self.via is None:
            super()._close_transport()

    def cmd_close_exclusive(self, channels: list[str]) -> list[str]:
        """Statements closing exactly ``channels`` (all others open), then the relay wait."""
        if isinstance(channels, str) or not channels:
            raise ValueError(f"{self.resource}: channels must be a non-empty list of channel "
                             f"specs like '1A05', got {channels!r}")
        for ch in channels:
            if not isinstance(ch, str) or not CHANNEL_RE.match(ch):
                raise ValueError(f"{self.resource}: channel spec {ch!r} is not slot 1-6, row "
                                 "A-H, column 01-12 (e.g. '1A05')")
        if len(set(channels)) != len(channels):
            raise ValueError(f"{self.resource}: duplicate channel in {channels!r}")
        self._settings["closed"] = sorted(channels)
        spec = ",".join(channels)
        return [f'{self.prefix}channel.exclusiveclose("{spec}")', self.cmd_waitcomplete()]

    def cmd_open_all(self) -> list[str]:
        """Statements opening every relay, then the relay wait."""
        self._settings["closed"] = []
        return [f'{self.prefix}channel.open("allslots")', self.cmd_waitcomplete()]

    def close_exclusive(self, channels: list[str]) -> None:
        """Close exactly ``channels`` (e.g. ``["1A01", "1C05"]``); wait; check errors."""
        self.run(self.cmd_close_exclusive(channels))

    def open_all(self) -> None:
        """Open every relay; wait; check errors."""
        self.run(self.cmd_open_all())

    def closed(self) -> list[str]:
        """Channels now closed, as the instrument reports them (``[]`` when none)."""
        reply = self.print_query(f'{self.prefix}channel.getclose("allslots")')
        if reply in ("nil", ""):
            return []
        return reply.split(";")
