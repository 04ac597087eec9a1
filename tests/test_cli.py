"""The command line: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys


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
