"""``ideal``: an exact floating-point array, the reference behind the contract.

Forward and backward are exact matmuls (no noise, no bound, no quantisation);
every pulse changes a weight by exactly ``±dw`` (no bounds, no noise), so
updates and write-verify are exact too.

It models no device: it is used only as a reference (tests compare layers, the
scheduler and the periphery on it against torch's own arithmetic; ``rpuhw train
--backend ideal`` is floating-point training through the pulsed periphery). With numba
it offers the contract's optional native hooks, which compute exactly what the generic
paths compute (same outputs, weights and periphery counters, bit for bit; see
:mod:`rpuhw.ideal_kernels`), so that it trains at the simulator's speed:

* ``_managed_mvm``: the periphery's noise- and bound-managed MVM in one call (two
  compiled passes around the matmul of :meth:`IdealArray._forward`/``_backward``);
* ``_update_packed`` and ``_update_signed``: packed pulse trains applied by counting
  coincidences with popcount, ``W += dw * (up - down coincidences)``, with no int8 bit
  tensors in between; ``_update_signed`` encodes them first
  (``encode_packed_np(sx, sd, bl, seed)``'s bits, in work arrays kept between calls).

A hook stands for the methods it fuses: where a subclass or a test's spy replaces one of
them (``forward``/``backward`` for the MVM; ``update``, ``_update`` or ``_update_packed``
for the updates), the hook steps aside and the replacement is called as the generic path
calls it. Without numba (``RPUHW_NO_NUMBA=1``) the periphery's generic paths run too.
"""

from __future__ import annotations

import numpy as np
import torch

from rpuhw import ideal_kernels as ik
from rpuhw._jit import HAVE_NUMBA
from rpuhw.array import Capabilities, CrossPointArray, check_float
from rpuhw.periphery.absmax import as_f32_array
from rpuhw.periphery.bits import MAX_BL, PackedBits
from rpuhw.periphery.encode import encode_kernel_for
from rpuhw.periphery.io import SAT_RTOL

MVMCounters = tuple[int, int, int, int]
"""(array calls, vectors sent, BM halvings, unresolved vectors), as the periphery counts."""


