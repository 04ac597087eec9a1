"""What a subcommand of ``rpuhw`` is, and the table of them (:data:`COMMANDS`).

A command is a :class:`Command` subclass in the package it belongs to, registered where
it is defined::

    @COMMANDS.register
    class Fit(Command):
        name = "fit"
        help = "fit device models to a measurement CSV -> device YAML"
        epilog = "example:\\n  rpuhw fit meas.csv -o device.yaml\\n"

        def add_arguments(self, parser): ...
        def run(self, args) -> int: ...

The core names the built-in commands as lazy ``"module:Class"`` strings
(:data:`BUILT_IN`): the core may not import the drivers, calibration or the demo
(docs/architecture.md), so ``rpuhw.calibration.cli`` is imported only when the
parser is built. Third-party packages add commands through the ``rpuhw.commands``
entry-point group.
"""

from __future__ import annotations

import argparse
from typing import ClassVar

from rpuhw.registry import Registry


class UsageError(Exception):
    """Bad command-line input: printed as one line ``rpuhw NAME: error: MESSAGE``, exit 2."""


class Command:
    """One subcommand: its ``--help`` texts, its arguments, and what it runs.

    ``add_arguments`` runs only when this command is parsed (or its help printed); keep
    heavy imports (torch, numpy, scipy, matplotlib, pyvisa) inside ``run`` so that
    ``rpuhw --help`` stays quick.
    """

    name: ClassVar[str]
    """What the user types after ``rpuhw``."""
    help: ClassVar[str]
    """The command's line in ``rpuhw --help``."""
    description: ClassVar[str | None] = None
    """First paragraph of ``rpuhw NAME --help`` (default: :attr:`help`)."""
    epilog: ClassVar[str | None] = None
    """Examples (and exit statuses) at the end of ``rpuhw NAME --help``."""

    @property
    def prog(self) -> str:
        """``rpuhw NAME``, the prefix of the command's messages."""
        return f"rpuhw {self.name}"

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        """Declare the command's arguments on its subparser."""

    def run(self, args: argparse.Namespace) -> int:
        """Do the work; returns the exit status (0 done, 1 failed).

        Bad input raises :class:`~rpuhw.errors.ConfigError` or :class:`UsageError`
        (one line, exit 2), an instrument failure :class:`~rpuhw.errors.HardwareError`
        (one line, exit 1).
        """
        raise NotImplementedError


COMMANDS: Registry[type[Command]] = Registry("command", key="command",
                                             entry_points="rpuhw.commands")
"""Command name -> :class:`Command` subclass."""

BUILT_IN = {
    "demo": "rpuhw.demo.cli:Demo",
    "models": "rpuhw.cli.core:Models",
    "device": "rpuhw.cli.core:Device",
    "train": "rpuhw.cli.core:Train",
    "characterize": "rpuhw.calibration.cli:Characterize",
    "fit": "rpuhw.calibration.cli:Fit",
    "validate": "rpuhw.calibration.cli:Validate",
    "symmetry-point": "rpuhw.calibration.cli:SymmetryPoint",
    "bench": "rpuhw.drivers.cli:Bench",
    "emulate": "rpuhw.drivers.cli:Emulate",
    "plot": "rpuhw.cli.core:Plot",
    "export-model": "rpuhw.interop.cli:ExportModel",
    "sweep": "rpuhw.sweep.cli:Sweep",
    "sweep-report": "rpuhw.sweep.cli:SweepReport",
    "tune": "rpuhw.sweep.cli:Tune",
}
"""The commands shipped with rpuhw, where each is defined, in the order ``rpuhw --help``
lists them (commands of other packages follow, sorted)."""

for _name, _where in BUILT_IN.items():
    COMMANDS.add(_name, _where)
