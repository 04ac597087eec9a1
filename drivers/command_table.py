"""Declarative instrument commands: a driver file reads as the table of its commands.

A command is declared once, in the class body, as the statement templates of the
manual, the arguments with their validators and units, and what it does to the
driver's state::

    class SmuChannel(Channel):
        source_voltage = Command(
            "{ch}.source.func = {ch}.OUTPUT_DCVOLTS", "{ch}.source.limiti = {compliance_a}",
            "{ch}.source.levelv = {volts}",
            volts=Volts("{ch} volts"), compliance_a=Amps(), arms=True,
            doc="DC voltage source with its current limit")
        measure_current = Command("print({ch}.measure.i())", reply=number, doc="...")

The one statement builder serves both ways of sending it:

* ``channel.source_voltage(0.2, 1e-3)`` validates, builds, sends the statements as one
  block (the owner's :meth:`Commanded._send_block`: SCPI joins with ``;`` and queries
  ``:SYST:ERR?``, TSP joins with ``"; "`` and prints ``errorqueue.count``), or as one
  query whose reply is parsed (``reply=``), then applies the command's effects;
* ``channel.cmd_source_voltage(0.2, 1e-3)`` validates and builds the same statements
  (a str for a one-statement command, else a list) for a combined message, and applies
  the effects at once: whoever sends the combined message owns it.

Effects: ``arms`` marks the owner armed (a compliance set, a high-Z load and levels
set); ``needs_armed`` refuses the command (:class:`SafetyError`, nothing sent) until
then, always (``True``) or when the named argument is true (``"on"``); ``records``
maps the validated arguments to the settings kept for :meth:`snapshot`. Levels go
through the owner's ``level()`` (its ``v_limit``) before anything is built.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, ClassVar

from .errors import InstrumentError, SafetyError

REQUIRED = inspect.Parameter.empty
"""Default of an argument that must be given."""


# ---- number validation and formatting ------------------------------------------------
def fmt(x: float) -> str:
    """Number format of every driver message (``0.0001``, ``1e-07``, ``1.2``)."""
    return format(x, ".6g")


def _where(resource: str | None) -> str:
    return f"{resource}: " if resource else ""


def finite(name: str, value: float, resource: str | None = None) -> float:
    """``value`` as float, or ValueError naming ``name`` when not a finite number."""
    kind = type(value)
    ok = kind is float or kind is int or (isinstance(value, numbers.Real)
                                          and not isinstance(value, bool))
    x = float(value) if ok else math.nan
    if not math.isfinite(x):
        raise ValueError(f"{_where(resource)}{name} must be a finite number, got {value!r}")
    return x


def positive(name: str, value: float, resource: str | None = None) -> float:
    """Finite and > 0, or ValueError naming ``name``."""
    x = finite(name, value, resource)
    if x <= 0:
        raise ValueError(f"{_where(resource)}{name} must be > 0, got {value!r}")
    return x


def count_arg(name: str, value: int, resource: str | None = None) -> int:
    """A positive int (bool refused), or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{_where(resource)}{name} must be a positive int, got {value!r}")
    return value


def width_below_period(width_s: float, period_s: float, resource: str | None = None) -> None:
    """A pulse must end before the next one starts: ValueError unless width < period (s)."""
    if not width_s < period_s:
        raise ValueError(f"{_where(resource)}width_s={width_s!r} s must be < "
                         f"period_s={period_s!r} s")


def render(value: Any) -> str:
    """A validated value as it goes into a message (floats through :func:`fmt`)."""
    if isinstance(value, float):
        return fmt(value)
    return str(value)


# ---- reply parsers -------------------------------------------------------------------
def number(reply: str) -> float:
    """A numeric reply (``1.234567E-06``, ``-2.00000e-07``)."""
    try:
        return float(reply.strip())
    except ValueError:
        raise ValueError("is not a number") from None


def done(reply: str) -> bool:
    """The reply ``1`` of ``*OPC?`` (SCPI) or ``print(1)`` (TSP: ``1.00000e+00``) once
    the operation completed; anything else: ValueError."""
    try:
        ok = float(reply.strip()) == 1
    except ValueError:
        ok = False
    if not ok:
        raise ValueError("expected '1'")
    return True


