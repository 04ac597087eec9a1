"""``python -m benchmarks.algorithms`` (issue 18 item 8): the JSON's shape at a tiny size,
the hyper-parameters handed to aihwkit, a missing aihwkit interpreter reported, bad
input refused in one line."""

from __future__ import annotations

import json

import pytest

from benchmarks import algorithms as bench
from benchmarks._common import DEFAULT_AIHWKIT_PYTHON, aihwkit_unavailable
from rpuhw.algorithms.tt import TikiTaka, TTParams

HIDDEN_DW_MIN = 0.0021  # drivers/emulators/hidden_device.yaml


def _run(capsys, *argv: str) -> dict:
    assert bench.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_rpuhw_side_json_and_missing_aihwkit(capsys):
    """mp alone asked: sgd is added as the baseline; a missing interpreter is a reason in
    the JSON, not a crash; mp's granularity resolves to the device's dw_min."""
    r = _run(capsys, "--algorithms", "mp", "--images", "2", "--warmup", "1",
             "--aihwkit-python", "/nonexistent/python")
    assert r["benchmark"] == "algorithms"
    assert r["command"].startswith("python -m benchmarks.algorithms --algorithms mp")
    assert list(r["algorithms"]) == ["sgd", "mp"]
    assert "not found" in r["aihwkit"]["skipped"]
    assert r["settings"]["backend"] == f"sim:{bench.DEFAULT_DEVICE}"
    assert r["settings"]["images"] == 2 and r["settings"]["threads"] == 1
    for key in ("git", "machine", "versions", "loadavg_before", "loadavg_after"):
        assert key in r
    for name, entry in r["algorithms"].items():
        side = entry["rpuhw"]
        assert side["images_per_s"] > 0 and side["seconds"] > 0, name
        assert side["torch_threads"] == 1 and side["numba_threads"] == 1
        assert entry["aihwkit"] == {"skipped": r["aihwkit"]["skipped"]}
        assert entry["rpuhw_over_aihwkit"] is None
        assert entry["rpuhw_over_aihwkit_cpu"] is None
        assert entry["cpu_cost_vs_sgd"] == pytest.approx(
            side["cpu_seconds"] / r["algorithms"]["sgd"]["rpuhw"]["cpu_seconds"])
        assert entry["cost_vs_sgd"] == pytest.approx(
            r["algorithms"]["sgd"]["rpuhw"]["images_per_s"] / side["images_per_s"])
    assert r["algorithms"]["sgd"]["cost_vs_sgd"] == 1.0
    assert r["algorithms"]["sgd"]["rpuhw"]["arrays"] == 4  # one per layer
    assert all(e["rpuhw"]["overrides"] == {} for e in r["algorithms"].values())
    mp = r["algorithms"]["mp"]["rpuhw"]
    assert mp["unresolved"] == []
    for layer in bench.LAYERS:
        assert mp["params"][layer] == {"granularity": pytest.approx(HIDDEN_DW_MIN),
                                       "transfer_every": 1}


def test_resolved_params_scaled_transfer_lr():
    """tt's transfer_lr=None resolves through the object's transfer_lr(lr), in aihwkit's
    scaled form (divided by lr, scale_transfer_lr on): at lr 1e-3 the device-derived
    floor dw_min_C / (30 % of half A's range) (0.0021 / 0.18 = 1.2e-2) wins over
    1 x lr; n_reads_per_transfer and scale_fast_lr resolve too."""
    plan = bench.plan_for("tt", bench.DEFAULT_DEVICE)
    alg = TikiTaka(3, 4, plan, seed=0, params=TTParams(centre_a=False))  # as benchmarked
    params, unresolved = bench.resolved_params(alg, lr=1e-3)
    assert unresolved == []
    # centre_a null (the default: decided per array) is reported unresolved
    per_array = TikiTaka(3, 4, plan, seed=0, params=TTParams(centre_a=None))
    assert bench.resolved_params(per_array, lr=1e-3)[1] == ["centre_a"]
    assert bench.resolved_params(TikiTaka(3, 4, plan, seed=0), lr=1e-3)[1] == ["centre_a"]
    floor = alg.dw_min("C") / (0.3 * alg.weight_range("A"))  # A_SHARE of half the range
    assert params["transfer_lr"] == pytest.approx(floor / 1e-3)
    assert params["transfer_lr"] > 1.0  # the floor is active, not the plain default
    assert params["fast_lr"] == 1.0 and params["gamma"] == 0.0
    # A auto-scaled: its lr is not the SGD lr's multiple; 4 columns / 8 transfers a sweep
    assert params["scale_fast_lr"] is False and params["n_reads_per_transfer"] == 1
    # at lr 0.1 1 x lr is above the floor: aihwkit's plain 1.0
    assert bench.resolved_params(alg, lr=0.1)[0]["transfer_lr"] == pytest.approx(1.0)


def test_centre_a_override_only_where_the_key_exists():
    """tt/ttv2 are built with centre_a false (no symmetry-point search at set-up) unless
    --centre-a; algorithms without the key get no override."""
    assert bench.overrides("tt", centre_a=False) == {"centre_a": False}
    assert bench.overrides("tt", centre_a=True) == {}
    assert bench.overrides("sgd", centre_a=False) == {}
    assert bench.overrides("mp", centre_a=False) == {}
    assert bench.plan_for("tt", bench.DEFAULT_DEVICE, False).algorithm_params == {
        "centre_a": False}


@pytest.mark.parametrize("argv, words", [
    (["--algorithms", "nope"], ["'nope'", "known:", "sgd", "mp"]),
    (["--device", "missing_device.yaml"], ["--device", "missing_device.yaml"]),
    (["--images", "0"], ["--images"]),
])
def test_bad_input_one_line(capsys, argv, words):
    assert bench.main([*argv, "--aihwkit-python", ""]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    for w in words:
        assert w in err


@pytest.mark.slow
@pytest.mark.skipif(aihwkit_unavailable(DEFAULT_AIHWKIT_PYTHON) is not None,
                    reason="aihwkit interpreter not available")
def test_aihwkit_side_runs_tt(capsys):
    """The aihwkit side builds TransferCompound with rpuhw's resolved hyper-parameters
    and the same device (SoftBoundsDevice) and times it."""
    r = _run(capsys, "--algorithms", "tt", "--images", "2", "--warmup", "0",
             "--aihwkit-python", DEFAULT_AIHWKIT_PYTHON)
    a = r["algorithms"]["tt"]["aihwkit"]
    assert "skipped" not in a, a
    assert a["config"]["rpu_config"] == "UnitCellRPUConfig"
    assert a["config"]["compound"] == "TransferCompound"
    assert a["config"]["device"] == "SoftBoundsDevice"
    ours = dict(r["algorithms"]["tt"]["rpuhw"]["params"]["conv1"])
    own = ["auto_momentum", "auto_scale", "centre_a", "transfers_per_sweep"]  # rpuhw's
    assert ours.pop("centre_a") is False
    for key in own[:2] + own[3:]:
        ours.pop(key)
    assert a["config"]["conv1_params"] == ours
    assert a["not_passed"] == own and a["torch_threads"] == 1
    assert r["algorithms"]["tt"]["rpuhw"]["overrides"] == {"centre_a": False}
    assert r["algorithms"]["tt"]["rpuhw_over_aihwkit"] > 0
    assert r["algorithms"]["tt"]["rpuhw_over_aihwkit_cpu"] > 0
