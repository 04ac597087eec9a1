"""TSP (Lua) personalities: Keithley 2600B source-measure unit and 707B switch matrix.

Only the statements of docs/instrument_commands.md are understood: attribute
assignments, calls and ``print(...)`` of a few expressions, separated by ``;``.
A message that does not parse is a Lua syntax error (-285: nothing in it runs,
as Lua compiles the whole chunk first); an unknown name is a runtime error (-286:
the statements before it ran, the rest of the message is dropped); bad
parameter values are queued errors and execution goes on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from rpuhw.drivers.emulators.base import Personality, split_outside_quotes
from rpuhw.drivers.emulators.chip import CHANNEL_RE, EmulatedChip

_PATH = r"[A-Za-z_]\w*(?:\[\d+\])?(?:\.[A-Za-z_]\w*(?:\[\d+\])?)*"
_CALL = re.compile(rf"^({_PATH})\s*\((.*)\)$", re.S)
_ASSIGN = re.compile(rf"^({_PATH})\s*=\s*(.+)$", re.S)
_PATH_RE = re.compile(rf"^{_PATH}$")
_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_STRING = re.compile(r"""^("[^"]*"|'[^']*')$""")
_COMMON = ("*IDN?", "*OPC?", "*RST", "*CLS", "*WAI")
_NODE = re.compile(r"^node\[(\d+)\]\.(.+)$", re.S)

SYNTAX_ERROR = -285
RUNTIME_ERROR = -286
OUT_OF_RANGE = -222
BAD_CHANNEL = 1115


class TspSyntaxError(Exception):
    """The chunk does not compile (nothing of it runs)."""


class TspRuntimeError(Exception):
    """Execution stops here (the rest of the chunk is dropped)."""


@dataclass
class Expr:
    """A parsed expression: kind is num, str, path, call or const."""

    kind: str
    value: Any
    args: list[Expr] | None = None


