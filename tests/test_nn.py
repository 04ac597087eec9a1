"""Analog torch layers (rpuhw.nn): AnalogLinear, AnalogConv2d, AnalogSGD, convert, state.

Exactness checks run on the ``ideal`` backend (exact MVMs; each pulse exactly ±dw =
0.001) with the periphery's management off (or noise management on, which is exact too
on an ideal array), comparing with torch's own layers and autograd. The ideal array
has no direct weight write, so ``set_weights`` write-verifies to within 2 dw and the
comparisons use the weights as read back (``analog_weight`` / ``analog_bias``).

Update arithmetic (see tests/test_schedule.py): with update management off,
lr = BL dw = 0.01 gives the periphery gain C = 1, so when every |x|, |d| is 0 or 1 each
slot fires with certainty and one step changes W by exactly -lr sum_p d_p x_p^T.
"""

from __future__ import annotations

import io
from collections import defaultdict

import pytest
import torch
import torch.nn.functional as F
from plans import BL, DW, LR, exact, ideal_plan
from torch import nn

from rpuhw.errors import ConfigError
from rpuhw.ideal import IdealArray
from rpuhw.nn import AnalogConv2d, AnalogLinear, AnalogSGD, analog_layers, convert
from rpuhw.schedule import LayerPlan, TileGrid
from rpuhw.sim.array import SimulatedArray


def rand(*shape, seed: int, scale=1.0) -> torch.Tensor:
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1) * scale


def signs(*shape, seed: int) -> torch.Tensor:
    return torch.sign(rand(*shape, seed=seed)) + 0.0


def patches(layer: AnalogConv2d, x: torch.Tensor) -> torch.Tensor:
    """im2col rows (image-major positions), bias column appended: the layer's x vectors."""
    cols = F.unfold(x, layer.kernel_size, padding=layer.padding, stride=layer.stride)
    p = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    return torch.cat([p, torch.ones(p.shape[0], 1)], 1) if layer.has_bias else p


def full_weight(layer) -> torch.Tensor:
    return layer.grid.read()


