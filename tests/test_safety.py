"""Exit paths (drivers/safety.py): outputs off on every way out.

``failsafe`` runs its action on every exception of the body (KeyboardInterrupt too)
and, with ``always``, on a normal exit; ``run_every`` runs a whole shutdown sequence
even when a step fails or is interrupted. The drivers use them when opening (a failed
open closes the session it opened) and when closing (both 2600B channels go off even
when the first one is interrupted).
"""

from __future__ import annotations

import logging

import pytest

from rpuhw.drivers import instrument as instrument_module
from rpuhw.drivers.doubles import LoopbackTransport
from rpuhw.drivers.errors import InstrumentError
from rpuhw.drivers.instruments import Keithley2450, Keithley2600B
from rpuhw.drivers.safety import failsafe, run_every

IDN_2450 = "KEITHLEY INSTRUMENTS,MODEL 2450,04512345,1.7.12b"
IDN_2602 = "Keithley Instruments Inc., Model 2602B, 04512346, 4.0.4"


class Off:
    """A failsafe action that counts its calls (and may fail)."""

    def __init__(self, fail: BaseException | None = None):
        self.calls = 0
        self.fail = fail

    def __call__(self) -> None:
        self.calls += 1
        if self.fail is not None:
            raise self.fail


def test_failsafe_normal_exit_runs_the_action_only_when_always():
    off = Off()
    with failsafe(off):
        pass
    assert off.calls == 0
    with failsafe(off, always=True):
        pass
    assert off.calls == 1


@pytest.mark.parametrize("exc", [ValueError("body"), KeyboardInterrupt(), SystemExit(3)])
@pytest.mark.parametrize("always", [False, True])
def test_failsafe_runs_the_action_on_every_exception_and_reraises_it(exc, always):
    off = Off()
    with pytest.raises(type(exc)) as info:
        with failsafe(off, always=always):
            raise exc
    assert info.value is exc and off.calls == 1


def test_failsafe_action_failure_never_hides_the_body_exception(caplog):
    off = Off(fail=OSError("session gone"))
    with caplog.at_level(logging.ERROR), pytest.raises(ValueError, match="body"):
        with failsafe(off, what="outputs off"):
            raise ValueError("body")
    assert "outputs off failed" in caplog.text and "session gone" in caplog.text


def test_failsafe_always_action_failure_after_success_propagates():
    with pytest.raises(OSError, match="float failed"):
        with failsafe(Off(fail=OSError("float failed")), always=True):
            pass


def test_run_every_runs_all_steps_and_reraises_an_interrupt_at_the_end():
    done: list[str] = []
    tries = {"a": 0}

    def a():
        tries["a"] += 1
        if tries["a"] == 1:
            raise KeyboardInterrupt
        done.append("a")

    def b():
        raise OSError("b broke")

    with pytest.raises(KeyboardInterrupt):
        run_every([("a", a), ("b", b), ("c", lambda: done.append("c"))], attempts=2)
    assert done == ["a", "c"] and tries["a"] == 2


def test_run_every_retries_with_a_last_chance_and_raises_the_first_error():
    calls: list[str] = []

    def flaky():
        calls.append("try")
        if len(calls) < 3:
            raise OSError("not yet")

    run_every([("flaky", flaky)], attempts=3, before_last=lambda label: calls.append(label))
    assert calls == ["try", "try", "flaky", "try"]
    with pytest.raises(OSError, match="first"):
        run_every([("x", Off(fail=OSError("first"))), ("y", Off(fail=OSError("second")))],
                  raise_first=True)
    once = Off(fail=OSError("no retry"))
    run_every([("once", once)], attempts=3, retry_errors=False)
    assert once.calls == 1


# ---- the drivers' own exit paths ---------------------------------------------------------
def _owned(monkeypatch, handle) -> LoopbackTransport:
    """Make drivers opened from an address get this loopback transport (as they would a
    VisaTransport they own)."""
    t = LoopbackTransport(handle, resource="TCPIP::10.0.0.1::5025::SOCKET")
    monkeypatch.setattr(instrument_module, "VisaTransport", lambda resource, **kw: t)
    return t


@pytest.mark.parametrize("lang, exc", [("TSP", InstrumentError), (None, KeyboardInterrupt)])
def test_a_failed_open_closes_the_session_it_opened(monkeypatch, lang, exc):
    def handle(message: str):
        if message == "*IDN?":
            return IDN_2450
        if message == "*LANG?":
            if lang is None:
                raise KeyboardInterrupt
            return lang
        return None

    t = _owned(monkeypatch, handle)
    with pytest.raises(exc):
        Keithley2450("TCPIP::10.0.0.1::5025::SOCKET")
    assert t.closed


def test_close_turns_both_channels_off_when_the_first_is_interrupted(monkeypatch):
    sent: list[str] = []

    def handle(message: str):
        if message == "*IDN?":
            return IDN_2602
        sent.append(message)
        if message.startswith("smua.source.output = smua.OUTPUT_OFF"):
            raise KeyboardInterrupt
        return "0.00000e+00"

    t = _owned(monkeypatch, handle)
    smu = Keithley2600B("TCPIP::10.0.0.1::5025::SOCKET")
    with pytest.raises(KeyboardInterrupt):
        smu.close()
    assert any(m.startswith("smub.source.output = smub.OUTPUT_OFF") for m in sent)
    assert t.closed
