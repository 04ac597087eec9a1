"""The digital periphery of an RPU array (Gokmen, Onen & Haensch 2017).

Backend-independent: it drives any :class:`~rpuhw.array.CrossPointArray`
through ``forward``, ``backward``, ``update`` and ``nominal_step`` only, so the
same management runs on the simulator and on a chip. Each technique is one
switch of :class:`PeripheryConfig`, which makes the paper's ablation
(baseline, +NM, +BM, +UM) one flag each:

* **Noise management** (NM, forward and backward): each vector is divided by
  its largest magnitude ``m`` before the array sees it and the output is
  multiplied by ``m`` again, so inputs span the DAC range and the array's
  fixed additive read noise stays small relative to the signal. An all-zero
  vector gives a zero output without an array cycle.
* **Bound management** (BM, forward; backward with ``bm_backward``): while
  any output of a sample reaches the output bound, that sample's input is
  halved and it alone is recomputed (another array cycle), at most
  ``bm_max_halvings`` times; the output is multiplied back by ``2**k``.
* **Update management** (UM): the translators' gains are balanced per update
  vector, ``C_x = C sqrt(d_max / x_max)``, ``C_d = C sqrt(x_max / d_max)``
  with ``C = sqrt(lr / (BL dw_min))``, so both pulse trains have the same
  largest probability while ``lr = BL dw_min C_x C_d`` is unchanged.
* **DAC/ADC quantisation** (``inp_res``, ``out_res``) done digitally here.
* **Stochastic pulse encoding**: BL slots per update; slot t of a line is on
  with probability ``p = min(1, C |v|)``, independently per slot and line, and
  carries the sign of the value (see :mod:`rpuhw.periphery.encode`).

Example::

    array = rpuhw.open_array("sim", 16, 26, seed=0)
    per = Periphery(array)                      # NM, BM, UM on (the paper)
    y = per.forward(x)                          # x [N, 26] -> y [N, 16]
    per.update(x, d, lr=0.01)                   # W <- W - lr d x^T in expectation
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch

from rpuhw._jit import HAVE_NUMBA
from rpuhw.array import CrossPointArray, check_float
from rpuhw.config import require
from rpuhw.periphery import probabilities as pk
from rpuhw.periphery.absmax import as_f32_array, row_absmax
from rpuhw.periphery.bits import MAX_BL, PackedBits
from rpuhw.periphery.encode import encode_packed_np, encode_torch
from rpuhw.periphery.io import SAT_RTOL, quantize
from rpuhw.periphery.probabilities import signed_probabilities_kernel
from rpuhw.seeds import SeedStream

__all__ = ["Periphery", "PeripheryConfig", "PeripheryStats", "TileLines"]

_DEFAULT_OUT_BOUND = 12.0


@dataclass
class PeripheryConfig:
    """Switches and constants of the digital periphery (the paper's defaults)."""

    noise_management: bool = True
    """NM: divide each forward/backward vector by its max |value| before the array
    and multiply the output back (a zero vector gives zero without an array cycle)."""

    bound_management: bool = True
    """BM (forward pass): while any output of a sample reaches the output bound,
    halve that sample's input and recompute it (only saturated samples)."""

    bm_max_halvings: int = 10
    """Most halvings per sample (dimensionless count); after that the saturated
    output is returned as it is."""

    bm_backward: bool = False
    """Apply bound management to the backward pass too (off in the paper)."""

    update_management: bool = True
    """UM: per update vector, C_x = C sqrt(d_max / x_max), C_d = C sqrt(x_max / d_max),
    so both pulse trains have equal largest probabilities; off: C_x = C_d = C."""

    bl: int = 10
    """Pulse-train length BL: slots per update (count)."""

    lr: float = 0.01
    """Learning rate eta (weight units per unit of d * x) used when ``update`` is
    called without ``lr``; eta = BL * dw_min * C_x * C_d."""

    inp_res: float | None = None
    """DAC step of the periphery as a fraction of the input range [-1, 1] (step =
    inp_res * 2, aihwkit's meaning); inputs are clipped to [-1, 1] first. None = no
    quantisation (the array's own DAC, if any, still applies)."""

    out_res: float | None = None
    """ADC step as a fraction of the output range [-out_bound, out_bound] (step =
    out_res * 2 * out_bound), applied to array outputs before rescaling. None = exact."""

    out_bound: float | None = None
    """Output saturation threshold (output units) used by BM and the ADC. None =
    ``array.info().out_bound`` when the array knows it (read once, when the periphery
    is made), else 12."""

    dw_min: float | None = None
    """Weight change of one coincidence (weight units) used for C. None =
    ``array.nominal_step()``."""

    def validate(self) -> None:
        """Check value ranges; raises :class:`~rpuhw.errors.ConfigError` naming the key."""
        for key in ("noise_management", "bound_management", "bm_backward",
                    "update_management"):
            require(isinstance(getattr(self, key), bool), key,
                    f"expected true or false, got {getattr(self, key)!r}")
        for key in ("bm_max_halvings", "bl"):
            v = getattr(self, key)
            require(isinstance(v, int) and not isinstance(v, bool), key,
                    f"expected an integer, got {v!r}")
        require(self.bm_max_halvings >= 0, "bm_max_halvings",
                f"must be >= 0, got {self.bm_max_halvings}")
        require(self.bl >= 1, "bl", f"must be >= 1, got {self.bl}")
        require(_is_number(self.lr) and math.isfinite(self.lr) and self.lr > 0, "lr",
                f"must be a finite number > 0, got {self.lr!r}")
        for key in ("inp_res", "out_res"):
            v = getattr(self, key)
            require(v is None or (_is_number(v) and 0 < v <= 1), key,
                    f"must be null or in (0, 1], got {v!r}")
        for key in ("out_bound", "dw_min"):
            v = getattr(self, key)
            require(v is None or (_is_number(v) and math.isfinite(v) and v > 0), key,
                    f"must be null or a finite number > 0, got {v!r}")


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class PeripheryStats:
    """Counters of one :class:`Periphery` (for the paper's ablation and cost accounting)."""

    forward_calls: int = 0
    """``array.forward`` calls, bound-management repeats included."""
    forward_vectors: int = 0
    """Vectors sent through ``array.forward`` (analog forward cycles)."""
    backward_calls: int = 0
    """``array.backward`` calls, bound-management repeats included."""
    backward_vectors: int = 0
    """Vectors sent through ``array.backward``."""
    bm_halvings: int = 0
    """Sample halvings done by bound management (one per sample and repeat)."""
    bm_unresolved: int = 0
    """Samples still saturated after ``bm_max_halvings`` halvings."""
    update_calls: int = 0
    """``update`` calls (each one ``array.update`` call)."""
    updates: int = 0
    """Rank-1 updates (update vectors P) sent to the array."""
    px_mean: float = 0.0
    """Mean pulse probability of the input (column) lines in the last update call."""
    pd_mean: float = 0.0
    """Mean pulse probability of the error (row) lines in the last update call."""
    px_max: float = 0.0
    """Largest input-line pulse probability in the last update call."""
    pd_max: float = 0.0
    """Largest error-line pulse probability in the last update call."""

    def reset(self) -> None:
        """Zero every counter."""
        for key, value in asdict(PeripheryStats()).items():
            setattr(self, key, value)


@dataclass(frozen=True)
class TileLines:
    """The lines of a shared pulse train that one tile receives (:meth:`Periphery.update_tiles`)."""

    periphery: Periphery
    """The tile's periphery (its array is pulsed, its statistics count the update)."""
    rows: np.ndarray
    """Error (d) lines of the encoded update feeding the tile's rows, in order (int64
    indices; repeats allowed: K devices per weight repeat every line K times)."""
    cols: slice
    """Input (x) lines of the encoded update feeding the tile's columns."""


class Periphery:
    """Digital periphery around one array: managed MVMs and stochastic updates.

    Args:
        array: any :class:`~rpuhw.array.CrossPointArray`.
        config: a :class:`PeripheryConfig` (None: the paper's defaults, all on).
        seed: seeds the periphery's own generator (pulse trains); equal seeds and
            equal calls give equal bits. None draws a fresh seed.
        engine: pulse encoder, ``"numba"`` (packed masks), ``"torch"`` (int8 bits)
            or ``"auto"`` (numba when installed). BL > 64 always uses torch.
    """

    def __init__(self, array: CrossPointArray, config: PeripheryConfig | None = None,
                 seed: int | None = None, engine: str = "auto"):
        if not isinstance(array, CrossPointArray):
            raise ValueError(f"array: expected a CrossPointArray, got {type(array).__name__}")
        config = PeripheryConfig() if config is None else config
        if not isinstance(config, PeripheryConfig):
            raise ValueError(f"config: expected a PeripheryConfig, got {type(config).__name__}")
        config.validate()
        if engine not in ("auto", "numba", "torch"):
            raise ValueError(f"engine: expected 'auto', 'numba' or 'torch', got {engine!r}")
        if engine == "numba" and not HAVE_NUMBA:
            raise ValueError("engine: 'numba' requested but numba is not installed")
        self.array = array
        self.config = config
        self.engine = "numba" if engine != "torch" and HAVE_NUMBA else "torch"
        self.gen = torch.Generator()
        if seed is None:
            self.gen.seed()
        else:
            self.gen.manual_seed(int(seed))
        self._seeds = SeedStream.from_generator(self.gen)  # seeds of the compiled encoder
        self.stats = PeripheryStats()
        bound = array.info().out_bound  # a property of the array: read once (not per MVM)
        self._array_bound = _DEFAULT_OUT_BOUND if bound is None else float(bound)

    def __repr__(self) -> str:
        c = self.config
        flags = [n for n, on in (("NM", c.noise_management), ("BM", c.bound_management),
                                 ("UM", c.update_management)) if on]
        return (f"Periphery({self.array!r}, {'+'.join(flags) or 'no management'}, "
                f"BL={c.bl}, engine={self.engine!r})")

    # ---- resolved constants ----------------------------------------------------------
    @property
    def out_bound(self) -> float:
        """Output bound used by BM and the ADC: the config's, else the array's
        ``info().out_bound`` (read when the periphery was made), else 12."""
        if self.config.out_bound is not None:
            return float(self.config.out_bound)
        return self._array_bound

    @property
    def dw_min(self) -> float:
        """Weight change per coincidence assumed by the encoder (config, else the array's)."""
        if self.config.dw_min is not None:
            return float(self.config.dw_min)
        return float(self.array.nominal_step())

    # ---- forward / backward ----------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Managed MVMs ``y = W x``: x [N, cols] -> y [N, rows] (any scale of x)."""
        # nan/inf are rejected by the managed MVM or in _mvm's generic path (one pass)
        x = check_float(x, "x", (None, self.array.cols), finite=False)
        return self._mvm(x, self.array.forward, self.array.rows, "forward",
                         self.config.bound_management)

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        """Managed transposed MVMs ``z = W^T d``: d [N, rows] -> z [N, cols]."""
        d = check_float(d, "d", (None, self.array.rows), finite=False)
        return self._mvm(d, self.array.backward, self.array.cols, "backward",
                         self.config.bound_management and self.config.bm_backward)

    def _mvm(self, v: torch.Tensor, op, n_out: int, kind: str, bm: bool) -> torch.Tensor:
        c = self.config
        if not (c.inp_res or c.out_res):  # the array may do all of it in one native call
            fused = self.array._managed_mvm(v, kind == "backward", c.noise_management, bm,
                                            self.out_bound, c.bm_max_halvings)
            if fused is not None:
                y, (calls, vectors, halvings, unresolved) = fused
                st = self.stats
                if kind == "forward":
                    st.forward_calls += calls
                    st.forward_vectors += vectors
                else:
                    st.backward_calls += calls
                    st.backward_vectors += vectors
                st.bm_halvings += halvings
                st.bm_unresolved += unresolved
                return y
        # generic path: reject nan/inf here (NM would take a nan row for an all-zero one)
        if v.numel() and not math.isfinite(float(v.abs().amax())):
            raise ValueError(f"{'x' if kind == 'forward' else 'd'}: contains non-finite "
                             "values (nan or inf)")
        n = v.shape[0]
        out = torch.zeros(n, n_out)
        if n == 0:
            return out
        if c.noise_management:
            scale = row_absmax(v)
            idx = torch.nonzero(scale > 0).flatten()
            if idx.numel() == 0:
                return out
            v, scale = v[idx] / scale[idx, None], scale[idx]
        else:
            idx = torch.arange(n)
            scale = torch.ones(n)
        bound = self.out_bound
        halvings = 0
        while True:
            y_raw = self._array_call(op, v, kind)
            y = y_raw
            if c.out_res:
                y = quantize(y.clamp(-bound, bound), c.out_res, bound).clamp(-bound, bound)
            out[idx] = y * scale[:, None]
            if not bm or idx.numel() == 0:
                break
            sat = (y_raw.abs() >= bound * (1.0 - SAT_RTOL)).any(dim=1)
            if not sat.any():
                break
            if halvings >= c.bm_max_halvings:
                self.stats.bm_unresolved += int(sat.sum())
                break
            halvings += 1
            idx, v, scale = idx[sat], v[sat] * 0.5, scale[sat] * 2.0
            self.stats.bm_halvings += int(sat.sum())
        return out

    def _array_call(self, op, v: torch.Tensor, kind: str) -> torch.Tensor:
        c = self.config
        if c.inp_res:
            v = quantize(v.clamp(-1.0, 1.0), c.inp_res, 1.0)
        if kind == "forward":
            self.stats.forward_calls += 1
            self.stats.forward_vectors += v.shape[0]
        else:
            self.stats.backward_calls += 1
            self.stats.backward_vectors += v.shape[0]
        return op(v)

    # ---- update ----------------------------------------------------------------------
    def probabilities(self, x: torch.Tensor, d: torch.Tensor,
                      lr: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pulse probabilities ``(p_x [P, cols], p_d [P, rows])`` of the update of (x, d).

        ``p_x = min(1, C_x |x|)``, ``p_d = min(1, C_d |d|)``, with C_x, C_d per
        update vector as set by the config (UM or not). An update vector whose
        x or d is all zero gets zero probabilities (it changes nothing).
        """
        x, d, lr = self._check_update(x, d, lr)
        return self._probabilities(x, d, lr)

    def _check_update(self, x, d, lr, own_shape: bool = True):
        """Validated ``(x, d, lr)``; ``own_shape=False`` accepts any widths (an update
        encoded here and fanned out to other tiles: :meth:`update_tiles`)."""
        cols, rows = (self.array.cols, self.array.rows) if own_shape else (None, None)
        # with numba, the probability kernel rejects nan/inf in the same pass
        x = check_float(x, "x", (None, cols), finite=not HAVE_NUMBA)
        d = check_float(d, "d", (None, rows), finite=not HAVE_NUMBA)
        if x.shape[0] != d.shape[0]:
            raise ValueError(f"x and d: expected the same number of update vectors P, got "
                             f"x {list(x.shape)} and d {list(d.shape)}")
        if lr is None:
            lr = self.config.lr
        if not (_is_number(lr) and math.isfinite(lr) and lr >= 0):
            raise ValueError(f"lr: expected a finite number >= 0, got {lr!r}")
        return x, d, float(lr)

    def _probabilities(self, x: torch.Tensor, d: torch.Tensor, lr: float):
        sx, sd, _, _ = self._signed_probabilities(x, d, lr)
        return sx.abs(), sd.abs()

    def _gain(self, lr: float) -> float:
        return math.sqrt(lr / (self.config.bl * self.dw_min))

    def _signed_probabilities(self, x: torch.Tensor, d: torch.Tensor, lr: float):
        """``(sign(x) p_x, -sign(d) p_d, (max p_x, max p_d), (sum p_x, sum p_d))``: d lines
        carry -sign(d). Gains are computed in float64 per update vector and applied in
        float32; one compiled pass with numba (:mod:`rpuhw.periphery.probabilities`, the same
        arithmetic as :meth:`_signed_probabilities_torch`), which also rejects nan/inf.
        """
        if not HAVE_NUMBA:
            return self._signed_probabilities_torch(x, d, lr)
        sx, sd, stats = self._signed_np(x, d, lr)
        return (torch.from_numpy(sx), torch.from_numpy(sd), (stats[2], stats[3]),
                (stats[0], stats[1]))

    def _signed_np(self, x: torch.Tensor, d: torch.Tensor, lr: float):
        """The compiled pass of :meth:`_signed_probabilities`: numpy ``sx, sd`` and
        ``stats = [sum p_x, sum p_d, max p_x, max p_d]``."""
        xa, da = as_f32_array(x), as_f32_array(d)
        sx, sd, stats = np.empty_like(xa), np.empty_like(da), np.empty(4)
        status = signed_probabilities_kernel(xa, da, self._gain(lr),
                                             self.config.update_management, sx, sd, stats)
        self._raise_nonfinite(status)
        return sx, sd, stats

    def _signed_probabilities_torch(self, x: torch.Tensor, d: torch.Tensor, lr: float):
        """:meth:`_signed_probabilities` with tensor operations (no numba)."""
        c = self.config
        gain = self._gain(lr)
        x_max = row_absmax(x).double()[:, None]
        d_max = row_absmax(d).double()[:, None]
        live = (x_max > 0) & (d_max > 0)  # otherwise no coincidence is possible: p = 0
        if c.update_management:
            one = torch.ones_like(x_max)
            ratio = torch.sqrt(torch.where(live, d_max, one) / torch.where(live, x_max, one))
            cx, cd = gain * ratio, gain / ratio
        else:
            cx = cd = torch.full_like(x_max, gain)
        zero = torch.zeros_like(x_max)
        cx, cd = torch.where(live, cx, zero), torch.where(live, cd, zero)

        def scaled(v, g):
            if not v.numel():
                return v.clone()
            if float(g.abs().max()) < pk.F32_SAFE:
                return (v * g.float()).clamp_(-1.0, 1.0)
            # gains beyond float32 range (extreme x_max / d_max ratios): multiply in float64
            return (v.double() * g).clamp_(-1.0, 1.0).float()

        def top(g, m):
            return float((g * m).clamp(max=1.0).max()) if m.numel() else 0.0

        sx, sd = scaled(x, cx), scaled(d, -cd)
        return (sx, sd, (top(cx, x_max), top(cd, d_max)),
                (float(sx.abs().sum(dtype=torch.float64)),
                 float(sd.abs().sum(dtype=torch.float64))))

    def _signed(self, x, d, lr):
        """Signed probabilities of an update, recording their statistics."""
        sx, sd, tops, sums = self._signed_probabilities(x, d, lr)
        self._record(tops, sums, sx.numel(), sd.numel())
        return sx, sd

    def _record(self, tops, sums, nx: int, nd: int) -> None:
        st = self.stats
        st.px_max, st.pd_max = float(tops[0]), float(tops[1])
        st.px_mean = float(sums[0]) / nx if nx else 0.0
        st.pd_mean = float(sums[1]) / nd if nd else 0.0

    def _encode_packed(self, x: torch.Tensor, d: torch.Tensor, lr: float) -> PackedBits:
        """Validated x, d -> PackedBits (numba, BL <= 64), recording the statistics; the
        bits of ``encode_packed(*_signed(...), seed)``. nan/inf raise before a seed is
        consumed (bad input changes nothing)."""
        return encode_packed_np(*self._signed_seeded(x, d, lr))

    def _signed_seeded(self, x: torch.Tensor, d: torch.Tensor, lr: float):
        """``(sx, sd, bl, seed)`` of an update (numpy signed probabilities, recorded in
        the statistics, and the call seed of its pulse trains)."""
        sx, sd, stats = self._signed_np(x, d, lr)
        self._record(stats[2:], stats[:2], sx.size, sd.size)
        return sx, sd, self.config.bl, self._seed()

    @staticmethod
    def _raise_nonfinite(status: int) -> None:
        if status != pk.OK:
            name = "x" if status == pk.X_NONFINITE else "d"
            raise ValueError(f"{name}: contains non-finite values (nan or inf)")

    def _seed(self) -> int:
        return self._seeds()

    def rng_state(self) -> dict:
        """State of the periphery's randomness (generator and seed stream), for checkpoints."""
        return {"gen": self.gen.get_state(), "seeds": self._seeds.state}

    def set_rng_state(self, state) -> None:
        """Restore :meth:`rng_state` (a bare generator state is accepted too)."""
        if isinstance(state, torch.Tensor):
            self.gen.set_state(state)
            return
        self.gen.set_state(state["gen"])
        self._seeds.state = int(state["seeds"])

    def _packed_ok(self) -> bool:
        return self.engine == "numba" and self.config.bl <= MAX_BL

    def encode(self, x: torch.Tensor, d: torch.Tensor, lr: float | None = None) -> PackedBits:
        """Pulse trains of P updates as :class:`~rpuhw.periphery.bits.PackedBits` (BL <= 64).

        x [P, cols], d [P, rows]; see :meth:`update` for probabilities and signs.
        """
        x, d, lr = self._check_update(x, d, lr)
        if self.config.bl > MAX_BL:
            raise ValueError(f"encode: packed bits hold at most {MAX_BL} slots, config bl is "
                             f"{self.config.bl} (use encode_bits)")
        if self.engine == "numba":
            return self._encode_packed(x, d, lr)
        sx, sd = self._signed(x, d, lr)
        return PackedBits.from_bits(*encode_torch(sx, sd, self.config.bl, self.gen))

    def encode_bits(self, x: torch.Tensor, d: torch.Tensor,
                    lr: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Pulse trains of P updates as int8 ``(x_bits [P, BL, cols], d_bits [P, BL, rows])``.

        Entries are in {-1, 0, +1}: x bits carry ``sign(x)``, d bits ``-sign(d)``.
        With the numba engine and BL <= 64 these are exactly the bits
        :meth:`encode` would give for the same generator state.
        """
        x, d, lr = self._check_update(x, d, lr)
        if self._packed_ok():
            return self._encode_packed(x, d, lr).to_bits()
        sx, sd = self._signed(x, d, lr)
        return encode_torch(sx, sd, self.config.bl, self.gen)

    def update(self, x: torch.Tensor, d: torch.Tensor, lr: float | None = None) -> None:
        """P stochastic rank-1 updates, in order: ``W <- W - lr * d_p x_p^T`` in expectation.

        ``x [P, cols]`` are the layer inputs, ``d [P, rows]`` the errors dL/dy, so
        this is gradient *descent*. Slot t of column line j is ``sign(x_j)`` with
        probability ``p_x = min(1, C_x |x_j|)``, of row line i ``-sign(d_i)`` with
        probability ``p_d = min(1, C_d |d_i|)``, each slot an independent
        Bernoulli draw. A coincidence moves w_ij one step up when the two bits'
        product is +1, so ``E[dw_ij] = -BL dw_min C_x C_d x_j d_i = -lr d_i x_j``
        (while no probability is clipped at 1). ``lr`` defaults to the config's.
        Passes :class:`~rpuhw.periphery.bits.PackedBits` to the array when BL <= 64 and
        numba is available, int8 bits otherwise.
        """
        x, d, lr = self._check_update(x, d, lr)
        if x.shape[0] == 0:
            return
        if self._packed_ok():
            signed = self._signed_seeded(x, d, lr)
            if not self.array._update_signed(*signed):  # the backend's fused path, or:
                self.array.update(encode_packed_np(*signed))
        else:
            sx, sd = self._signed(x, d, lr)
            self.array.update(*encode_torch(sx, sd, self.config.bl, self.gen))
        self._count_update(x.shape[0])

    def _count_update(self, n: int) -> None:
        self.stats.update_calls += 1
        self.stats.updates += n

    def update_tiles(self, x: torch.Tensor, d: torch.Tensor, lr: float | None,
                     tiles: list[TileLines]) -> None:
        """Encode the pulse trains of ``(x, d)`` once and apply them to several tiles.

        ``x [P, in]`` and ``d [P, out]`` are the logical update vectors; this periphery's
        config, update management and generator make one set of pulse trains (the bits
        :meth:`encode` gives), and each tile's array gets its lines (``TileLines.rows`` of
        the d trains, ``TileLines.cols`` of the x trains) in one ``update`` call. A weight
        held by K devices (K copies of its row) lists each d line K times, so all K
        devices get the same pulses, as the paper's device-variability reduction does.
        """
        x, d, lr = self._check_update(x, d, lr, own_shape=False)
        if x.shape[0] == 0:
            return
        if self._packed_ok():
            pk = self._encode_packed(x, d, lr)
            c = np.ascontiguousarray
            for t in tiles:
                t.periphery.array.update(PackedBits(c(pk.x_nz[:, t.cols]), c(pk.x_pos[:, t.cols]),
                                                    c(pk.d_nz[:, t.rows]), c(pk.d_pos[:, t.rows]),
                                                    pk.bl))
                t.periphery._count_update(x.shape[0])
            return
        sx, sd = self._signed(x, d, lr)
        xb, db = encode_torch(sx, sd, self.config.bl, self.gen)
        for t in tiles:
            t.periphery.array.update(xb[:, :, t.cols].contiguous(), db[:, :, t.rows].contiguous())
            t.periphery._count_update(x.shape[0])

    def pulse_counts(self, x: torch.Tensor, d: torch.Tensor,
                     lr: float | None = None) -> torch.Tensor:
        """Aggregated update as signed pulse counts ``[out, in]`` (int32) of x [P, in], d [P, out].

        ``n = stochastic_round(-lr d^T x / dw_min)``: the update the P pairs ask for in
        expectation, rounded up with probability equal to the fraction (unbiased) using
        this periphery's generator. For ``sample``/``batch`` update granularity, sent
        through the array's ``pulse`` (an approximation of pulsed SGD).
        """
        x, d, lr = self._check_update(x, d, lr, own_shape=False)
        target = -lr * (d.T @ x) / self.dw_min
        low = target.floor()
        up = torch.rand(target.shape, generator=self.gen) < (target - low)
        return (low + up.float()).to(torch.int32)
