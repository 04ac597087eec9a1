"""Training runs: results, checkpoint/resume after a kill, refusals, CLI errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from kill_run import kill_after_checkpoints

from rpuhw.errors import ConfigError
from rpuhw.train import CHECKPOINT, TrainConfig, train

SMALL = dict(train_limit=120, test_limit=60, epochs=2, seed=3, progress=False,
             checkpoint_every=10)


def cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "rpuhw.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_float_run_learns_and_writes_results(tmp_path):
    out = tmp_path / "r.json"
    res = train(TrainConfig(backend="float", train_limit=400, test_limit=200, epochs=2,
                            progress=False, out=str(out)), log=lambda *_: None)
    saved = json.loads(out.read_text())
    assert saved["test_error"] == res["test_error"] and len(res["test_error"]) == 2
    for key in ("config", "epochs", "train_loss", "images_per_s", "wall_s", "seed",
                "backends", "rpuhw_version"):
        assert key in saved
    # 10 classes: chance is 0.9; 400 images of plain SGD get well below it
    assert res["test_error"][-1] < 0.6
    assert res["train_loss"][1] < res["train_loss"][0]
    assert saved["backends"] == {"conv1": "float", "conv2": "float", "fc1": "float",
                                 "fc2": "float"}


def test_killed_run_resumes_to_the_same_result(tmp_path):
    """Kill a CLI run after its second checkpoint; --resume must end where an
    uninterrupted run with the same seed ends (every number identical)."""
    ref = train(TrainConfig(backend="sim", **SMALL), log=lambda *_: None)
    ckdir = tmp_path / "ck"
    args = ["train", "--backend", "sim", "--train-limit", "120", "--test-limit", "60",
            "--epochs", "2", "--seed", "3", "--checkpoint-every", "10", "--no-progress",
            "--checkpoint", str(ckdir), "--out", str(tmp_path / "r.json")]
    proc = cli(*args)
    ck = ckdir / CHECKPOINT
    kill_after_checkpoints(proc, ck, 2)
    st = torch.load(ck, weights_only=False)
    assert (st["epoch"], st["done"]) != (2, 0)  # really interrupted
    resumed = cli(*args, "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert "resumed from" in out
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["test_error"] == ref["test_error"]
    assert got["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-12, abs=0)
    assert not list(ckdir.glob(".*.tmp"))  # atomic writes leave no temp files


def test_resume_removes_the_temp_file_of_a_writer_killed_mid_write(tmp_path):
    """SIGKILL during a checkpoint write leaves ``.checkpoint.pt.*.tmp`` (the writer
    cannot clean up); resuming removes it and leaves unrelated files alone."""
    ck = tmp_path / "ck"
    cfg = dict(SMALL, epochs=1, train_limit=20, test_limit=10, checkpoint=str(ck))
    first = train(TrainConfig(backend="ideal", **cfg), log=lambda *_: None)
    stale = ck / f".{CHECKPOINT}.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    other = ck / "notes.tmp"
    other.write_text("mine")
    again = train(TrainConfig(backend="ideal", **cfg), resume=True, log=lambda *_: None)
    assert not stale.exists() and other.read_text() == "mine"
    assert again["test_error"] == first["test_error"]


def test_threads_apply_to_torch_and_numba_during_the_run_only():
    numba = pytest.importorskip("numba")
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs numba's default of two or more threads to tell them apart")
    before = (torch.get_num_threads(), numba.get_num_threads())
    numba.set_num_threads(2)
    torch.set_num_threads(2)
    seen = []
    try:
        train(TrainConfig(backend="sim", threads=1, epochs=1, train_limit=4, test_limit=2,
                          progress=False), log=lambda *_: None,
              on_model=lambda m: seen.append((torch.get_num_threads(),
                                              numba.get_num_threads())))
        after = (torch.get_num_threads(), numba.get_num_threads())
    finally:
        torch.set_num_threads(before[0])
        numba.set_num_threads(before[1])
    assert seen == [(1, 1)]
    assert after == (2, 2)


def test_checkpoint_from_another_config_is_refused(tmp_path):
    ck = tmp_path / "ck"
    cfg = dict(SMALL, epochs=1, train_limit=20, test_limit=10, checkpoint=str(ck))
    train(TrainConfig(backend="ideal", **cfg), log=lambda *_: None)
    before = (ck / CHECKPOINT).read_bytes()
    with pytest.raises(ConfigError, match="another model or config.*lr"):
        train(TrainConfig(backend="ideal", **{**cfg, "lr": 0.02}), resume=True)
    with pytest.raises(ConfigError, match="checkpoint exists already"):
        train(TrainConfig(backend="ideal", **cfg))
    assert (ck / CHECKPOINT).read_bytes() == before  # nothing overwritten
    with pytest.raises(ConfigError, match="--resume needs --checkpoint"):
        train(TrainConfig(backend="ideal", **dict(cfg, checkpoint=None)), resume=True)


@pytest.mark.parametrize("args, fragment", [
    (["--layer", "conv9=sim"], "has no layer conv9 (layers: conv1, conv2, fc1, fc2)"),
    (["--management", "all"], "management"),
    (["--update-granularity", "image"], "update_granularity"),
    (["--devices-per-weight", "conv1=x"], "expected an integer"),
    (["--layer", "conv1"], "NAME=VALUE"),
    (["--backend", "warp:9"], "unknown array spec"),
    (["--data", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["--epochs", "0"], "epochs"),
])
def test_cli_bad_input_is_one_line_exit_2(args, fragment):
    proc = cli("train", "--no-progress", "--train-limit", "2", "--test-limit", "2", *args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, (out, err)
    assert fragment in err and "Traceback" not in err
    assert err.strip().count("\n") == 0


def test_config_file_unknown_key(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("epochs: 1\nlearning_rate: 0.1\n")
    proc = cli("train", "--config", str(cfg))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "run.yaml" in err and "learning_rate" in err
    assert "known keys" in err


def test_plot(tmp_path):
    runs = []
    for k, errs in enumerate(([0.5, 0.2, 0.1], [0.6, 0.4])):
        p = tmp_path / f"run{k}.json"
        p.write_text(json.dumps({"test_error": errs, "backends": {"conv1": "sim"},
                                 "config": {"management": "nm"}}))
        runs.append(str(p))
    out = tmp_path / "curves.png"
    proc = cli("plot", *runs, "-o", str(out))
    proc.communicate(timeout=120)
    assert proc.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    proc = cli("plot", str(bad), "-o", str(tmp_path / "x.png"))
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "bad.json" in err
    assert not Path(tmp_path / "x.png").exists()
