"""BenchArray: a resistive test chip on a bench of lab instruments, as a CrossPointArray.

The bench is a source-measure unit (two source channels: ``sense`` and
``bias``), a Keithley 707B switch matrix that connects every chip line to one
instrument terminal, and a pulse source: a pulse generator, or (v/2 only, pulses of
at least 100 us) the sense channel of a 2600B itself, with KIPulse's
``PulseVMeasureI``. Native operations:

* ``read``: device by device, "grounded unselected lines": row i at the read
  voltage (bias source), column j on the sense ammeter held at 0 V, every other
  line grounded, so the sense current is ``-G_ij V_read`` with no sneak path.
* ``pulse``: per device, V/2 (or V/3) scheme: the pulsed line at the pulse
  amplitude, the other selected line grounded, unselected lines at V/2 (V/3,
  2V/3); potentiation pulses the row, depression the column; a burst of n.

``forward``, ``backward`` and ``update`` run through the framework's emulation
(read + digital MVM; coincidence counting + ``pulse``).

Safety envelope (enforced here and in the drivers, before any command leaves
the host): no level above ``limits.v_max``; compliance set before any output
turns on; every output off before any relay changes and on every exit path
(exceptions, KeyboardInterrupt, ``close()``, garbage collection); a bench
whose own pulse amplitude exceeds its limit is refused at load.

Batching: with a 2600B whose TSP-Link reaches the 707B, one message reads a
device (outputs off, route, wait for the relays, outputs on, measure, outputs
off), up to :data:`PIPELINE` of them in flight. A pulsed device costs two messages
with a pulse generator (route + bias on; burst with the output off again when it
replies), strictly in sequence; with the SMU as pulse source it costs one (outputs
off, route, bias on, ``PulseVMeasureI`` on the sense channel, outputs off, error
count), pipelined like reads. Without TSP-Link each step is its own message.
"""

from __future__ import annotations

import atexit
import logging
from contextlib import suppress
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from rpuhw.array import ArrayInfo, Capabilities, CrossPointArray
from rpuhw.drivers.bench_config import BenchConfig, Region, load_bench
from rpuhw.drivers.errors import InstrumentConnectionError, InstrumentError
from rpuhw.drivers.instrument import Instrument
from rpuhw.drivers.safety import failsafe, run_every
from rpuhw.errors import ConfigError

log = logging.getLogger("rpuhw.drivers.bench")

PIPELINE = 8
"""Read messages in flight at once (fast path); small, so an error costs little."""

MAX_BURST = 100_000_000
"""Largest burst count of one 33500B trigger (NCYC maximum)."""

MAX_SMU_BURST = 60_000
"""Largest ``points`` of one ``PulseVMeasureI`` (it stores a reading per pulse in
``smuX.nvbuffer1``: > 60,000 readings with timestamps and source values, 2600B
specifications); a burst is also kept under half the SMU's reply timeout."""

MAX_CACHED_TRAINS = 4096
"""SMU pulse-train statements kept per (polarity, count)."""

_SESSIONS: dict[tuple, _BenchSession] = {}
"""Open instrument sessions, one per chip (:func:`_chip_key`): every array on a chip
shares it."""


def _close_open_benches() -> None:
    """Outputs off at interpreter exit, while the sessions are still open: re-registered
    after every bench opens, so it runs before pyvisa's own exit handler (atexit is LIFO
    and pyvisa registers its handler when the first ResourceManager opens)."""
    for session in list(_SESSIONS.values()):
        session.close()


def _chip_key(cfg: BenchConfig, transports: dict[str, Any]) -> tuple:
    """What identifies one chip: the switch matrix's resource (through its TSP-Link
    master when it has one), and the identity of any transports handed in."""
    name = cfg.matrix_name()
    inst = cfg.instruments[name]
    if inst.tsp_link is not None:
        master = cfg.instruments[inst.tsp_link.via]
        reach = (master.backend, master.resource, inst.tsp_link.node)
        given = transports.get(inst.tsp_link.via)
    else:
        reach, given = (inst.backend, inst.resource), transports.get(name)
    return reach + (id(given) if given is not None else None,)


