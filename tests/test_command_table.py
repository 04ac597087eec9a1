"""The declarative command table (drivers/command_table.py) and the instrument registry.

A toy owner records what it would send, so each rule of a declared command is seen on
its own: one declaration gives the sending method and the ``cmd_*`` builder (the same
statements), arguments are validated before anything is built, effects apply only after
a successful send, interlocks refuse before building, replies are parsed.
"""

from __future__ import annotations

import inspect

import pytest
from bench_yaml import bench_mapping

from rpuhw.drivers.bench_config import bench_from_mapping
from rpuhw.drivers.command_table import (
    Amps,
    Command,
    Commanded,
    Count,
    Seconds,
    Switch,
    Volts,
    number,
)
from rpuhw.drivers.errors import InstrumentError, SafetyError
from rpuhw.drivers.instrument import INSTRUMENTS, Instrument
from rpuhw.drivers.instruments import (
    Keithley707B,
    Keithley2450,
    Keithley2600B,
    Keysight33500B,
    SmuChannel,
    get_driver,
)
from rpuhw.drivers.scpi import ScpiInstrument
from rpuhw.errors import ConfigError


class Toy(Commanded):
    """An owner that records blocks and answers queries from a list."""

    ARMING = "no limit set (call set_level first)"

    set_level = Command(":SOUR{n}:VOLT {volts}", ":SOUR{n}:CURR:LIM {limit_a}",
                        volts=Volts(), limit_a=Amps(), arms=True,
                        records=lambda a: dict(level_v=a.volts), doc="Level and limit.")
    output = Command(":OUTP{n} {on}", on=Switch("ON", "OFF"), needs_armed="on",
                     records=lambda a: dict(output=a.on))
    burst = Command(":BURS:NCYC {count}", ":BURS:PER {period_s}", count=Count(),
                    period_s=Seconds(default=None),
                    rule=lambda a, res: dict(period_s=a.period_s or 1e-3))
    fire = Command("*TRG", needs_armed=True)
    measure = Command(":MEAS?", reply=number)

    def __init__(self) -> None:
        self.resource = "toy"
        self.settings = {}
        self.armed = False
        self.blocks: list[list[str]] = []
        self.replies: list[str] = []
        self.fail_next = False

    def _fields(self) -> dict[str, str]:
        return {"n": "3"}

    def level(self, name: str, volts: float) -> float:
        if abs(volts) > 2.0:
            raise SafetyError(f"{name}={volts!r} V exceeds v_limit=2.0 V; nothing sent")
        return float(volts)

    def _send_block(self, statements: list[str]) -> None:
        if self.fail_next:
            raise InstrumentError("refused by the instrument", self.resource)
        self.blocks.append(list(statements))

    def _ask(self, message: str) -> str:
        self.blocks.append([message])
        return self.replies.pop(0)


def test_one_declaration_sends_and_builds_the_same_statements():
    toy = Toy()
    toy.set_level(0.5, 1e-3)
    assert toy.blocks == [[":SOUR3:VOLT 0.5", ":SOUR3:CURR:LIM 0.001"]]
    assert toy.cmd_set_level(volts=0.5, limit_a=1e-3) == toy.blocks[0]
    assert toy.cmd_output(False) == ":OUTP3 OFF"          # one statement: a str
    assert Toy.set_level.command is Toy.cmd_set_level.command


def test_arguments_are_validated_before_anything_is_built():
    toy = Toy()
    with pytest.raises(SafetyError, match="volts=2.5"):
        toy.set_level(2.5, 1e-3)
    with pytest.raises(ValueError, match="limit_a"):
        toy.cmd_set_level(0.1, -1.0)
    with pytest.raises(ValueError, match="count"):
        toy.burst(0)
    with pytest.raises(TypeError, match="missing"):
        toy.set_level(0.1)
    with pytest.raises(TypeError, match="unexpected"):
        toy.set_level(0.1, 1e-3, colour="red")
    assert toy.blocks == [] and not toy.armed and toy.settings == {}


def test_interlock_refuses_until_armed():
    toy = Toy()
    with pytest.raises(SafetyError, match=r"output\(True\) refused: no limit set"):
        toy.output(True)
    with pytest.raises(SafetyError, match=r"fire\(\) refused"):
        toy.cmd_fire()
    toy.output(False)                                     # off is always allowed
    assert toy.cmd_set_level(0.1, 1e-3)                   # a built block arms at once
    assert toy.armed and toy.cmd_output(True) == ":OUTP3 ON"


