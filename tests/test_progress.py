"""Progress bars only on a terminal; into a pipe or a log at most a plain line every
``LINE_INTERVAL_S`` seconds, never carriage returns or escape codes; ``--no-progress``,
``RPUHW_PROGRESS`` and ``NO_COLOR`` respected."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from types import SimpleNamespace

import pytest

from rpuhw import progress
from rpuhw.errors import ConfigError
from rpuhw.progress import LINE_INTERVAL_S, LineProgress, progress_bar

BAR = re.compile(r"\|\s*(\d+)/(\d+)\s*\[")
"""How benchmarks/_whole_run.py reads tqdm's count (``...| 17/500 [00:01<...``)."""


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("RPUHW_PROGRESS", "NO_COLOR", "TERM"):
        monkeypatch.delenv(name, raising=False)


class Clock:
    """time.monotonic for rpuhw.progress, advanced by hand (seconds)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_a_log_gets_a_line_every_interval_and_no_bar(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    log = io.StringIO()
    bar = progress_bar(1000, desc="pulse response", unit="step", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(1000):  # 1000 steps over 125 s: a line each 10 s, a last one
        clock.t += 0.125  # exact in binary: the lines fall on 10 s, 20 s, ...
        bar.update(1)
        bar.set_postfix(loss="0.123")
    bar.close()
    bar.close()  # once
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert len(lines) == 125 // LINE_INTERVAL_S + 1, text
    assert lines[0] == "pulse response: 80/1000 step (8 %), 10 s, 8.0 step/s, loss 0.123"
    assert lines[-2].startswith("pulse response: 960/1000 step (96 %), 120 s")
    assert lines[-1].startswith("pulse response: 1000/1000 step (100 %), 125 s")


def test_a_line_at_the_end_is_not_repeated(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    log = io.StringIO()
    bar = progress_bar(80, desc="read noise", unit="step", file=log)
    for _ in range(80):  # the 80th step falls on 10 s: its line is the last one
        clock.t += 0.125
        bar.update(1)
    bar.close()
    assert log.getvalue() == "read noise: 80/80 step (100 %), 10 s, 8.0 step/s\n"


def test_a_transient_or_stopped_display_leaves_no_last_line(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    for leave, steps in ((False, 10), (True, 9)):  # an epoch's display; a loop cut short
        log = io.StringIO()
        bar = progress_bar(10, desc="epoch 1/1", unit="img", leave=leave, file=log)
        for _ in range(steps):
            clock.t += 0.5
            bar.update(1)
        bar.close()
        assert log.getvalue() == "", log.getvalue()


def test_a_resumed_display_counts_from_initial(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "monotonic", clock)
    log = io.StringIO()
    bar = progress_bar(100, desc="epoch 2/3", unit="img", initial=40, file=log)
    clock.t += LINE_INTERVAL_S
    bar.update(20)  # 20 images in 10 s: 2 img/s, not (40 + 20) / 10
    assert log.getvalue().startswith("epoch 2/3: 60/100 img (60 %), 10 s, 2.0 img/s")


def test_a_terminal_gets_the_bar_without_colour(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Terminal()
    bar = progress_bar(5, desc="epoch 1/1", unit="img", file=tty)
    assert not isinstance(bar, LineProgress)
    bar.update(1)
    bar.close()
    assert "\r" in tty.getvalue() and "\x1b" not in tty.getvalue()
    monkeypatch.setenv("TERM", "dumb")  # a terminal that cannot redraw a line
    assert isinstance(progress_bar(5, desc="d", unit="u", file=Terminal()), LineProgress)


def test_the_environment_and_no_progress_choose(monkeypatch):
    log = io.StringIO()
    assert progress_bar(5, desc="d", unit="u", file=Terminal(), enabled=False) is None
    monkeypatch.setenv("RPUHW_PROGRESS", "off")
    assert progress_bar(5, desc="d", unit="u", file=Terminal()) is None
    monkeypatch.setenv("RPUHW_PROGRESS", "lines")
    assert isinstance(progress_bar(5, desc="d", unit="u", file=Terminal()), LineProgress)
    monkeypatch.setenv("RPUHW_PROGRESS", "bar")  # what the whole-run benchmark reads
    bar = progress_bar(5, desc="epoch 1/1", unit="img", file=log)
    bar.update(1)
    bar.close()
    assert [int(m.group(1)) for m in BAR.finditer(log.getvalue())][:2] == [0, 1]
    monkeypatch.setenv("RPUHW_PROGRESS", "sometimes")
    with pytest.raises(ConfigError, match="RPUHW_PROGRESS.*sometimes"):
        progress_bar(5, desc="d", unit="u", file=log)


def test_training_uses_it(capsys):
    """rpuhw.train's epoch display into a non-terminal stderr is plain lines."""
    from rpuhw.train import TrainConfig, _progress

    run = SimpleNamespace(done=0, epoch=0)
    assert isinstance(_progress(TrainConfig(epochs=1), 100, run), LineProgress)
    assert _progress(TrainConfig(epochs=1, progress=False), 100, run) is None


@pytest.fixture
def meas(tmp_path):
    return tmp_path / "m.csv"


def test_characterize_into_a_pipe_writes_lines_not_a_bar(meas):
    env = {k: v for k, v in os.environ.items() if k != "RPUHW_PROGRESS"}
    out = subprocess.run([sys.executable, "-m", "rpuhw.cli", "characterize", "--array",
                          "ideal", "--rows", "2", "--cols", "2", "--pulses", "50", "-o",
                          str(meas)], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "\r" not in out.stderr and "\x1b" not in out.stderr, repr(out.stderr[:300])
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and re.match(r"pulse response: (\d+)/\1 step \(100 %\)", lines[0]), \
        out.stderr