# ---- forward / backward equal torch's -------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("nm", [False, True])
def test_linear_matches_torch(bias, nm):
    layer = AnalogLinear(7, 5, bias=bias, plan=ideal_plan(periphery=exact(noise_management=nm)),
                         seed=0)
    w, b = rand(5, 7, seed=1, scale=0.4), rand(5, seed=2, scale=0.4)
    layer.set_weights(w, b if bias else None)
    wr, br = layer.analog_weight(), layer.analog_bias()
    assert float((wr - w).abs().max()) <= 2 * DW + 1e-6
    assert (br is None) == (not bias)
    if bias:
        assert float((br - b).abs().max()) <= 2 * DW + 1e-6
    for shape in ((6, 7), (2, 3, 7)):  # batched and with an extra leading dimension
        x = rand(*shape, seed=3, scale=2.0).requires_grad_()
        xr = x.detach().clone().requires_grad_()
        y, yr = layer(x), F.linear(xr, wr, br)
        assert y.shape == yr.shape
        assert torch.allclose(y, yr, atol=1e-5, rtol=1e-5)
        g = rand(*y.shape, seed=4)
        y.backward(g)
        yr.backward(g)
        assert torch.allclose(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


def test_linear_rejects_a_wrong_input_width_and_keeps_float64_gradients():
    layer = AnalogLinear(4, 3, plan=ideal_plan(periphery=exact()), seed=0)
    with pytest.raises(ValueError, match=r"expected input \[\.\.\., 4\], got \[2, 6\]"):
        layer(torch.zeros(2, 6))  # 12 values: a reshape to [3, 4] must not pass silently
    x64 = rand(2, 4, seed=5).double().requires_grad_()
    x32 = x64.detach().float().requires_grad_()
    layer(x64).sum().backward()
    layer(x32).sum().backward()
    assert x64.grad.dtype == torch.float64
    assert torch.allclose(x64.grad.float(), x32.grad)


def test_update_uses_the_input_of_the_forward_pass_even_if_changed_in_place():
    """The pending update keeps its own copy of x (also without a bias column)."""
    weights = []
    for change in (False, True):
        torch.manual_seed(0)  # (torch's default init)
        layer = AnalogLinear(4, 3, bias=False, plan=ideal_plan(periphery=exact()), seed=0)
        opt = AnalogSGD(layer.parameters(), lr=LR)
        x = rand(5, 4, seed=6)
        layer(x).sum().backward()
        if change:
            x.zero_()  # e.g. a reused input buffer
        opt.step()
        weights.append(layer.analog_weight())
    assert torch.equal(weights[0], weights[1])
    torch.manual_seed(0)
    before = AnalogLinear(4, 3, bias=False, plan=ideal_plan(periphery=exact()), seed=0)
    assert not torch.equal(weights[0], before.analog_weight())  # the step changed something


@pytest.mark.parametrize("kernel,stride,padding,bias", [
    (3, 1, 0, True), (3, 2, 1, True), ((3, 2), 1, 2, False), (5, 2, 0, False),
    ((2, 3), (2, 1), (1, 0), True)])
def test_conv2d_matches_torch(kernel, stride, padding, bias):
    layer = AnalogConv2d(3, 4, kernel, stride=stride, padding=padding, bias=bias,
                         plan=ideal_plan(periphery=exact(noise_management=True)), seed=0)
    ref = nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, bias=bias)
    layer.set_weights(ref.weight.data, ref.bias.data if bias else None)
    wr = layer.analog_weight().view_as(ref.weight)
    br = layer.analog_bias()
    assert float((wr - ref.weight.detach()).abs().max()) <= 2 * DW + 1e-6
    x = rand(2, 3, 9, 8, seed=5, scale=2.0).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y = layer(x)
    yr = F.conv2d(xr, wr, br, stride=stride, padding=padding)
    assert y.shape == yr.shape == ref(x).shape
    assert torch.allclose(y, yr, atol=1e-5, rtol=1e-5)
    g = rand(*y.shape, seed=6)
    y.backward(g)
    yr.backward(g)
    assert torch.allclose(x.grad, xr.grad, atol=1e-5, rtol=1e-5)


def test_tiled_layer_equals_untiled():
    """128 x 513 (512 inputs + bias) on 64 x 64 arrays: a 2 x 9 grid, same results."""
    ref = nn.Linear(512, 128)
    torch.manual_seed(0)  # same torch init programmed first: same write-verify path
    one = AnalogLinear(512, 128, plan=ideal_plan(), seed=0)
    torch.manual_seed(0)
    tiled = AnalogLinear(512, 128, plan=ideal_plan(max_rows=64, max_cols=64), seed=0)
    for m in (one, tiled):
        m.set_weights(ref.weight.data, ref.bias.data)
    assert [len(r) for r in tiled.grid.tiles] == [9, 9]
    assert torch.equal(tiled.grid.read(), one.grid.read())
    x = rand(10, 512, seed=7).requires_grad_()
    x1 = x.detach().clone().requires_grad_()
    y, y1 = tiled(x), one(x1)
    assert torch.allclose(y, y1, atol=1e-4, rtol=1e-5)
    assert torch.allclose(y, F.linear(x, one.analog_weight(), one.analog_bias()), atol=1e-4)
    g = rand(10, 128, seed=8)
    y.backward(g)
    y1.backward(g)
    assert torch.allclose(x.grad, x1.grad, atol=1e-4, rtol=1e-5)


