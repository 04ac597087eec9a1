"""The ``ideal`` backend's native hooks give exactly what the generic paths give.

:class:`~rpuhw.ideal.IdealArray` offers ``_managed_mvm``, ``_update_packed`` and
``_update_signed`` (compiled, :mod:`rpuhw.ideal_kernels`). :class:`Generic` is the same
array with the contract's defaults for these hooks, so the periphery takes its generic
paths (``Periphery._mvm`` through ``forward``/``backward``; encoding, then ``update``
of int8 bits). Every comparison is bit for bit: outputs, weights and the periphery's
counters, for the same seeds.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rpuhw._jit import HAVE_NUMBA
from rpuhw.array import CrossPointArray
from rpuhw.ideal import IdealArray
from rpuhw.models import LeNet
from rpuhw.nn import AnalogSGD, convert
from rpuhw.periphery import Periphery, PeripheryConfig
from rpuhw.periphery.management import TileLines
from rpuhw.schedule import LayerPlan

needs_numba = pytest.mark.skipif(not HAVE_NUMBA, reason="the native hooks need numba")
ROOT = Path(__file__).resolve().parent.parent


class Generic(IdealArray):
    """An ideal array without the native hooks: the periphery's generic paths."""

    _managed_mvm = CrossPointArray._managed_mvm
    _update_signed = CrossPointArray._update_signed

    def _update_packed(self, packed):
        self._update(*packed.to_bits())


def pair(rows: int, cols: int, seed: int = 0, scale: float = 0.3):
    """The same random weights on a fast and a generic ideal array."""
    w = scale * torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    fast, slow = IdealArray(rows, cols), Generic(rows, cols)
    fast.set_weights(w)
    slow.set_weights(w)
    return fast, slow


def vectors(n: int, width: int, seed: int, zero_rows=(1, 4)) -> torch.Tensor:
    v = torch.randn(n, width, generator=torch.Generator().manual_seed(seed))
    v[[r for r in zero_rows if r < n]] = 0.0  # NM gives these no array cycle
    return v


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit for bit (signed zeros included)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.view(torch.int32), b.view(torch.int32))


MANAGEMENTS = [dict(noise_management=nm, bound_management=bm, bm_backward=bb)
               for nm in (False, True) for bm in (False, True) for bb in (False, True)]


@needs_numba
@pytest.mark.parametrize("kw", MANAGEMENTS, ids=lambda kw: "-".join(
    k.split("_")[0] + str(int(v)) for k, v in kw.items()))
@pytest.mark.parametrize("w_scale", [0.3, 3.0], ids=["unsaturated", "saturating"])
def test_managed_mvm_is_the_generic_path(kw, w_scale):
    # w_scale 3: outputs of 20 inputs reach the bound 12 -> BM halvings, and with
    # bm_max_halvings 1 some vectors stay unresolved
    fast, slow = pair(9, 20, scale=w_scale)
    cfg = PeripheryConfig(bm_max_halvings=1 if w_scale > 1 else 10, **kw)
    pf, ps = Periphery(fast, cfg, seed=1), Periphery(slow, cfg, seed=1)
    for seed, n in enumerate((1, 7, 64)):
        x = vectors(n, 20, seed)
        assert same(pf.forward(x), ps.forward(x))
        d = vectors(n, 9, seed + 10)
        assert same(pf.backward(d), ps.backward(d))
    assert pf.stats == ps.stats
    if w_scale > 1 and kw["bound_management"]:
        assert ps.stats.bm_halvings > 0 and ps.stats.bm_unresolved > 0
    if kw["noise_management"] and w_scale < 1:
        assert ps.stats.forward_vectors == 72 - 4  # the 4 zero vectors got no cycle


@needs_numba
def test_managed_mvm_edge_cases():
    fast, slow = pair(3, 4)
    pf, ps = Periphery(fast, seed=0), Periphery(slow, seed=0)
    for v in (torch.zeros(0, 4), torch.zeros(5, 4), torch.randn(6, 8)[:, ::2]):
        assert same(pf.forward(v), ps.forward(v))  # empty, all zero, non-contiguous
    assert pf.stats == ps.stats
    for bad in (float("nan"), float("inf")):
        v = torch.ones(2, 4)
        v[1, 2] = bad
        with pytest.raises(ValueError, match="x: contains non-finite"):
            pf.forward(v)
        with pytest.raises(ValueError, match="d: contains non-finite"):
            pf.backward(torch.full((1, 3), bad))


