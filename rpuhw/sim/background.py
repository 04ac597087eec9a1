"""Background updates: the simulator's compiled pulse updates run on a second thread.

A training step ends with the pulsed update of every analog layer, and the next
image starts with the forward pass of the first layer. The update of one array and
the forward pass through another are independent, so a :class:`SimulatedArray`
hands the compiled part of an update (pulse-train encoding and the pulse-by-pulse
device update, both numba kernels that release the GIL) to one background thread
and returns at once; the main thread goes on with the next layer's update or the
next image. Every other use of that array (``weights``, forward, backward, read,
state_dict, another update, ...) first waits for its pending update, so results
are bit for bit those of running the update in place: the call's seeds are drawn
before it is handed over, and each array's updates run in submission order.

Input checks and the update-management probabilities run before the hand-over, so
bad input still raises in the call that passed it and changes nothing.

On by default where the machine has a CPU that torch's intra-op threads leave free
(``torch.get_num_threads() < os.cpu_count()``, e.g. one torch thread on two cores,
as ``rpuhw train`` sets it): otherwise torch's threads, which spin between
operations, and the update thread would take turns on the same cores. Turn it off
with the environment variable ``RPUHW_BACKGROUND_UPDATES=0`` or
:func:`set_enabled` (``False``), e.g. to time strictly single-threaded runs.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager

import torch

from rpuhw._jit import HAVE_NUMBA

__all__ = ["MIN_SLOTS", "enabled", "in_place", "set_enabled", "submit"]

ENV = "RPUHW_BACKGROUND_UPDATES"
"""Environment variable: ``0`` (or ``off``, ``false``) disables background updates."""

MIN_SLOTS = 2000
"""Updates with fewer pulse slots (P * (rows + cols) * BL) run in place: handing them
over costs more than they take."""

_enabled: bool | None = None  # set_enabled's choice; None: automatic
_auto: bool | None = None  # numba, the environment and two or more CPUs (checked once)
_cpus = 1
_layer_ok: bool | None = None  # numba's threading layer is thread-safe (once known)
_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None
_executor_pid = -1
_in_place = 0  # depth of in_place() blocks


def _default() -> bool:
    global _cpus
    _cpus = os.cpu_count() or 1
    flag = os.environ.get(ENV, "").strip().lower()
    if flag in ("0", "off", "false", "no"):
        return False
    return HAVE_NUMBA and _cpus >= 2


def enabled() -> bool:
    """Whether simulated arrays hand their compiled updates to the background thread
    now: as set by :func:`set_enabled`, else automatically (see the module doc)."""
    global _auto
    if _in_place:
        return False
    if _enabled is not None:
        return _enabled
    if _auto is None:
        _auto = _default()
    return _auto and torch.get_num_threads() < _cpus and _threadsafe_layer()


def _threadsafe_layer() -> bool:
    """numba's threading layer takes parallel kernels from two threads at once (tbb,
    omp; not workqueue, numba's fallback when neither library is installed)."""
    global _layer_ok
    if _layer_ok is None:
        import numba

        try:
            _layer_ok = numba.threading_layer() != "workqueue"
        except ValueError:  # no parallel kernel has run yet: chosen at the first one
            return True
    return _layer_ok


@contextmanager
def in_place() -> Iterator[None]:
    """Updates inside this block run in the calling thread: for a caller that reads the
    array right after its update (Tiki-Taka's transfer reads A after A's update), where
    handing the update over would only add two thread switches to the wait."""
    global _in_place
    _in_place += 1
    try:
        yield
    finally:
        _in_place -= 1


def set_enabled(flag: bool | None) -> None:
    """Turn background updates on or off for this process (``None``: back to automatic,
    from :data:`ENV`, the CPU count and torch's threads). Pending updates still
    complete."""
    global _enabled, _auto, _layer_ok
    _enabled = None if flag is None else bool(flag)
    _auto = _layer_ok = None


def _worker() -> ThreadPoolExecutor:
    """The process's single update thread (a new one after a fork: threads do not
    survive it)."""
    global _executor, _executor_pid
    with _lock:
        if _executor is None or _executor_pid != os.getpid():
            _executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rpuhw-update")
            _executor_pid = os.getpid()
        return _executor


def _drain() -> None:
    """Wait for every submitted job (before a fork: a child must not inherit an array
    half-way through an update, nor a pending update that no thread will finish)."""
    ex = _executor
    if ex is not None and _executor_pid == os.getpid():
        try:
            ex.submit(lambda: None).result()  # jobs run in order: all earlier ones are done
        except RuntimeError:  # shut down (interpreter exit): nothing left to wait for
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_drain)


def submit(job: Callable[[], None]) -> Future:
    """Run ``job()`` on the update thread, after every job submitted before it.

    The job's parallel kernels use one numba thread fewer than the submitting thread's
    setting (at least one): the submitting thread keeps a core busy meanwhile. Results
    do not depend on the thread count.
    """
    threads = max(1, _numba_threads() - 1) if HAVE_NUMBA else 0

    def run() -> None:
        if threads and _numba_threads() != threads:
            import numba

            numba.set_num_threads(threads)
        job()

    return _worker().submit(run)


def _numba_threads() -> int:
    if not HAVE_NUMBA:
        return 0
    import numba

    return numba.get_num_threads()
