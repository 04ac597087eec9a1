"""Analog torch layers: drop-in ``nn.Linear`` / ``nn.Conv2d`` whose weights live on arrays.

Forward and backward run on the layer's arrays (through the scheduler's
:class:`~rpuhw.schedule.TileGrid`); the weight gradient is never formed. Instead
the backward pass stores the (x, d) pairs, and the pulsed update runs in the
optimizer step (:class:`AnalogSGD`), as in aihwkit: digital parameters and
analog layers train together in one loop.

.. code-block:: python

    model = convert(my_torch_model, {"layers": {"conv1": "sim:chip.yaml", "default": "sim"}})
    opt = AnalogSGD(model.parameters(), lr=0.01)
    loss(model(x), y).backward()
    opt.step()        # digital SGD + pulsed updates of every analog layer
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import optimizer as _optim_module

from rpuhw._dynamo_deferred import defer, sgd_step
from rpuhw.im2col import col2im, im2col, out_size
from rpuhw.schedule import LayerPlan, TileGrid

__all__ = ["AnalogConv2d", "AnalogLayer", "AnalogLinear", "AnalogSGD", "analog_layers",
           "convert"]


class _AnalogMVM(torch.autograd.Function):
    """y = W [x, 1] on the arrays; backward z = W^T d on the arrays, storing (x, d).

    The bias column is appended inside (not recorded by autograd: one graph node per
    layer); ``images`` is the number of images the rows of x come from.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, anchor: torch.Tensor, layer: AnalogLayer, images: int):
        # (autograd runs Function.forward with gradients off)
        # a copy (the update in the optimizer step uses it later), bias column appended
        if layer.has_bias and x.dtype is torch.float32 and x.dim() == 2 and x.is_cpu:
            xa = np.empty((x.shape[0], x.shape[1] + 1), np.float32)  # (numpy: cheaper
            xa[:, :-1] = x.detach().numpy()  # than torch.cat for one image)
            xa[:, -1] = 1.0
            xb = torch.from_numpy(xa)
        else:
            xb = x.detach().float()
            xb = (torch.cat([xb, torch.ones(xb.shape[0], 1)], 1) if layer.has_bias
                  else xb.clone())
        ctx.layer, ctx.images, ctx.xb, ctx.dtype = layer, images, xb, x.dtype
        return layer.algorithm.forward(xb)

    @staticmethod
    def backward(ctx, d: torch.Tensor):
        layer = ctx.layer
        d = d.detach().contiguous()
        if layer.training:
            layer._pending.append((ctx.xb, d, ctx.images))
        z = None
        if ctx.needs_input_grad[0]:
            z = layer.algorithm.backward(d)
            z = (z[:, :layer.in_features] if layer.has_bias else z).to(ctx.dtype)
        return z, None, None, None