def fmt(value: Any) -> str:
    """A value as TSP's ``print`` writes it (numbers ``%.5e``)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return f"{float(value):.5e}"
    if isinstance(value, tuple):
        return "\t".join(fmt(v) for v in value)
    return str(value)


def parse_expr(text: str) -> Expr:
    text = text.strip()
    if _NUMBER.match(text):
        return Expr("num", float(text))
    if _STRING.match(text):
        return Expr("str", text[1:-1])
    if text in ("nil", "true", "false"):
        return Expr("const", {"nil": None, "true": True, "false": False}[text])
    m = _CALL.match(text)
    if m:
        return Expr("call", m.group(1), parse_args(m.group(2)))
    if _PATH_RE.match(text):
        return Expr("path", text)
    raise TspSyntaxError(f"unexpected symbol near '{text[:20]}'")


def parse_args(text: str) -> list[Expr]:
    if not text.strip():
        return []
    return [parse_expr(a) for a in split_outside_quotes(text, ",")]


def parse_statement(text: str) -> tuple[str, Any]:
    """One statement -> ("common", cmd) | ("assign", path, Expr) | ("call", Expr)."""
    text = text.strip()
    if text.upper() in _COMMON:
        return ("common", text.upper())
    m = _ASSIGN.match(text)
    if m and not text.startswith("print"):
        return ("assign", (m.group(1), parse_expr(m.group(2))))
    m = _CALL.match(text)
    if m:
        return ("call", Expr("call", m.group(1), parse_args(m.group(2))))
    raise TspSyntaxError(f"unexpected symbol near '{text[:20]}'")


class ErrorQueue:
    """TSP error queue: entries (code, message, severity, node)."""

    def __init__(self):
        self.entries: list[tuple[int, str, int, int]] = []

    def push(self, code: int, message: str, node: int = 0, severity: int = 2) -> None:
        self.entries.append((code, message, severity, node))

    def next(self) -> tuple[float, str, float, float]:
        if not self.entries:
            return (0.0, "Queue Is Empty", 0.0, 0.0)
        code, msg, sev, node = self.entries.pop(0)
        return (float(code), msg, float(sev), float(node))


class TspInstrument(Personality):
    """Lua-subset interpreter shared by the TSP personalities."""

    def __init__(self, chip: EmulatedChip):
        super().__init__(chip)
        self.queue = ErrorQueue()

    # ---- entry points ------------------------------------------------------------------
    def _handle(self, message: str) -> str | None:
        return self.run_chunk(message, self.queue, node=0)

    def run_chunk(self, message: str, queue: ErrorQueue, node: int) -> str | None:
        """Run one message; errors go to ``queue`` tagged with ``node``."""
        try:
            stmts = [parse_statement(s) for s in split_outside_quotes(message)
                     if s.strip()]
        except TspSyntaxError as exc:
            queue.push(SYNTAX_ERROR, f"TSP Syntax error at line 1: {exc}", node)
            return None
        out: list[str] = []
        try:
            for stmt in stmts:
                self.execute(stmt, out, queue, node)
        except TspRuntimeError as exc:
            queue.push(RUNTIME_ERROR, f"TSP Runtime error at line 1: {exc}", node)
        return "\n".join(out) if out else None

    def inject_error(self) -> None:
        self.queue.push(RUNTIME_ERROR, "TSP Runtime error at line 1: injected fault "
                        "(error-after)", 0)

    def error_count(self) -> int:
        return len(self.queue.entries)

    # ---- interpreter -------------------------------------------------------------------
    def execute(self, stmt: tuple[str, Any], out: list[str], queue: ErrorQueue,
                node: int) -> None:
        kind, body = stmt
        if kind == "common":
            if body == "*IDN?":
                out.append(self.idn)
            elif body == "*OPC?":
                out.append("1")
            elif body == "*RST":
                self.reset()
            elif body == "*CLS":
                queue.entries.clear()
            return
        if kind == "assign":
            path, expr = body
            self.assign(path, self.evaluate(expr, queue, node), queue, node)
            return
        if body.value == "print":
            out.append("\t".join(fmt(self.evaluate(a, queue, node)) for a in body.args))
            return
        self.evaluate(body, queue, node)

    def evaluate(self, expr: Expr, queue: ErrorQueue, node: int) -> Any:
        if expr.kind in ("num", "str", "const"):
            return expr.value
        if expr.kind == "path":
            return self.get(expr.value, queue, node)
        args = [self.evaluate(a, queue, node) for a in expr.args or []]
        return self.call(expr.value, args, queue, node)

    def get(self, path: str, queue: ErrorQueue, node: int) -> Any:
        if path == "errorqueue.count":
            return float(len(queue.entries))
        raise TspRuntimeError(f"attempt to index a nil value ('{path}')")

    def call(self, path: str, args: list[Any], queue: ErrorQueue, node: int) -> Any:
        if path == "errorqueue.next":
            return queue.next()
        if path == "errorqueue.clear":
            queue.entries.clear()
            return None
        if path == "waitcomplete":
            return None
        if path == "reset":
            self.reset()
            return None
        raise TspRuntimeError(f"attempt to call field '{path}' (a nil value)")

    def assign(self, path: str, value: Any, queue: ErrorQueue, node: int) -> None:
        raise TspRuntimeError(f"attempt to assign to '{path}'")

    def reset(self) -> None:
        raise NotImplementedError


# ---- Keithley 707B ---------------------------------------------------------------------

class Keithley707B(TspInstrument):
    """Keithley 707B switch matrix: ``channel.exclusiveclose/close/open/getclose``."""

    idn = "Keithley Instruments Inc., Model 707B, 04512347, 1.6.2"
    driver = "keithley707b"

    def reset(self) -> None:
        self.chip.set_relays(frozenset())

    def _channels(self, spec: Any, queue: ErrorQueue, node: int, allow_all: bool):
        """Parse a channel list; None (and a queued error) when any entry is bad."""
        if not isinstance(spec, str):
            queue.push(BAD_CHANNEL, f"Parameter error: channel list must be a string, got "
                       f"{fmt(spec)}", node)
            return None
        chans: set[str] = set()
        for item in (s.strip() for s in spec.split(",")):
            if allow_all and item.lower() == "allslots":
                chans |= set(self.chip.closed)
            elif CHANNEL_RE.match(item):
                chans.add(item)
            else:
                queue.push(BAD_CHANNEL, f"Parameter error: invalid channel list {spec!r}", node)
                return None
        return chans

    def call(self, path: str, args: list[Any], queue: ErrorQueue, node: int) -> Any:
        chip = self.chip
        if path in ("channel.exclusiveclose", "channel.close", "channel.open"):
            if len(args) != 1:
                raise TspRuntimeError(f"bad argument count to '{path}'")
            chans = self._channels(args[0], queue, node, allow_all=path == "channel.open")
            if chans is None:
                return None
            if path == "channel.exclusiveclose":
                chip.set_relays(chans)
            elif path == "channel.close":
                chip.set_relays(chip.closed | chans)
            else:
                chip.set_relays(chip.closed - chans)
            return None
        if path == "channel.getclose":
            if len(args) != 1 or not isinstance(args[0], str):
                raise TspRuntimeError("bad argument #1 to 'getclose'")
            wanted = self._channels(args[0], queue, node, allow_all=True)
            if wanted is None:
                return None
            closed = sorted(chip.closed & wanted)
            return ";".join(closed) if closed else None
        return super().call(path, args, queue, node)


# ---- Keithley 2600B --------------------------------------------------------------------

_SMU_CONST = {"OUTPUT_ON": 1.0, "OUTPUT_OFF": 0.0, "OUTPUT_DCVOLTS": 1.0,
              "OUTPUT_DCAMPS": 0.0}
_V_MAX = 40.0       # 2602B source range (V)
_I_MAX = 3.0        # 2602B DC current limit (A)
_I_MIN = 10e-9      # smallest current limit (A)
_LIMITI_DEFAULT = 0.1


@dataclass
class _Channel:
    """One SMU channel's settings (the chip holds level/output/compliance)."""

    name: str
    key: str
    func: float = 1.0


