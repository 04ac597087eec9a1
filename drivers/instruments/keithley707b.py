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
from typing import Any

from ..command_table import Arg, Command, Commanded
from ..instrument import INSTRUMENTS
from ..transport import Transport
from ..tsp import TspInstrument

CHANNEL_RE = re.compile(r"^[1-6][A-H](0[1-9]|1[0-2])$")


class Crosspoints(Arg):
    """A non-empty list of distinct channel specs (``["1A01", "1C05"]``)."""

    def check(self, owner: Commanded, name: str, value: Any) -> list[str]:
        res = owner.resource
        if isinstance(value, str) or not value:
            raise ValueError(f"{res}: channels must be a non-empty list of channel "
                             f"specs like '1A05', got {value!r}")
        for ch in value:
            if not isinstance(ch, str) or not CHANNEL_RE.match(ch):
                raise ValueError(f"{res}: channel spec {ch!r} is not slot 1-6, row "
                                 "A-H, column 01-12 (e.g. '1A05')")
        if len(set(value)) != len(value):
            raise ValueError(f"{res}: duplicate channel in {value!r}")
        return list(value)

    def text(self, value: Any) -> str:
        return ",".join(value)


def relay_list(reply: str) -> list[str]:
    """``1A01;1C05`` -> ``["1A01", "1C05"]``; ``nil`` -> ``[]``."""
    reply = reply.strip()
    return [] if reply in ("nil", "") else reply.split(";")


@INSTRUMENTS.register
class Keithley707B(TspInstrument):
    """Keithley 707B (or 708B) matrix, direct or behind a TSP-Link master (``via``)."""

    name = "keithley707b"
    MODEL = "Keithley 707B/708B"
    MODEL_RE = r"Model 70[78]B\b"
    IS_SWITCH_MATRIX = True
    TSP_LINK_NODE = True
    CHANNELS = ()

    close_exclusive = Command(
        '{prefix}channel.exclusiveclose("{channels}")', "{waitcomplete}",
        channels=Crosspoints(), records=lambda a: dict(closed=sorted(a.channels)),
        doc="Close exactly ``channels`` (all others open), then wait for the relays.")
    open_all = Command(
        '{prefix}channel.open("allslots")', "{waitcomplete}",
        records=lambda a: dict(closed=[]), doc="Open every relay, then wait for the relays.")
    closed = Command('print({prefix}channel.getclose("allslots"))', reply=relay_list,
                     doc="Channels now closed, as the instrument reports them.")

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