class IdealArray(CrossPointArray):
    """Exact array: ``y = W x``, each pulse adds exactly ``±dw`` (the reference backend).

    Args:
        rows, cols: array size (rows = outputs, columns = inputs).
        dw: weight change of one pulse (weight units), exact.
        seed: unused (nothing is random); accepted like every backend's.
    """

    capabilities = Capabilities(forward=True, backward=True, update=True, pulse=True,
                                read=True)

    def __init__(self, rows: int, cols: int, dw: float = 0.001, seed: int | None = None):
        super().__init__(rows, cols)
        if not dw > 0:
            raise ValueError(f"dw: expected a positive step size, got {dw!r}")
        self.dw = float(dw)
        self.weights = torch.zeros(rows, cols)
        self._work: tuple[np.ndarray, ...] | None = None  # packed masks and counts

    def __getstate__(self) -> dict:  # copy / pickle: no work arrays
        state = self.__dict__.copy()
        state["_work"] = None
        return state

    def set_weights(self, w: torch.Tensor) -> None:
        """Set the weights directly (exact; no bounds to respect)."""
        self.weights.copy_(check_float(w, "w", self.shape))

    def state_dict(self) -> dict:
        return {"weights": self.weights.clone()}

    def load_state_dict(self, sd: dict) -> None:
        self.set_weights(sd["weights"])

    def nominal_step(self) -> float:
        return self.dw

    def _forward(self, x):
        return x @ self.weights.T

    def _backward(self, d):
        return d @ self.weights

    def _update(self, x_bits, d_bits):
        # coincidences of all P updates summed: exact since there are no bounds
        x = x_bits.float().reshape(-1, self.cols)
        d = d_bits.float().reshape(-1, self.rows)
        self.weights += self.dw * (d.T @ x)

    def _pulse(self, counts):
        self.weights += self.dw * counts.float()

    def _read(self):
        return self.weights.clone()

    # ---- native hooks (numba): the generic paths' results, without their overhead ----
    def _fuses(self, *names: str) -> bool:
        """Whether the methods ``names`` are still this module's own (the ones the native
        hooks compute), checked per call since a test may patch the class."""
        cls = type(self)
        return HAVE_NUMBA and all(getattr(cls, n) is _OWN[n] for n in names)

    def _update_packed(self, packed: PackedBits) -> None:
        """``W += dw * (up - down coincidences)`` counted on the packed masks."""
        if not self._fuses("_update"):
            return self._update(*packed.to_bits())
        ik.coincidence_update_kernel(packed.x_nz, packed.x_pos, packed.d_nz, packed.d_pos,
                                     self.weights.numpy(), self.dw, self._buffers(0)[4])

    def _update_signed(self, sx: np.ndarray, sd: np.ndarray, bl: int, seed: int) -> bool:
        """Encode ``encode_packed_np(sx, sd, bl, seed)``'s masks into work arrays and
        apply them as :meth:`_update_packed` does."""
        if bl > MAX_BL or not self._fuses("update", "_update_packed", "_update"):
            return False
        n_updates = sx.shape[0]
        x_nz, x_pos, d_nz, d_pos, counts = self._buffers(n_updates)
        encode = encode_kernel_for(n_updates * (self.cols + self.rows) * bl)
        encode(sx, sd, bl, np.uint64(seed), x_nz, x_pos, d_nz, d_pos)
        ik.coincidence_update_kernel(x_nz, x_pos, d_nz, d_pos, self.weights.numpy(),
                                     self.dw, counts)
        return True

    def _buffers(self, n_updates: int) -> tuple[np.ndarray, ...]:
        """Packed masks for ``n_updates`` updates and the counts array, kept between
        calls (fresh arrays of this size cost page faults on every update)."""
        work = self._work
        if work is None or work[0].shape[0] < n_updates:
            n = max(n_updates, 1)
            work = (np.empty((n, self.cols), np.uint64), np.empty((n, self.cols), np.uint64),
                    np.empty((n, self.rows), np.uint64), np.empty((n, self.rows), np.uint64),
                    np.empty((self.rows, self.cols), np.int64))
            self._work = work
        return (*(b[:n_updates] for b in work[:4]), work[4])

    def _managed_mvm(self, v: torch.Tensor, transposed: bool, noise_management: bool,
                     bound_management: bool, bm_bound: float,
                     max_halvings: int) -> tuple[torch.Tensor, MVMCounters] | None:
        """The periphery's generic managed MVM (``Periphery._mvm`` without DAC/ADC
        quantisation), step for step: NM's ``v / s`` of the non-zero vectors, one
        :meth:`_forward` (``transposed``: :meth:`_backward`) of them, ``y s`` and BM's
        saturation test compiled; the rare BM repeats as the generic path does them."""
        if not self._fuses("forward" if not transposed else "backward"):
            return None
        va = as_f32_array(v)
        n = va.shape[0]
        n_out = self.cols if transposed else self.rows
        out = np.zeros((n, n_out), np.float32)
        if n == 0:
            return torch.from_numpy(out), (0, 0, 0, 0)
        xn = np.empty_like(va) if noise_management else va
        scale, idx = np.empty(n, np.float32), np.empty(n, np.int64)
        live = ik.mvm_prepare_kernel(va, noise_management, xn, scale, idx)
        if live == ik.NONFINITE:
            raise ValueError(f"{'d' if transposed else 'x'}: contains non-finite values "
                             "(nan or inf)")
        if live == 0:  # every vector is zero: no array cycle
            return torch.from_numpy(out), (0, 0, 0, 0)
        op = self._backward if transposed else self._forward
        x = torch.from_numpy(xn[:live]) if noise_management else v  # what the array sees
        y = op(x)
        sat = np.empty(live, np.bool_)
        limit = np.float32(bm_bound * (1.0 - SAT_RTOL))  # torch compares in float32 too
        n_sat = ik.mvm_finish_kernel(y.numpy(), scale, idx, limit, bound_management, out, sat)
        result = torch.from_numpy(out)
        counters = (1, live, 0, 0)
        if n_sat:
            counters = _bm_repeats(op, x, torch.from_numpy(scale[:live]),
                                   torch.from_numpy(idx[:live]), torch.from_numpy(sat),
                                   n_sat, bm_bound, max_halvings, result, counters)
        return result, counters


_OWN = {"forward": CrossPointArray.forward, "backward": CrossPointArray.backward,
        "update": CrossPointArray.update, "_update": IdealArray._update,
        "_update_packed": IdealArray._update_packed}
"""The methods a native hook of :class:`IdealArray` computes, as this module defines them."""


def _bm_repeats(op, v: torch.Tensor, scale: torch.Tensor, idx: torch.Tensor,
                sat: torch.Tensor, n_sat: int, bound: float, max_halvings: int,
                out: torch.Tensor, counters: MVMCounters) -> MVMCounters:
    """Bound management's repeats after the first cycle, as ``Periphery._mvm`` does them:
    the saturated vectors' inputs halved and sent again (``out`` rows rewritten), at most
    ``max_halvings`` times per vector; returns the updated counters."""
    calls, vectors, halvings, unresolved = counters
    level = 0
    while n_sat:
        if level >= max_halvings:
            unresolved += n_sat
            break
        level += 1
        halvings += n_sat
        idx, v, scale = idx[sat], v[sat] * 0.5, scale[sat] * 2.0
        y = op(v)
        calls += 1
        vectors += v.shape[0]
        out[idx] = y * scale[:, None]
        sat = (y.abs() >= bound * (1.0 - SAT_RTOL)).any(dim=1)
        n_sat = int(sat.sum())
    return calls, vectors, halvings, unresolved