class Keithley2600B(TspInstrument):
    """Keithley 2600B (2602B) SMU: ``smua``/``smub``, PulseVMeasureI, TSP-Link to a 707B."""

    idn = "Keithley Instruments Inc., Model 2602B, 04512346, 4.0.4"
    driver = "keithley2600b"

    def __init__(self, chip: EmulatedChip, keys: dict[str, str] | None = None,
                 link: dict[int, TspInstrument] | None = None):
        """``keys``: channel name ("smua"/"smub") -> chip source key; ``link``: node -> TSP
        instrument reachable as ``node[N].``."""
        super().__init__(chip)
        keys = keys or {"smua": "smu.a", "smub": "smu.b"}
        self.channels = {name: _Channel(name, key) for name, key in keys.items()}
        for ch in self.channels.values():
            chip.add_source(ch.key).compliance_a = _LIMITI_DEFAULT
        self.link = dict(link or {})

    def reset(self) -> None:
        for ch in self.channels.values():
            src = self.chip.sources[ch.key]
            src.output, src.level_v, src.compliance_a = False, 0.0, _LIMITI_DEFAULT
            ch.func = 1.0
        for inst in self.link.values():  # reset() resets the whole TSP-Link system
            inst.reset()

    # ---- TSP-Link ------------------------------------------------------------------------
    def _linked(self, path: str) -> tuple[TspInstrument, str, int] | None:
        m = _NODE.match(path)
        if not m:
            return None
        node = int(m.group(1))
        if node not in self.link:
            raise TspRuntimeError(f"attempt to index field '?' (node[{node}] is not linked)")
        return self.link[node], m.group(2), node

    def execute(self, stmt, out, queue, node) -> None:
        kind, body = stmt
        target = None
        if kind == "assign":
            target = self._linked(body[0])
        elif kind == "call":
            target = self._linked(body.value)
        if target is None:
            return super().execute(stmt, out, queue, node)
        inst, rest, n = target
        # errors of linked nodes are reported in the master's queue, tagged with the node
        if kind == "assign":
            inst.execute(("assign", (rest, body[1])), out, queue, n)
        else:
            inst.execute(("call", Expr("call", rest, body.args)), out, queue, n)

    def evaluate(self, expr: Expr, queue: ErrorQueue, node: int) -> Any:
        if expr.kind in ("path", "call"):
            target = self._linked(expr.value)
            if target is not None:
                inst, rest, n = target
                return inst.evaluate(Expr(expr.kind, rest, expr.args), queue, n)
        return super().evaluate(expr, queue, node)

    # ---- channel attributes --------------------------------------------------------------
    def _split(self, path: str) -> tuple[_Channel | None, str]:
        head, _, rest = path.partition(".")
        return self.channels.get(head), rest

    def get(self, path: str, queue: ErrorQueue, node: int) -> Any:
        ch, rest = self._split(path)
        if ch is not None:
            src = self.chip.sources[ch.key]
            if rest == "":
                return ch
            if rest in _SMU_CONST:
                return _SMU_CONST[rest]
            if rest == "source.levelv":
                return src.level_v
            if rest == "source.limiti":
                return src.compliance_a
            if rest == "source.output":
                return 1.0 if src.output else 0.0
            if rest == "source.func":
                return ch.func
        return super().get(path, queue, node)

    def assign(self, path: str, value: Any, queue: ErrorQueue, node: int) -> None:
        ch, rest = self._split(path)
        if ch is None or rest not in ("source.levelv", "source.limiti", "source.output",
                                      "source.func"):
            raise TspRuntimeError(f"attempt to assign to '{path}'")
        if isinstance(value, bool) or not isinstance(value, float):
            queue.push(OUT_OF_RANGE, f"Parameter data out of range: {path} = {fmt(value)}",
                       node)
            return
        src = self.chip.sources[ch.key]
        if rest == "source.levelv":
            if abs(value) > _V_MAX:
                queue.push(OUT_OF_RANGE, f"Parameter data out of range: {path} = {value:g} "
                           f"(max {_V_MAX:g} V)", node)
                return
            src.level_v = value
        elif rest == "source.limiti":
            if not _I_MIN <= value <= _I_MAX:
                queue.push(OUT_OF_RANGE, f"Parameter data out of range: {path} = {value:g} "
                           f"(limit {_I_MIN:g} to {_I_MAX:g} A)", node)
                return
            src.compliance_a = value
        elif rest == "source.output":
            if value not in (0.0, 1.0):
                queue.push(OUT_OF_RANGE, f"Parameter data out of range: {path} = {value:g}",
                           node)
                return
            src.output = value == 1.0
        else:
            if value not in (0.0, 1.0):
                queue.push(OUT_OF_RANGE, f"Parameter data out of range: {path} = {value:g}",
                           node)
                return
            ch.func = value

    def call(self, path: str, args: list[Any], queue: ErrorQueue, node: int) -> Any:
        ch, rest = self._split(path)
        if ch is not None and rest == "measure.i" and not args:
            return self.chip.measure_current(ch.key)
        if ch is not None and rest == "reset" and not args:
            src = self.chip.sources[ch.key]
            src.output, src.level_v, src.compliance_a = False, 0.0, _LIMITI_DEFAULT
            return None
        if path == "PulseVMeasureI":
            return self._pulse(args, queue, node)
        return super().call(path, args, queue, node)

    def _pulse(self, args: list[Any], queue: ErrorQueue, node: int) -> None:
        """``PulseVMeasureI(smu, bias, level, ton, toff, points)`` (KIPulse)."""
        if len(args) != 6 or not isinstance(args[0], _Channel):
            raise TspRuntimeError("bad argument #1 to 'PulseVMeasureI' (smu expected)")
        ch, rest = args[0], args[1:]
        if not all(isinstance(a, float) and not isinstance(a, bool) for a in rest):
            raise TspRuntimeError("bad argument to 'PulseVMeasureI' (number expected)")
        bias, level, ton, toff, points = rest
        if (abs(bias) > _V_MAX or abs(level) > _V_MAX or ton <= 0 or toff < 0
                or points < 1 or points != int(points)):
            queue.push(OUT_OF_RANGE, "Parameter data out of range: PulseVMeasureI("
                       f"{ch.name}, {bias:g}, {level:g}, {ton:g}, {toff:g}, {points:g})", node)
            return None
        src = self.chip.sources[ch.key]
        src.level_v, src.output = bias, True
        self.chip.fire(ch.key, level, int(points))
        return None