def _differs(a: BenchConfig, b: BenchConfig) -> str | None:
    """The first bench setting (other than regions) where ``a`` and ``b`` differ."""
    for f in fields(BenchConfig):
        if f.name not in ("regions", "source") and getattr(a, f.name) != getattr(b, f.name):
            return f.name
    return None


@dataclass
class _Source:
    """One source channel wired to a card row (a 2450, or a 2600B channel)."""

    name: str
    instrument: Instrument
    channel: Any

    @property
    def tsp(self) -> bool:
        """The instrument takes TSP statements (commands combine into one message)."""
        return type(self.instrument).SPEAKS_TSP


class _BenchSession:
    """The instruments of one chip, opened once and shared by every array on it.

    The session owns the connections and the safe state: it turns every output off
    before any relay moves and on every exit path, and closes the instruments when the
    last array on the chip closes (or at interpreter exit). Arrays claim blocks of the
    chip (:meth:`claim`); two claims on overlapping devices are refused.
    """

    _pulser: Instrument | None = None
    _matrix: Instrument | None = None
    _sense: _Source | None = None
    _bias: _Source | None = None

    def __init__(self, cfg: BenchConfig, transports: dict[str, Any], key: tuple):
        self.config, self.key = cfg, key
        self.closed = False
        self.instruments: dict[str, Instrument] = {}
        self.claims: dict[int, tuple[str, tuple[int, int, int, int]]] = {}
        """id(array) -> (its label, its block (r0, r1, c0, c1) of chip lines)."""
        self.pulse_shape: tuple[float, float] | None = None
        _SESSIONS[key] = self
        with failsafe(self.close, what="closing the bench after a failed open"):
            self._connect(transports)
            atexit.unregister(_close_open_benches)
            atexit.register(_close_open_benches)
            self.setup()

    # ---- claims ------------------------------------------------------------------------
    def check_free(self, label: str, block: tuple[int, int, int, int]) -> None:
        """ConfigError naming both arrays when ``block`` overlaps an open array's."""
        r0, r1, c0, c1 = block
        for other, (s0, s1, d0, d1) in self.claims.values():
            if r0 < s1 and s0 < r1 and c0 < d1 and d0 < c1:
                raise ConfigError(
                    f"{label} ({_lines(block)}) overlaps {other} ({_lines((s0, s1, d0, d1))}),"
                    " open on the same chip: give each array its own region (regions: in "
                    "the bench YAML, opened as bench:BENCH.yaml#NAME)",
                    source=self.config.source, key="regions")

    def claim(self, array: BenchArray, label: str, block: tuple[int, int, int, int]) -> None:
        self.check_free(label, block)
        self.claims[id(array)] = (label, block)

    def release(self, array: BenchArray) -> None:
        """Drop ``array``'s claim: outputs off, and the session closed after the last."""
        self.claims.pop(id(array), None)
        if self.claims:
            if not self.closed:
                self.safe_off()
        else:
            self.close()

    def traffic(self) -> tuple[int, int]:
        """(messages, queries) sent to all instruments since open."""
        seen, msgs, queries = set(), 0, 0
        for inst in self.instruments.values():
            t = inst.transport
            if id(t) not in seen:
                seen.add(id(t))
                msgs += t.messages
                queries += t.queries
        return msgs, queries

    # ---- connection and safe state ---------------------------------------------------
    def _connect(self, transports: dict[str, Any]) -> None:
        cfg = self.config
        v_max = cfg.limits.v_max
        linked = {n: i for n, i in cfg.instruments.items() if i.tsp_link is not None}
        for name, inst in cfg.instruments.items():
            if name in linked:
                continue
            driver = cfg.driver(name)
            kwargs: dict[str, Any] = dict(backend=inst.backend, timeout_s=inst.timeout_s,
                                          v_limit=v_max)
            if driver.CHANNEL_AT_OPEN:  # the output a terminal names, else the first
                kwargs["channel"] = next((t.channel for t in cfg.terminals.values()
                                          if t.instrument == name and t.channel),
                                         driver.CHANNELS[0])
            self.instruments[name] = driver(transports.get(name, inst.resource), **kwargs)
        for name, inst in linked.items():
            master = self.instruments[inst.tsp_link.via]
            self.instruments[name] = cfg.driver(name)(None, via=master,
                                                      node=inst.tsp_link.node)
        self._matrix = self.instruments[cfg.matrix_name()]
        self._sense = self._source("sense")
        self._bias = self._source("bias")
        # the sense channel pulses (PulseVMeasureI): there is no pulse generator to drive
        self._smu_pulse = cfg.pulse_source == "smu"
        self._pulser = None if self._smu_pulse else \
            self.instruments[cfg.terminals["pulse"].instrument]
        smu = self._sense.instrument
        link = cfg.instruments[cfg.matrix_name()].tsp_link
        self._fast = (self._sense.tsp and smu is self._bias.instrument and link is not None
                      and self.instruments[link.via] is smu)

    def _source(self, terminal: str) -> _Source:
        term = self.config.terminals[terminal]
        inst = self.instruments[term.instrument]
        return _Source(terminal, inst, inst.channel(term.channel))

    def setup(self) -> None:
        """Safe state: outputs off, relays open, pulse shape and compliances set."""
        cfg = self.config
        if self._pulser is not None:  # strict here: an instrument that does not answer
            self._pulser.output(False)  # at open must fail the open, loudly
        for src in (self._bias, self._sense):
            src.channel.output(False)
        self._matrix.open_all()
        self.pulse_shape = None
        if self._pulser is not None:
            self._pulser.voltage_limits(cfg.limits.v_max)
            self.configure_pulser(cfg.pulse.potentiation.amplitude,
                                  cfg.pulse.potentiation.width_s)
        for src in (self._sense, self._bias):
            src.channel.source_voltage(0.0, cfg.read.compliance_a)

    def configure_pulser(self, amplitude: float, width_s: float) -> None:
        if self.pulse_shape != (amplitude, width_s):
            self._pulser.configure_pulse(amplitude, 0.0, width_s, self.config.pulse.period_s, 1)
            self.pulse_shape = (amplitude, width_s)

    def safe_off(self) -> None:
        """Every output off; reconnect once to do it if the session was lost.

        Never stops half-way: an error on one output is logged and the others still go
        off; a KeyboardInterrupt arriving meanwhile is re-raised once all are off.
        """
        outputs: dict[str, tuple[Instrument, Any]] = {}  # label -> (instrument, output)
        if self._pulser is not None:
            outputs["turning the pulser output off"] = (self._pulser, self._pulser)
        for src in (self._bias, self._sense):
            if src is not None:
                outputs[f"turning the {src.name} output off"] = (src.instrument, src.channel)
        run_every([(label, lambda c=out: c.output(False)) for label, (_, out) in outputs.items()],
                  attempts=3,
                  before_last=lambda label: outputs[label][0].transport.reconnect())

    def reconnect(self, attempts: int = 3) -> None:
        """Re-open every instrument session and restore the safe state (retried when a
        session drops again meanwhile)."""
        for attempt in range(attempts):
            try:
                seen = set()
                for inst in self.instruments.values():
                    t = inst.transport
                    if id(t) not in seen:
                        seen.add(id(t))
                        t.reconnect()
                self.setup()
                return
            except InstrumentConnectionError:
                self.safe_off()
                if attempt == attempts - 1:
                    raise

    def close(self) -> None:
        """Outputs off, relays open, sessions closed (idempotent; finishes even when
        interrupted, then re-raises the KeyboardInterrupt)."""
        if self.closed:
            return
        self.closed = True
        if _SESSIONS.get(self.key) is self:
            del _SESSIONS[self.key]
        steps = [("turning the outputs off", self.safe_off)]
        if self._matrix is not None:
            steps.append(("opening the relays", self._matrix.open_all))
        linked_first = sorted(self.instruments.items(),
                              key=lambda kv: self.config.instruments[kv[0]].tsp_link is None)
        steps += [(f"closing {name}", inst.close) for name, inst in linked_first]
        run_every(steps, attempts=2, retry_errors=False)  # one retry after an interrupt

    def __del__(self):
        with suppress(BaseException):  # nothing may escape a finaliser
            self.close()


