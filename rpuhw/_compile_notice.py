"""One line when rpuhw really compiles kernels (a cold cache), at most once per process.

numba broadcasts its ``numba:compile`` event only when it compiles, after a cache miss.
The first such event of a kernel that rpuhw caches on disk (:mod:`rpuhw._kernel_cache`)
announces ``rpuhw: compiling simulator kernels, once: ~N s``: on stderr where a command
asked for it (:func:`announce_to`, ``rpuhw train``), else as an INFO message of the logger
``rpuhw.kernels`` (library use prints nothing unless logging is configured). Cache hits,
and kernels that are never cached, announce nothing. This module imports numba only in
:func:`install` (:mod:`rpuhw._jit` calls it), so that a command can choose the stream
without loading numba.
"""

from __future__ import annotations

import logging
from typing import TextIO

TYPICAL_S = 7
"""Seconds to fill a cold cache for a simulated training run (``rpuhw train --backend sim
--management nm+bm+um``: every kernel of a simulated layer) on the 2-core machine of
docs/performance.md, "Start-up"."""

log = logging.getLogger("rpuhw.kernels")

_stream: TextIO | None = None
_estimate_s: float | None = TYPICAL_S
_announced = False
_installed = False


def message() -> str:
    """The announcement."""
    if _estimate_s is None:
        return "rpuhw: compiling simulator kernels, once"
    return f"rpuhw: compiling simulator kernels, once: ~{_estimate_s:.0f} s"


def announce_to(stream: TextIO | None, estimate_s: float | None = TYPICAL_S) -> None:
    """Print the announcement to ``stream`` (None: log it) with ``estimate_s`` seconds
    (None: no estimate)."""
    global _stream, _estimate_s
    _stream, _estimate_s = stream, estimate_s


def announced() -> bool:
    """Whether this process announced a compile."""
    return _announced


def _announce() -> None:
    global _announced
    _announced = True
    if _stream is not None:
        try:
            print(message(), file=_stream, flush=True)
            return
        except (ValueError, OSError):  # the stream was closed (a CLI call in a process
            pass  # that lives on, as under pytest): log instead of failing the compile
    log.info(message())


def install() -> None:
    """Listen to numba's compile events (once per process)."""
    global _installed
    if _installed:
        return
    from numba.core import event

    from rpuhw._kernel_cache import LazyCache

    class Listener(event.Listener):
        def on_start(self, ev: event.Event) -> None:
            if _announced:
                return
            cache = getattr(ev.data.get("dispatcher"), "_cache", None)
            if isinstance(cache, LazyCache) and cache.keyed:
                _announce()

        def on_end(self, ev: event.Event) -> None:
            pass

    event.register("numba:compile", Listener())
    _installed = True
