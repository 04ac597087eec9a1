"""Progress bars where someone watches them, a plain line now and then in a log.

:func:`progress_bar` makes the one progress display of a loop (training an epoch,
running a measurement plan). Where it goes to (stderr by default) decides what it is:

* a terminal: a tqdm bar, redrawn in place;
* anything else (a pipe, a log file, CI): no bar, no carriage returns, no escape codes:
  one plain line at most every :data:`LINE_INTERVAL_S` seconds
  (``pulse response: 600/1200 step (50 %), 12 s, 50.0 step/s``), and a last line when a
  bar that stays (``leave``) closes at its end;
* nothing with ``enabled=False`` (``--no-progress``) or ``RPUHW_PROGRESS=off``.

``RPUHW_PROGRESS`` = ``auto`` (the default, as above), ``bar`` (a tqdm bar even into a
pipe: the whole-run benchmark reads it), ``lines`` or ``off``. ``NO_COLOR`` is honoured:
neither display writes colour codes (tqdm's ``colour`` stays unset).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Protocol, TextIO

from rpuhw.errors import ConfigError

PROGRESS_ENV = "RPUHW_PROGRESS"
MODES = ("auto", "bar", "lines", "off")
LINE_INTERVAL_S = 10.0
"""Seconds between two plain progress lines (not a terminal)."""


class Progress(Protocol):
    """What the loops use of a bar (a subset of tqdm's interface)."""

    def update(self, n: int = 1) -> Any: ...

    def set_postfix(self, **values: Any) -> Any: ...

    def close(self) -> Any: ...


def progress_mode(enabled: bool = True, file: TextIO | None = None) -> str:
    """``"bar"``, ``"lines"`` or ``"off"`` for a display on ``file`` (default stderr)."""
    if not enabled:
        return "off"
    mode = os.environ.get(PROGRESS_ENV, "").strip().lower() or "auto"
    if mode not in MODES:
        raise ConfigError(f"expected one of {', '.join(MODES)}, got {mode!r}",
                          source=f"environment variable {PROGRESS_ENV}")
    if mode != "auto":
        return mode
    return "bar" if is_terminal(file if file is not None else sys.stderr) else "lines"


def is_terminal(stream: TextIO | None) -> bool:
    """``stream`` is an interactive terminal that can redraw a line (not ``TERM=dumb``)."""
    try:
        tty = stream is not None and stream.isatty()
    except (AttributeError, ValueError):  # closed, or a stream without isatty
        return False
    return bool(tty) and os.environ.get("TERM", "") != "dumb"


def progress_bar(total: int, *, desc: str, unit: str, initial: int = 0, leave: bool = True,
                 enabled: bool = True, file: TextIO | None = None,
                 interval_s: float = LINE_INTERVAL_S) -> Progress | None:
    """The progress display of a loop of ``total`` steps, ``initial`` of them done.

    Args:
        total: steps in all (images, plan steps).
        desc: what runs, e.g. ``"epoch 1/3"``.
        unit: what a step is, e.g. ``"img"``.
        initial: steps already done (a resumed run).
        leave: keep the bar (a last line in a log) when it closes.
        enabled: False shows nothing (``--no-progress``).
        file: where to show it (default ``sys.stderr``).
        interval_s: least seconds between two plain lines.

    Returns None when nothing is shown (see the module docstring for what is).
    """
    mode = progress_mode(enabled, file)
    if mode == "off":
        return None
    if mode == "bar":
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=leave,
                    dynamic_ncols=True, file=file, colour=None)
    return LineProgress(total, desc=desc, unit=unit, initial=initial, leave=leave,
                        file=file, interval_s=interval_s)


class LineProgress:
    """Progress as plain lines, one at most every ``interval_s`` seconds (for logs)."""

    def __init__(self, total: int, *, desc: str, unit: str, initial: int = 0,
                 leave: bool = True, file: TextIO | None = None,
                 interval_s: float = LINE_INTERVAL_S) -> None:
        self.total, self.n, self.initial = total, initial, initial
        self.desc, self.unit, self.leave = desc, unit, leave
        self.file, self.interval_s = file, interval_s
        self.postfix = ""
        self.t0 = self._last = time.monotonic()
        self.closed = False
        self._printed: int | None = None  # the count of the last line printed

    def update(self, n: int = 1) -> None:
        """``n`` more steps done; a line when ``interval_s`` passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval_s:
            self._last = now
            self._print(now)

    def set_postfix(self, **values: Any) -> None:
        """Figures shown at the end of the next line (``loss 0.123, img_s 40``)."""
        self.postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def close(self) -> None:
        """A last line if the display stays (``leave``) and the loop ran to its end (a
        loop stopped by a fault leaves the saying to the fault's line)."""
        if self.closed:
            return
        self.closed = True
        if self.leave and self.n > self.initial and self.n >= self.total \
                and self._printed != self.n:
            self._print(time.monotonic())

    def line(self, now: float) -> str:
        """``desc: n/total unit (pct %), elapsed s, rate unit/s[, postfix]``."""
        elapsed = now - self.t0
        pct = f" ({100 * self.n / self.total:.0f} %)" if self.total else ""
        rate = f", {(self.n - self.initial) / elapsed:.1f} {self.unit}/s" if elapsed > 0 else ""
        text = f"{self.desc}: {self.n}/{self.total} {self.unit}{pct}, {elapsed:.0f} s{rate}"
        return text + (f", {self.postfix}" if self.postfix else "")

    def _print(self, now: float) -> None:
        self._printed = self.n
        print(self.line(now), file=self.file if self.file is not None else sys.stderr,
              flush=True)
