"""Exit paths of the instrument layer: outputs off whatever happens.

* :func:`failsafe` -- a context manager: when the body exits by any exception
  (``KeyboardInterrupt`` included) its ``action`` runs (outputs off, a session cleared,
  a half-open driver closed) before the exception propagates; with ``always=True`` it
  also runs on a normal exit. A failure of the action never hides the body's exception.
* :func:`run_every` -- run every step of a shutdown sequence even when one fails or a
  ``KeyboardInterrupt`` arrives meanwhile; the interrupt is re-raised once all ran.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

log = logging.getLogger("rpuhw.drivers")


@contextmanager
def failsafe(action: Callable[[], None], *, always: bool = False,
             what: str = "the failsafe action") -> Iterator[None]:
    """Run ``action`` when the body raises anything (and after a normal exit if ``always``).

    Args:
        action: what makes the hardware safe (turn outputs off, clear a session, close).
        always: also run ``action`` when the body succeeds; its own errors then propagate.
        what: how to name ``action`` in the log when it fails after a body's exception.

    The body's exception (``KeyboardInterrupt`` and ``SystemExit`` too) is re-raised
    unchanged; an exception of ``action`` meanwhile is logged, not raised.
    """
    try:
        yield
    except BaseException:
        try:
            action()
        except Exception as exc:
            log.error("%s failed after an error (%s); check the hardware", what, exc)
        raise
    if always:
        action()


def run_every(steps: Sequence[tuple[str, Callable[[], None]]], *, attempts: int = 1,
              retry_errors: bool = True, before_last: Callable[[str], None] | None = None,
              raise_first: bool = False) -> None:
    """Run each ``(label, step)`` in order, every one of them whatever the others do.

    Args:
        steps: the shutdown sequence (outputs off, relays open, sessions closed).
        attempts: tries per step; a step is tried again after an interrupt, and after an
            exception when ``retry_errors``.
        retry_errors: retry a step that raised (else only an interrupted one).
        before_last: called with the step's label before its last try (e.g. reconnect).
        raise_first: re-raise the first step error once all steps ran (else log them).

    A ``KeyboardInterrupt`` during a step counts as a failed try; the first one is
    re-raised after the last step, so Ctrl-C never leaves an output on.
    """
    interrupted: BaseException | None = None
    first_error: Exception | None = None
    for label, step in steps:
        for attempt in range(attempts):
            try:
                if before_last is not None and attempts > 1 and attempt == attempts - 1:
                    before_last(label)
                step()
                break
            except KeyboardInterrupt as exc:
                interrupted = interrupted or exc
            except Exception as exc:
                if attempt == attempts - 1 or not retry_errors:
                    first_error = first_error or exc
                    if not raise_first:
                        log.error("%s failed (%s); check the hardware", label, exc)
                    break
    if interrupted is not None:
        raise interrupted
    if raise_first and first_error is not None:
        raise first_error