def test_tiled_conv_with_copies_matches_torch():
    layer = AnalogConv2d(2, 5, 3, stride=1, padding=1,
                         plan=ideal_plan(max_rows=4, max_cols=7, devices_per_weight=3), seed=0)
    assert len(layer.grid.tiles) == 4 and len(layer.grid.tiles[0]) == 3  # 15 x 19 physical
    wr, br = layer.analog_weight().view(5, 2, 3, 3), layer.analog_bias()
    x = rand(3, 2, 6, 6, seed=9).requires_grad_()
    xr = x.detach().clone().requires_grad_()
    y, yr = layer(x), F.conv2d(xr, wr, br, padding=1)
    assert torch.allclose(y, yr, atol=1e-5)
    g = rand(*y.shape, seed=10)
    y.backward(g)
    yr.backward(g)
    assert torch.allclose(x.grad, xr.grad, atol=1e-5)


# ---- the update runs in the optimizer step ---------------------------------------------
@pytest.mark.parametrize("plan_kw", [{}, {"max_rows": 3, "max_cols": 5},
                                     {"devices_per_weight": 3}])
def test_conv_step_applies_minus_lr_dT_x_exactly(plan_kw):
    """Inputs and output gradients of magnitude 0 or 1: every slot fires, so one step changes
    the kernel matrix by exactly -lr sum over images and positions of d x^T."""
    layer = AnalogConv2d(2, 3, 3, stride=2, padding=1, plan=ideal_plan(**plan_kw), seed=0)
    opt = AnalogSGD(layer.parameters(), lr=LR)
    x = signs(4, 2, 7, 7, seed=11)
    w0 = full_weight(layer)
    y = layer(x)
    g = signs(*y.shape, seed=12)
    y.backward(g)
    assert w0.equal(full_weight(layer))  # backward alone changes nothing
    opt.step()
    d = g.reshape(4, 3, -1).transpose(1, 2).reshape(-1, 3)
    expect = -LR * d.T @ patches(layer, x)
    assert torch.allclose(full_weight(layer) - w0, expect, atol=1e-5)
    assert not layer._pending


def test_linear_step_is_unbiased_with_binomial_spread():
    """Stochastic pulses (|x|, |d| < 1): per device z = (dW - E) / sd with
    E = -lr sum_p d x, Var = dw^2 BL sum_p q (1 - q), q = |d x|. Each input and output line
    keeps one sign, so |E| is ~20 sd or more and a gain error moves all z together.
    Devices in a row or column share bit streams (correlation ~0.3, see
    tests/test_schedule.py), so: max |z| < 5 over the 6 x 9 devices (normal tail 5.7e-7
    each); mean z^2 in 0.3..2.5 (chi^2 standard error sqrt(2/54) = 0.19, widened by the
    correlations); |mean(z sign E)| < 1.6, 5 sd of sqrt((1 + 8 * 0.3 + 5 * 0.3) / 54) = 0.3."""
    layer = AnalogLinear(8, 6, plan=ideal_plan(), seed=1)
    opt = AnalogSGD(layer.parameters(), lr=LR)
    x = rand(300, 8, seed=13).abs() * signs(8, seed=22)
    w0 = full_weight(layer)
    y = layer(x)
    g = rand(*y.shape, seed=14).abs() * signs(6, seed=23)
    y.backward(g)
    opt.step()
    xb = torch.cat([x, torch.ones(300, 1)], 1)
    expect = -LR * g.T @ xb
    q = g.abs().T[:, None, :] * xb.abs().T[None, :, :]
    sd = (DW**2 * BL * (q * (1 - q)).sum(-1)).sqrt()
    assert float((expect.abs() / sd).min()) > 15
    z = (full_weight(layer) - w0 - expect) / sd
    assert float(z.abs().max()) < 5.0
    assert 0.3 < float(z.pow(2).mean()) < 2.5
    assert abs(float((z * expect.sign()).mean())) < 1.6


