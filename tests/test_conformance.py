"""Conformance of every CrossPointArray backend to the contract (rpuhw/array.py).

Each test runs unchanged against every entry of ``conformance.CASES`` and uses the
public contract only (forward, backward, update, pulse, read, program,
capabilities, shape, open_array). Tolerances come from the case's numbers:

* deterministic reads (``noisy_read`` False) are compared exactly;
* noisy reads are averaged over K reads; the mean of K reads has std
  ``read_tol / sqrt(K)``, so a difference of two means has std
  ``read_tol * sqrt(2 / K)`` and we accept 5 of those as "unchanged".
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conformance import CASES, BackendCase

import rpuhw
from rpuhw import open_array
from rpuhw.array import Capabilities, CrossPointArray, ProgramReport
from rpuhw.errors import ConfigError
from rpuhw.periphery.bits import PackedBits

ROWS, COLS = 4, 5
I, J = 1, 2  # the device singled out by the coincidence tests
SEED = 1234
K_READS = 64

cases = pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])


def make(case: BackendCase, seed: int = SEED, rows: int = ROWS,
         cols: int = COLS) -> CrossPointArray:
    return case.factory(rows, cols, seed)


def mean_read(arr: CrossPointArray, case: BackendCase) -> torch.Tensor:
    """read(), averaged over K_READS reads when reads are noisy."""
    if not case.noisy_read:
        return arr.read()
    return torch.stack([arr.read() for _ in range(K_READS)]).mean(0)


def margin(case: BackendCase) -> float:
    """Largest difference of two mean_read()s of an unchanged array (5 sigma)."""
    return 5.0 * case.read_tol * math.sqrt(2.0 / K_READS)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def set_random_weights(arr: CrossPointArray, seed: int = 7, n: int = 200) -> None:
    """Pulse every device by a random count in {±n/4, ±n/2, ±n} so that W is not zero.

    (Few distinct magnitudes: emulated pulses run one update per device, and torch's CPU
    matmul pays a one-off setup per new shape, ~15 ms.)"""
    levels = torch.tensor([-n, -n // 2, -n // 4, n // 4, n // 2, n], dtype=torch.int32)
    arr.pulse(levels[torch.randint(0, 6, arr.shape, generator=gen(seed))])


def assert_unchanged(before: torch.Tensor, after: torch.Tensor, case: BackendCase, where=None):
    if where is None:
        where = torch.ones_like(before, dtype=torch.bool)
    if case.noisy_read:
        assert (after - before)[where].abs().max() <= margin(case)
    else:
        assert torch.equal(after[where], before[where])


def zero_bits(p: int, bl: int, lines: int) -> torch.Tensor:
    return torch.zeros(p, bl, lines, dtype=torch.int8)


def single_device_bits(x_col: list[int], d_row: list[int], distractors: str, reps: int = 1):
    """Bits whose only coincidences are on device (I, J): column J gets ``x_col``, row I
    ``d_row``; other rows ("rows") or other columns ("cols") get bits in the slots where
    column J resp. row I is zero, so they never coincide with anything."""
    bl = len(x_col)
    x, d = zero_bits(reps, bl, COLS), zero_bits(reps, bl, ROWS)
    x[:, :, J] = torch.tensor(x_col, dtype=torch.int8)
    d[:, :, I] = torch.tensor(d_row, dtype=torch.int8)
    if distractors == "rows":
        free = torch.tensor(x_col) == 0
        for r in range(ROWS):
            if r != I:
                d[:, free, r] = -1 if r % 2 else 1
    elif distractors == "cols":
        free = torch.tensor(d_row) == 0
        for c in range(COLS):
            if c != J:
                x[:, free, c] = 1 if c % 2 else -1
    return x, d


def assert_moved(delta: torch.Tensor, sign: int, case: BackendCase) -> None:
    """Every entry of ``delta`` moved in direction ``sign`` beyond the read noise, except
    at most ``case.max_stuck`` devices that did not move at all."""
    moved = sign * delta > margin(case)
    assert (~moved).sum() <= case.max_stuck, delta
    assert (delta[~moved].abs() <= margin(case)).all(), delta  # never the wrong way


def coincidence_reps(case: BackendCase, per_update: int) -> int:
    """Repeat an update P times so that its net pulses beat the read noise: we require
    the expected change (P * per_update pulses of a device whose step is at least a
    quarter of the typical one) to exceed margin(case). 1 when reads are exact."""
    if not case.noisy_read:
        return 1
    return math.ceil(margin(case) / (0.25 * case.step * per_update))


# ---- shape, capabilities, return types --------------------------------------------------
@cases
def test_shape_and_capabilities(case):
    arr = make(case, rows=3, cols=6)
    assert isinstance(arr, CrossPointArray)
    assert arr.shape == (3, 6)
    assert (arr.rows, arr.cols) == (3, 6)
    assert isinstance(arr.capabilities, Capabilities)
    assert set(arr.capabilities.native()) <= {"forward", "backward", "update", "pulse", "read"}


@cases
@pytest.mark.parametrize("n", [0, 1, 7])
def test_return_types_and_shapes(case, n):
    arr = make(case)
    set_random_weights(arr)
    for out, shape in ((arr.forward(torch.rand(n, COLS) * 2 - 1), (n, ROWS)),
                       (arr.backward(torch.rand(n, ROWS) * 2 - 1), (n, COLS)),
                       (arr.read(), (ROWS, COLS))):
        assert isinstance(out, torch.Tensor)
        assert out.dtype == torch.float32
        assert out.device.type == "cpu"
        assert tuple(out.shape) == shape
        assert torch.isfinite(out).all()


@cases
def test_inputs_not_modified_and_read_is_a_copy(case):
    arr = make(case)
    set_random_weights(arr)
    before = mean_read(arr, case).clone()
    x = torch.rand(3, COLS) * 2 - 1
    d = torch.rand(3, ROWS) * 2 - 1
    x0, d0 = x.clone(), d.clone()
    arr.forward(x)
    arr.backward(d)
    assert torch.equal(x, x0) and torch.equal(d, d0)
    w = arr.read()
    w += 100.0  # the caller owns the returned tensor
    assert_unchanged(before, mean_read(arr, case), case)


# ---- forward / backward agree with read --------------------------------------------------
@cases
@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_mvm_matches_read(case, direction):
    arr = make(case)
    set_random_weights(arr)
    w = mean_read(arr, case)
    n = 400
    if direction == "forward":
        v = torch.rand(n, COLS, generator=gen(1)) * 2 - 1
        out, ref = arr.forward(v), v @ w.T
    else:
        v = torch.rand(n, ROWS, generator=gen(1)) * 2 - 1
        out, ref = arr.backward(v), v @ w
    # the weights are not all tiny, so an MVM that ignored W would be far off
    assert ref.abs().mean() > 20 * case.step
    err = out - ref
    # reference noise: out_noise on every output, plus the mean read's residual noise
    # read_tol / sqrt(K) on each weight times |v| (E|v|^2 = len(v) / 3 for v ~ U[-1, 1];
    # <0.1 % of the variance for the cases here, so we neglect its correlation over N)
    s = math.sqrt(case.out_noise**2 + case.read_tol**2 * v.shape[1] / 3 / K_READS)
    if s == 0:
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        return
    # |e| of e ~ N(0, s^2) has mean s sqrt(2/pi) and std s sqrt(1 - 2/pi): the mean over
    # M outputs must lie within 4 standard errors (for sim's default out_noise 0.06:
    # 0.0479 +- 0.0036 with M = 1600).
    m = err.numel()
    expect = s * math.sqrt(2 / math.pi)
    se = s * math.sqrt(1 - 2 / math.pi) / math.sqrt(m)
    assert abs(float(err.abs().mean()) - expect) <= 4 * se, (float(err.abs().mean()), expect)
    assert abs(float(err.mean())) <= 4 * s / math.sqrt(m)  # unbiased


# ---- pulse ------------------------------------------------------------------------------
@cases
def test_pulse_direction_and_zero_counts(case):
    arr = make(case)
    n = 50
    # 50 pulses move a device by 50 * g * step (g: its d2d step factor); c2c noise adds
    # std sqrt(50) * 0.3 * g * step ~ 2.1 g step, 23 sigma below the mean, so the sign
    # is certain for every device that moves at all. With noisy reads the change must
    # beat margin(case) (5 sigma of two K-read means): 0.0044 for read_tol 0.005,
    # i.e. g > 0.09, a 3-sigma-low device.
    pattern = torch.tensor([1, -1, 0, 1, -1], dtype=torch.int32)
    counts = torch.stack([pattern.roll(r) for r in range(ROWS)]) * n
    before = mean_read(arr, case)
    arr.pulse(counts)
    after = mean_read(arr, case)
    delta = after - before
    up, down, zero = counts > 0, counts < 0, counts == 0
    assert_moved(delta[up], 1, case)
    assert_moved(delta[down], -1, case)
    assert_unchanged(before, after, case, where=zero)
    if case.exact:
        torch.testing.assert_close(delta, counts.float() * case.step, atol=1e-6, rtol=0)
    else:  # the mean step over 12 devices is within a factor 2 of the typical one
        mean_step = float((delta[up].sum() - delta[down].sum()) / (n * (up | down).sum()))
        assert 0.5 * case.step < mean_step < 2.0 * case.step
    # all-zero counts change nothing
    arr.pulse(torch.zeros(ROWS, COLS, dtype=torch.int64))
    assert_unchanged(after, mean_read(arr, case), case)


@cases
def test_pulse_accepts_integer_dtypes(case):
    arr = make(case)
    before = mean_read(arr, case)
    for dtype in (torch.int8, torch.int16, torch.int32, torch.int64):
        c = torch.zeros(ROWS, COLS, dtype=dtype)
        c[I, J] = 20
        arr.pulse(c)
    delta = mean_read(arr, case) - before
    assert delta[I, J] > margin(case)
    if case.exact:
        assert delta[I, J] == pytest.approx(80 * case.step, abs=1e-6)


@cases
def test_bounds_saturate(case):
    if not case.has_bounds:
        pytest.skip("unbounded backend")
    arr = make(case)
    n, more = case.saturation_pulses, 1000
    for sign in (1, -1):
        for _ in range(case.saturation_calls):
            arr.pulse(torch.full((ROWS, COLS), sign * n, dtype=torch.int32))
        w1 = mean_read(arr, case)
        assert w1.abs().max() < case.w_limit
        assert_moved(w1.flatten(), sign, case)  # started at 0
        arr.pulse(torch.full((ROWS, COLS), sign * more, dtype=torch.int32))
        w2 = mean_read(arr, case)
        assert w2.abs().max() < case.w_limit
        # an unbounded device would move by more * step = 1.0; a saturated one by (much)
        # less than 2 % of that (soft bounds approach the bound exponentially)
        assert (sign * (w2 - w1) < 0.02 * more * case.step + margin(case)).all(), w2 - w1


# ---- update: pulse coincidences ---------------------------------------------------------
def update_delta_of_device_ij(arr, case, x, d) -> torch.Tensor:
    """Apply ``update(x, d)``; assert every device but (I, J) is unchanged; return the change."""
    before = mean_read(arr, case)
    arr.update(x, d)
    after = mean_read(arr, case)
    others = torch.ones(ROWS, COLS, dtype=torch.bool)
    others[I, J] = False
    assert_unchanged(before, after, case, where=others)
    return after - before


@cases
@pytest.mark.parametrize("distractors", ["rows", "cols"])
@pytest.mark.parametrize("x_col,d_row,net", [
    ([1, 1, 0], [1, 1, 0], 2),      # two +1 coincidences
    ([1, -1, 0], [-1, 1, 0], -2),   # products -1: depress, with mixed signs on each line
    ([-1, 0, -1], [1, 0, 1], -2),
    ([1, 1, 0], [-1, -1, 0], -2),
], ids=["pp", "mixed-depress", "minus-x", "minus-d"])
def test_update_single_device(case, distractors, x_col, d_row, net):
    arr = make(case)
    set_random_weights(arr)
    reps = coincidence_reps(case, abs(net))
    x, d = single_device_bits(x_col, d_row, distractors, reps)
    delta = update_delta_of_device_ij(arr, case, x, d)
    assert math.copysign(1, net) * delta[I, J] > margin(case), delta
    if case.exact:
        assert float(delta[I, J]) == pytest.approx(net * reps * case.step, abs=1e-6)


@cases
def test_update_mixed_directions_within_an_update(case):
    arr = make(case)
    set_random_weights(arr)
    bl = 40
    x_col = [-1 if t % 4 == 3 else 1 for t in range(bl)]  # 30 ups, 10 downs interleaved
    reps = coincidence_reps(case, 20)
    x, d = single_device_bits(x_col, [1] * bl, "none", reps)
    delta = update_delta_of_device_ij(arr, case, x, d)
    # net +20 pulses; c2c noise of 40 pulses has std sqrt(40) * 0.3 ~ 1.9 steps
    assert delta[I, J] > margin(case)
    if case.exact:
        assert float(delta[I, J]) == pytest.approx(20 * reps * case.step, abs=1e-6)


@cases
def test_update_random_bits_exact(case):
    if not case.exact:
        pytest.skip("only exact backends have a closed-form result")
    arr = make(case)
    g = gen(3)
    p, bl = 3, 6
    x = torch.randint(-1, 2, (p, bl, COLS), generator=g).to(torch.int8)
    d = torch.randint(-1, 2, (p, bl, ROWS), generator=g).to(torch.int8)
    before = arr.read()
    arr.update(x, d)
    expect = before + case.step * torch.einsum("ptr,ptc->rc", d.float(), x.float())
    torch.testing.assert_close(arr.read(), expect, atol=1e-6, rtol=0)


@cases
def test_update_empty_changes_nothing(case):
    arr = make(case)
    set_random_weights(arr)
    before = mean_read(arr, case)
    arr.update(zero_bits(0, 3, COLS), zero_bits(0, 3, ROWS))
    arr.update(zero_bits(2, 0, COLS), zero_bits(2, 0, ROWS))
    arr.update(zero_bits(2, 3, COLS), zero_bits(2, 3, ROWS))
    assert_unchanged(before, mean_read(arr, case), case)


@cases
def test_update_packed_bits_same_as_int8(case):
    x, d = single_device_bits([1, 1, 0], [1, 1, 0], "rows", coincidence_reps(case, 2))
    g = gen(5)
    xr = torch.randint(-1, 2, (2, 3, COLS), generator=g).to(torch.int8)
    dr = torch.randint(-1, 2, (2, 3, ROWS), generator=g).to(torch.int8)
    a, b = make(case), make(case)
    w0 = mean_read(a, case)
    a.update(x, d)
    b.update(PackedBits.from_bits(x, d))
    wa, wb = mean_read(a, case), mean_read(b, case)
    for w in (wa, wb):
        others = torch.ones(ROWS, COLS, dtype=torch.bool)
        others[I, J] = False
        assert_unchanged(w0, w, case, where=others)
        assert w[I, J] - w0[I, J] > margin(case)
    if case.exact:
        assert torch.equal(wa, wb)
        a.update(xr, dr)
        b.update(PackedBits.from_bits(xr, dr))
        assert torch.equal(a.read(), b.read())


# ---- program (write-verify) -------------------------------------------------------------
def _target() -> torch.Tensor:
    # inside every plausible device's bounds: |target| <= 0.1 while the bounds are
    # 0.6 * (1 + 0.3 xi), below 0.12 only for xi < -2.7
    return torch.linspace(-0.1, 0.1, ROWS * COLS).reshape(ROWS, COLS)


@cases
def test_program_converges(case):
    arr = make(case)
    target = _target()
    tol = case.program_tol
    rep = arr.program(target, tol=tol, max_iter=60)
    assert isinstance(rep, ProgramReport)
    off = (mean_read(arr, case) - target).abs() > tol + margin(case)
    # all devices reach the target, except stuck ones, whose failure must be reported
    assert off.sum() <= case.max_stuck, rep
    if not case.noisy_read:
        assert rep.converged == (not off.any()) == (rep.max_error <= tol), rep
    if rep.converged:
        assert rep.max_error <= tol
    assert 0 <= rep.rms_error <= rep.max_error
    assert rep.iterations >= 1
    assert rep.pulses > 0
    assert len(rep.history) == rep.iterations + 1
    assert rep.history[-1] == pytest.approx(rep.max_error)
    assert rep.history[0] == pytest.approx(float(target.abs().max()), abs=5 * case.read_tol)


@cases
def test_program_at_target_does_nothing(case):
    if case.noisy_read:
        pytest.skip("a noisy read is never exactly at the target")
    arr = make(case)
    set_random_weights(arr)
    w = arr.read()
    rep = arr.program(w, tol=case.program_tol)
    assert rep.converged and rep.iterations == 0 and rep.pulses == 0
    assert torch.equal(arr.read(), w)


@cases
def test_program_unreachable_target_is_reported(case):
    if not case.has_bounds:
        pytest.skip("unbounded backend")
    arr = make(case)
    target = torch.full((ROWS, COLS), case.w_limit + 1.0)
    rep = arr.program(target, tol=case.program_tol, max_iter=3)
    assert not rep.converged
    assert rep.max_error > 1.0
    assert rep.iterations == 3 and len(rep.history) == 4
    assert mean_read(arr, case).abs().max() < case.w_limit


# ---- bad input --------------------------------------------------------------------------
def _f(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


def _b(*shape, value=0, dtype=torch.int8, at=None):
    t = torch.zeros(*shape, dtype=dtype)
    if at is not None:
        t[at] = value
    return t


def _bad_calls():
    """(id, call(arr), substrings the ValueError message must contain)."""
    nan_x = _f(3, COLS)
    nan_x[1, 2] = float("nan")
    inf_d = _f(3, ROWS)
    inf_d[0, 0] = float("inf")
    ninf_x = _f(2, COLS)
    ninf_x[0, 0] = -float("inf")
    nan_t = _f(ROWS, COLS)
    nan_t[0, 0] = float("nan")
    big = torch.zeros(ROWS, COLS, dtype=torch.int64)
    big[0, 0] = 2**32 + 1  # would wrap to 1 as int32
    packed = PackedBits.from_bits(_b(1, 3, ROWS), _b(1, 3, COLS))  # transposed shape
    ok_packed = PackedBits.from_bits(_b(1, 3, COLS), _b(1, 3, ROWS))
    return [
        ("forward-cols+1", lambda a: a.forward(_f(3, COLS + 1)), ["x", f"[N, {COLS}]", "[3, 6]"]),
        ("forward-1d", lambda a: a.forward(_f(COLS)), ["x", f"[N, {COLS}]", f"[{COLS}]"]),
        ("forward-3d", lambda a: a.forward(_f(2, 3, COLS)), ["x", f"[N, {COLS}]", "[2, 3, 5]"]),
        ("backward-rows", lambda a: a.backward(_f(3, ROWS + 1)), ["d", f"[N, {ROWS}]", "[3, 5]"]),
        ("update-P", lambda a: a.update(_b(2, 3, COLS), _b(1, 3, ROWS)),
         ["x_bits", "d_bits", "[2, 3]", "[1, 3]"]),
        ("update-BL", lambda a: a.update(_b(1, 3, COLS), _b(1, 2, ROWS)),
         ["x_bits", "d_bits", "[1, 3]", "[1, 2]"]),
        ("update-x-lines", lambda a: a.update(_b(1, 3, COLS + 1), _b(1, 3, ROWS)),
         ["x_bits", f"[P, BL, {COLS}]", "[1, 3, 6]"]),
        ("update-d-lines", lambda a: a.update(_b(1, 3, COLS), _b(1, 3, COLS)),
         ["d_bits", f"[P, BL, {ROWS}]", "[1, 3, 5]"]),
        ("update-2d", lambda a: a.update(_b(3, COLS), _b(3, ROWS)),
         ["x_bits", f"[P, BL, {COLS}]", f"[3, {COLS}]"]),
        ("update-no-d", lambda a: a.update(_b(1, 3, COLS)), ["d_bits"]),
        ("pulse-shape", lambda a: a.pulse(_b(COLS, ROWS, dtype=torch.int32)),
         ["counts", f"[{ROWS}, {COLS}]", f"[{COLS}, {ROWS}]"]),
        ("pulse-1d", lambda a: a.pulse(_b(ROWS * COLS, dtype=torch.int32)),
         ["counts", f"[{ROWS}, {COLS}]", f"[{ROWS * COLS}]"]),
        ("forward-int", lambda a: a.forward(_f(2, COLS, dtype=torch.int64)), ["x", "int64"]),
        ("forward-complex", lambda a: a.forward(_f(2, COLS, dtype=torch.complex64)), ["x"]),
        ("backward-int", lambda a: a.backward(_f(2, ROWS, dtype=torch.int32)), ["d", "int32"]),
        ("forward-list", lambda a: a.forward([[0.0] * COLS]), ["x", "Tensor"]),
        ("x-bits-float", lambda a: a.update(_b(1, 3, COLS, dtype=torch.float32),
                                            _b(1, 3, ROWS)), ["x_bits", "float32"]),
        ("d-bits-int64", lambda a: a.update(_b(1, 3, COLS), _b(1, 3, ROWS, dtype=torch.int64)),
         ["d_bits", "int64"]),
        ("counts-float", lambda a: a.pulse(_f(ROWS, COLS)), ["counts", "float32"]),
        ("counts-bool", lambda a: a.pulse(_b(ROWS, COLS, dtype=torch.bool)), ["counts", "bool"]),
        ("counts-numpy", lambda a: a.pulse(np.ones((ROWS, COLS), dtype=np.int32)), ["counts"]),
        ("counts-overflow", lambda a: a.pulse(big), ["counts"]),
        ("x-bits-2", lambda a: a.update(_b(1, 3, COLS, value=2, at=(0, 1, 2)),
                                        _b(1, 3, ROWS, value=1, at=(0, 1, 1))), ["x_bits"]),
        ("d-bits-minus2", lambda a: a.update(_b(1, 3, COLS, value=1, at=(0, 1, 2)),
                                             _b(1, 3, ROWS, value=-2, at=(0, 1, 1))), ["d_bits"]),
        ("x-bits-minus128", lambda a: a.update(_b(1, 3, COLS, value=-128, at=(0, 0, 0)),
                                               _b(1, 3, ROWS, value=1, at=(0, 0, 0))),
         ["x_bits"]),
        ("forward-nan", lambda a: a.forward(nan_x), ["x", "non-finite"]),
        ("forward-minus-inf", lambda a: a.forward(ninf_x), ["x", "non-finite"]),
        ("backward-inf", lambda a: a.backward(inf_d), ["d", "non-finite"]),
        ("program-nan", lambda a: a.program(nan_t), ["target", "non-finite"]),
        ("program-shape", lambda a: a.program(_f(COLS, ROWS)),
         ["target", f"[{ROWS}, {COLS}]", f"[{COLS}, {ROWS}]"]),
        ("program-tol-0", lambda a: a.program(_f(ROWS, COLS), tol=0), ["tol"]),
        ("program-tol-nan", lambda a: a.program(_f(ROWS, COLS), tol=float("nan")), ["tol"]),
        ("program-max_iter-0", lambda a: a.program(_f(ROWS, COLS), max_iter=0), ["max_iter"]),
        ("program-max_pulses-neg", lambda a: a.program(_f(ROWS, COLS) + 0.05, max_pulses=-5),
         ["max_pulses"]),
        ("packed-shape", lambda a: a.update(packed),
         ["PackedBits", f"{ROWS} rows x {COLS} cols", f"{COLS} x {ROWS}"]),
        ("packed-with-d", lambda a: a.update(ok_packed, _b(1, 3, ROWS)), ["d_bits"]),
    ]


BAD = _bad_calls()


@cases
def test_bad_input_raises_and_changes_nothing(case):
    arr, twin = make(case), make(case)
    for a in (arr, twin):
        set_random_weights(a)
    before = arr.read() if not case.noisy_read else None
    for label, call, needles in BAD:
        with pytest.raises(ValueError) as info:
            call(arr)
        msg = str(info.value)
        for needle in needles:
            assert needle in msg, f"{label}: {needle!r} not in {msg!r}"
        if not case.noisy_read:
            assert torch.equal(arr.read(), before), f"{label} changed the weights"
            twin.read()  # keep the twin's calls (and noise state) in step
    if case.seeded:
        # nothing changed, not even the noise state: the same calls give the same results
        for a in (arr, twin):
            set_random_weights(a, seed=8, n=20)
        x = torch.rand(4, COLS, generator=gen(2)) * 2 - 1
        assert torch.equal(arr.forward(x), twin.forward(x))
        assert torch.equal(arr.read(), twin.read())


# ---- seeds ------------------------------------------------------------------------------
def _session(arr: CrossPointArray) -> list[torch.Tensor]:
    g = gen(11)
    out = []
    set_random_weights(arr, seed=12)
    x = torch.randint(-1, 2, (3, 4, COLS), generator=g).to(torch.int8)
    d = torch.randint(-1, 2, (3, 4, ROWS), generator=g).to(torch.int8)
    arr.update(x, d)
    arr.update(PackedBits.from_bits(x, d))
    out.append(arr.forward(torch.rand(5, COLS, generator=g) * 2 - 1))
    out.append(arr.backward(torch.rand(5, ROWS, generator=g) * 2 - 1))
    out.append(arr.read())
    arr.program(torch.full(arr.shape, 0.05), tol=0.02, max_iter=3)
    out.append(arr.read())
    return out


@cases
def test_seeded_reproducibility(case):
    if not case.seeded:
        pytest.skip("backend is not reproducible from a seed")
    a, b = _session(make(case, seed=42)), _session(make(case, seed=42))
    for ta, tb in zip(a, b, strict=True):
        assert torch.equal(ta, tb)
    if not case.exact:  # the seed matters (device draws and noise)
        c = _session(make(case, seed=43))
        assert not torch.equal(a[-1], c[-1])


# ---- open_array -------------------------------------------------------------------------
@cases
def test_open_array_spec(case):
    if case.spec is None:
        pytest.skip("no open_array spec")
    arr = open_array(case.spec, 3, 6, seed=1)
    assert isinstance(arr, CrossPointArray)
    assert arr.shape == (3, 6)


def test_open_array_unknown_spec_lists_known():
    with pytest.raises(ConfigError) as info:
        open_array("no_such_backend", ROWS, COLS)
    msg = str(info.value)
    assert "no_such_backend" in msg
    for spec in rpuhw.known_specs():
        assert spec in msg
    assert "ideal" in msg and "sim:PATH.yaml" in msg


def test_open_array_missing_yaml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        open_array("sim:missing.yaml", ROWS, COLS)
    assert "missing.yaml" in str(info.value)


@cases
def test_arrays_are_context_managers_and_close_twice(case):
    """Every backend can be closed (hardware: outputs off, sessions closed) and used in
    ``with``; a second close is harmless."""
    with make(case) as arr:
        assert arr.read().shape == (ROWS, COLS)
    arr.close()
