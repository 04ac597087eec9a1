"""How ``rpuhw`` reports a fault: one line naming the resource and what to check, and an
exit status (:data:`EXIT_STATUS_HELP`, also at the end of ``rpuhw --help``).

The dispatcher (:func:`rpuhw.cli.main`) hands every exception that leaves a command to
:func:`describe`; its table maps the exception to ``(kind, message, status)``. A command
adds what is specific to it (rows kept, how to resume) with
:func:`rpuhw.errors.add_hint` and re-raises. An exception that is no fault a user can
cause or meet (a bug) is not in the table: its traceback is printed, as always.
``rpuhw --debug COMMAND`` (or ``RPUHW_DEBUG=1``) prints the traceback of every fault
before its line and shows rpuhw's log.

While a command runs, the error records of the instrument layer (logger
``rpuhw.drivers``: a shutdown step that failed after a fault) are held by
:class:`DriverLog`; with a fault they become one clause of the fault's line (the bench
could not be made safe: check by hand), otherwise they are printed when the command ends.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rpuhw.cli.command import UsageError
from rpuhw.errors import ConfigError, HardwareError, SafetyError, hints_of

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: what a shell shows for a Unix tool whose reader went away."""

EXIT_STATUS_HELP = """\
exit status:
  0    done
  1    failed: an instrument fault (unreachable, refused, timeout, lost mid-run), a fit
       not trustworthy, a validation that failed, training that diverged, a package
       a backend needs that is not installed
  2    bad input: an argument, a file (missing, a directory where a file was expected,
       unreadable) or a key; a value beyond the bench's safety limits
  130  interrupted (Ctrl-C)
  141  the reader of the output went away (rpuhw device x.yaml | head): quietly
A fault is one line naming the file, key or instrument and what to check;
rpuhw --debug COMMAND ... (or RPUHW_DEBUG=1) also prints its traceback."""

DEBUG_ENV = "RPUHW_DEBUG"


def debug_from_env() -> bool:
    """``RPUHW_DEBUG`` is set to something other than ``""``, ``0``, ``no``, ``false``."""
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "no", "false", "off")


@dataclass(frozen=True)
class Fault:
    """How one exception is reported: ``rpuhw NAME: KIND: MESSAGE`` and ``status``;
    ``kind`` None prints nothing (a closed output pipe)."""

    kind: str | None
    message: str
    status: int


# ---- the table -----------------------------------------------------------------------

_OS_ERRORS: dict[int, tuple[str, int]] = {
    errno.ENOENT: ("not found", EXIT_BAD_INPUT),
    errno.EISDIR: ("is a directory where a file was expected", EXIT_BAD_INPUT),
    errno.ENOTDIR: ("a part of the path is not a directory", EXIT_BAD_INPUT),
    errno.EACCES: ("permission denied", EXIT_BAD_INPUT),
    errno.EPERM: ("operation not permitted", EXIT_BAD_INPUT),
    errno.EEXIST: ("already exists", EXIT_BAD_INPUT),
    errno.ENAMETOOLONG: ("file name too long", EXIT_BAD_INPUT),
    errno.EROFS: ("read-only file system", EXIT_BAD_INPUT),
    errno.ENOSPC: ("no space left on the device", EXIT_FAILED),
}
"""errno of a file operation -> (what to say after the file name, exit status)."""


def _config_error(exc: ConfigError) -> Fault:
    """A loader says "file not found" for anything that is not a file: say when it is a
    directory."""
    text = str(exc)
    if exc.source and "not found" in exc.detail and Path(exc.source).is_dir():
        text = (f"{exc.source}: " + (f"key '{exc.key}': " if exc.key else "")
                + "is a directory where a file was expected")
    return Fault("error", text, EXIT_BAD_INPUT)


def _os_error(exc: OSError) -> Fault:
    """A file operation failed: the file and what to check; a connection that failed
    outside the instrument layer: what the OS said."""
    name = exc.filename2 if exc.errno in (errno.EISDIR, errno.EEXIST) and exc.filename2 \
        else exc.filename
    if isinstance(exc, (ConnectionError, TimeoutError)) and name is None:
        return Fault("error", f"connection failed: {exc.strerror or exc}; check the address "
                     "and that the other side is running", EXIT_FAILED)
    what, status = _OS_ERRORS.get(exc.errno, (None, EXIT_FAILED))
    what = what or (exc.strerror or str(exc)).lower()
    if exc.errno == errno.EEXIST and name is not None and os.path.exists(name) \
            and not os.path.isdir(name):
        what = "exists and is not a folder"  # a folder to be made (output, checkpoints)
    if name is None:
        return Fault("error", what, status)
    return Fault("error", f"{os.fsdecode(name)}: {what}", status)


_LONG_QUOTE = re.compile(r"'([^'\n]{60})[^'\n]{8,}'")
"""A quoted instrument message longer than 68 characters (a pipelined TSP block)."""


def _hardware(exc: BaseException) -> Fault:
    """The instrument's message (a long quoted command shortened: ``--debug`` shows it
    whole) and what to check."""
    text = _LONG_QUOTE.sub(lambda m: f"'{m.group(1)}...'", str(exc))
    hint = getattr(exc, "hint", HardwareError.hint)
    return Fault("hardware error", f"{text}; {hint}", EXIT_FAILED)