def test_gradient_accumulation_counts_images_for_sample_granularity(monkeypatch):
    """Two forward/backward passes (batches of 3 and 2 images) before one step: the sample
    granularity rounds per image, 5 times, one pulse call each."""
    layer = AnalogConv2d(1, 2, 3, plan=ideal_plan(granularity="sample"), seed=0)
    opt = AnalogSGD(layer.parameters(), lr=0.003)
    pulses = []
    orig = IdealArray.pulse
    monkeypatch.setattr(IdealArray, "pulse", lambda self, c: (pulses.append(c), orig(self, c)))
    w0 = full_weight(layer)
    xs = [rand(3, 1, 5, 5, seed=15), rand(2, 1, 5, 5, seed=16)]
    gs = []
    for x in xs:
        y = layer(x)
        gs.append(rand(*y.shape, seed=17))
        y.backward(gs[-1])
    opt.step()
    assert len(pulses) == 5
    x = torch.cat([patches(layer, x) for x in xs])
    d = torch.cat([g.reshape(g.shape[0], 2, -1).transpose(1, 2).reshape(-1, 2) for g in gs])
    assert float((full_weight(layer) - w0 + 0.003 * d.T @ x).abs().max()) < 5 * DW


# ---- call counts -------------------------------------------------------------------------
def test_conv_batch_is_one_array_call_per_tile_and_cycle(monkeypatch):
    counts: dict[str, int] = defaultdict(int)
    sizes: dict[str, list] = defaultdict(list)
    for name in ("forward", "backward", "update", "pulse"):
        orig = getattr(IdealArray, name)

        def spy(self, *args, _o=orig, _n=name):
            counts[_n] += 1
            a = args[0]
            sizes[_n].append(a.n_updates if hasattr(a, "n_updates") else a.shape[0])
            return _o(self, *args)

        monkeypatch.setattr(IdealArray, name, spy)
    layer = AnalogConv2d(3, 6, 3, padding=1,
                         plan=LayerPlan(backend="ideal", max_rows=4, max_cols=16), seed=0)
    tiles = len(layer.grid.arrays)
    assert tiles == 2 * 2
    opt = AnalogSGD(layer.parameters(), lr=0.01)
    counts.clear()
    x = rand(5, 3, 8, 8, seed=18).requires_grad_()  # (a first layer skips the backward)
    layer(x).pow(2).sum().backward()
    positions = 5 * 8 * 8
    assert counts["forward"] == tiles and counts["backward"] == tiles
    assert set(sizes["forward"]) == {positions}
    opt.step()
    assert counts["update"] == tiles and counts["pulse"] == 0
    assert set(sizes["update"]) == {positions}  # all rank-1 updates in one call


# ---- AnalogSGD with digital and analog parameters ----------------------------------------
def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 4, generator=g) * 2 - 1
    y = torch.stack([x[:, 0] * x[:, 1], torch.sin(2 * x[:, 2]) - x[:, 3]], 1) * 0.5
    return x, y


def _train(model, opt, steps=150):
    x, y = _problem()
    losses = []
    for s in range(steps):
        i = torch.arange(s * 8, s * 8 + 8) % 64
        opt.zero_grad()
        loss = F.mse_loss(model(x[i]), y[i])
        loss.backward()
        opt.step()
        with torch.no_grad():
            losses.append(float(F.mse_loss(model(x), y)))
    return losses


def test_analog_and_digital_layers_train_together_on_sim():
    torch.manual_seed(0)
    model = nn.Sequential(AnalogLinear(4, 16, seed=1), nn.Tanh(), nn.Linear(16, 2))
    analog = model[0]
    assert isinstance(analog.grid.arrays[0], SimulatedArray)
    w_a, w_d = analog.analog_weight(), model[2].weight.detach().clone()
    losses = _train(model, AnalogSGD(model.parameters(), lr=0.1))
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])
    assert float((analog.analog_weight() - w_a).abs().max()) > 20 * DW
    assert float((model[2].weight.detach() - w_d).abs().max()) > 0.01