@needs_numba
@pytest.mark.parametrize("um", [False, True])
def test_update_is_the_generic_path(um):
    fast, slow = pair(16, 26)
    cfg = PeripheryConfig(update_management=um, bl=10, lr=0.05)
    pf, ps = Periphery(fast, cfg, seed=3), Periphery(slow, cfg, seed=3)
    for seed, n in enumerate((1, 40, 600)):  # 600: the parallel encoder too
        x, d = vectors(n, 26, seed), vectors(n, 16, seed + 50, zero_rows=(2,))
        pf.update(x, d)
        ps.update(x, d)
        assert same(fast.weights, slow.weights)
    assert pf.stats == ps.stats
    assert not same(fast.weights, pair(16, 26)[0].weights)  # it did change


@needs_numba
def test_packed_update_counts_up_and_down_coincidences():
    fast, slow = pair(5, 7)
    per = Periphery(IdealArray(5, 7), PeripheryConfig(bl=31), seed=0)
    x, d = vectors(20, 7, 1), vectors(20, 5, 2)
    packed = per.encode(x, d, lr=0.5)
    x_bits, d_bits = packed.to_bits()
    fast.update(packed)
    slow.update(x_bits, d_bits)
    assert same(fast.weights, slow.weights)
    # the definition: each coincidence moves the weight by the product of the two bits
    counts = torch.einsum("pti,ptj->ij", d_bits.int(), x_bits.int())
    assert torch.equal(((fast.weights - pair(5, 7)[0].weights) / 0.001).round().int(),
                       counts)


@needs_numba
def test_update_tiles_is_the_generic_path():
    # K = 2 devices per weight: one encoding fanned out through array.update(PackedBits)
    tiles = []
    for cls in (IdealArray, Generic):
        per = [Periphery(cls(6, 5), seed=s) for s in (0, 1)]
        lines = [TileLines(per[0], torch.arange(6).numpy() % 3, slice(0, 5)),
                 TileLines(per[1], torch.arange(6, 12).numpy() % 3, slice(0, 5))]
        per[0].update_tiles(vectors(30, 5, 0), vectors(30, 3, 1), 0.02, lines)
        tiles.append([p.array.weights for p in per])
    for a, b in zip(*tiles, strict=True):
        assert same(a, b)


def _lenet_run(cls, images: int = 12):
    torch.manual_seed(0)
    plan = LayerPlan(backend="ideal", periphery=LayerPlan.management("nm+bm+um"))
    model = convert(LeNet(), {"default": plan}, seed=0)
    arrays = [a for m in model.modules() if hasattr(m, "grid") for a in m.grid.arrays]
    for a in arrays:
        a.__class__ = cls
    opt = AnalogSGD(model.parameters(), lr=0.01)
    x = torch.rand(images, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    x[x < 0.6] = 0.0  # MNIST-like: many all-zero patches
    y = torch.arange(images) % 10
    outs = []
    for i in range(images):
        opt.zero_grad()
        out = model(x[i:i + 1])
        F.cross_entropy(out, y[i:i + 1]).backward()
        opt.step()
        outs.append(out.detach())
    stats = [dataclasses.asdict(p.stats) for m in model.modules() if hasattr(m, "grid")
             for row in m.grid.tiles for p in row]
    return torch.cat(outs), [a.weights.clone() for a in arrays], stats


@needs_numba
def test_lenet_training_is_the_generic_path():
    out_f, w_f, st_f = _lenet_run(IdealArray)
    out_s, w_s, st_s = _lenet_run(Generic)
    assert same(out_f, out_s)
    assert all(same(a, b) for a, b in zip(w_f, w_s, strict=True))
    assert st_f == st_s
    assert sum(s["updates"] for s in st_f) > 0


def test_without_numba_the_generic_paths_run():
    code = ("import torch\n"
            "from rpuhw.ideal import IdealArray\n"
            "from rpuhw.periphery import Periphery\n"
            "a = IdealArray(3, 4)\n"
            "assert a._managed_mvm(torch.ones(1, 4), False, True, True, 12.0, 10) is None\n"
            "assert a._update_signed(None, None, 10, 0) is False\n"
            "p = Periphery(a, seed=0)\n"
            "p.update(torch.ones(2, 4), torch.ones(2, 3), lr=0.05)\n"
            "assert (a.weights < 0).all() and p.forward(torch.ones(1, 4)).shape == (1, 3)\n")
    env = {**os.environ, "RPUHW_NO_NUMBA": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