def _lines(block: tuple[int, int, int, int]) -> str:
    """``rows 0-15, cols 0-25`` of a block (r0, r1, c0, c1), inclusive, for messages."""
    r0, r1, c0, c1 = block
    return f"chip rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1}"


class BenchArray(CrossPointArray):
    """A chip on instruments, through the bench YAML's wiring and safety limits.

    Several arrays may share one chip, each on its own block of devices (a region of
    the bench YAML): they share one instrument session (:class:`_BenchSession`), opened
    by the first and closed after the last."""

    capabilities = Capabilities(read=True, pulse=True)
    serial_reads = True
    _closed = True            # until connected (a failed constructor has nothing to close)
    _session: _BenchSession | None = None
    _pulser: Instrument | None = None
    _matrix: Instrument | None = None
    _sense: _Source | None = None
    _bias: _Source | None = None

    def __init__(self, config: BenchConfig | str | Path, rows: int | None = None,
                 cols: int | None = None, *, region: str | None = None,
                 transports: dict[str, Any] | None = None,
                 offset: tuple[int, int] = (0, 0)):
        """Connect the instruments (or join the session already open on this chip) and
        put the bench in its safe state.

        Args:
            config: a :class:`BenchConfig` or the path of a bench YAML.
            rows, cols: the block of the chip to use (top-left of the region, or of the
                wired crossbar; default: all of it).
            region: name of a region of the bench YAML (``regions:``); None: the whole
                wired crossbar.
            transports: instrument name -> ready transport, instead of opening the
                resources (tests, or an already-open session).
            offset: (row, col) of the block's corner from the region's (or the wired
                crossbar's) corner: a tile of a layer split into tiles sits at its
                position in the layer, so the tiles take disjoint blocks.
        """
        cfg = config if isinstance(config, BenchConfig) else load_bench(config)
        area = cfg.region(region) if region is not None else \
            Region("", (0, cfg.rows), (0, cfg.cols))
        n_rows, n_cols = area.shape
        rows = n_rows if rows is None else rows
        cols = n_cols if cols is None else cols
        super().__init__(rows, cols)
        where = f"region {region} ({area.describe()})" if region is not None else \
            "devices wired on this bench"
        dr, dc = (int(v) for v in offset)
        if dr + rows > n_rows or dc + cols > n_cols:
            what = (f"a {rows} x {cols} array" if (dr, dc) == (0, 0) else
                    f"a {rows} x {cols} tile at rows {dr}-{dr + rows - 1}, cols "
                    f"{dc}-{dc + cols - 1} of its layer")
            raise ConfigError(f"{what} does not fit the {n_rows} x {n_cols} {where}",
                              source=cfg.source,
                              key=("regions." + region) if region is not None else
                              ("rows" if dr + rows > n_rows else "cols"))
        self.config = cfg
        self.region = region
        self._r0, self._c0 = area.rows[0] + dr, area.cols[0] + dc
        block = (self._r0, self._r0 + rows, self._c0, self._c0 + cols)
        self.label = f"bench:{cfg.source}" + (f"#{region}" if region is not None else "")
        transports = transports or {}
        key = _chip_key(cfg, transports)
        session = _SESSIONS.get(key)
        if session is not None:
            what = _differs(session.config, cfg)
            if what is not None:
                raise ConfigError(f"this chip is already open from {session.config.source} "
                                  f"with a different {what}: open every array on one chip "
                                  "from the same bench YAML (one region each)",
                                  source=cfg.source, key=what)
            session.check_free(self.label, block)
            before = session.traffic()
        else:
            session = _BenchSession(cfg, transports, key)
            before = (0, 0)
        session.claim(self, self.label, block)
        self._session = session
        self._closed = False
        self._instruments = session.instruments
        self._matrix, self._sense, self._bias = session._matrix, session._sense, session._bias
        self._pulser, self._smu_pulse, self._fast = \
            session._pulser, session._smu_pulse, session._fast
        after = session.traffic()
        self._traffic = [after[0] - before[0], after[1] - before[1]]
        self._read_msgs: dict[tuple[int, int], list[str]] = {}
        self._route_msgs: dict[tuple[int, int, bool], list[str]] = {}
        self._smu_pulse_msgs: dict[tuple[int, int, bool], tuple[str, str]] = {}
        self._smu_trains: dict[tuple[bool, int], str] = {}
        self._mvm_cache: torch.Tensor | None = None
        self._plans: dict[tuple[int, int, bool], tuple[list[str], dict[str, float]]] = {}

    # ---- connection and safe state (the session's) -------------------------------------
    @property
    def _pulse_shape(self) -> tuple[float, float] | None:
        return self._session.pulse_shape

    @_pulse_shape.setter
    def _pulse_shape(self, value: tuple[float, float] | None) -> None:
        self._session.pulse_shape = value

    def _configure_pulser(self, amplitude: float, width_s: float) -> None:
        self._session.configure_pulser(amplitude, width_s)

    def _safe_off(self) -> None:
        """Every output of the chip's instruments off (:meth:`_BenchSession.safe_off`)."""
        self._session.safe_off()

    def _guard(self, op, *args):
        if self._closed or self._session.closed:
            raise InstrumentError(f"bench {self.label} is closed")
        m0, q0 = self._session.traffic()
        try:
            with failsafe(self._safe_off, what="turning the bench outputs off"):
                return op(*args)
        finally:
            m1, q1 = self._session.traffic()
            self._traffic[0] += m1 - m0
            self._traffic[1] += q1 - q0

    def reconnect(self, attempts: int = 3) -> None:
        """Re-open every instrument session of the chip and restore the safe state
        (retried when a session drops again meanwhile)."""
        self._session.reconnect(attempts)

    def close(self) -> None:
        """Outputs off; the last array on the chip also opens the relays and closes the
        sessions (idempotent; finishes even when interrupted, then re-raises the
        KeyboardInterrupt)."""
        if self._closed:
            return
        self._closed = True
        self._session.release(self)

    def __del__(self):
        with suppress(BaseException):  # nothing may escape a finaliser
            self.close()

    # ---- routing ---------------------------------------------------------------------
    def _lines(self):
        w = self.config.wiring
        return [("row", k, line) for k, line in enumerate(w.rows)] + \
               [("col", k, line) for k, line in enumerate(w.cols)]

    def _route(self, assign: dict[tuple[str, int], str], default: str | None) -> list[str]:
        """707B channels: each chip line to its terminal (``default`` for the rest)."""
        chans = []
        for kind, k, line in self._lines():
            term = assign.get((kind, k), default)
            if term is not None:
                chans.append(self.config.channel(line, term))
        return chans

    def _read_route(self, i: int, j: int) -> list[str]:
        return self._route({("row", i): "bias", ("col", j): "sense"}, "ground")

    def _pulse_plan(self, i: int, j: int, up: bool):
        """(channels, {source: level}) for a pulse on (i, j) in the bench's bias scheme."""
        key = (i, j, up)
        if key not in self._plans:
            self._plans[key] = self._make_pulse_plan(i, j, up)
        return self._plans[key]

    def _make_pulse_plan(self, i: int, j: int, up: bool):
        shape = self.config.pulse.potentiation if up else self.config.pulse.depression
        v = shape.amplitude
        hot, cold = (("row", i), ("col", j)) if up else (("col", j), ("row", i))
        assign = {hot: "pulse", cold: "ground"}
        if self.config.bias_scheme == "v/2":
            return self._route(assign, "bias"), {"bias": v / 2, "sense": 0.0}
        # V/3: unselected lines on the pulsed side at V/3 (sense), on the other side at 2V/3
        for kind, k, _ in self._lines():
            if (kind, k) not in assign:
                same_side = kind == hot[0]
                assign[(kind, k)] = "bias" if not same_side else "sense"
        return self._route(assign, None), {"sense": v / 3, "bias": 2 * v / 3}

    # ---- native operations ------------------------------------------------------------
    def _read(self) -> torch.Tensor:
        return self._guard(self._read_all)

    def _read_all(self) -> torch.Tensor:
        devices = [(i, j) for i in range(self.rows) for j in range(self.cols)]
        return self._read_list(devices).reshape(self.rows, self.cols)

    def _read_devices(self, devices: list[tuple[int, int]]) -> torch.Tensor:
        """Weights of the listed ``(row, col)`` devices only (one read each), float32 [n]."""
        return self._guard(self._read_list, list(devices))

    def _read_list(self, devices: list[tuple[int, int]]) -> torch.Tensor:
        r0, c0 = self._r0, self._c0  # array (i, j) -> chip lines (r0 + i, c0 + j)
        devices = [(i + r0, j + c0) for i, j in devices]
        if self._fast:
            cur = self._read_pipelined(devices)
        else:
            cur = [self._read_current(i, j) for i, j in devices]
        self._check_errors()
        cur = torch.tensor(cur, dtype=torch.float64)
        return self.config.weights.to_weight(-cur / self.config.read.voltage).to(torch.float32)

    def _read_pipelined(self, devices: list[tuple[int, int]]) -> list[float]:
        """One message per device, up to PIPELINE of them in flight (:meth:`_pipeline`)."""
        return self._pipeline(("; ".join(self._read_statements(i, j)) for i, j in devices),
                              float)

    def _pipeline(self, messages, parse, stop=lambda reply: False) -> list:
        """Send TSP messages to the SMU with up to PIPELINE in flight; ``parse`` each reply,
        in order. The SMU executes its input queue in order (each message turns the
        outputs off before it routes), so the host's turn-around overlaps the
        instrument's work instead of adding to it. After a parsed reply for which
        ``stop`` is true no more messages are sent (those in flight are still read); on
        any exception the session is cleared (replies on their way would answer the next
        query)."""
        smu = self._sense.instrument
        t = smu.transport
        out: list = []
        in_flight = 0
        with failsafe(lambda: in_flight and t.clear(), what="clearing the SMU session"):
            for message in messages:
                smu.recent.append(message)
                t.write(message)
                in_flight += 1
                if in_flight == PIPELINE:
                    out.append(parse(t.read()))
                    in_flight -= 1
                    if stop(out[-1]):
                        break
            while in_flight:
                out.append(parse(t.read()))
                in_flight -= 1
        return out

    def _read_statements(self, i: int, j: int) -> list[str]:
        """The one-message read of (i, j) through TSP-Link (cached per device)."""
        stmts = self._read_msgs.get((i, j))
        if stmts is None:
            cfg, s, b = self.config, self._sense, self._bias
            c = cfg.read.compliance_a
            stmts = [s.channel.cmd_output(False), b.channel.cmd_output(False),
                     *self._matrix.cmd_close_exclusive(self._read_route(i, j)),
                     *b.channel.cmd_source_voltage(cfg.read.voltage, c),
                     *s.channel.cmd_source_voltage(0.0, c),
                     b.channel.cmd_output(True), s.channel.cmd_output(True),
                     s.channel.cmd_measure_current(),
                     s.channel.cmd_output(False), b.channel.cmd_output(False)]
            self._read_msgs[(i, j)] = stmts
        return stmts

    def _read_current(self, i: int, j: int) -> float:
        cfg, s, b = self.config, self._sense, self._bias
        if self._fast:
            return float(s.instrument.tsp(self._read_statements(i, j), reply=True))
        chans = self._read_route(i, j)
        c = cfg.read.compliance_a
        s.channel.output(False)
        b.channel.output(False)
        self._matrix.close_exclusive(chans)
        b.channel.source_voltage(cfg.read.voltage, c)
        s.channel.source_voltage(0.0, c)
        b.channel.output(True)
        s.channel.output(True)
        try:
            return s.channel.measure_current()
        finally:
            s.channel.output(False)
            b.channel.output(False)

    def _mvm_weights(self) -> torch.Tensor:
        """One read serves every emulated forward/backward until the next pulse (a read of
        the whole chip costs one message per device)."""
        if self._mvm_cache is None:
            self._mvm_cache = self.read()
        return self._mvm_cache

    def _pulse(self, counts: torch.Tensor) -> None:
        self._mvm_cache = None
        self._guard(self._pulse_all, counts)

    def _pulse_all(self, counts: torch.Tensor) -> None:
        bursts = []
        top = self._max_burst()
        for i, j in counts.nonzero().tolist():
            n = int(counts[i, j])
            while n:
                burst = max(-top, min(top, n))
                bursts.append((i + self._r0, j + self._c0, burst))  # chip lines
                n -= burst
        if self._smu_pulse and self._fast:
            self._pulse_pipelined(bursts)
        else:
            for i, j, n in bursts:
                self._pulse_device(i, j, n)
        self._bias.channel.output(False)
        self._sense.channel.output(False)
        self._check_errors()

    def _max_burst(self) -> int:
        """Pulses per burst: the 33500B's NCYC maximum, or for the SMU the reading buffer
        and half the reply timeout (the reply comes when the pulse train is done)."""
        if not self._smu_pulse:
            return MAX_BURST
        timeout_s = self.config.instruments[self.config.terminals["pulse"].instrument].timeout_s
        return max(1, min(MAX_SMU_BURST, int(0.5 * timeout_s / self.config.pulse.period_s)))

    def _pulse_device(self, i: int, j: int, n: int) -> None:
        cfg, s, b = self.config, self._sense, self._bias
        up = n > 0
        shape = cfg.pulse.potentiation if up else cfg.pulse.depression
        chans, levels = self._pulse_plan(i, j, up)
        c = cfg.pulse.compliance_a
        srcs = {"sense": s, "bias": b}
        if self._smu_pulse:  # separate instruments: the SMU message's steps, one by one
            s.channel.output(False)
            b.channel.output(False)
            self._matrix.close_exclusive(chans)
            b.channel.source_voltage(levels["bias"], c)
            b.channel.output(True)
            # limit, PulseVMeasureI, sense output off and the error check: one message
            s.channel.pulse_voltage(shape.amplitude, shape.width_s, abs(n), c,
                                    cfg.pulse.period_s)
            b.channel.output(False)
            return
        if self._fast:
            stmts = self._route_msgs.get((i, j, up))
            if stmts is None:  # the same statements every time: built once per device
                stmts = [s.channel.cmd_output(False), b.channel.cmd_output(False),
                         *self._matrix.cmd_close_exclusive(chans)]
                for name, level in levels.items():
                    stmts += srcs[name].channel.cmd_source_voltage(level, c)
                stmts += [b.channel.cmd_output(True)]
                if cfg.bias_scheme == "v/3":
                    stmts += [s.channel.cmd_output(True)]
                stmts += [s.instrument.count_errors]
                self._route_msgs[(i, j, up)] = stmts
            if float(s.instrument.tsp(stmts, reply=True)) != 0:
                self._check_errors()
        else:
            s.channel.output(False)
            b.channel.output(False)
            self._matrix.close_exclusive(chans)
            for name, level in levels.items():
                srcs[name].channel.source_voltage(level, c)
            b.channel.output(True)
            if cfg.bias_scheme == "v/3":
                s.channel.output(True)
        self._configure_pulser(shape.amplitude, shape.width_s)
        self._pulser.fire(abs(n))

    def _smu_pulse_message(self, i: int, j: int, n: int) -> str:
        """The one-message SMU pulse burst of ``n`` (signed) on (i, j) through TSP-Link:
        both outputs off, route (hot line to the pulse/sense card row, cold line to
        ground, the rest to bias), bias at V/2 with its compliance, bias on, then the
        sense channel's ``pulse_voltage`` statements (its compliance, ``PulseVMeasureI``
        with 0 V between pulses, sense off), bias off, ``print(errorqueue.count)``. The
        statements around the pulse train are built once per device and polarity."""
        up = n > 0
        cfg, s, b = self.config, self._sense, self._bias
        parts = self._smu_pulse_msgs.get((i, j, up))
        if parts is None:
            chans, levels = self._pulse_plan(i, j, up)
            c = cfg.pulse.compliance_a
            head = [s.channel.cmd_output(False), b.channel.cmd_output(False),
                    *self._matrix.cmd_close_exclusive(chans),
                    *b.channel.cmd_source_voltage(levels["bias"], c),
                    b.channel.cmd_output(True)]
            tail = [b.channel.cmd_output(False), s.instrument.count_errors]
            join = s.instrument.JOIN
            parts = (join.join(head) + join, join + join.join(tail))
            self._smu_pulse_msgs[(i, j, up)] = parts
        return parts[0] + self._smu_train(up, abs(n)) + parts[1]

    def _smu_train(self, up: bool, n: int) -> str:
        """The sense channel's ``pulse_voltage`` statements for ``n`` pulses of one
        polarity (cached: the same few counts come back all the time)."""
        train = self._smu_trains.get((up, n))
        if train is None:
            cfg, s = self.config, self._sense
            shape = cfg.pulse.potentiation if up else cfg.pulse.depression
            train = s.instrument.JOIN.join(s.channel.cmd_pulse_voltage(
                shape.amplitude, shape.width_s, n, cfg.pulse.compliance_a, cfg.pulse.period_s))
            if len(self._smu_trains) < MAX_CACHED_TRAINS:
                self._smu_trains[(up, n)] = train
        return train

    def _pulse_pipelined(self, bursts: list[tuple[int, int, int]]) -> None:
        """SMU pulses, one message per burst, up to PIPELINE in flight (as reads): every
        message turns both outputs off before its relays move and ends with them off, so
        the SMU's input queue keeps the envelope. Replies (error counts) are read in
        order; a non-zero count stops sending, the replies still in flight are read, and
        the instrument's error is raised; any exception clears the session first."""
        smu = self._sense.instrument
        counts = self._pipeline((self._smu_pulse_message(i, j, n) for i, j, n in bursts),
                                smu._error_count, stop=bool)
        if any(counts):
            self._check_errors()
            raise InstrumentError("a pulse message reported instrument errors that were "
                                  "gone when the queue was read", smu.resource)

    def _check_errors(self) -> None:
        """Error queues of the SMU and the matrix (drivers check their own blocks)."""
        if self._fast:
            self._sense.instrument.check_errors()
            self._matrix.check_errors()

    # ---- information -------------------------------------------------------------------
    def nominal_step(self) -> float:
        return self.config.weights.dw_min

    def info(self) -> ArrayInfo:
        """The bench YAML's ``weights:`` map and read voltage."""
        return self.config.weights.info(read_voltage=self.config.read.voltage)

    def stats(self) -> dict[str, int]:
        """Messages and queries sent to the instruments for this array since it opened
        (its reads and pulses; the first array on a chip also counts the connection and
        safe state), so that the arrays sharing a chip add up to its traffic."""
        return {"messages": self._traffic[0], "queries": self._traffic[1]}

    def block(self) -> tuple[int, int, int, int]:
        """This array's devices on the chip: (first row line, one past the last, first
        column line, one past the last), in the order of the bench YAML's wiring."""
        return self._r0, self._r0 + self.rows, self._c0, self._c0 + self.cols

    def snapshot(self) -> dict[str, Any]:
        """Instrument identities and the bench settings (stored with measurements)."""
        return {"bench": self.config.source, "region": self.region,
                "block": list(self.block()),
                "instruments": {n: self._identity(n) for n in self._instruments},
                "bias_scheme": self.config.bias_scheme,
                "read_voltage": self.config.read.voltage,
                "pulse": {"source": self.config.pulse_source,
                          "potentiation": vars(self.config.pulse.potentiation),
                          "depression": vars(self.config.pulse.depression),
                          "period_s": self.config.pulse.period_s},
                "limits": vars(self.config.limits)}

    def _identity(self, name: str) -> str | None:
        link = self.config.instruments[name].tsp_link
        if link is not None:  # its session is the master's: that *IDN? is the master's
            return f"{self.config.instruments[name].driver} at TSP-Link node {link.node} of " \
                   f"{link.via}"
        return self._instruments[name].transport.idn

    def __repr__(self) -> str:
        region = f", region={self.region!r}" if self.region is not None else ""
        return f"BenchArray({self.config.source!r}, rows={self.rows}, cols={self.cols}{region})"


def open_bench(argument: str, rows: int, cols: int, seed: int | None = None,
               offset: tuple[int, int] = (0, 0)) -> BenchArray:
    """``open_array("bench:FILE.yaml", rows, cols)``, or ``"bench:FILE.yaml#REGION"`` for
    a region of the bench YAML's ``regions:`` (hardware takes no seed); ``offset``: a
    tile's (row, col) in its layer, the block's offset from the region's corner."""
    path, hash_, region = argument.rpartition("#") if "#" in argument else (argument, "", "")
    if not path:
        raise ConfigError(f"expected bench:FILE.yaml or bench:FILE.yaml#REGION, got "
                          f"'bench:{argument}'", key="spec")
    if hash_ and not region:
        raise ConfigError(f"'bench:{argument}': name a region after '#' "
                          "(bench:FILE.yaml#REGION)", key="spec")
    return BenchArray(load_bench(path), rows, cols, region=region or None, offset=offset)