# ---- argument kinds ------------------------------------------------------------------
class Arg:
    """One argument of a command: its check, its unit and how it is written."""

    unit: ClassVar[str] = ""

    def __init__(self, default: Any = REQUIRED) -> None:
        self.default = default

    def check(self, owner: Commanded, name: str, value: Any) -> Any:
        """The validated value (raise ValueError / SafetyError naming ``name``)."""
        return value

    def text(self, value: Any) -> str:
        """``value`` as written in the statement."""
        return render(value)


class Volts(Arg):
    """A level in volts, checked against the owner's ``v_limit`` (:class:`SafetyError`).

    ``label`` names it in messages (may use the owner's fields: ``"{ch} volts"``);
    ``positive`` also requires > 0 (ValueError).
    """

    unit = "V"

    def __init__(self, label: str | None = None, *, positive: bool = False,
                 default: Any = REQUIRED) -> None:
        super().__init__(default)
        self.label = label
        self.positive = positive

    def check(self, owner: Commanded, name: str, value: Any) -> float:
        label = self.label.format(**owner._fields()) if self.label else name
        v = owner.level(label, value)
        return positive(label, v, owner.resource) if self.positive else v


class Amps(Arg):
    """A current (A) > 0: a compliance."""

    unit = "A"

    def check(self, owner: Commanded, name: str, value: Any) -> float:
        return positive(name, value, owner.resource)


class Seconds(Arg):
    """A time (s) > 0; ``default=None`` makes it optional (a rule then fills it in)."""

    unit = "s"

    def check(self, owner: Commanded, name: str, value: Any) -> float | None:
        if value is None and self.default is None:
            return None
        return positive(name, value, owner.resource)


class Count(Arg):
    """A positive int (pulses, burst cycles)."""

    def check(self, owner: Commanded, name: str, value: Any) -> int:
        return count_arg(name, value, owner.resource)


class Switch(Arg):
    """On/off, written as the instrument's words for it (``ON``/``OFF``)."""

    def __init__(self, on: str, off: str) -> None:
        super().__init__()
        self.words = {True: on, False: off}

    def check(self, owner: Commanded, name: str, value: Any) -> bool:
        return bool(value)

    def text(self, value: Any) -> str:
        return self.words[bool(value)]


# ---- the command ---------------------------------------------------------------------
Rule = Callable[[SimpleNamespace, str], "dict[str, Any] | None"]


