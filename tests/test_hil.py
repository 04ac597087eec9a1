"""Hardware in the loop: conv1 of the paper's network on the emulated bench.

If the instrument connection drops mid-training, ``rpuhw train`` stops with a clear
message and exit status 1, the last checkpoint is intact, and ``--resume`` continues
once the bench is back. The drop is the emulator's ``drop-after`` fault, armed
(through the servers' fault settings) once the first checkpoint exists, so that it
strikes mid-epoch.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from rpuhw.drivers.emulators import Emulator

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


def _train(bench_yaml, ckpt, out, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "rpuhw.cli", "train", "--backend", "sim",
           "--layer", f"conv1=bench:{bench_yaml}", "--train-limit", "8", "--test-limit", "4",
           "--epochs", "1", "--batch-size", "4", "--update-granularity", "batch",
           "--checkpoint", str(ckpt), "--checkpoint-every", "4", "--no-progress",
           "--out", str(out), *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def test_connection_drop_mid_training_then_resume(tmp_path):
    ckpt, out, bench_yaml = tmp_path / "ckpt", tmp_path / "res.json", tmp_path / "bench.yaml"
    # conv1 is 16 x 26 (25 weights + bias): the emulated chip is exactly that
    with Emulator(rows=16, cols=26, seed=0) as emu:
        emu.write_bench(bench_yaml)
        proc = _train(bench_yaml, ckpt, out)
        deadline = time.monotonic() + 400
        while not (ckpt / "checkpoint.pt").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.05)
        smu = emu.servers["smu"]
        smu.faults.drop_after = smu.messages + 200  # mid-way through the next batch
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 1, err
        assert "hardware error" in err and "--resume" in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("rpuhw train: hardware error:"), err
        state = torch.load(ckpt / "checkpoint.pt", weights_only=False)  # intact
        assert state["done"] >= 4 and state["epoch"] == 0
        assert not any(s.output for s in emu.chip.sources.values()), "outputs left on"
        # the bench is back (the fault was one-shot): resume finishes the epoch
        proc = _train(bench_yaml, ckpt, out, "--resume")
        stdout, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err
        assert "resumed from" in stdout + err
        res = __import__("json").loads(out.read_text())
        assert res["epochs"] == 1 and len(res["test_error"]) == 1
        assert res["backends"]["conv1"] == f"bench:{bench_yaml}"
        assert emu.chip.hot_switches == 0
