"""The compiled fast paths give what the generic paths give.

* the simulator's managed MVM (:mod:`rpuhw.sim.mvm`, through ``array._managed_mvm``)
  against the periphery's generic noise / bound management around ``array.forward``;
* the compiled update-management probabilities and the fused probability + encoding
  kernel (:mod:`rpuhw.periphery.probabilities`) against the tensor implementation, bit for
  bit, and the live-only encoding against the full one;
* im2col / col2im against ``F.unfold`` / ``F.fold``; the seed stream.

Statistical checks use fixed seeds and a tolerance of Z = 5 standard errors of the
sampled quantity (derivation beside each).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rpuhw import DeviceSpec, SimulatedArray
from rpuhw._jit import HAVE_NUMBA
from rpuhw.config import from_mapping
from rpuhw.devices import get_model
from rpuhw.im2col import col2im, im2col
from rpuhw.periphery import Periphery, PeripheryConfig
from rpuhw.periphery.encode import encode_packed
from rpuhw.periphery.io import IOConfig
from rpuhw.seeds import SeedStream
from rpuhw.sim.mvm import product_kernel, small_product

pytestmark = pytest.mark.skipif(not HAVE_NUMBA, reason="the fast paths are compiled")

ROWS, COLS = 24, 20
Z = 5.0


class GenericSim(SimulatedArray):
    """A simulated array that does not offer the managed MVM: the periphery runs its
    generic Python path around ``forward``/``backward``."""

    def _managed_mvm(self, *args):
        return None


def _arrays(io: IOConfig, seed: int = 0):
    model = get_model("constant_step")(from_mapping(
        get_model("constant_step").Params,
        {"w_min": -1.0, "w_max": 1.0, "w_min_dtod": 0.0, "w_max_dtod": 0.0}))
    g = torch.Generator().manual_seed(seed)
    w = 0.6 + 0.4 * torch.rand(ROWS, COLS, generator=g)  # row and column sums 12 .. 24: BM
    out = []
    for cls in (SimulatedArray, GenericSim):
        a = cls(ROWS, COLS, device=DeviceSpec(model, io=io), seed=seed)
        a.set_weights(w)
        out.append(a)
    return out


def _inputs(n_in: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(9, n_in, generator=g) * 2 - 1
    x[0] = 1.0            # saturates: BM halves it (twice for the largest outputs)
    x[1] = 0.0            # zero vector: no cycle under NM
    x[2] *= 1e-4          # tiny: NM lifts it
    x[3] = 0.3            # moderate
    x[4, ::2] = 0.0
    x[5] = x[0] * 3.0     # beyond the DAC range without NM
    return x


IOS = {
    "exact": IOConfig(out_noise=0.0),
    "dac-adc": IOConfig(out_noise=0.0, inp_res=1 / 126, out_res=1 / 510),
    "narrow-dac": IOConfig(out_noise=0.0, inp_bound=0.5),
}


@pytest.mark.parametrize("io", list(IOS), ids=list(IOS))
@pytest.mark.parametrize("nm,bm", [(True, True), (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("transposed", [False, True])
def test_managed_mvm_equals_the_generic_path_without_noise(io, nm, bm, transposed):
    fused, generic = _arrays(IOS[io])
    cfg = PeripheryConfig(noise_management=nm, bound_management=bm, bm_backward=bm)
    pf, pg = Periphery(fused, cfg, seed=0), Periphery(generic, cfg, seed=0)
    x = _inputs(ROWS if transposed else COLS)
    if transposed:
        yf, yg = pf.backward(x), pg.backward(x)
    else:
        yf, yg = pf.forward(x), pg.forward(x)
    # both multiply with torch; the batches differ (zero rows are dropped by the generic
    # path), so sums may differ in the last bit, and an ADC rounding near a grid
    # midpoint may then differ by one ADC step (times the NM scale and 2**k <= 4)
    step = (IOS[io].out_res or 0.0) * 2 * IOS[io].out_bound
    scale = x.abs().amax(dim=1, keepdim=True) * 4 if nm else 4.0
    tol = 1e-5 * yg.abs() + 1e-6 + step * scale
    assert ((yf - yg).abs() <= tol).all()
    assert vars(pf.stats) == vars(pg.stats)  # calls, vectors, halvings, unresolved
    if bm and IOS[io].inp_bound >= 1:  # the data exercise BM (a narrow DAC caps outputs)
        assert pf.stats.bm_halvings > 0


def test_managed_mvm_noise_has_the_generic_distribution():
    """One input, N = 20000 repeats in one batch, out_noise 0.06, NM + BM: each output
    is s * (W x / s + 0.06 xi). Per output, the sample mean is within Z standard errors
    (s 0.06 / sqrt(N)) of s W x / s and the sample std within Z standard errors of a
    normal sample std (sigma / sqrt(2 N)) of s 0.06, on every path."""
    n, sigma = 20000, 0.06
    io = IOConfig(out_noise=sigma)
    fused, generic = _arrays(io, seed=3)
    torch_engine = SimulatedArray(ROWS, COLS, device=fused.spec, seed=3, engine="torch")
    torch_engine.set_weights(fused.read())
    x = torch.linspace(-0.5, 0.5, COLS)[None].repeat(n, 1) * 0.01  # s = 0.005
    s = 0.005
    exact = (x[:1] @ fused.read().T)[0]
    for arr in (fused, generic, torch_engine):
        y = Periphery(arr, seed=1).forward(x)
        se_mean = s * sigma / math.sqrt(n)
        assert ((y.mean(0) - exact).abs() <= Z * se_mean).all(), arr
        se_std = s * sigma / math.sqrt(2 * n)
        assert ((y.std(0) - s * sigma).abs() <= Z * se_std).all(), arr


def test_managed_mvm_rejects_nonfinite_input_and_consumes_no_seed():
    fused, _ = _arrays(IOConfig())
    per = Periphery(fused, seed=0)
    seeds = fused.state_dict()["seeds"]
    for bad in (float("nan"), float("inf")):
        x = torch.rand(3, COLS)
        x[1, 4] = bad
        with pytest.raises(ValueError, match="x: contains non-finite"):
            per.forward(x)
        d = torch.rand(2, ROWS)
        d[0, 0] = bad
        with pytest.raises(ValueError, match="d: contains non-finite"):
            per.backward(d)
    assert fused.state_dict()["seeds"] == seeds
    assert per.stats.forward_calls == 0 and per.stats.backward_calls == 0


# ---- update: probabilities and encoding -----------------------------------------------
def _update_data(seed: int = 0, p: int = 40):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(p, COLS, generator=g) * 2 - 1
    d = (torch.rand(p, ROWS, generator=g) * 2 - 1) * 1e-3
    d[::4] = 0.0          # dead updates, as behind a max-pool
    x[3] = 0.0
    d[5, :3] = 0.0
    x[7] *= 1e-30         # extreme ratio: a gain beyond float32's safe range
    d[9] *= 1e6           # probabilities clipped at 1
    return x, d


@pytest.mark.parametrize("um", [True, False])
def test_compiled_probabilities_are_bit_identical_to_the_tensor_path(um):
    fused, _ = _arrays(IOConfig())
    per = Periphery(fused, PeripheryConfig(update_management=um), seed=0)
    x, d = _update_data()
    sx, sd, tops, sums = per._signed_probabilities(x, d, 0.01)
    tx, td, ttops, tsums = per._signed_probabilities_torch(x, d, 0.01)
    assert torch.equal(sx, tx) and torch.equal(sd, td)
    assert tops == pytest.approx(ttops, rel=1e-12)
    assert sums == pytest.approx(tsums, rel=1e-9)  # summation order differs
    if um:  # the extreme ratio went through the float64 branch and still agrees
        assert float(sx[7].abs().max()) > 0


def test_fused_encoding_gives_the_bits_of_the_two_step_encoding():
    fused, _ = _arrays(IOConfig())
    per = Periphery(fused, seed=5)
    x, d = _update_data(seed=2)
    seed = per._seeds.peek()
    full = per._encode_packed(x, d, 0.01)
    sx, sd, _, _ = per._signed_probabilities_torch(x, d, 0.01)
    ref = encode_packed(sx, sd, per.config.bl, seed)
    for name in ("x_nz", "x_pos", "d_nz", "d_pos"):
        assert np.array_equal(getattr(full, name), getattr(ref, name)), name
    dead = ((x == 0).all(1) | (d == 0).all(1)).numpy()
    assert dead.sum() >= 10 and not full.d_nz[dead].any() and not full.x_nz[dead].any()


def test_periphery_update_changes_the_weights_as_its_encoded_bits_do():
    io = IOConfig()
    a, b = (SimulatedArray(ROWS, COLS, device=DeviceSpec(get_model("constant_step")(), io=io),
                           seed=4) for _ in range(2))
    x, d = _update_data(seed=3, p=200)
    d = d * 1e2
    per = Periphery(a, seed=9)
    seed = per._seeds.peek()
    per.update(x, d, 0.01)
    sx, sd, _, _ = per._signed_probabilities_torch(x, d, 0.01)
    b.update(encode_packed(sx, sd, per.config.bl, seed))
    assert torch.equal(a.read(), b.read())
    assert not torch.equal(a.read(), torch.zeros(ROWS, COLS))


def test_update_rejects_nonfinite_and_consumes_no_seed():
    fused, _ = _arrays(IOConfig())
    per = Periphery(fused, seed=0)
    state = per.rng_state()
    x, d = _update_data()
    d[2, 1] = float("nan")
    with pytest.raises(ValueError, match="d: contains non-finite"):
        per.update(x, d)
    assert per.rng_state()["seeds"] == state["seeds"]


# ---- im2col ----------------------------------------------------------------------------
@pytest.mark.parametrize("n,n_in,n_out", [(1, 129, 10), (1, 128, 513), (9, 20, 24), (3, 1, 7)])
@pytest.mark.parametrize("transposed", [False, True])
def test_small_products_match_the_matmul(n, n_in, n_out, transposed):
    """The compiled products of small MVMs equal torch's to float32 rounding (sums of
    n_in terms of size <= 1: |error| <= n_in * 2**-23 * sum |terms|, bound used x 4)."""
    g = torch.Generator().manual_seed(n_in)
    x = torch.rand(n, n_in, generator=g) * 2 - 1
    w = torch.rand(n_in, n_out, generator=g) - 0.5 if transposed else \
        torch.rand(n_out, n_in, generator=g) - 0.5
    ref = x @ w if transposed else x @ w.T
    got = np.empty((n, n_out), np.float32)
    product_kernel(x.numpy(), w.numpy(), transposed, got)
    bound = 4 * n_in * 2.0 ** -23 * ((x.abs() @ w.abs()) if transposed else (x.abs() @ w.abs().T))
    assert ((torch.from_numpy(got) - ref).abs() <= bound + 1e-30).all()
    assert small_product(1, 129, 10, False) and not small_product(576, 26, 16, False)
    assert small_product(1, 128, 513, True) and not small_product(64, 32, 401, True)


@pytest.mark.parametrize("kernel,stride,padding", [((5, 5), (1, 1), (0, 0)),
                                                   ((3, 2), (2, 1), (1, 2)),
                                                   ((1, 1), (1, 1), (0, 0))])
@pytest.mark.parametrize("bias", [True, False])
def test_im2col_and_col2im_match_unfold_and_fold(kernel, stride, padding, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, 8, generator=g)
    cols = F.unfold(x, kernel, padding=padding, stride=stride)  # [n, fan_in, positions]
    rows = cols.transpose(1, 2).reshape(-1, cols.shape[1])
    got = im2col(x, kernel, stride, padding, bias)
    if bias:
        assert torch.equal(got[:, -1], torch.ones(rows.shape[0]))
        got = got[:, :-1]
    assert torch.equal(got, rows)
    z = torch.randn(rows.shape[0], rows.shape[1] + int(bias), generator=g)
    folded = F.fold(z[:, :rows.shape[1]].reshape(2, -1, rows.shape[1]).transpose(1, 2),
                    x.shape[2:], kernel, padding=padding, stride=stride)
    torch.testing.assert_close(col2im(z, tuple(x.shape), kernel, stride, padding), folded)


# ---- seeds -----------------------------------------------------------------------------
def test_seed_stream_peek_call_and_restore():
    s = SeedStream(12345)
    first = s.peek()
    assert s.peek() == first and s() == first
    seq = [s() for _ in range(1000)]
    assert len(set(seq)) == 1000 and all(0 <= v < 2**62 for v in seq)
    assert 0.45 < np.mean([v >> 61 for v in seq]) < 0.55  # top bit of 62 is fair
    t = SeedStream(0)
    t.state = s.state
    assert [s() for _ in range(5)] == [t() for _ in range(5)]


def test_packed_encoder_matches_its_documented_stream_layout():
    """Bits recomputed in plain Python from the layout in rpuhw.periphery.encode's docstring
    (line k = p * (cols + rows) + j, its ceil(BL/2) words at splitmix64 positions
    k * ceil(BL/2) + 1 ... from stream_seed(seed, 0); slot 2w from the high 32 bits,
    2w + 1 from the low; on when u < floor(p * 2**32)), with p = 0 and p = 1 lines
    among the others (the encoder skips drawing those)."""
    from rpuhw.periphery.rng import stream_seed
    from rpuhw.seeds import _GOLDEN, _MASK, _mix

    g = torch.Generator().manual_seed(7)
    P, cols, rows, bl, seed = 5, 6, 4, 7, 123456789
    ax = (torch.rand(P, cols, generator=g) * 2 - 1)
    ad = (torch.rand(P, rows, generator=g) * 2 - 1)
    ax[1] = 0.0
    ax[2, :3] = 1.0
    ad[3, 1] = -1.0
    ad[4] = 0.0
    got = encode_packed(ax, ad, bl, seed)
    s0 = int(stream_seed(np.uint64(seed), 0))
    nw = (bl + 1) // 2
    for p in range(P):
        for k, a in enumerate(list(ax[p]) + list(ad[p])):
            a = float(a)
            thr = int(min(abs(a), 1.0) * 2.0**32)
            nz = 0
            for w in range(nw):
                r = _mix((s0 + ((p * (cols + rows) + k) * nw + w + 1) * _GOLDEN) & _MASK)
                for t, u in ((2 * w, r >> 32), (2 * w + 1, r & 0xFFFFFFFF)):
                    if t < bl and u < thr:
                        nz |= 1 << t
            pos = nz if a > 0 else 0
            if k < cols:
                assert (int(got.x_nz[p, k]), int(got.x_pos[p, k])) == (nz, pos), (p, k)
            else:
                assert (int(got.d_nz[p, k - cols]), int(got.d_pos[p, k - cols])) == (nz, pos)
