"""Background updates (:mod:`rpuhw.sim.background`) give exactly the in-place results.

A simulated array hands the compiled part of a periphery update to the update thread;
every later use of the array waits for it. These tests run the same calls with the
background thread on and off and require bit-identical weights, check that the
update really was handed over (so the comparison is not in-place vs in-place), and
that waiting, errors, copies, thread settings and the switch behave.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rpuhw import SimulatedArray
from rpuhw._jit import HAVE_NUMBA
from rpuhw.nn import AnalogSGD, analog_layers, convert
from rpuhw.periphery import Periphery, PeripheryConfig
from rpuhw.schedule import LayerPlan
from rpuhw.sim import background

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="background updates run numba kernels")


@pytest.fixture
def switch(monkeypatch):
    """``switch(True/False)`` turns background updates on (for every size) or off."""
    monkeypatch.setattr(background, "MIN_SLOTS", 0)

    def set_(flag: bool) -> None:
        background.set_enabled(flag)

    yield set_
    background.set_enabled(None)


def _periphery(seed: int) -> Periphery:
    cfg = PeripheryConfig(noise_management=True, bound_management=True,
                          update_management=True, lr=0.05)
    return Periphery(SimulatedArray(12, 9, seed=seed), cfg, seed=seed + 1)


def _calls(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(p, 9, generator=g) - 0.3, torch.randn(p, 12, generator=g) * 0.2)
            for p in (1, 7, 40, 3)]


def _run(per: Periphery, handed_over: list[bool]) -> list[torch.Tensor]:
    outs = []
    for x, d in _calls():
        per.update(x, d)
        handed_over.append(per.array._pending is not None)
        outs.append(per.forward(x))  # waits for the update, then reads its weights
        per.update(x, d)
    return outs + [per.array.read(), per.array.weights.clone()]


def test_periphery_updates_match_in_place(switch):
    switch(True)
    handed = []
    bg = _run(_periphery(0), handed)
    switch(False)
    in_place_flags = []
    ref = _run(_periphery(0), in_place_flags)
    assert all(handed), "the updates were not handed to the background thread"
    assert not any(in_place_flags)
    for a, b in zip(bg, ref, strict=True):
        assert torch.equal(a, b)


def test_training_matches_in_place(switch):
    """A small conv + linear model trained a few steps: same weights either way."""

    def train(flag: bool) -> list[torch.Tensor]:
        switch(flag)
        torch.manual_seed(0)
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Tanh(), nn.Flatten(), nn.Linear(64, 5))
        plan = LayerPlan(backend="sim", periphery=LayerPlan.management("nm+bm+um"))
        model = convert(model, {"default": plan}, seed=5)
        opt = AnalogSGD(model.parameters(), lr=0.05)
        g = torch.Generator().manual_seed(1)
        for _ in range(6):
            x = torch.rand(2, 1, 6, 6, generator=g)
            y = torch.randint(0, 5, (2,), generator=g)
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
        pending = [a._pending is not None for layer in analog_layers(model).values()
                   for a in layer.grid.arrays]
        return pending, [layer.analog_weight() for layer in analog_layers(model).values()]

    pending, bg = train(True)
    _, ref = train(False)
    assert any(pending)
    for a, b in zip(bg, ref, strict=True):
        assert torch.equal(a, b)


def test_state_dict_and_copies_wait(switch):
    switch(True)
    per = _periphery(2)
    x, d = _calls()[2]
    per.update(x, d)
    assert per.array._pending is not None
    clone = copy.deepcopy(per.array)  # a Future cannot be copied: it must have waited
    assert per.array._pending is None
    sd = per.array.state_dict()
    switch(False)
    ref = _periphery(2)
    ref.update(x, d)
    assert torch.equal(sd["weights"], ref.array.weights)
    assert torch.equal(clone.weights, ref.array.weights)


def test_error_is_raised_where_the_array_is_used_next(switch):
    switch(True)
    a = SimulatedArray(3, 4, seed=0)

    def fail() -> None:
        raise RuntimeError("kernel failed")

    a._pending = background.submit(fail)
    with pytest.raises(RuntimeError, match="kernel failed"):
        a.read()
    assert a._pending is None
    assert a.read().shape == (3, 4)  # raised once; the array is usable again


@pytest.mark.parametrize("caller", [1, 2])
def test_jobs_run_in_order_on_one_thread_with_one_numba_thread_fewer(caller):
    import numba

    if caller > numba.config.NUMBA_NUM_THREADS:
        pytest.skip("numba has fewer threads")
    before = numba.get_num_threads()
    numba.set_num_threads(caller)
    try:
        seen: list[tuple[int, str, int]] = []
        futures = [background.submit(
            lambda k=k: seen.append((k, threading.current_thread().name,
                                     numba.get_num_threads()))) for k in range(5)]
        for f in futures:
            f.result()
    finally:
        numba.set_num_threads(before)
    assert [s[0] for s in seen] == list(range(5))
    assert len({s[1] for s in seen}) == 1 and seen[0][1] != threading.current_thread().name
    assert {s[2] for s in seen} == {max(1, caller - 1)}


def test_switch_and_environment(monkeypatch):
    threads = torch.get_num_threads()
    monkeypatch.setenv(background.ENV, "0")
    background.set_enabled(None)
    assert not background.enabled()
    monkeypatch.setenv(background.ENV, "1")
    monkeypatch.setattr("os.cpu_count", lambda: 1)
    background.set_enabled(None)
    assert not background.enabled()  # one CPU: nothing to overlap with
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    background.set_enabled(None)
    try:
        torch.set_num_threads(1)
        assert background.enabled()
        torch.set_num_threads(2)  # torch's threads take both cores: no spare one
        assert not background.enabled()
        torch.set_num_threads(1)
        monkeypatch.setattr("numba.threading_layer", lambda: "workqueue")
        background.set_enabled(None)  # (the layer is looked up once)
        assert not background.enabled()  # not safe for kernels from two threads
        background.set_enabled(True)
        assert background.enabled()
        background.set_enabled(False)
        torch.set_num_threads(1)
        assert not background.enabled()
    finally:
        torch.set_num_threads(threads)
        background.set_enabled(None)


def test_small_updates_run_in_place(monkeypatch):
    background.set_enabled(True)
    try:
        per = _periphery(0)
        per.update(torch.rand(1, 9), torch.randn(1, 12))  # 21 lines x BL 10 < MIN_SLOTS
        assert per.array._pending is None
    finally:
        background.set_enabled(None)


def test_new_worker_after_fork(monkeypatch):
    first = background._worker()
    assert background._worker() is first
    monkeypatch.setattr(background, "_executor_pid", -1)  # as in a forked child
    second = background._worker()
    assert second is not first
    assert second.submit(lambda: 7).result() == 7


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_fork_waits_for_pending_updates():
    """A forked child must not inherit a half-done update nor one no thread will finish."""
    job = background.submit(lambda: time.sleep(0.3))
    pid = os.fork()
    if pid == 0:  # the child: the job finished before the fork
        os._exit(0 if job.done() else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_in_place_block_runs_updates_in_the_calling_thread():
    """background.in_place(): enabled() is False inside (nested too), as before after."""
    background.set_enabled(True)
    try:
        assert background.enabled()
        with background.in_place():
            assert not background.enabled()
            with background.in_place():
                assert not background.enabled()
            assert not background.enabled()
        assert background.enabled()
    finally:
        background.set_enabled(None)




def test_pulse_and_decay_wait_for_a_pending_update(switch):
    """``pulse`` and ``decay`` run in place; with an update still on the background
    thread they wait for it first (else both would move the same weights at once): the
    same weights bit for bit as with everything in place."""
    from rpuhw.device_spec import load_device

    spec = load_device("drivers/emulators/hidden_device.yaml")
    cfg = PeripheryConfig(update_management=True, lr=0.05)

    def run(flag: bool) -> tuple[list[torch.Tensor], list[bool]]:
        switch(flag)
        per = Periphery(SimulatedArray(12, 9, spec, seed=4), cfg, seed=5)
        g = torch.Generator().manual_seed(1)
        outs, handed = [], []
        for x, d in _calls():
            per.update(x, d)
            handed.append(per.array._pending is not None)
            per.array.pulse(torch.randint(-3, 4, (12, 9), generator=g, dtype=torch.int32))
            per.array.decay()
            outs.append(per.array.read())
        return outs + [per.array.weights.clone()], handed

    bg, handed = run(True)
    ref, in_place = run(False)
    assert all(handed) and not any(in_place)
    for a, b in zip(bg, ref, strict=True):
        assert torch.equal(a, b)