def test_analog_layer_alone_learns_with_param_group_lr(monkeypatch):
    """The digital read-out gets lr 0 (its own param group): the loss falls only because the
    analog layer trains, with its group's lr."""
    seen = []
    orig = TileGrid.update
    monkeypatch.setattr(TileGrid, "update",
                        lambda self, x, d, lr, images=1: (seen.append(lr),
                                                          orig(self, x, d, lr, images)))
    torch.manual_seed(0)
    model = nn.Sequential(AnalogLinear(4, 16, seed=2), nn.Tanh(), nn.Linear(16, 2))
    w_d = model[2].weight.detach().clone()
    opt = AnalogSGD([{"params": model[2].parameters(), "lr": 0.0},
                     {"params": model[0].parameters(), "lr": 0.15}], lr=0.5)
    losses = _train(model, opt, steps=150)
    assert set(seen) == {0.15} and len(seen) == 150
    assert torch.equal(model[2].weight, w_d)
    assert sum(losses[-10:]) < 0.5 * sum(losses[:10])


def test_param_group_lr_reaches_analog_and_digital_layers(monkeypatch):
    seen = []
    orig = TileGrid.update
    monkeypatch.setattr(TileGrid, "update",
                        lambda self, x, d, lr, images=1: (seen.append(lr),
                                                          orig(self, x, d, lr, images)))
    model = nn.Sequential(AnalogLinear(3, 4, plan=ideal_plan(), seed=0), nn.Linear(4, 2))
    opt = AnalogSGD([{"params": model[0].parameters(), "lr": 0.037},
                     {"params": model[1].parameters()}], lr=0.2)
    w = model[1].weight.detach().clone()
    model(rand(5, 3, seed=19)).sum().backward()
    grad = model[1].weight.grad.clone()
    opt.step()
    assert seen == [0.037]
    assert torch.allclose(model[1].weight, w - 0.2 * grad)
    assert model[0].analog_ctx.grad is None


# ---- convert -------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)
        self.conv2 = nn.Conv2d(3, 4, 3, stride=2, bias=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 3 * 3, 5))

    def forward(self, x):
        return self.head(torch.tanh(self.conv2(torch.tanh(self.conv1(x)))))


def test_convert_places_layers_by_name_and_keeps_weights():
    torch.manual_seed(0)
    net = Net()
    ref = {k: v.clone() for k, v in net.state_dict().items()}
    x = rand(2, 1, 8, 8, seed=20)
    convert(net, {"layers": {"conv1": "ideal", "default": "sim"}}, seed=3)
    layers = analog_layers(net)
    assert set(layers) == {"conv1", "conv2", "head.1"}
    assert isinstance(net.conv1, AnalogConv2d) and isinstance(net.head[1], AnalogLinear)
    assert all(isinstance(a, IdealArray) for a in net.conv1.grid.arrays)
    assert all(isinstance(a, SimulatedArray) for m in (net.conv2, net.head[1])
               for a in m.grid.arrays)
    assert net.conv2.stride == (2, 2) and not net.conv2.has_bias
    # copied weights, exact up to the ideal array's write-verify tolerance
    assert float((net.conv1.analog_weight().view(3, 1, 3, 3) - ref["conv1.weight"]).abs()
                 .max()) <= 2 * DW + 1e-6
    assert float((net.conv1.analog_bias() - ref["conv1.bias"]).abs().max()) <= 2 * DW + 1e-6
    # on sim the weights are set directly, clipped to each device's own bounds
    arr = net.head[1].grid.arrays[0]
    want = torch.cat([ref["head.1.weight"], ref["head.1.bias"][:, None]], 1)
    want = torch.minimum(torch.maximum(want, arr.state["w_min"]), arr.state["w_max"])
    assert torch.equal(net.head[1].grid.read(), want)
    y_conv1 = net.conv1(x)
    assert torch.allclose(y_conv1, F.conv2d(x, ref["conv1.weight"], ref["conv1.bias"],
                                            padding=1), atol=2 * DW * 10)
    assert net(x).shape == (2, 5)


def test_convert_float_keeps_a_layer_digital_and_layer_plans_work():
    net = convert(Net(), {"conv1": LayerPlan(backend="ideal", devices_per_weight=2),
                          "head.1": "float", "default": "ideal"})
    assert type(net.head[1]) is nn.Linear
    assert net.conv1.grid.k == 2 and isinstance(net.conv2, AnalogConv2d)