class Command:
    """A declared command (see the module docstring).

    Args:
        templates: the statements, ``str.format`` templates over the owner's fields
            (:meth:`Commanded._fields`), the arguments and the rule's derived values.
        reply: parser of the one-line reply; None: a setting, sent as a checked block.
        needs_armed: refuse until the owner is armed: always (True) or when the named
            argument is true.
        arms: a successful command arms the owner.
        rule: cross-argument checks on the validated arguments (ValueError naming them,
            the owner's resource is its second argument); returns derived values
            (defaults filled in, template fields) or None.
        records: validated arguments -> settings recorded for the snapshot.
        doc: the method's docstring (units of each argument are added).
        args: the arguments in call order, each an :class:`Arg`.
    """

    def __init__(self, *templates: str, reply: Callable[[str], Any] | None = None,
                 needs_armed: bool | str = False, arms: bool = False, rule: Rule | None = None,
                 records: Callable[[SimpleNamespace], dict[str, Any]] | None = None,
                 doc: str = "", **args: Arg) -> None:
        self.templates = templates
        self.reply = reply
        self.needs_armed = needs_armed
        self.arms = arms
        self.rule = rule
        self.records = records
        self.args = args
        self.doc = doc
        self.name = "command"
        self.signature = inspect.Signature(
            [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
            + [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=a.default)
               for n, a in args.items()])

    def __set_name__(self, owner: type, name: str) -> None:
        """Install ``owner.NAME`` (send) and ``owner.cmd_NAME`` (build) from this table row."""
        self.name = name
        command = self

        def send(self: Commanded, *args: Any, **kwargs: Any) -> Any:
            return command.send(self, *args, **kwargs)

        def build(self: Commanded, *args: Any, **kwargs: Any) -> str | list[str]:
            statements, effects = command.build(self, *args, **kwargs)
            effects()
            return statements[0] if len(statements) == 1 else statements

        units = ", ".join(f"{n} ({a.unit})" for n, a in self.args.items() if a.unit)
        what = self.doc + (f" Units: {units}." if units else "")
        for func, fname, text in ((send, name, what), (build, f"cmd_{name}",
                                                       f"The statements of :meth:`{name}`.")):
            func.__name__ = func.__qualname__ = fname
            func.__doc__ = text
            func.__signature__ = self.signature  # type: ignore[attr-defined]
            func.command = self  # type: ignore[attr-defined]
            setattr(owner, fname, func)

    # -- building ----------------------------------------------------------------------
    def _bind(self, owner: Commanded, args: tuple, kwargs: dict) -> SimpleNamespace:
        """Arguments by name (positional in declaration order, defaults filled in), each
        validated by its :class:`Arg`."""
        names = self.args
        if len(args) > len(names):
            raise TypeError(f"{self.name}() takes {len(names)} arguments, got {len(args)}")
        values = dict(zip(names, args, strict=False))  # fewer args: defaults below
        for n, v in kwargs.items():
            if n not in names or n in values:
                raise TypeError(f"{self.name}() got an unexpected or repeated argument {n!r}")
            values[n] = v
        checked = {}
        for n, kind in names.items():
            if n in values:
                checked[n] = kind.check(owner, n, values[n])
            elif kind.default is REQUIRED:
                raise TypeError(f"{self.name}() missing argument {n!r}")
            else:
                checked[n] = kind.check(owner, n, kind.default)
        return SimpleNamespace(**checked)

    def build(self, owner: Commanded, *args: Any, **kwargs: Any
              ) -> tuple[list[str], Callable[[], None]]:
        """Validate and build: ``(statements, apply_effects)``; raises before building
        on a bad argument or an interlock."""
        a = self._bind(owner, args, kwargs)
        if self.rule is not None:
            vars(a).update(self.rule(a, owner.resource) or {})
        if self.needs_armed is not False and not owner.armed:
            flag = self.needs_armed
            if flag is True or vars(a)[flag]:
                shown = "" if flag is True else repr(vars(a)[flag])
                raise SafetyError(f"{owner.label}{self.name}({shown}) refused: "
                                  f"{owner.ARMING}; nothing sent", owner.resource)
        fields = {**owner._fields(), **{n: self.args[n].text(v) if n in self.args else render(v)
                                        for n, v in vars(a).items()}}
        statements = [t.format(**fields) for t in self.templates]

        def effects() -> None:
            if self.arms:
                owner.armed = True
            if self.records is not None:
                owner.settings.update(self.records(a))

        return statements, effects

    def send(self, owner: Commanded, *args: Any, **kwargs: Any) -> Any:
        """Validate, build, send (a checked block, or a query with ``reply``), then apply
        the effects."""
        statements, effects = self.build(owner, *args, **kwargs)
        if self.reply is None:
            owner._send_block(statements)
            effects()
            return None
        message = owner.JOIN.join(statements)
        reply = owner._ask(message)
        try:
            value = self.reply(reply)
        except ValueError as exc:
            raise InstrumentError(f"reply {reply!r} to {message!r} {exc}",
                                  owner.resource) from None
        effects()
        return value


class Commanded:
    """What a :class:`Command` needs of its owner (an instrument, or one of its channels)."""

    JOIN: ClassVar[str] = ";"
    """Separator of the statements of one message."""
    ARMING: ClassVar[str] = "not armed"
    """Why an armed-only command is refused (``"no compliance set (call
    source_voltage first)"``)."""

    armed: bool = False
    """An output may turn on (a compliance, or a load and levels, was set)."""
    settings: dict[str, Any]
    """Settings sent so far (SI units), for the snapshot."""
    resource: str
    label: str = ""
    """Prefix of refusal messages (a channel's name and a space)."""

    def _fields(self) -> dict[str, str]:
        """Template fields of this owner (``{"ch": "smua"}``)."""
        return {}

    def level(self, name: str, volts: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _send_block(self, statements: list[str]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _ask(self, message: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError
