"""The command line: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from rpuhw.cli import COMMANDS, Command, UsageError, main
from rpuhw.cli.command import BUILT_IN
from rpuhw.errors import ConfigError, HardwareError


def rpuhw(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rpuhw.cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_demo_help_and_models_run():
    out = rpuhw("demo", "--help")  # the demo itself runs in test_demo.py
    assert out.returncode == 0 and "--quick" in out.stdout and "--full" in out.stdout
    out = rpuhw("demo", "--quick", "--full")
    assert out.returncode == 2 and "not allowed with" in out.stderr
    out = rpuhw("models")
    assert out.returncode == 0
    names = [line.split()[0] for line in out.stdout.splitlines()]
    assert names == sorted(["constant_step", "exp_step", "linear_step", "piecewise",
                            "pow_step", "soft_bounds"])


def test_device_prints_parameters(tmp_path):
    f = tmp_path / "dev.yaml"
    f.write_text("model: soft_bounds\ndw_min: 0.002\nio:\n  out_noise: 0.1\n")
    out = rpuhw("device", str(f), "--json")
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert data["model"] == "soft_bounds" and data["dw_min"] == 0.002
    assert data["io"]["out_noise"] == 0.1 and data["w_max"] == 0.6


def test_bad_input_is_one_line_exit_2(tmp_path):
    f = tmp_path / "dev.yaml"
    f.write_text("model: soft_bounds\ndw_min: -1\n")
    out = rpuhw("device", str(f))
    assert out.returncode == 2
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
    assert "dev.yaml" in out.stderr and "dw_min" in out.stderr
    out = rpuhw("device", str(tmp_path / "none.yaml"))
    assert out.returncode == 2 and "file not found" in out.stderr
    out = rpuhw("frobnicate")
    assert out.returncode == 2 and "Traceback" not in out.stderr


def test_help_lists_every_command_and_imports_nothing_heavy():
    code = ("import contextlib, io, sys\nfrom rpuhw.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n    rc = main(['--help'])\n"
            "heavy = ('torch', 'numpy', 'scipy', 'matplotlib', 'pyvisa', 'numba')\n"
            "print(rc, [m for m in heavy if m in sys.modules])\nprint(out.getvalue())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.startswith("0 []"), out.splitlines()[0]
    listed = re.findall(r"^    ([\w-]+)", out, re.M)
    assert listed == list(BUILT_IN)


@pytest.mark.parametrize("name", list(BUILT_IN))
def test_every_command_has_help_with_an_example(name, capsys):
    assert main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: rpuhw {name}") and "example" in out


class Probe(Command):
    """A command that fails the way it is told to."""

    name = "probe"
    help = "fail on purpose"
    FAILURES = {"config": ConfigError("bad value", key="x"), "usage": UsageError("--y: bad"),
                "hardware": HardwareError("lost"), "interrupt": KeyboardInterrupt()}

    def add_arguments(self, parser):
        parser.add_argument("failure", choices=[*self.FAILURES, "none"])

    def run(self, args):
        if args.failure == "none":
            return 0
        raise self.FAILURES[args.failure]


@pytest.mark.parametrize("argv, status, line", [
    (["none"], 0, ""),
    (["config"], 2, "rpuhw probe: error: key 'x': bad value"),
    (["usage"], 2, "rpuhw probe: error: --y: bad"),
    (["hardware"], 1, "rpuhw probe: hardware error: lost"),
    (["interrupt"], 130, "rpuhw probe: interrupted"),
    (["other"], 2, "rpuhw probe: error: argument failure: invalid choice: 'other'"),
])
def test_a_registered_command_gets_the_common_exits(argv, status, line, capsys):
    COMMANDS.register(Probe)
    try:
        assert main(["probe", *argv]) == status
    finally:
        COMMANDS.remove("probe")
    err = capsys.readouterr().err
    assert err.startswith(line) and err.count("\n") == (1 if line else 0), err
