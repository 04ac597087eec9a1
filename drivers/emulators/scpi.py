"""SCPI personalities: Keithley 2450 source-measure unit and Keysight 33500B pulse generator.

Headers are matched node by node against patterns written the manuals' way
(``[SOURce#]:VOLTage:HIGH``: upper case = short form, ``[...]`` optional node,
``#`` numeric suffix), case-insensitive, short or long form. ``;`` separates
commands; a header after ``;`` without a leading ``:`` continues at the level of
the previous one. Unknown headers push -113 "Undefined header" (no reply);
several query replies of one message are joined with ``;``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from rpuhw.drivers.emulators.base import Personality, split_outside_quotes
from rpuhw.drivers.emulators.chip import EmulatedChip

_TOKEN = re.compile(r"^([A-Za-z]+)(\d*)$")


class ScpiError(Exception):
    """A command error: (code, message) goes to the error queue."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


UNDEFINED = (-113, "Undefined header")
OUT_OF_RANGE = (-222, "Data out of range")


@dataclass
class _Node:
    short: str
    long: str
    optional: bool
    suffix: bool


def _compile(pattern: str) -> list[_Node]:
    nodes = []
    for part in re.findall(r"\[:?[^\]]+\]|:?[^:\[]+", pattern):
        optional = part.startswith("[")
        name = part.strip("[]:")
        suffix = name.endswith("#")
        name = name.rstrip("#")
        short = "".join(c for c in name if c.isupper() or c.isdigit())
        nodes.append(_Node(short.upper(), name.upper(), optional, suffix))
    return nodes


def _match(nodes: list[_Node], tokens: list[str]) -> list[int] | None:
    """Numeric suffixes (1 when absent) of the suffix nodes, or None when no match."""
    if not nodes:
        return [] if not tokens else None
    node = nodes[0]
    if tokens:
        m = _TOKEN.match(tokens[0])
        if m and m.group(1).upper() in (node.short, node.long) and (
                node.suffix or not m.group(2)):
            rest = _match(nodes[1:], tokens[1:])
            if rest is not None:
                head = [int(m.group(2) or 1)] if node.suffix else []
                return head + rest
    if node.optional:
        rest = _match(nodes[1:], tokens)
        if rest is not None:
            return ([1] if node.suffix else []) + rest
    return None


Handler = Callable[[list[str], list[int]], "str | None"]


@dataclass
class _Command:
    nodes: list[_Node]
    query: bool
    handler: Handler


def number(args: list[str], lo: float | None = None, hi: float | None = None,
           words: dict[str, float] | None = None) -> float:
    """The single numeric argument (or keyword in ``words``); -109/-104/-222 on trouble."""
    if not args:
        raise ScpiError(-109, "Missing parameter")
    if len(args) > 1:
        raise ScpiError(-108, "Parameter not allowed")
    text = args[0].strip()
    for word, value in (words or {}).items():
        if text.upper() in (word.upper(), "".join(c for c in word if c.isupper())):
            return value
    try:
        value = float(text)
    except ValueError:
        raise ScpiError(-104, "Data type error") from None
    if not math.isfinite(value) or (lo is not None and value < lo) or (
            hi is not None and value > hi):
        raise ScpiError(*OUT_OF_RANGE)
    return value


def boolean(args: list[str]) -> bool:
    if not args:
        raise ScpiError(-109, "Missing parameter")
    text = args[0].strip().upper()
    if text in ("ON", "1"):
        return True
    if text in ("OFF", "0"):
        return False
    raise ScpiError(-224, "Illegal parameter value")


def choice(args: list[str], options: list[str]) -> str:
    """The keyword argument, returned as its long form from ``options`` (e.g. "PULSe")."""
    if not args:
        raise ScpiError(-109, "Missing parameter")
    text = args[0].strip().upper()
    for opt in options:
        short = "".join(c for c in opt if c.isupper())
        if text in (opt.upper(), short):
            return opt
    raise ScpiError(-224, "Illegal parameter value")


