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
import weakref
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rpuhw.array import ArrayInfo, Capabilities, CrossPointArray
from rpuhw.drivers.bench_config import BenchConfig, load_bench
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

_OPEN: weakref.WeakSet = weakref.WeakSet()


def _close_open_benches() -> None:
    """Outputs off at interpreter exit, while the sessions are still open: re-registered
    after every bench opens, so it runs before pyvisa's own exit handler (atexit is LIFO
    and pyvisa registers its handler when the first ResourceManager opens)."""
    for bench in list(_OPEN):
        bench.close()


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


class BenchArray(CrossPointArray):
    """A chip on instruments, through the bench YAML's wiring and safety limits."""

    capabilities = Capabilities(read=True, pulse=True)
    serial_reads = True
    _closed = True            # until connected (a failed constructor has nothing to close)
    _pulser: Instrument | None = None
    _matrix: Instrument | None = None
    _sense: _Source | None = None
    _bias: _Source | None = None

    def __init__(self, config: BenchConfig | str | Path, rows: int | None = None,
                 cols: int | None = None, *, transports: dict[str, Any] | None = None):
        """Connect the instruments and put the bench in its safe state.

        Args:
            config: a :class:`BenchConfig` or the path of a bench YAML.
            rows, cols: the block of the chip to use (top-left; default: all wired).
            transports: instrument name -> ready transport, instead of opening the
                resources (tests, or an already-open session).
        """
        cfg = config if isinstance(config, BenchConfig) else load_bench(config)
        rows = cfg.rows if rows is None else rows
        cols = cfg.cols if cols is None else cols
        super().__init__(rows, cols)
        if rows > cfg.rows or cols > cfg.cols:
            raise ConfigError(f"a {rows} x {cols} array does not fit the {cfg.rows} x "
                              f"{cfg.cols} devices wired on this bench", source=cfg.source,
                              key="rows" if rows > cfg.rows else "cols")
        self.config = cfg
        self._closed = False
        self._instruments: dict[str, Instrument] = {}
        self._read_msgs: dict[tuple[int, int], list[str]] = {}
        self._route_msgs: dict[tuple[int, int, bool], list[str]] = {}
        self._smu_pulse_msgs: dict[tuple[int, int, bool], tuple[str, str]] = {}
        self._smu_trains: dict[tuple[bool, int], str] = {}
        self._mvm_cache: torch.Tensor | None = None
        self._plans: dict[tuple[int, int, bool], tuple[list[str], dict[str, float]]] = {}
        _OPEN.add(self)
        with failsafe(self.close, what="closing the bench after a failed open"):
            self._connect(transports or {})
            atexit.unregister(_close_open_benches)
            atexit.register(_close_open_benches)
            self._setup()

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
            self._instruments[name] = driver(transports.get(name, inst.resource), **kwargs)
        for name, inst in linked.items():
            master = self._instruments[inst.tsp_link.via]
            self._instruments[name] = cfg.driver(name)(None, via=master,
                                                       node=inst.tsp_link.node)
        self._matrix = self._instruments[cfg.matrix_name()]
        self._sense = self._source("sense")
        self._bias = self._source("bias")
        # the sense channel pulses (PulseVMeasureI): there is no pulse generator to drive
        self._smu_pulse = cfg.pulse_source == "smu"
        self._pulser = None if self._smu_pulse else \
            self._instruments[cfg.terminals["pulse"].instrument]
        smu = self._sense.instrument
        link = cfg.instruments[cfg.matrix_name()].tsp_link
        self._fast = (self._sense.tsp and smu is self._bias.instrument and link is not None
                      and self._instruments[link.via] is smu)

    def _source(self, terminal: str) -> _Source:
        term = self.config.terminals[terminal]
        inst = self._instruments[term.instrument]
        return _Source(terminal, inst, inst.channel(term.channel))

    def _setup(self) -> None:
        """Safe state: outputs off, relays open, pulse shape and compliances set."""
        cfg = self.config
        if self._pulser is not None:  # strict here: an instrument that does not answer
            self._pulser.output(False)  # at open must fail the open, loudly
        for src in (self._bias, self._sense):
            src.channel.output(False)
        self._matrix.open_all()
        self._pulse_shape: tuple[float, float] | None = None
        if self._pulser is not None:
            self._pulser.voltage_limits(cfg.limits.v_max)
            self._configure_pulser(cfg.pulse.potentiation.amplitude,
                                   cfg.pulse.potentiation.width_s)
        for src in (self._sense, self._bias):
            src.channel.source_voltage(0.0, cfg.read.compliance_a)

    def _configure_pulser(self, amplitude: float, width_s: float) -> None:
        if self._pulse_shape != (amplitude, width_s):
            self._pulser.configure_pulse(amplitude, 0.0, width_s, self.config.pulse.period_s, 1)
            self._pulse_shape = (amplitude, width_s)

    def _safe_off(self) -> None:
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

    def _guard(self, op, *args):
        if self._closed:
            raise InstrumentError(f"bench {self.config.source} is closed")
        with failsafe(self._safe_off, what="turning the bench outputs off"):
            return op(*args)

    def reconnect(self, attempts: int = 3) -> None:
        """Re-open every instrument session and restore the safe state (retried when a
        session drops again meanwhile)."""
        for attempt in range(attempts):
            try:
                seen = set()
                for inst in self._instruments.values():
                    t = inst.transport
                    if id(t) not in seen:
                        seen.add(id(t))
                        t.reconnect()
                self._setup()
                return
            except InstrumentConnectionError:
                self._safe_off()
                if attempt == attempts - 1:
                    raise

    def close(self) -> None:
        """Outputs off, relays open, sessions closed (idempotent; finishes even when
        interrupted, then re-raises the KeyboardInterrupt)."""
        if self._closed:
            return
        self._closed = True
        _OPEN.discard(self)
        steps = [("turning the outputs off", self._safe_off)]
        if self._matrix is not None:
            steps.append(("opening the relays", self._matrix.open_all))
        linked_first = sorted(self._instruments.items(),
                              key=lambda kv: self.config.instruments[kv[0]].tsp_link is None)
        steps += [(f"closing {name}", inst.close) for name, inst in linked_first]
        run_every(steps, attempts=2, retry_errors=False)  # one retry after an interrupt

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
                bursts.append((i, j, burst))
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
        """Messages and queries sent to all instruments since open."""
        seen, msgs, queries = set(), 0, 0
        for inst in self._instruments.values():
            t = inst.transport
            if id(t) not in seen:
                seen.add(id(t))
                msgs += t.messages
                queries += t.queries
        return {"messages": msgs, "queries": queries}

    def snapshot(self) -> dict[str, Any]:
        """Instrument identities and the bench settings (stored with measurements)."""
        return {"bench": self.config.source,
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
        return f"BenchArray({self.config.source!r}, rows={self.rows}, cols={self.cols})"


def open_bench(argument: str, rows: int, cols: int, seed: int | None = None) -> BenchArray:
    """``open_array("bench:FILE.yaml", rows, cols)`` (hardware takes no seed)."""
    if not argument:
        raise ConfigError("expected bench:FILE.yaml", key="spec")
    return BenchArray(load_bench(argument), rows, cols)