class _AnalogConvMVM(torch.autograd.Function):
    """A convolution on the arrays: im2col (bias column included), one MVM per output
    position; backward: transposed MVMs, col2im, storing (patches, d) for the update.
    Layout changes happen inside (one graph node per layer)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, anchor: torch.Tensor, layer: AnalogConv2d):
        n, _, h, w = x.shape
        ho, wo = out_size(h, w, layer.kernel_size, layer.stride, layer.padding)
        patches = im2col(x, layer.kernel_size, layer.stride, layer.padding, layer.has_bias)
        ctx.layer, ctx.patches, ctx.dtype = layer, patches, x.dtype
        ctx.shape = (n, x.shape[1], h, w)
        y = layer.algorithm.forward(patches)  # [n * ho * wo, out], image-major positions
        if y.dtype is torch.float32 and y.is_cpu and not y.requires_grad:  # the same copy
            ya = y.numpy().reshape(n, ho * wo, -1).transpose(0, 2, 1)
            return torch.from_numpy(np.ascontiguousarray(ya)).view(n, -1, ho, wo)
        return y.view(n, ho * wo, -1).transpose(1, 2).reshape(n, -1, ho, wo)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        layer, n = ctx.layer, ctx.shape[0]
        out = g.shape[1]
        if g.dtype is torch.float32 and g.is_cpu and not g.requires_grad:  # (numpy: cheaper)
            da = g.detach().numpy().reshape(n, out, -1).transpose(0, 2, 1)
            d = torch.from_numpy(np.ascontiguousarray(da)).view(-1, out)
        else:
            d = g.detach().reshape(n, out, -1).transpose(1, 2).reshape(-1, out).float()
        if layer.training:
            layer._pending.append((ctx.patches, d, n))
        dx = None
        if ctx.needs_input_grad[0]:
            z = layer.algorithm.backward(d)
            dx = col2im(z, ctx.shape, layer.kernel_size, layer.stride, layer.padding)
            dx = dx.to(ctx.dtype)
        return dx, None, None


class AnalogLayer(nn.Module):
    """Common part of the analog layers: the algorithm and its tile grids, pending
    updates, state.

    ``algorithm`` (:mod:`rpuhw.algorithms`, chosen by ``plan.algorithm``) owns the
    layer's arrays and does its MVMs and updates; ``grid`` is its visible array C (the
    only one for ``sgd``).
    """

    grid: TileGrid

    def _init_analog(self, out_f: int, in_f: int, plan: LayerPlan | None,
                     seed: int | None) -> None:
        from rpuhw.algorithms import algorithm_class, make_params

        self.plan = plan or LayerPlan()
        self.plan.check_algorithm()
        cls = algorithm_class(self.plan.algorithm)
        params = make_params(self.plan.algorithm, self.plan.algorithm_params)
        self.algorithm = cls(out_f, in_f, self.plan, seed=seed, params=params)
        self.grid = self.algorithm.grid
        self._pending: list[tuple[torch.Tensor, torch.Tensor, int]] = []  # (x, d, images)
        # a placeholder parameter so that optimizers see the layer (and autograd calls
        # the backward even when the layer's input needs no gradient)
        self.analog_ctx = nn.Parameter(torch.zeros(1))
        self.analog_ctx._rpuhw_layer = self  # type: ignore[attr-defined]

    def apply_update(self, lr: float) -> None:
        """Send the stored (x, d) pairs of this step to the arrays, in order."""
        if not self._pending:
            return
        # images summed over every forward/backward since the last step (gradient
        # accumulation); sample granularity splits the pairs into that many blocks
        images = sum(p[2] for p in self._pending)
        if len(self._pending) == 1:
            x, d = self._pending[0][:2]
        else:
            x = torch.cat([p[0] for p in self._pending])
            d = torch.cat([p[1] for p in self._pending])
        self._pending.clear()
        self.algorithm.update(x, d, lr, images=max(images, 1))

    def _algo_repr(self) -> str:
        return "" if self.plan.algorithm == "sgd" else f", algorithm={self.plan.algorithm!r}"

    @property
    def arrays(self) -> list:
        """Every array of the layer (all of the algorithm's grids: A's, then C's)."""
        return self.algorithm.arrays

    def analog_weight(self) -> torch.Tensor:
        """The weights as read from the arrays, in torch's layout (bias column dropped;
        the algorithm's weight, ``gamma A + C`` for ``tt``)."""
        w = self.algorithm.read()
        return w[:, :-1] if self.has_bias else w

    def analog_bias(self) -> torch.Tensor | None:
        return self.algorithm.read()[:, -1] if self.has_bias else None

    def get_extra_state(self) -> dict[str, Any]:
        algo = self.algorithm
        state = {"plan_backend": self.plan.backend,
                 "arrays": [a.state_dict() for a in algo.arrays],
                 # the peripheries' pulse-train generators: a resumed run draws the same
                 # bits
                 "periphery_rng": [p.rng_state() for p in algo.peripheries]}
        digital = algo.state_dict()
        if digital or algo.name != "sgd":  # (sgd: the state as before algorithms existed)
            state["algorithm"] = {"name": algo.name, "state": digital}
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        algo = self.algorithm
        arrays = algo.arrays
        if len(state["arrays"]) != len(arrays):
            raise ValueError(f"state_dict: {len(state['arrays'])} arrays saved, the layer has "
                             f"{len(arrays)}")
        saved = state.get("algorithm", {"name": "sgd", "state": {}})
        if saved["name"] != algo.name:
            raise ValueError(f"state_dict: saved with algorithm {saved['name']}, the layer "
                             f"trains with {algo.name}")
        for a, sd in zip(arrays, state["arrays"], strict=True):
            a.load_state_dict(sd)  # hardware: write-verify of the saved weights
        rngs = state.get("periphery_rng")
        if rngs is not None:
            for p, g in zip(algo.peripheries, rngs, strict=True):
                p.set_rng_state(g)
        algo.load_state_dict(saved["state"])


class AnalogLinear(AnalogLayer):
    """``nn.Linear`` on arrays: y = W x + b with b an extra array column fixed at 1."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 plan: LayerPlan | None = None, seed: int | None = None, init: bool = True):
        """``init=False`` leaves the arrays as they are (``convert`` writes the original
        layer's weights instead: on hardware, writing is write-verify programming)."""
        super().__init__()
        self.in_features, self.out_features, self.has_bias = in_features, out_features, bias
        self._init_analog(out_features, in_features + int(bias), plan, seed)
        ref = nn.Linear(in_features, out_features, bias=bias)  # torch's default init
        if init:
            self.set_weights(ref.weight.data, ref.bias.data if bias else None)

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        w = torch.cat([weight, bias[:, None]], 1) if self.has_bias else weight
        self.algorithm.set_weights(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        if not shape or shape[-1] != self.in_features:
            raise ValueError(f"{type(self).__name__}: expected input [..., {self.in_features}], "
                             f"got {list(shape)}")
        if len(shape) == 2:
            return _AnalogMVM.apply(x, self.analog_ctx, self, shape[0])
        images = shape[0] if len(shape) > 1 else 1
        y = _AnalogMVM.apply(x.reshape(-1, self.in_features), self.analog_ctx, self, images)
        return y.reshape(*shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.has_bias}, backend={self.plan.backend!r}{self._algo_repr()}")


class AnalogConv2d(AnalogLayer):
    """``nn.Conv2d`` on arrays through im2col: one MVM and one rank-1 update per output
    position; the kernel bank is one ``out x (in*kh*kw + 1)`` matrix."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, plan: LayerPlan | None = None, seed: int | None = None,
                 init: bool = True):
        """``init`` as for :class:`AnalogLinear`."""
        super().__init__()
        ref = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                        bias=bias)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride, self.padding = ref.kernel_size, ref.stride, ref.padding
        self.has_bias = bias
        fan_in = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._init_analog(out_channels, fan_in + int(bias), plan, seed)
        if init:
            self.set_weights(ref.weight.data, ref.bias.data if bias else None)

    def set_weights(self, weight: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        w = weight.reshape(self.out_channels, -1)
        self.algorithm.set_weights(torch.cat([w, bias[:, None]], 1) if self.has_bias else w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected input [N, {self.in_channels}, "
                             f"H, W], got {list(x.shape)}")
        return _AnalogConvMVM.apply(x, self.analog_ctx, self)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, bias={self.has_bias}, "
                f"backend={self.plan.backend!r}{self._algo_repr()}")


def analog_layers(model: nn.Module) -> dict[str, AnalogLayer]:
    """The model's analog layers by their module names."""
    return {name: m for name, m in model.named_modules() if isinstance(m, AnalogLayer)}


def _quiet_optimizer() -> bool | None:
    """True when no optimizer step hook is registered globally and no profiler runs: then
    torch's ``step`` wrapper and ``zero_grad``'s ``record_function`` (about 10 us each per
    call) only mark profiler ranges nobody records. None when this torch's internals are
    not the known ones (then the caller keeps torch's path)."""
    hooks = (getattr(_optim_module, "_global_optimizer_pre_hooks", None),
             getattr(_optim_module, "_global_optimizer_post_hooks", None))
    enabled = getattr(getattr(torch._C, "_autograd", None), "_profiler_enabled", None)
    if hooks[0] is None or hooks[1] is None or enabled is None:
        return None
    return not (hooks[0] or hooks[1] or enabled())


class AnalogSGD(torch.optim.SGD):
    """SGD whose ``step`` also runs the pulsed updates of the analog layers.

    Analog layers appear in ``model.parameters()`` through a placeholder parameter;
    their learning rate is that of their param group. Digital parameters are updated
    by plain SGD (momentum and weight decay apply to those only).

    Calls are torch's (step hooks, profiler ranges) except when nothing could observe
    them: with no step hook registered (on this optimizer or globally) and no profiler
    running, ``step`` and ``zero_grad`` skip torch's profiler-range wrappers.
    """

    def __init__(self, params, *args, **kwargs):
        defer()  # torch.optim would import torch._dynamo here (~1 s per run)
        super().__init__(params, *args, **kwargs)
        self.step = self._step_fast  # (an instance attribute: the class keeps torch's)

    def _step_fast(self, closure=None):
        """``step`` without torch's wrapper when nothing observes it (see the class doc)."""
        if (self._optimizer_step_pre_hooks or self._optimizer_step_post_hooks
                or not _quiet_optimizer()):
            return type(self).step(self, closure)  # torch's wrapper around _step
        with torch.no_grad():
            return self._step(closure)

    @torch.no_grad()
    def step(self, closure=None):
        return self._step(closure)

    def _step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        analog = []
        digital = False
        for group in self.param_groups:
            for p in group["params"]:
                layer = getattr(p, "_rpuhw_layer", None)
                if layer is not None:
                    analog.append((layer, group["lr"]))
                    p.grad = None
                elif p.grad is not None:
                    digital = True
        if digital:  # (SGD skips parameters without a gradient anyway)
            sgd_step(self)  # super().step() without importing torch._dynamo
        for layer, lr in analog:
            layer.apply_update(lr)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """torch's ``zero_grad``; when no parameter holds a gradient (an all-analog model:
        the placeholders never get one) and nothing observes the call, nothing to do."""
        if _quiet_optimizer() and all(p.grad is None for group in self.param_groups
                                      for p in group["params"]):
            return
        super().zero_grad(set_to_none)


def convert(model: nn.Module, plan: dict[str, Any] | None = None,
            seed: int | None = None, write: bool = True) -> nn.Module:
    """Replace every ``nn.Linear`` / ``nn.Conv2d`` of ``model`` by its analog twin.

    ``plan`` maps layer names to backend specs or LayerPlans, with ``default`` for the
    rest, e.g. ``{"layers": {"conv1": "sim:chip.yaml", "default": "sim"}}`` or directly
    ``{"conv1": LayerPlan(...), "default": LayerPlan()}``; ``"float"`` (or None) keeps a
    layer in floating point. A LayerPlan also chooses the layer's training algorithm
    (``LayerPlan(algorithm="tt", algorithm_params={"gamma": 0.1}, arrays={"A": "sim"})``,
    see :mod:`rpuhw.algorithms`). Weights are copied (programmed); ``write=False`` leaves the
    arrays as they opened (a resumed run reads the devices first, then loads the
    checkpoint's state).
    """
    from rpuhw.errors import ConfigError

    layers = dict((plan or {}).get("layers", plan or {}))
    default = layers.pop("default", "sim")
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    unknown = sorted(set(layers) - set(names))
    if unknown:
        raise ConfigError(f"the model has no layer {', '.join(unknown)} (layers: "
                          f"{', '.join(names)})", key="layers")

    def as_plan(v) -> LayerPlan:
        return v if isinstance(v, LayerPlan) else LayerPlan(backend=str(v))

    for k, name in enumerate(names):
        module = model.get_submodule(name)
        choice = layers.get(name, default)
        if choice is None or choice == "float":  # stays a floating-point torch layer
            continue
        lp = as_plan(choice)
        s = None if seed is None else seed + 1000 * k
        if isinstance(module, nn.Linear):
            new = AnalogLinear(module.in_features, module.out_features,
                               bias=module.bias is not None, plan=lp, seed=s, init=False)
        else:
            if module.groups != 1 or module.dilation != (1, 1) or module.padding_mode != "zeros":
                raise ConfigError(f"layer {name}: only groups=1, dilation=1, zero padding "
                                  "convolutions map onto arrays", key="layers")
            new = AnalogConv2d(module.in_channels, module.out_channels, module.kernel_size,
                               stride=module.stride, padding=module.padding,
                               bias=module.bias is not None, plan=lp, seed=s, init=False)
        if write:
            new.set_weights(module.weight.data,
                            module.bias.data if module.bias is not None else None)
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, new)
    return model