class ScpiInstrument(Personality):
    """SCPI parser, error queue and common commands shared by the SCPI personalities."""

    error_format: str = '{code},"{message}"'

    def __init__(self, chip: EmulatedChip):
        super().__init__(chip)
        self.errors: list[tuple[int, str]] = []
        self.commands: list[_Command] = []
        self.add("SYSTem:ERRor[:NEXT]", query=self._syst_err)

    def add(self, pattern: str, set: Handler | None = None, query: Handler | None = None):
        nodes = _compile(pattern)
        if set is not None:
            self.commands.append(_Command(nodes, False, set))
        if query is not None:
            self.commands.append(_Command(nodes, True, query))

    def push(self, code: int, message: str) -> None:
        self.errors.append((code, message))

    def inject_error(self) -> None:
        self.push(-200, "Execution error")

    def error_count(self) -> int:
        return len(self.errors)

    def _syst_err(self, args, sfx) -> str:
        code, msg = self.errors.pop(0) if self.errors else (0, "No error")
        return self.error_format.format(code=code, message=msg)

    def common(self, header: str, args: list[str]) -> str | None:
        """``*XXX`` commands; subclasses extend."""
        if header == "*IDN?":
            return self.idn
        if header == "*OPC?":
            return "1"
        if header == "*RST":
            self.reset()
            return None
        if header == "*CLS":
            self.errors.clear()
            return None
        if header in ("*WAI", "*OPC"):
            return None
        raise ScpiError(*UNDEFINED)

    def reset(self) -> None:
        raise NotImplementedError

    def _handle(self, message: str) -> str | None:
        replies: list[str] = []
        prefix: list[str] = []
        for unit in split_outside_quotes(message):
            unit = unit.strip()
            if not unit:
                continue
            header, _, rest = unit.partition(" ")
            args = [a.strip() for a in split_outside_quotes(rest, ",")] if rest.strip() else []
            try:
                if header.startswith("*"):
                    reply = self.common(header.upper(), args)
                else:
                    query = header.endswith("?")
                    path = header.rstrip("?")
                    tokens = path.lstrip(":").split(":")
                    if not path.startswith(":"):
                        tokens = prefix + tokens
                    prefix = tokens[:-1]
                    reply = self._dispatch(tokens, query, args)
                if reply is not None:
                    replies.append(reply)
            except ScpiError as exc:
                self.push(exc.code, exc.message)
        return ";".join(replies) if replies else None

    def _dispatch(self, tokens: list[str], query: bool, args: list[str]) -> str | None:
        for cmd in self.commands:
            if cmd.query != query:
                continue
            sfx = _match(cmd.nodes, tokens)
            if sfx is not None:
                return cmd.handler(args, sfx)
        raise ScpiError(*UNDEFINED)


# ---- Keithley 2450 ---------------------------------------------------------------------

_ILIM_DEFAULT = 1.05e-4


class Keithley2450(ScpiInstrument):
    """Keithley 2450 in its SCPI command set: DC voltage source, current measurement."""

    idn = "KEITHLEY INSTRUMENTS,MODEL 2450,04512345,1.7.12b"
    driver = "keithley2450"

    def __init__(self, chip: EmulatedChip, key: str = "smu"):
        super().__init__(chip)
        self.key = key
        self.src = chip.add_source(key)
        self.src.compliance_a = _ILIM_DEFAULT
        self.func = "VOLTage"
        self.add("SOURce#:FUNCtion[:MODE]", set=self._func, query=lambda a, s: self.func[:4])
        self.add("SOURce#:VOLTage:ILIMit[:LEVel]", set=self._ilim,
                 query=lambda a, s: f"{self.src.compliance_a:.6E}")
        self.add("SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]", set=self._volt,
                 query=lambda a, s: f"{self.src.level_v:.6E}")
        self.add("MEASure:CURRent[:DC]", query=self._meas)
        self.add("OUTPut#[:STATe]", set=self._outp,
                 query=lambda a, s: "1" if self.src.output else "0")

    def common(self, header: str, args: list[str]) -> str | None:
        if header == "*LANG?":
            return "SCPI"
        return super().common(header, args)

    def reset(self) -> None:
        self.src.output, self.src.level_v, self.src.compliance_a = False, 0.0, _ILIM_DEFAULT
        self.func = "VOLTage"

    def _func(self, args, sfx):
        self.func = choice(args, ["VOLTage", "CURRent"])

    def _ilim(self, args, sfx):
        self.src.compliance_a = number(args, 1e-9, 1.05)

    def _volt(self, args, sfx):
        self.src.level_v = number(args, -210.0, 210.0)

    def _outp(self, args, sfx):
        self.src.output = boolean(args)

    def _meas(self, args, sfx) -> str:
        return f"{self.chip.measure_current(self.key):.6E}"


