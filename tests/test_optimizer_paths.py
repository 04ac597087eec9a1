"""AnalogSGD's two paths: torch's wrapped ``step`` (hooks, profiler ranges) and the direct
one taken when nothing observes the call. Both must give the same update; the wrapped one
must run whenever a hook is registered or a profiler records."""

from __future__ import annotations

import torch
from plans import LR, exact, ideal_plan
from torch import nn

from rpuhw.nn import AnalogLinear, AnalogSGD


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)  # (torch's default init of the digital layer)
    return nn.Sequential(AnalogLinear(6, 5, plan=ideal_plan(periphery=exact()), seed=seed),
                         nn.Tanh(), nn.Linear(5, 3))


def _one_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.linspace(-1, 1, 24).reshape(4, 6)
    opt.zero_grad()
    model(x).pow(2).sum().backward()
    opt.step()


def _weights(model: nn.Module) -> list[torch.Tensor]:
    return [model[0].analog_weight(), model[2].weight.detach().clone(),
            model[2].bias.detach().clone()]


def test_hooks_run_and_the_update_is_the_same_on_both_paths():
    plain, hooked = _net(), _net()
    calls: list[str] = []
    opt_plain = AnalogSGD(plain.parameters(), lr=LR)
    opt_hooked = AnalogSGD(hooked.parameters(), lr=LR)
    opt_hooked.register_step_pre_hook(lambda *a: calls.append("pre"))
    opt_hooked.register_step_post_hook(lambda *a: calls.append("post"))
    for _ in range(3):
        _one_step(plain, opt_plain)
        _one_step(hooked, opt_hooked)
    assert calls == ["pre", "post"] * 3
    for a, b in zip(_weights(plain), _weights(hooked), strict=True):
        assert torch.equal(a, b)
    before = _weights(plain)
    _one_step(plain, opt_plain)
    assert not torch.equal(before[0], _weights(plain)[0])  # the step did move the weights


def test_global_hooks_run():
    from torch.optim.optimizer import register_optimizer_step_post_hook

    model = _net()
    opt = AnalogSGD(model.parameters(), lr=LR)
    seen: list[object] = []
    handle = register_optimizer_step_post_hook(lambda o, *a: seen.append(o))
    try:
        _one_step(model, opt)
    finally:
        handle.remove()
    assert seen == [opt]
    _one_step(model, opt)  # removed: not called again
    assert seen == [opt]


def test_profiler_records_the_step_and_zero_grad():
    model = _net()
    opt = AnalogSGD(model.parameters(), lr=LR)
    _one_step(model, opt)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        _one_step(model, opt)
    names = {e.name for e in prof.events()}
    assert any(n.startswith("Optimizer.step#AnalogSGD.step") for n in names), sorted(names)
    assert any(n.startswith("Optimizer.zero_grad#AnalogSGD.zero_grad") for n in names)