def test_effects_apply_only_after_a_successful_send():
    toy = Toy()
    toy.fail_next = True
    with pytest.raises(InstrumentError):
        toy.set_level(0.1, 1e-3)
    assert not toy.armed and toy.settings == {}
    toy.fail_next = False
    toy.set_level(0.1, 1e-3)
    assert toy.armed and toy.settings == {"level_v": 0.1}


def test_rule_fills_defaults_and_replies_are_parsed():
    toy = Toy()
    assert toy.cmd_burst(5) == [":BURS:NCYC 5", ":BURS:PER 0.001"]
    assert toy.cmd_burst(5, period_s=2e-6)[1] == ":BURS:PER 2e-06"
    toy.replies = ["-1.5E-06", "garbage"]
    assert toy.measure() == -1.5e-6
    with pytest.raises(InstrumentError, match=r"reply 'garbage' to ':MEAS\?' is not a number"):
        toy.measure()


def test_generated_methods_have_signatures_units_and_docs():
    sig = inspect.signature(Toy.set_level)
    assert list(sig.parameters) == ["self", "volts", "limit_a"]
    assert "volts (V)" in Toy.set_level.__doc__ and "limit_a (A)" in Toy.set_level.__doc__
    assert inspect.signature(Toy.burst).parameters["period_s"].default is None


DRIVER_CLASSES = [Keithley2450, Keithley2600B, Keithley707B, Keysight33500B]


@pytest.mark.parametrize("owner", [*DRIVER_CLASSES, SmuChannel])
def test_every_builder_is_generated_from_a_declared_command(owner):
    """No hand-written ``cmd_*`` builder next to a method: each is its command's twin."""
    builders = [n for n in dir(owner) if n.startswith("cmd_")]
    for name in builders:
        twin = getattr(owner, name.removeprefix("cmd_"))
        assert getattr(owner, name).command is twin.command, name
    assert builders or owner is Instrument


# ---- the registry of instrument drivers -------------------------------------------------
def test_registry_lists_the_shipped_drivers_case_insensitively():
    assert INSTRUMENTS.names() == ["keithley2450", "keithley2600b", "keithley707b",
                                   "keysight33500b"]
    assert get_driver("Keithley2600B") is Keithley2600B is INSTRUMENTS.get("KEITHLEY2600B")
    with pytest.raises(ConfigError, match="key 'driver'.*known: keithley2450"):
        get_driver("hp4145")


def test_what_a_driver_is_are_class_attributes():
    kinds = {cls.name: (cls.SPEAKS_TSP, cls.IS_SMU, cls.SMU_PULSES, cls.IS_PULSE_GENERATOR,
                        cls.IS_SWITCH_MATRIX, cls.TSP_LINK_MASTER, cls.TSP_LINK_NODE)
             for cls in DRIVER_CLASSES}
    assert kinds == {
        "keithley2450": (False, True, False, False, False, False, False),
        "keithley2600b": (True, True, True, False, False, True, False),
        "keithley707b": (True, False, False, False, True, False, True),
        "keysight33500b": (False, False, False, True, False, False, False),
    }
    assert Keysight33500B.CHANNEL_AT_OPEN and Keithley2600B.CHANNELS == ("a", "b")


def test_a_registered_driver_is_known_to_the_bench_yaml():
    @INSTRUMENTS.register
    class ToySmu(ScpiInstrument):
        name = "toysmu"
        IS_SMU = True

    try:
        m = bench_mapping()
        m["instruments"]["smu"]["driver"] = "nosuch"
        with pytest.raises(ConfigError, match="known: .*toysmu"):
            bench_from_mapping(m)
        m = bench_mapping()
        m["terminals"]["bias"]["instrument"] = "pulser"       # a generator cannot bias
        with pytest.raises(ConfigError, match="bias needs a keithley2450 or keithley2600b or "
                                              "toysmu, got keysight33500b"):
            bench_from_mapping(m)
    finally:
        INSTRUMENTS.remove("toysmu")
    assert "toysmu" not in INSTRUMENTS
