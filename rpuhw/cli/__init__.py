"""The ``rpuhw`` command line: one argparse program, one subparser per command.

The commands are the :class:`~rpuhw.cli.command.Command` classes of :data:`COMMANDS`,
each defined in its own package: ``rpuhw/cli/core.py`` (models, device, train, plot),
``calibration/cli.py`` (characterize, fit, validate), ``drivers/cli.py`` (bench,
emulate), ``demo/cli.py`` (demo). Every command has ``--help`` with
examples. Every fault a user can cause or meet is one line ``rpuhw NAME: KIND: ...``
naming the file, key, argument or instrument and what to check, no traceback
(``rpuhw --debug NAME ...`` or ``RPUHW_DEBUG=1`` shows it): bad input exits 2, an
instrument fault 1, Ctrl-C 130, a closed output pipe 141 quietly. The table of faults
is :mod:`rpuhw.cli.faults`.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from rpuhw import __version__
from rpuhw.cli import faults
from rpuhw.cli.command import BUILT_IN, COMMANDS, Command, UsageError
from rpuhw.errors import ConfigError

__all__ = ["COMMANDS", "Command", "UsageError", "build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Errors in one line without the usage block; a command's arguments are declared
    when that command is parsed or its help printed (``rpuhw --help`` imports nothing
    heavy)."""

    def __init__(self, *args, command: Command | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._undeclared = command

    def _declare(self) -> None:
        if self._undeclared is not None:
            command, self._undeclared = self._undeclared, None
            command.add_arguments(self)

    def parse_known_args(self, args=None, namespace=None):
        self._declare()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._declare()
        return super().format_usage()

    def format_help(self) -> str:
        self._declare()
        return super().format_help()

    def error(self, message: str):
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        self.exit(2)


def command_names() -> list[str]:
    """Registered commands in ``rpuhw --help`` order: the built-in ones, then the rest."""
    return [*(n for n in BUILT_IN if n in COMMANDS),
            *(n for n in COMMANDS.names() if n not in BUILT_IN)]


def build_parser() -> argparse.ArgumentParser:
    """The program: the top-level options and one subparser per registered command."""
    parser = _Parser(prog="rpuhw",
                     description="Train neural networks on resistive cross-point arrays.",
                     epilog="example:\n  rpuhw models\n  rpuhw device dev.yaml\n  rpuhw demo"
                            "\n\n" + faults.EXIT_STATUS_HELP,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"rpuhw {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help=f"print the traceback of a fault (also {faults.DEBUG_ENV}=1)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in command_names():
        command = COMMANDS.get(name)()
        p = sub.add_parser(name, command=command, help=command.help,
                           description=command.description or command.help,
                           epilog=command.epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="print the traceback of a fault")
        p.set_defaults(_command=command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``rpuhw ARGV``; returns the exit status (:data:`rpuhw.cli.faults.EXIT_STATUS_HELP`:
    0 done, 1 failed, 2 bad input, 130 interrupted, 141 output pipe closed)."""
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except ConfigError as exc:  # a command that cannot be loaded
        print(f"rpuhw: error: {exc}", file=sys.stderr)
        return 2
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return _finish(int(exc.code or 0))
    except BrokenPipeError:  # rpuhw --help | head
        faults.silence_stdout()
        return faults.EXIT_BROKEN_PIPE
    command: Command | None = getattr(args, "_command", None)
    if command is None:
        parser.print_help()
        return 2
    debug = bool(getattr(args, "debug", False)) or faults.debug_from_env()
    with faults.DriverLog(passthrough=debug) as driver_log:
        try:
            status = command.run(args)
            sys.stdout.flush()  # a closed pipe shows here, not at the interpreter's exit
            return status
        except BaseException as exc:
            fault = faults.describe(exc, driver_log.summary)
            if fault is None:  # not a fault a user can cause or meet: a bug, traceback
                raise
            if fault.kind is None:  # the reader of our output went away: quietly
                faults.silence_stdout()
                return fault.status
            if debug:
                traceback.print_exception(exc)
            print(faults.line(command.prog, fault), file=sys.stderr)
            return fault.status


def _finish(status: int) -> int:
    """``status``, after flushing stdout (``--help`` into a closed pipe: quietly 141)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        faults.silence_stdout()
        return faults.EXIT_BROKEN_PIPE
    return status
