"""Resumes that cannot silently go wrong (issue 16, items 3 and 4).

1. ``rpuhw train --resume`` with no checkpoint to resume from (a mistyped or missing
   folder, a folder without a checkpoint, no ``--checkpoint``) is one line, exit 2,
   nothing created; likewise the library's ``train(resume=True)`` and the hardware
   example's ``--resume``.
2. ``rpuhw characterize --resume`` against the shipped emulators (real pyvisa-py sockets
   on 127.0.0.1): after the bench restarted in another state (a new emulator with another
   seed: a power-cycled chip, a reseated probe card) the resume is refused with the
   measured jump and nothing is written or pulsed; ``--accept-jump`` continues and the
   sidecar records ``{"at", "row", "jumps"}``; a run interrupted on a bench that stayed
   up resumes without complaint.
3. ``rpuhw train --resume`` with conv1 on the emulated bench: the same bench resumes
   quietly, a restarted one is refused until ``--accept-jump``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from rpuhw.calibration.measurements import MeasurementWriter, load_measurements, sidecar_path
from rpuhw.calibration.protocols import pulse_response, pulse_response_plan, run_plan
from rpuhw.cli import main
from rpuhw.drivers.emulators import Emulator
from rpuhw.errors import ConfigError
from rpuhw.ideal import IdealArray
from rpuhw.train import CHECKPOINT, TrainConfig, train

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _error_line(err: str, prog: str) -> str:
    """The one error line of ``err`` (a cold kernel cache may add its notice line)."""
    lines = [ln for ln in err.strip().splitlines() if "error" in ln]
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error:"), err
    assert "Traceback" not in err, err
    return lines[0]


# ---- 1. nothing to resume -----------------------------------------------------------------

TRAIN = ["train", "--backend", "ideal", "--train-limit", "2", "--test-limit", "2",
         "--no-progress"]


@pytest.mark.parametrize("case", ["missing", "empty", "file"])
def test_train_resume_without_a_checkpoint_is_one_line_exit_2(tmp_path, capsys, case):
    ckpt = tmp_path / "ckpt_typo"
    if case == "empty":
        ckpt.mkdir()
    elif case == "file":
        ckpt.write_text("not a folder")
    out = tmp_path / "r.json"
    assert main([*TRAIN, "--checkpoint", str(ckpt), "--resume", "--out", str(out)]) == 2
    line = _error_line(capsys.readouterr().err, "rpuhw train")
    assert str(ckpt) in line and "nothing to resume" in line, line
    assert not out.exists()  # no training from scratch
    assert sorted(p.name for p in tmp_path.iterdir()) == ([] if case == "missing" else
                                                          ["ckpt_typo"])
    if case == "empty":
        assert list(ckpt.iterdir()) == []


def test_library_train_resume_needs_a_checkpoint(tmp_path):
    cfg = dict(backend="ideal", train_limit=2, test_limit=2, progress=False)
    with pytest.raises(ConfigError, match="nothing to resume") as exc:
        train(TrainConfig(**cfg, checkpoint=str(tmp_path / "nope")), resume=True,
              log=lambda *_: None)
    assert str(tmp_path / "nope") in str(exc.value)
    with pytest.raises(ConfigError, match="--resume needs --checkpoint"):
        train(TrainConfig(**cfg), resume=True, log=lambda *_: None)
    assert not (tmp_path / "nope").exists()


def test_hil_example_resume_without_a_checkpoint_is_refused(tmp_path):
    ckpt = tmp_path / "run1_typo"
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "hil_training.py"),
                           "--checkpoint", str(ckpt), "--resume"], capture_output=True,
                          text=True, timeout=120, env=ENV)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert str(ckpt) in proc.stderr and "nothing to resume" in proc.stderr, proc.stderr
    assert not ckpt.exists() and "Traceback" not in proc.stderr


# ---- 2. characterize on the emulated bench --------------------------------------------------

ROWS = COLS = 8
DEVICES, PULSES = 4, 400
# rows written before the interruption: 200 of the 4 x 2 x 401 = 3208 rows, so that the
# run is still going when Ctrl-C arrives even when this test process is scheduled late
# on a busy machine (with 808 rows, a quiet machine finished before the signal landed)
STOP_AFTER = 200


def _characterize_args(bench: Path, out: Path) -> list[str]:
    return ["characterize", "--array", f"bench:{bench}", "--rows", str(ROWS), "--cols",
            str(COLS), "--devices", str(DEVICES), "--pulses", str(PULSES), "--no-progress",
            "--no-read-noise-first", "-o", str(out)]


def _interrupted_run(bench: Path, out: Path) -> int:
    """``rpuhw characterize`` as its own process, stopped with Ctrl-C (SIGINT) once it has
    written STOP_AFTER rows; returns the rows kept."""
    # Ctrl-C's default action in the child, even when this suite runs as a background job
    # of a non-interactive shell (which starts it with SIGINT ignored, an inherited
    # setting under which Python installs no KeyboardInterrupt handler)
    proc = subprocess.Popen([sys.executable, "-m", "rpuhw.cli", *_characterize_args(bench, out)],
                            stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (out.exists() and out.read_bytes().count(b"\n") > STOP_AFTER):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "characterize wrote too few rows"
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    kept = load_measurements(out, partial=True)
    assert STOP_AFTER <= len(kept) < 2 * DEVICES * (PULSES + 1)
    return len(kept)


@pytest.mark.timeout(240)
def test_characterize_resume_after_a_bench_restart_refuses_with_the_jump(tmp_path, capsys):
    bench, out = tmp_path / "bench.yaml", tmp_path / "meas.csv"
    with Emulator(rows=ROWS, cols=COLS, seed=2) as emu:
        emu.write_bench(bench)
        rows = _interrupted_run(bench, out)
    kept = load_measurements(out, partial=True)
    # the bench comes back in another state: a new chip behind new servers
    with Emulator(rows=ROWS, cols=COLS, seed=3) as emu:
        emu.write_bench(bench)
        truth = emu.chip.conductances().copy()
        csv_before, side_before = out.read_bytes(), sidecar_path(out).read_bytes()
        assert main([*_characterize_args(bench, out), "--resume"]) == 2
        line = _error_line(capsys.readouterr().err, "rpuhw characterize")
        assert "jump of" in line and "x the read noise" in line and "uS" in line, line
        assert "--accept-jump" in line and "new file" in line, line
        # refused before anything was pulsed or written
        np.testing.assert_array_equal(emu.chip.conductances(), truth)
        assert out.read_bytes() == csv_before
        assert sidecar_path(out).read_bytes() == side_before

        assert main([*_characterize_args(bench, out), "--resume", "--accept-jump"]) == 0
        noise = emu.chip.read_noise_s
    m = load_measurements(out)
    assert len(m) == 2 * DEVICES * (PULSES + 1) and m.meta["complete"]
    (entry,) = m.meta["resumed"]
    assert set(entry) == {"at", "row", "jumps"} and entry["row"] == rows
    ids = sorted(set(m.ids().tolist()))
    assert sorted(int(k) for k in entry["jumps"]) == ids  # every device moved
    for d in ids:
        i, j = divmod(d, COLS)
        last = kept.conductance[np.flatnonzero(kept.ids() == d)[-1]]
        # the recorded jump is the mean of two reads of the new chip minus the last row:
        # its error is the read noise of the mean of two reads, noise / sqrt(2); 6 of them
        assert entry["jumps"][str(d)] == pytest.approx(truth[i, j] - last,
                                                       abs=6 * noise / np.sqrt(2))
        assert abs(entry["jumps"][str(d)]) > 20 * noise  # a real jump, not noise


@pytest.mark.timeout(240)
def test_characterize_resume_on_the_same_bench_goes_on_quietly(tmp_path, capsys):
    bench, out = tmp_path / "bench.yaml", tmp_path / "meas.csv"
    with Emulator(rows=ROWS, cols=COLS, seed=2) as emu:
        emu.write_bench(bench)
        rows = _interrupted_run(bench, out)
        assert main([*_characterize_args(bench, out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert "jump" not in err and "error" not in err, err
    m = load_measurements(out)
    assert len(m) == 2 * DEVICES * (PULSES + 1) and m.meta["complete"]
    assert m.meta["resumed"] == [{"at": m.meta["resumed"][0]["at"], "row": rows, "jumps": {}}]


def test_old_sidecar_resume_times_are_kept_and_a_refused_resume_writes_nothing(tmp_path):
    devices = [(0, 0), (1, 1)]
    path = tmp_path / "m.csv"
    arr = IdealArray(2, 2)  # keeps its state: a physical array
    w = MeasurementWriter(path, {})

    def stop_after(k):  # an interrupted run: 4 steps of 2 devices, 8 rows
        if k == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_plan(arr, devices, pulse_response_plan(5, 1), w, progress=False,
                 on_step=stop_after)
    w.close()
    side = json.loads(sidecar_path(path).read_text())
    side["resumed"] = ["2025-01-02T03:04:05+00:00"]  # as rpuhw wrote it before
    sidecar_path(path).write_text(json.dumps(side))
    before = (path.read_bytes(), sidecar_path(path).read_bytes())

    fresh = IdealArray(2, 2)  # another array: its devices are at 0, not where the rows end
    w = MeasurementWriter(path, {}, resume=True)
    with pytest.raises(ConfigError, match="jump of .* noiseless"):
        pulse_response(fresh, devices, pulses=5, cycles=1, writer=w, progress=False)
    w.close()
    assert (path.read_bytes(), sidecar_path(path).read_bytes()) == before

    w = MeasurementWriter(path, {}, resume=True)  # the array the rows came from
    pulse_response(arr, devices, pulses=5, cycles=1, writer=w, progress=False)
    w.finish()
    m = load_measurements(path)
    assert m.meta["resumed"][0] == "2025-01-02T03:04:05+00:00"
    assert {k: v for k, v in m.meta["resumed"][1].items() if k != "at"} == \
        {"row": 8, "jumps": {}}


# ---- 3. training with conv1 on the emulated bench ------------------------------------------

def _train_args(bench: Path, ckpt: Path, epochs: int) -> list[str]:
    # conv1 is 16 x 26 (25 weights + bias): the emulated chip is exactly that
    return ["train", "--backend", "sim", "--layer", f"conv1=bench:{bench}", "--train-limit",
            "4", "--test-limit", "2", "--batch-size", "4", "--update-granularity", "batch",
            "--epochs", str(epochs), "--checkpoint", str(ckpt), "--no-progress",
            "--out", str(ckpt / "results.json")]


@pytest.mark.timeout(300)
def test_train_resume_checks_the_bench_devices(tmp_path, capsys):
    bench, ckpt = tmp_path / "bench.yaml", tmp_path / "ckpt"
    with Emulator(rows=16, cols=26, seed=0) as emu:
        emu.write_bench(bench)
        assert main(_train_args(bench, ckpt, 1)) == 0
        capsys.readouterr()
        # the same bench, still up: the resume goes on
        assert main([*_train_args(bench, ckpt, 2), "--resume"]) == 0
        out = capsys.readouterr().out
        assert "conv1: the devices are where the checkpoint left them" in out, out
        res = json.loads((ckpt / "results.json").read_text())
        assert res["epochs"] == 2 and res["resumed"][-1]["jumps"] == {}
    # the bench restarted in another state
    with Emulator(rows=16, cols=26, seed=1) as emu:
        emu.write_bench(bench)
        truth = emu.chip.weights().copy()
        before = (ckpt / CHECKPOINT).read_bytes()
        assert main([*_train_args(bench, ckpt, 3), "--resume"]) == 2
        line = _error_line(capsys.readouterr().err, "rpuhw train")
        assert "conv1" in line and "jump of" in line and "x the read noise" in line, line
        assert "--accept-jump" in line, line
        np.testing.assert_array_equal(emu.chip.weights(), truth)  # nothing programmed
        assert (ckpt / CHECKPOINT).read_bytes() == before
        assert main([*_train_args(bench, ckpt, 3), "--resume", "--accept-jump"]) == 0
        assert "moved since the checkpoint (accepted)" in capsys.readouterr().out
    res = json.loads((ckpt / "results.json").read_text())
    assert res["epochs"] == 3
    jump = res["resumed"][-1]["jumps"]["conv1"]
    st = torch.load(ckpt / CHECKPOINT, weights_only=False)
    assert st["resumed"][-1]["jumps"] == {"conv1": jump}
    # the new chip starts in the middle half of the weight range, device by device: the
    # largest jump is a good part of that range (0.6 weight units), far beyond the noise
    assert abs(jump) > 0.1