def _missing_package(exc: ImportError) -> Fault:
    """An optional package that a backend needs (pyarc2, pyvisa-py) is not installed."""
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name in str(exc) \
            and "pip install" not in str(exc):
        return Fault("error", f"the Python package {exc.name!r} is not installed; install it "
                     "(pip install) or choose another backend", EXIT_FAILED)
    return Fault("error", str(exc), EXIT_FAILED)


def _is_pyvisa(exc: BaseException) -> bool:
    """An error of pyvisa that the instrument layer did not wrap (it names no resource
    then, but says what VISA found)."""
    return type(exc).__module__.split(".")[0] in ("pyvisa", "pyvisa_py")


_TABLE: list[tuple[Callable[[BaseException], bool], Callable[[BaseException], Fault]]] = [
    (lambda e: isinstance(e, KeyboardInterrupt),
     lambda e: Fault("interrupted", "", EXIT_INTERRUPTED)),
    (lambda e: isinstance(e, BrokenPipeError) and _output_pipe_closed(),
     lambda e: Fault(None, "", EXIT_BROKEN_PIPE)),
    (lambda e: isinstance(e, ConfigError), _config_error),
    (lambda e: isinstance(e, UsageError),
     lambda e: Fault("error", str(e), EXIT_BAD_INPUT)),
    (lambda e: isinstance(e, SafetyError),
     lambda e: Fault("refused", f"{e}; {SafetyError.hint}", EXIT_BAD_INPUT)),
    (lambda e: isinstance(e, HardwareError), _hardware),
    (_is_pyvisa, _hardware),
    (lambda e: isinstance(e, OSError), _os_error),
    (lambda e: isinstance(e, ImportError), _missing_package),
]
"""(is this the exception?, how to report it), first match wins."""


def describe(exc: BaseException,
             shutdown: Callable[[], str | None] | None = None) -> Fault | None:
    """The report of ``exc``, or None when it is not a fault a user can cause or meet.

    The message is followed by the hints :func:`rpuhw.errors.add_hint` attached and by
    ``shutdown()`` (e.g. :meth:`DriverLog.summary`: the shutdown steps that failed).
    """
    for matches, report in _TABLE:
        if matches(exc):
            fault = report(exc)
            break
    else:
        return None
    if fault.kind is None:
        return fault
    parts = [p for p in (fault.message, *hints_of(exc), shutdown and shutdown()) if p]
    return Fault(fault.kind, "; ".join(parts), fault.status)


def line(prog: str, fault: Fault) -> str:
    """``rpuhw NAME: KIND: MESSAGE`` (``rpuhw NAME: interrupted; ...`` without message)."""
    if not fault.message:
        return f"{prog}: {fault.kind}"
    sep = "; " if fault.kind == "interrupted" else ": "
    return f"{prog}: {fault.kind}{sep}{fault.message}"


# ---- closed output pipes ---------------------------------------------------------------

def _output_pipe_closed() -> bool:
    """Whether stdout or stderr is a pipe whose reader went away (or cannot be checked:
    then the broken pipe was most likely ours)."""
    try:
        import select

        poller = select.poll()
        fds = [s.fileno() for s in (sys.stdout, sys.stderr) if s is not None]
        for fd in fds:
            poller.register(fd, select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll(), or captured streams
        return True


def silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's last flush of the closed pipe
    does not print an error (only for the process's real stdout)."""
    if sys.stdout is None or sys.stdout is not sys.__stdout__:
        return
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


# ---- the instrument layer's shutdown log ------------------------------------------------

class DriverLog(logging.Handler):
    """Holds the warnings and errors of logger ``rpuhw.drivers`` while a command runs.

    Use as a context manager around the command. :meth:`summary` folds them into one
    clause of a fault's line; :meth:`flush_to_stderr` prints them as they were (one line
    each) when there is no fault to fold them into. With ``passthrough`` (``--debug``)
    nothing is held: rpuhw's log is printed as it comes, with INFO records.
    """

    LOGGER = "rpuhw.drivers"

    def __init__(self, passthrough: bool = False) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []
        self.passthrough = passthrough
        self._debug_handler: logging.Handler | None = None
        self._old_level = logging.NOTSET

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> DriverLog:
        if self.passthrough:
            root = logging.getLogger("rpuhw")
            self._old_level = root.level
            self._debug_handler = _StderrHandler()
            self._debug_handler.setFormatter(logging.Formatter("%(name)s: %(levelname)s: "
                                                               "%(message)s"))
            root.addHandler(self._debug_handler)
            root.setLevel(logging.INFO)
        else:
            logging.getLogger(self.LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc_info) -> None:
        if self._debug_handler is not None:
            root = logging.getLogger("rpuhw")
            root.removeHandler(self._debug_handler)
            root.setLevel(self._old_level)
            self._debug_handler = None
        logging.getLogger(self.LOGGER).removeHandler(self)
        self.flush_to_stderr()

    def summary(self) -> str | None:
        """``"could not make the bench safe (STEP, STEP, ...): check by hand that every
        output is off"`` for the steps that failed, or None."""
        if not self.records:
            return None
        steps: list[str] = []
        for record in self.records:
            args = record.args if isinstance(record.args, tuple) else ()
            step = args[0] if args and isinstance(args[0], str) else record.getMessage()
            if step not in steps:
                steps.append(step)
        self.records.clear()
        return (f"could not make the bench safe ({', '.join(steps)} failed): check by hand "
                "that every output is off")

    def flush_to_stderr(self) -> None:
        """Print the held records, one line each, and forget them."""
        for record in self.records:
            print(record.getMessage(), file=sys.stderr)
        self.records.clear()


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is when it emits."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)
