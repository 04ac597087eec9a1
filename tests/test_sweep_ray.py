"""rpuhw sweep / sweep-report / tune on a local Ray (2 CPUs, started once for the module):
results files, a failing trial, worker death and its one retry, resume, the report, tune,
and the driver killed with SIGKILL mid-sweep then resumed (every trial exactly once)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rpuhw.cli import main

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = f"sim:{ROOT / 'drivers' / 'emulators' / 'hidden_device.yaml'}"
BASE = {"backend": HIDDEN, "epochs": 2, "train_limit": 12, "test_limit": 20}
RPUHW = [sys.executable, "-m", "rpuhw.cli"]
CHIP = "bench:lab/chip.yaml"


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from rpuhw.sweep.engine import resource_name

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             logging_level="WARNING", resources={resource_name(CHIP): 1})
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the test's trial_fn
    yield ray
    ray.shutdown()


def write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "results.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_grid_sweep_writes_results_and_a_report(tmp_path, capsys):
    out = tmp_path / "out"
    spec = write(tmp_path, {"base": BASE, "grid": {"algorithm": ["sgd", "mp"],
                                                   "device.up_down": [0.0, 0.2],
                                                   "seed": [0, 1]}})
    assert main(["sweep", spec, "--out", str(out)]) == 0
    _, err = capsys.readouterr()
    assert "sweep: 8/8 done, 0 running, 0 failed" in err
    table = rows(out)
    assert [r["trial"] for r in table] == [f"t{i:04d}" for i in range(8)]
    assert {r["status"] for r in table} == {"ok"}
    assert [(r["algorithm"], r["device.up_down"], r["seed"]) for r in table[:3]] == [
        ("sgd", "0.0", "0"), ("sgd", "0.0", "1"), ("sgd", "0.2", "0")]
    for r in table:
        epochs = json.loads(r["test_error_epochs"])
        assert len(epochs) == 2 and float(r["test_error"]) == epochs[-1]
        assert float(r["images_per_s"]) > 0 and float(r["wall_s"]) > 0 and r["host"]
    import pyarrow.parquet as pq

    pt = pq.read_table(out / "results.parquet").to_pylist()
    assert [p["trial"] for p in pt] == [r["trial"] for r in table]
    assert [p["device.up_down"] for p in pt] == [float(r["device.up_down"]) for r in table]
    # the device axis reached the trial's device YAML and the training ran on it
    t2 = out / "trials" / "t0002"
    assert yaml.safe_load((t2 / "device.yaml").read_text())["up_down"] == 0.2
    train = json.loads((t2 / "train.json").read_text())
    assert train["config"]["backend"] == f"sim:{(t2 / 'device.yaml').resolve()}"
    assert train["config"]["threads"] == 1
    rec = json.loads((t2 / "trial.json").read_text())
    assert rec["test_error_epochs"] == train["test_error"]

    # --resume of a finished sweep reruns nothing
    before = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/trial.json")}
    assert main(["sweep", spec, "--out", str(out), "--resume"]) == 0
    _, err = capsys.readouterr()
    assert "all 8 trials done before; nothing to run" in err
    assert {p: p.stat().st_mtime_ns for p in out.glob("trials/*/trial.json")} == before

    assert main(["sweep-report", str(out)]) == 0
    report = (out / "report.md").read_text()
    assert (out / "plot_device_up_down.png").stat().st_size > 1000
    assert "![test error vs device.up_down](plot_device_up_down.png)" in report
    lines = [ln for ln in report.splitlines() if ln.startswith("| sgd | 0.2 |")]
    assert len(lines) == 1
    errs = [100 * float(r["test_error"]) for r in table
            if (r["algorithm"], r["device.up_down"]) == ("sgd", "0.2")]
    mean = sum(errs) / 2
    std = abs(errs[0] - errs[1]) / 2 ** 0.5  # sample std of two values
    assert lines[0].split("|")[3].strip() == "2"  # seeds
    assert lines[0].split("|")[5].strip() == f"{mean:.2f} ± {std:.2f}"


def test_a_failing_trial_is_recorded_and_the_sweep_goes_on(tmp_path, capsys):
    out = tmp_path / "out"
    spec = write(tmp_path, {"base": {**BASE, "epochs": 1},
                            "grid": {"device.dw_min": [-1.0, 0.002], "seed": [0]}})
    assert main(["sweep", spec, "--out", str(out), "--max-concurrent", "1"]) == 0
    table = rows(out)
    assert [r["status"] for r in table] == ["error", "ok"]
    assert "key 'dw_min': must be > 0, got -1.0" in table[0]["error"]
    assert table[0]["test_error"] == "" and float(table[1]["test_error"]) >= 0
    err = capsys.readouterr().err
    assert "1 failed" in err
    assert "1 running" in err and "2 running" not in err  # --max-concurrent 1
    main(["sweep-report", str(out)])
    assert "## Failed trials" in (out / "report.md").read_text()


def _dies_once(trial, folder, cpus=1, cwd=None):
    """A trial whose worker process dies on its first attempt (then trains normally);
    ``dies_always`` in the params: on every attempt."""
    from rpuhw.sweep.trial import run_trial

    marker = Path(folder) / "attempts"
    Path(folder).mkdir(parents=True, exist_ok=True)
    n = int(marker.read_text()) if marker.exists() else 0
    marker.write_text(str(n + 1))
    if n == 0 or trial["params"].get("note") == "dies_always":
        os._exit(1)  # the worker process dies: no exception, no cleanup
    return run_trial(trial, folder, cpus, cwd)


def test_a_dying_worker_is_retried_once(tmp_path):
    from rpuhw.sweep.engine import RayOptions, run_trials
    from rpuhw.sweep.results import SweepDir
    from rpuhw.sweep.spec import parse_spec
    from rpuhw.sweep.trials import build

    spec = parse_spec({"base": {**BASE, "epochs": 1}, "grid": {"seed": [0]}})
    trials = [build(spec, 0, {"seed": 0}), build(spec, 1, {"seed": 0})]
    trials[1].params["note"] = "dies_always"
    sdir = SweepDir(tmp_path / "out", ["seed", "note"])
    sdir.start(spec)
    counts = run_trials(trials, sdir, RayOptions(), trial_fn=_dies_once)
    assert counts == {"ok": 1, "error": 1}
    recs = sdir.load()
    assert recs["t0000"]["status"] == "ok"
    assert (sdir.trial_dir("t0000") / "attempts").read_text() == "2"
    assert recs["t0001"]["status"] == "error"
    assert recs["t0001"]["error"].startswith("worker failed (retried once)")
    assert (sdir.trial_dir("t0001") / "attempts").read_text() == "2"  # one retry only


def test_tune_writes_a_best_config_that_train_takes(tmp_path, capsys):
    out = tmp_path / "tune"
    status = main(["tune", "--backend", HIDDEN, "--algorithm", "mp", "--trials", "2",
                   "--epochs", "1", "--train-limit", "12", "--test-limit", "20",
                   "--out", str(out)])
    assert status == 0
    stdout = capsys.readouterr().out
    table = rows(out)
    assert len(table) == 2 and {r["status"] for r in table} == {"ok"}
    # the defaults are the first point, so the best is at least as good as them
    default = [r for r in table if float(r["lr"]) == 0.01
               and r["algorithm.transfer_every"] == "1"]
    assert len(default) == 1
    best = min(float(r["test_error"]) for r in table)
    assert best <= float(default[0]["test_error"])
    assert f"best: test_error {best:.4g}" in stdout
    from rpuhw.train import load_config

    cfg = load_config(str(out / "best.yaml"), {})
    assert cfg.algorithm["name"] == "mp" and cfg.train_limit == 12

    args = ["tune", "--backend", HIDDEN, "--algorithm", "mp", "--epochs", "1",
            "--train-limit", "12", "--test-limit", "20", "--out", str(out), "--resume"]
    before = (out / "results.csv").read_text()
    assert main([*args, "--trials", "2"]) == 0  # all done: nothing runs
    assert (out / "results.csv").read_text() == before
    capsys.readouterr()
    assert main([*args, "--trials", "3"]) == 2  # another search
    assert "differ in: search.trials" in capsys.readouterr().err


def _sweep(args: list[str]) -> subprocess.Popen:
    # its own session: the local Ray's helper processes that outlive a SIGKILLed driver
    # are in its process group, and the test ends them (it started them)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    return subprocess.Popen([*RPUHW, "sweep", *args, "--num-cpus", "2"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def _end_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_sigkill_of_the_driver_then_resume_runs_every_trial_once(tmp_path, capsys):
    out = tmp_path / "out"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(yaml.safe_dump({
        "base": {"backend": HIDDEN, "epochs": 1, "train_limit": 40, "test_limit": 20},
        "grid": {"algorithm": ["sgd", "mp"], "seed": [0, 1, 2]}}))
    proc = _sweep([str(spec), "--out", str(out)])
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            if (out / "results.csv").exists() and len(rows(out)) >= 1:
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the sweep ended before it could be killed: " + \
            proc.communicate()[1][-2000:]
        os.kill(proc.pid, signal.SIGKILL)  # the driver only
        proc.communicate()
    finally:
        _end_group(proc)
    before = {r["trial"] for r in rows(out)}
    assert 1 <= len(before) < 6  # killed mid-sweep
    stamps = {t: (out / "trials" / t / "trial.json").stat().st_mtime_ns for t in before}

    # the resumed driver: in this process, on the module's Ray
    assert main(["sweep", str(spec), "--out", str(out), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"{len(before)} of 6 trials done before, running {6 - len(before)}" in err
    table = rows(out)
    assert sorted(r["trial"] for r in table) == [f"t{i:04d}" for i in range(6)]  # once each
    assert {r["status"] for r in table} == {"ok"}
    assert {t: (out / "trials" / t / "trial.json").stat().st_mtime_ns for t in before} \
        == stamps  # not rerun


def _timed_stub(trial, folder, cpus=1, cwd=None):
    """A trial that only records when it ran (no instrument is opened)."""
    t0 = time.time()
    time.sleep(0.8)
    return {"id": trial["id"], "params": trial["params"], "status": "ok", "error": "",
            "test_error": None, "test_error_epochs": [], "train_loss": None,
            "images_per_s": None, "wall_s": time.time() - t0, "host": "", "results": None,
            "span": [t0, time.time()]}


def test_trials_on_one_instrument_never_overlap(tmp_path):
    from rpuhw.sweep.engine import RayOptions, run_trials
    from rpuhw.sweep.results import SweepDir
    from rpuhw.sweep.spec import parse_spec
    from rpuhw.sweep.trials import build

    spec = parse_spec({"base": {"backend": f"{CHIP}#region1", "epochs": 1},
                       "grid": {"seed": [0, 1, 2]}})
    trials = [build(spec, i, {"seed": i}) for i in range(3)]
    trials.append(build(spec, 3, {"seed": 0, "backend": "sim"}))
    assert [t.instruments for t in trials] == [[CHIP]] * 3 + [[]]
    sdir = SweepDir(tmp_path / "out", ["seed", "backend"])
    sdir.start(spec)
    assert run_trials(trials, sdir, RayOptions(), trial_fn=_timed_stub) == {"ok": 4,
                                                                            "error": 0}
    spans = {tid: rec["span"] for tid, rec in sdir.load().items()}
    chip = sorted(spans[f"t{i:04d}"] for i in range(3))
    for (_, end), (start, _) in zip(chip, chip[1:], strict=False):
        assert start >= end  # one after another on the chip
    sim = spans["t0003"]
    assert any(s < sim[1] and sim[0] < e for s, e in chip)  # the simulator ran beside them