# ---- Keysight 33500B -------------------------------------------------------------------

_HW_MAX = 10.0      # |V| into a high impedance (the 33500B's range, load INF)


@dataclass
class _PulseChannel:
    """Settings of one 33500B output channel (defaults after *RST)."""

    load: float = 50.0
    func: str = "SINusoid"
    period: float = 1e-3
    width: float = 1e-4
    high: float = 0.05
    low: float = -0.05
    lim_high: float = 5.0
    lim_low: float = -5.0
    lim_on: bool = False
    burst_mode: str = "TRIGgered"
    ncyc: int = 1
    burst_on: bool = False
    trig_source: str = "IMMediate"
    output: bool = False
    history: list[int] = field(default_factory=list)
    """Burst sizes fired with the output on (for tests)."""

    @property
    def factor(self) -> float:
        """Real / programmed amplitude on a high-impedance device for this load setting."""
        return 1.0 if math.isinf(self.load) else (self.load + 50.0) / self.load


class Keysight33500B(ScpiInstrument):
    """Keysight 33522B two-channel generator: pulse function, triggered bursts, limits."""

    idn = "Keysight Technologies,33522B,MY52345678,4.03-1.19-2.00-52-00"
    driver = "keysight33500b"
    error_format = '{code:+d},"{message}"'

    def __init__(self, chip: EmulatedChip, keys: dict[int, str] | None = None):
        super().__init__(chip)
        self.keys = keys or {1: "pulser.1", 2: "pulser.2"}
        self.ch = {n: _PulseChannel() for n in self.keys}
        for n, key in self.keys.items():
            chip.add_source(key).compliance_a = 0.2
            self._sync(n)
        s = "[SOURce#]"
        self.add("OUTPut#:LOAD", set=self._load, query=self._q("load"))
        self.add("OUTPut#[:STATe]", set=self._outp, query=self._q("output"))
        self.add(f"{s}:FUNCtion[:SHAPe]", set=self._func, query=self._q("func"))
        self.add(f"{s}:FUNCtion:PULSe:PERiod", set=self._period, query=self._q("period"))
        self.add(f"{s}:FUNCtion:PULSe:WIDTh", set=self._width, query=self._q("width"))
        self.add(f"{s}:VOLTage[:LEVel][:IMMediate]:HIGH", set=self._level("high"),
                 query=self._q("high"))
        self.add(f"{s}:VOLTage[:LEVel][:IMMediate]:LOW", set=self._level("low"),
                 query=self._q("low"))
        self.add(f"{s}:VOLTage:LIMit:HIGH", set=self._limit("lim_high"),
                 query=self._q("lim_high"))
        self.add(f"{s}:VOLTage:LIMit:LOW", set=self._limit("lim_low"), query=self._q("lim_low"))
        self.add(f"{s}:VOLTage:LIMit:STATe", set=self._lim_state, query=self._q("lim_on"))
        self.add(f"{s}:BURSt:MODE", set=self._burst_mode, query=self._q("burst_mode"))
        self.add(f"{s}:BURSt:NCYCles", set=self._ncyc, query=self._q("ncyc"))
        self.add(f"{s}:BURSt:STATe", set=self._burst_state, query=self._q("burst_on"))
        self.add("TRIGger#:SOURce", set=self._trig_source, query=self._q("trig_source"))

    # ---- helpers ---------------------------------------------------------------------
    def _chan(self, sfx: list[int]) -> _PulseChannel:
        n = sfx[0] if sfx else 1
        if n not in self.ch:
            raise ScpiError(*UNDEFINED)
        return self.ch[n]

    def _sync(self, n: int) -> None:
        """Mirror channel n into its chip source (idle level = low level, load-corrected)."""
        c, src = self.ch[n], self.chip.sources[self.keys[n]]
        src.output, src.level_v = c.output, c.low * c.factor

    def _q(self, attr: str) -> Handler:
        def query(args, sfx):
            value = getattr(self._chan(sfx), attr)
            if isinstance(value, bool):
                return "1" if value else "0"
            if isinstance(value, str):
                return "".join(ch for ch in value if ch.isupper())
            if isinstance(value, float) and math.isinf(value):
                return "+9.9E+37"
            return f"{value:+.15E}" if isinstance(value, float) else f"{value:+d}"
        return query

    def _clip(self, c: _PulseChannel, value: float) -> float:
        """Clip a level into the hardware range and the enabled limits (-222 when clipped)."""
        hw = _HW_MAX / c.factor
        lo, hi = -hw, hw
        if c.lim_on:
            lo, hi = max(lo, c.lim_low), min(hi, c.lim_high)
        if value < lo or value > hi:
            self.push(*OUT_OF_RANGE)
            return min(max(value, lo), hi)
        return value

    # ---- settings --------------------------------------------------------------------
    def reset(self) -> None:
        for n in self.ch:
            self.ch[n] = _PulseChannel()
            self._sync(n)

    def _load(self, args, sfx):
        c = self._chan(sfx)
        c.load = number(args, 1.0, 10000.0, words={"INFinity": math.inf, "MINimum": 1.0,
                                                   "MAXimum": 10000.0, "DEFault": 50.0})
        self._sync(sfx[0])

    def _outp(self, args, sfx):
        self._chan(sfx).output = boolean(args)
        self._sync(sfx[0])

    def _func(self, args, sfx):
        self._chan(sfx).func = choice(args, ["SINusoid", "SQUare", "TRIangle", "RAMP", "PULSe",
                                             "PRBS", "NOISe", "ARB", "DC"])

    def _period(self, args, sfx):
        self._chan(sfx).period = number(args, 33e-9, 1e6)

    def _width(self, args, sfx):
        self._chan(sfx).width = number(args, 16e-9, 1e6)

    def _level(self, attr: str) -> Handler:
        def setter(args, sfx):
            c = self._chan(sfx)
            setattr(c, attr, self._clip(c, number(args)))
            self._sync(sfx[0])
        return setter

    def _limit(self, attr: str) -> Handler:
        def setter(args, sfx):
            setattr(self._chan(sfx), attr, number(args, -_HW_MAX, _HW_MAX))
        return setter

    def _lim_state(self, args, sfx):
        c = self._chan(sfx)
        c.lim_on = boolean(args)
        if c.lim_on:  # levels already beyond the new limits are clipped into them
            c.high, c.low = self._clip(c, c.high), self._clip(c, c.low)
            self._sync(sfx[0])

    def _burst_mode(self, args, sfx):
        self._chan(sfx).burst_mode = choice(args, ["TRIGgered", "GATed"])

    def _ncyc(self, args, sfx):
        value = number(args, 1, 1e8, words={"MINimum": 1.0, "MAXimum": 1e8})
        if value != int(value):
            raise ScpiError(*OUT_OF_RANGE)
        self._chan(sfx).ncyc = int(value)

    def _burst_state(self, args, sfx):
        self._chan(sfx).burst_on = boolean(args)

    def _trig_source(self, args, sfx):
        self._chan(sfx).trig_source = choice(args, ["IMMediate", "EXTernal", "TIMer", "BUS"])

    # ---- trigger ---------------------------------------------------------------------
    def common(self, header: str, args: list[str]) -> str | None:
        if header == "*TRG":
            self.trigger()
            return None
        return super().common(header, args)

    def trigger(self) -> None:
        """``*TRG``: every channel armed for a BUS-triggered burst fires it (-211 if none)."""
        armed = [n for n, c in self.ch.items() if c.burst_on and c.trig_source == "BUS"
                 and c.burst_mode == "TRIGgered"]
        if not armed:
            self.push(-211, "Trigger ignored")
            return
        for n in armed:
            c = self.ch[n]
            if c.output and c.func == "PULSe":
                c.history.append(c.ncyc)
                self.chip.fire(self.keys[n], c.high * c.factor, c.ncyc)
