"""The hardware examples run as shipped (at a tiny size): swap_backend, calibrate_my_device,
hil_training. Each runs as a subprocess, as a user would start it."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--train-limit", "30", "--test-limit", "20"]

pytestmark = [pytest.mark.timeout(300), pytest.mark.slow]


def _run(script: str, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def _percent(text: str) -> float:
    value = float(text)
    assert 0 <= value <= 100, text
    return value


def _emulator_stopped(out: str) -> None:
    """The emulator an example started (its bench YAML is in the output) is gone."""
    m = re.search(r"emulated bench serving .*, (\S+bench\.yaml)", out)
    assert m, out
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):  # Linux; nothing to scan elsewhere
        try:
            assert m.group(1).encode() not in cmdline.read_bytes(), "emulator left running"
        except OSError:  # the process ended meanwhile
            pass


@pytest.mark.parametrize("script", ["swap_backend.py", "calibrate_my_device.py",
                                    "hil_training.py"])
def test_help(script, monkeypatch, capsys):
    # in this process (the examples' imports are already loaded): a second each
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as exc:
        runpy.run_path(str(ROOT / "examples" / script), run_name="__main__")
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "usage:" in out and "--train-limit" in out
    assert f"python examples/{script}" in out  # the docstring's examples


def test_swap_backend_trains_on_sim_and_on_the_emulated_bench():
    out = _run("swap_backend.py", *SMALL)  # starts its own emulated bench
    _emulator_stopped(out)
    rows = re.findall(r'SPEC = "([^"]+)"\s+test error\s+([0-9.]+) %', out)
    assert [spec.split(":")[0] for spec, _ in rows] == ["sim", "bench"], out
    for _, err in rows:
        _percent(err)
    msgs = re.search(r"(\d+) instrument messages", out)
    assert msgs and int(msgs.group(1)) > 0, out


def _user_csv(path: Path) -> None:
    """A user's file: own column order, polarity as words, soft-bounds-like traces."""
    rng = np.random.default_rng(0)
    lines = ["conductance,polarity,pulse,device,cycle"]
    for dev in range(4):
        g_min, g_max = 2e-5 * (1 + 0.1 * dev), 8e-5
        g = (g_min + g_max) / 2
        for cycle in range(2):
            for pol, word in ((1, "up"), (-1, "down")):
                for k in range(61):
                    if k:
                        target = g_max if pol > 0 else g_min
                        g += 0.04 * (target - g) * (1 + 0.3 * rng.standard_normal())
                    lines.append(f"{g + 2e-7 * rng.standard_normal():.6e},{word},{k},{dev},"
                                 f"{cycle}")
    path.write_text("\n".join(lines) + "\n")


@pytest.mark.parametrize("source", ["emulated chip", "user csv"])
def test_calibrate_my_device_fits_writes_yaml_and_trains(tmp_path, source):
    from rpuhw import open_array

    device = tmp_path / "fitted.yaml"
    args = ["--yaml", str(device), *SMALL]
    if source == "user csv":
        _user_csv(tmp_path / "mine.csv")
        args += ["--csv", str(tmp_path / "mine.csv")]
    else:  # characterise the emulated chip, briefly
        args += ["--devices", "4", "--pulses", "40", "--cycles", "1"]
    out = _run("calibrate_my_device.py", *args)
    if source == "emulated chip":
        _emulator_stopped(out)
    assert "parameter" in out and "g_min [S]" in out, out  # the parameter table
    assert re.search(r"^model \w+ \(", out, re.M), out
    arr = open_array(f"sim:{device}", 4, 4, seed=0)  # the YAML is a usable device
    assert arr.read().shape == (4, 4)
    m = re.search(r"test error with the fitted device: ([0-9.]+) %", out)
    assert m, out
    _percent(m.group(1))


def test_hil_training_on_a_running_bench_with_checkpoints(tmp_path):
    from rpuhw.drivers.emulators import Emulator

    ckpt = tmp_path / "run"
    with Emulator(rows=16, cols=26, seed=0) as emu:  # exactly conv1's 16 x 26
        bench = emu.write_bench(tmp_path / "bench.yaml")
        out = _run("hil_training.py", "--bench", str(bench), "--checkpoint", str(ckpt),
                   "--epochs", "2", "--train-limit", "20", "--test-limit", "20")
        assert emu.chip.hot_switches == 0
        assert not any(s.output for s in emu.chip.sources.values()), "outputs left on"
    errors = re.findall(r"^\s+(\d+)\s+([0-9.]+) %$", out, re.M)
    assert [int(e) for e, _ in errors] == [1, 2], out
    for _, err in errors:
        _percent(err)
    msgs = re.search(r"instrument messages \(conv1 on the bench\): (\d+)", out)
    assert msgs and int(msgs.group(1)) > 0, out
    state = torch.load(ckpt / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2
    assert (ckpt / "results.json").exists()