def test_convert_unknown_layer_lists_the_model_layers():
    with pytest.raises(ConfigError) as err:
        convert(Net(), {"layers": {"conv3": "ideal", "default": "sim"}})
    msg = str(err.value)
    assert "conv3" in msg and all(n in msg for n in ("conv1", "conv2", "head.1"))


# ---- state_dict round trip ---------------------------------------------------------------
def _sim_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(AnalogConv2d(1, 2, 3, seed=seed), nn.Tanh(), nn.Flatten(),
                         AnalogLinear(2 * 4 * 4, 3, seed=seed + 1))


def _steps(model, n, seed):
    torch.manual_seed(seed)
    opt = AnalogSGD(model.parameters(), lr=0.05)
    for _ in range(n):
        x = torch.rand(4, 1, 6, 6)
        t = torch.randint(0, 3, (4,))
        opt.zero_grad()
        F.cross_entropy(model(x), t).backward()
        opt.step()


def test_state_dict_round_trip_restores_arrays_and_continues_identically():
    a = _sim_net(1)
    _steps(a, 3, seed=10)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = _sim_net(7)  # other seeds: other device-to-device draws and weights
    before = [m.grid.read() for m in analog_layers(b).values()]
    b.load_state_dict(torch.load(buf))
    for (name, la), lb, old in zip(analog_layers(a).items(), analog_layers(b).values(), before,
                                   strict=True):
        assert not torch.equal(old, la.grid.read()), name
        assert torch.equal(la.grid.read(), lb.grid.read()), name
        for xa, xb in zip(la.grid.arrays, lb.grid.arrays, strict=True):
            assert xa.state.keys() == xb.state.keys()
            assert all(torch.equal(xa.state[k], xb.state[k]) for k in xa.state), name
    _steps(a, 3, seed=11)
    _steps(b, 3, seed=11)
    for la, lb in zip(analog_layers(a).values(), analog_layers(b).values(), strict=True):
        assert torch.equal(la.grid.read(), lb.grid.read())
    x = torch.rand(2, 1, 6, 6)
    assert torch.equal(a(x), b(x))  # forward noise generators restored too


def test_state_dict_of_an_ideal_layer_restores_weights():
    a = AnalogLinear(5, 3, plan=ideal_plan(), seed=0)
    b = AnalogLinear(5, 3, plan=ideal_plan(), seed=1)
    b.load_state_dict(a.state_dict())
    assert float((a.grid.read() - b.grid.read()).abs().max()) <= 2 * DW + 1e-6


def test_state_dict_with_another_tiling_is_refused():
    a = AnalogLinear(5, 3, plan=ideal_plan(), seed=0)
    b = AnalogLinear(5, 3, plan=ideal_plan(max_cols=3), seed=0)
    with pytest.raises(ValueError, match="arrays"):
        b.load_state_dict(a.state_dict())


# ---- eval mode -----------------------------------------------------------------------------
def test_eval_mode_stores_nothing_and_does_not_update():
    layer = AnalogConv2d(1, 2, 3, plan=ideal_plan(), seed=0)
    opt = AnalogSGD(layer.parameters(), lr=LR)
    w0 = full_weight(layer)
    layer.eval()
    x = rand(2, 1, 5, 5, seed=21).requires_grad_()
    layer(x).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0  # input gradient still flows
    assert not layer._pending
    with torch.no_grad():
        layer(x)
    opt.step()
    assert torch.equal(full_weight(layer), w0)
    layer.train()  # control: the same in training mode stores and updates
    layer(x).sum().backward()
    assert len(layer._pending) == 1
    opt.step()
    assert not torch.equal(full_weight(layer), w0)


def test_repr_names_the_backend():
    assert "backend='ideal'" in repr(AnalogLinear(2, 3, plan=ideal_plan(), seed=0))
    assert "stride=(2, 2)" in repr(AnalogConv2d(1, 1, 3, stride=2, plan=ideal_plan(), seed=0))
