"""rpuhw sweep without Ray: expansion (--dry-run), bad input (exit 2, nothing started),
the folder's resume checks, instrument resources, the progress line, start-up imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rpuhw.cli import main
from rpuhw.sweep.engine import Progress, resource_name, task_options
from rpuhw.sweep.results import SweepDir
from rpuhw.sweep.spec import parse_spec
from rpuhw.sweep.trials import build, expand

ROOT = Path(__file__).resolve().parents[1]
HIDDEN = f"sim:{ROOT / 'drivers' / 'emulators' / 'hidden_device.yaml'}"
BASE = {"backend": HIDDEN, "epochs": 1, "train_limit": 20, "test_limit": 20}


def write(tmp_path: Path, data: dict, name: str = "sweep.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    status = main(argv)
    out, err = capsys.readouterr()
    return status, out, err


def test_dry_run_lists_the_cartesian_product_in_order(tmp_path, capsys):
    spec = write(tmp_path, {"base": BASE, "grid": {
        "algorithm": ["sgd", "mp", "cttv2"], "device.up_down": [0.0, 0.05, 0.1],
        "seed": [0, 1, 2]}})
    status, out, err = run(["sweep", spec, "--dry-run"], capsys)
    assert status == 0, err
    lines = out.strip().splitlines()
    assert lines[-1] == "27 trials"
    assert lines[0].split() == ["t0000", "algorithm=sgd", "device.up_down=0.0", "seed=0"]
    assert lines[1].split() == ["t0001", "algorithm=sgd", "device.up_down=0.0", "seed=1"]
    assert lines[26].split() == ["t0026", "algorithm=cttv2", "device.up_down=0.1", "seed=2"]
    assert not (tmp_path / "out").exists()


def test_union_of_grids_and_random_samples(tmp_path):
    spec = parse_spec({"base": BASE, "grid": [{"device.dw_min": [0.001, 0.002]},
                                              {"device.up_down": [0.0, 0.1, 0.2]}],
                       "random": {"N": 4, "seed": 3,
                                  "space": {"lr": {"low": 0.001, "high": 0.1, "log": True},
                                            "bl": {"low": 5, "high": 20, "int": True}}}})
    trials = expand(spec)
    assert len(trials) == (2 + 3) * 4
    assert [t.block for t in trials] == [0] * 8 + [1] * 12
    assert "device.up_down" not in trials[0].params and "device.dw_min" in trials[0].params
    lrs = [t.params["lr"] for t in trials]
    assert all(0.001 <= v <= 0.1 for v in lrs)
    assert all(isinstance(t.params["bl"], int) and 5 <= t.params["bl"] <= 20 for t in trials)
    assert lrs[:4] == lrs[4:8]  # the same samples at every grid point
    assert len(set(lrs[:4])) == 4
    # the same file gives the same trials (what --resume relies on)
    assert [t.params for t in expand(spec)] == [t.params for t in trials]
    # the device axes land in the trial's device mapping
    assert trials[0].device["dw_min"] == 0.001
    assert trials[8].device["up_down"] == 0.0


def test_algorithm_axes_merge_into_the_algorithm():
    spec = parse_spec({"base": {**BASE, "algorithm": "cttv2"},
                       "grid": {"algorithm.fast_lr": [0.5, 2.0]}})
    trials = expand(spec)
    assert trials[1].config["algorithm"] == {"name": "cttv2", "fast_lr": 2.0}


@pytest.mark.parametrize("data, needle", [
    ({"base": {**BASE, "epoch": 1}, "grid": {"seed": [0]}}, "key 'base.epoch': unknown key"),
    ({"base": BASE, "grid": {"sed": [0, 1]}}, "key 'grid.sed': unknown axis (allowed: "),
    ({"base": BASE, "grid": {}}, "empty grid"),
    ({"base": BASE, "grid": {"seed": []}}, "key 'grid.seed': empty list"),
    ({"base": BASE}, "no trials"),
    ({"base": BASE, "grid": {"seed": [0]}, "extra": 1}, "key 'extra': unknown section"),
    ({"base": BASE, "grid": {"device.dw_mn": [0.001]}},
     "key 'device.dw_mn': the device model soft_bounds of backend"),
    ({"base": {**BASE, "backend": "ideal"}, "grid": {"device.dw_min": [0.001]}},
     "need a simulated backend"),
    ({"base": BASE, "grid": {"algorithm.gamma": [0.1]}}, "gamma"),
    ({"base": BASE, "grid": {"lr": [0.01, -1.0]}}, "lr=-1.0"),
    ({"base": {**BASE, "out": "x.json"}, "grid": {"seed": [0]}}, "set by the sweep itself"),
    ({"base": BASE, "random": {"N": 2, "space": {"lr": {"low": 0, "high": 1, "log": True}}}},
     "log: true needs low > 0"),
    ({"base": BASE, "grid": {"device.w_min,device.w_max": [[-0.3, 0.3], [-1.0]]}},
     "linked axes: each value must be a list of 2"),
    ({"base": BASE, "grid": {"seed": [0]}, "search": {"trials": 2, "space": {
        "lr": {"low": 0.001, "high": 0.1}}}}, "a search runs alone"),
])
def test_bad_sweep_files_are_one_line_exit_2_and_start_nothing(tmp_path, capsys, data,
                                                                 needle):
    spec = write(tmp_path, data)
    out_dir = tmp_path / "out"
    status, out, err = run(["sweep", spec, "--out", str(out_dir)], capsys)
    assert status == 2
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out_dir.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_unknown_device_key_names_the_allowed_keys(tmp_path, capsys):
    spec = write(tmp_path, {"base": BASE, "grid": {"device.foo": [1.0]}})
    status, _, err = run(["sweep", spec, "--dry-run"], capsys)
    assert status == 2
    assert "allowed: dw_min," in err and "io.read_noise" in err


def test_unreachable_address_is_refused_before_ray(tmp_path, capsys):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = write(tmp_path, {"base": BASE, "grid": {"seed": [0]}})
    out_dir = tmp_path / "out"
    status, _, err = run(["sweep", spec, "--out", str(out_dir), "--address",
                          f"127.0.0.1:{port}"], capsys)
    assert status == 2
    assert "--address" in err and f"cannot reach a Ray cluster at 127.0.0.1:{port}" in err
    assert not out_dir.exists()
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_resume_refuses_another_sweep_and_a_used_folder(tmp_path, capsys):
    first = {"base": BASE, "grid": {"seed": [0, 1]}}
    out_dir = tmp_path / "out"
    spec = parse_spec(first, source="a.yaml")
    SweepDir(out_dir, spec.axes()).start(spec)  # what a started sweep leaves
    status, _, err = run(["sweep", write(tmp_path, first), "--out", str(out_dir)], capsys)
    assert status == 2 and "holds a sweep already" in err and "--resume" in err
    other = {"base": {**BASE, "epochs": 2}, "grid": {"seed": [0, 1, 2]}}
    status, _, err = run(["sweep", write(tmp_path, other, "b.yaml"), "--out", str(out_dir),
                          "--resume"], capsys)
    assert status == 2
    assert "differ in: base.epochs, grid.seed" in err
    status, _, err = run(["sweep", write(tmp_path, first), "--out", str(tmp_path / "new"),
                          "--resume"], capsys)
    assert status == 2 and "nothing to resume" in err
    assert json.loads((out_dir / "sweep.json").read_text())["digest"] == spec.digest()


def test_instrument_trials_get_one_resource_per_instrument():
    spec = parse_spec({"base": {"backend": "bench:lab/bench.yaml#r1", "epochs": 1},
                       "grid": {"seed": [0, 1]}})
    a = build(spec, 0, {"seed": 0})
    b = build(spec, 1, {"seed": 1, "backend": "bench:lab/bench.yaml#r2"})
    c = build(spec, 2, {"seed": 1, "backend": "sim"})
    assert a.instruments == b.instruments == ["bench:lab/bench.yaml"]
    name = resource_name("bench:lab/bench.yaml")
    assert task_options(a, 1)["resources"] == {name: 1}
    assert task_options(b, 2) == {"num_cpus": 2, "max_retries": 1, "retry_exceptions": False,
                                  "resources": {name: 1}}
    assert "resources" not in task_options(c, 1)
    assert resource_name("arc2:other.yaml") != name


def test_progress_line_counts_and_eta(monkeypatch):
    import io

    clock = iter([100.0, 100.0, 110.0])
    monkeypatch.setattr("rpuhw.sweep.engine.time.monotonic", lambda: next(clock))
    buf = io.StringIO()
    p = Progress(total=10, done=2, failed=1, stream=buf)
    p.done, p.running = 4, 2
    p.show()  # 2 trials in 10 s this session, 6 left: 30 s
    assert buf.getvalue().strip() == "sweep: 4/10 done, 2 running, 1 failed, ETA 30s"


def test_the_cli_loads_no_ray_optuna_or_pyarrow():
    code = ("import sys, contextlib, io\n"
            "import rpuhw\n"
            "from rpuhw.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in (['--help'], ['sweep', '--help'], ['tune', '--help'],\n"
            "                 ['sweep-report', '--help'], ['train', '--help']):\n"
            "        try:\n"
            "            main(argv)\n"
            "        except SystemExit:\n"
            "            pass\n"
            "print(sorted(m for m in ('ray', 'optuna', 'pyarrow') if m in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_the_device_requirements_example_expands(tmp_path, capsys):
    import importlib.util

    path = ROOT / "examples" / "device_requirements" / "run.py"
    spec = importlib.util.spec_from_file_location("device_requirements_run", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--out", str(tmp_path / "dr"), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "108 trials"
    assert mod.main(["--out", str(tmp_path / "tiny"), "--tiny", "--dry-run"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1] == "16 trials"
    assert lines[-2].split() == ["t0015", "algorithm=mp", "device.w_max=2.0",
                                 "device.w_min=-2.0", "seed=0"]
    assert not (tmp_path / "tiny").exists()
