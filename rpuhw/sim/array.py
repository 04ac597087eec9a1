"""SimulatedArray: a stochastic RPU array with exact pulse-by-pulse update statistics."""

from __future__ import annotations

import os
from concurrent.futures import Future
from typing import Any, Literal

import numpy as np
import torch

from rpuhw._jit import HAVE_NUMBA
from rpuhw.array import ArrayInfo, Capabilities, CrossPointArray, check_float
from rpuhw.device_spec import DeviceSpec
from rpuhw.devices import DeviceModel, get_model
from rpuhw.periphery.absmax import as_f32_array
from rpuhw.periphery.bits import MAX_BL, PackedBits
from rpuhw.periphery.encode import encode_kernel_for
from rpuhw.seeds import SeedStream
from rpuhw.sim import background, kernels
from rpuhw.sim.mvm import (
    NONFINITE,
    analog_mvm,
    finish_kernel,
    prepare_kernel,
    product_kernel,
    small_product,
)
from rpuhw.sim.update_torch import apply_counts, pulsed_devices, update_torch, write_noise

Engine = Literal["auto", "numba", "torch"]


class SimulatedArray(CrossPointArray):
    """A simulated array of ``rows x cols`` devices of one device model.

    Args:
        rows, cols: array size (rows = outputs, columns = inputs).
        device: a :class:`~rpuhw.device_spec.DeviceSpec` (model + io), a
            :class:`~rpuhw.devices.DeviceModel`, a model name, or None for the
            paper's RPU baseline (``constant_step`` defaults, out_noise 0.06,
            out_bound 12).
        seed: seeds the device-to-device draws and all later noise; equal seeds
            and equal calls give equal results. None draws a fresh seed.
        engine: ``"numba"`` (compiled pulse-by-pulse kernel), ``"torch"``
            (closed forms composed over updates, or a vectorised loop), or
            ``"auto"`` (numba when installed). Both are exact in distribution.

    Updates that a :class:`~rpuhw.periphery.Periphery` sends may finish on the
    background update thread (:mod:`rpuhw.sim.background`); every method and the
    ``weights`` attribute wait for them, so callers always see the updated array.

    A device with write noise (``write_noise_std``) keeps hidden weights
    (:attr:`hidden_weights`) that pulses move; :attr:`weights` are the visible ones. A device
    with ``lifetime`` decays once at the end of every ``update`` call (one per optimizer
    step in training, aihwkit's once per mini-batch); ``pulse`` does not decay (call
    :meth:`decay`). Both as aihwkit 1.2 (:mod:`rpuhw.devices.base`).
    """

    capabilities = Capabilities(forward=True, backward=True, update=True, pulse=True,
                                read=True)

    def __init__(self, rows: int, cols: int, device: DeviceSpec | DeviceModel | str | None = None,
                 seed: int | None = None, engine: Engine = "auto"):
        super().__init__(rows, cols)
        self._pending: Future | None = None  # an update running on the background thread
        if device is None:
            device = DeviceSpec(model=get_model("constant_step")())
        elif isinstance(device, str):
            device = DeviceSpec(model=get_model(device)())
        elif isinstance(device, DeviceModel):
            device = DeviceSpec(model=device)
        if engine not in ("auto", "numba", "torch"):
            raise ValueError(f"engine: expected 'auto', 'numba' or 'torch', got {engine!r}")
        if engine == "numba" and not HAVE_NUMBA:
            raise ValueError("engine: 'numba' requested but numba is not installed")
        self.spec = device
        self.model = device.model
        self.io = device.io
        self.seed = int.from_bytes(os.urandom(7), "little") if seed is None else int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.state = self.model.draw(rows, cols, self.gen)
        self._seeds = SeedStream.from_generator(self.gen)  # seeds of the compiled calls
        use_numba = engine != "torch" and HAVE_NUMBA and self.model.nb_pulse is not None
        self.engine = "numba" if use_numba else "torch"
        self.weights = torch.zeros(rows, cols)
        self._clip_into_bounds()
        self._prm = self.model.packed_state(self.state)
        self._const = np.asarray(self.model.constants(), dtype=np.float64)
        self._wn = self.model.write_noise
        self._hidden = self.weights.clone() if self._wn > 0 else None
        self._on_set()  # as aihwkit's tile after populating (onSetWeights)

    def __repr__(self) -> str:
        return (f"SimulatedArray(rows={self.rows}, cols={self.cols}, model={self.model.name!r}, "
                f"seed={self.seed}, engine={self.engine!r})")

    # ---- the weights, after any pending background update --------------------------
    @property
    def weights(self) -> torch.Tensor:
        """The device states ``[rows, cols]`` (weight units), float32, updated in place:
        the visible weights (hidden ones plus write noise, for a device that has it).

        Waits for this array's pending background update first
        (:mod:`rpuhw.sim.background`); every method reaches the weights through here.
        """
        if self._pending is not None:
            self._wait()
        return self._weights

    @weights.setter
    def weights(self, value: torch.Tensor) -> None:
        if self._pending is not None:
            self._wait()
        self._weights = value

    @property
    def hidden_weights(self) -> torch.Tensor:
        """The hidden (persistent) weights that pulses move, for a device with write noise
        (aihwkit's ``persistent_weights``); otherwise :attr:`weights` itself."""
        if self._pending is not None:
            self._wait()
        return self._weights if self._hidden is None else self._hidden

    def __getstate__(self) -> dict[str, Any]:  # copy / pickle: the finished state
        if self._pending is not None:
            self._wait()
        state = self.__dict__.copy()
        state.pop("_masks", None)  # work arrays
        return state

    def _wait(self) -> None:
        """Finish the pending background update (re-raising its error, if any)."""
        job, self._pending = self._pending, None
        job.result()

    # ---- helpers ---------------------------------------------------------------------
    def _clip_into_bounds(self) -> None:
        torch.minimum(torch.maximum(self.weights, self.state["w_min"]), self.state["w_max"],
                      out=self.weights)

    def _on_set(self) -> None:
        """After the weights were set (and clipped): the hidden weights take them and, with
        ``apply_write_noise_on_set``, every visible weight gets write noise (aihwkit's
        ``PulsedRPUDevice::onSetWeights``)."""
        if self._hidden is None:
            return
        self._hidden.copy_(self._weights)
        if self.model.params.apply_write_noise_on_set:  # type: ignore[attr-defined]
            self._weights.copy_(write_noise(self.model, self.state, self._hidden,
                                            self._weights, None, self.gen))

    def _wn_args(self) -> tuple:
        """The kernels' write-noise arguments ``(V, wn, wn_pinned)``, or none."""
        if self._hidden is None:
            return ()
        return (self._weights.numpy(), self._wn, self.model.write_noise_skips_pinned)

    def _moved(self) -> torch.Tensor:
        """The weights pulses move: the hidden ones with write noise, else the weights."""
        return self._weights if self._hidden is None else self._hidden

    def _decay_job(self):
        """``job()`` applying one decay (:meth:`decay`) to the current weights' memory, safe
        to run on the background thread after the update; None without ``lifetime``."""
        if not self.model.decays:
            return None
        hidden, visible = self._moved().numpy(), self._weights.numpy()
        st = self.state
        scale, bias, lo, hi = (st[k].numpy() for k in ("decay_scale", "reset_bias", "w_min",
                                                       "w_max"))
        seed = self._call_seed() if self._hidden is not None else 0
        wn = self._wn

        def job() -> None:
            # aihwkit's PulsedRPUDevice::decayWeights (alpha 1), float32 like aihwkit's
            np.subtract(hidden, bias, out=hidden)
            np.multiply(hidden, scale, out=hidden)
            np.add(hidden, bias, out=hidden)
            np.minimum(hidden, hi, out=hidden)
            np.maximum(hidden, lo, out=hidden)
            if wn > 0:  # then applyUpdateWriteNoise: every device's visible weight anew
                noise = np.random.default_rng(seed).standard_normal(hidden.shape)
                np.add(hidden, (wn * noise).astype(np.float32), out=visible)

        return job

    def decay(self) -> None:
        """Decay every device once (``lifetime`` > 0; else nothing): aihwkit's
        ``decayWeights``, which its analog optimizer runs once per mini-batch. Every
        ``update`` call ends with one; call this after ``pulse`` where that stands for an
        update cycle."""
        job = self._decay_job()
        if job is not None:
            if self._pending is not None:
                self._wait()  # after the pending update or pulse
            job()

    def _call_seed(self) -> int:
        return self._seeds()

    def nominal_step(self) -> float:
        return self.model.params.dw_min

    def info(self) -> ArrayInfo:
        """The device model's dw_min and mean bounds, the YAML's ``conductance:`` block
        and the ``io:`` block's output bound."""
        p, g = self.model.params, self.spec.conductance
        return ArrayInfo(dw_min=float(p.dw_min), w_min=float(p.w_min), w_max=float(p.w_max),
                         g_min=None if g is None else float(g.g_min),
                         g_max=None if g is None else float(g.g_max),
                         out_bound=float(self.io.out_bound))

    def set_weights(self, w: torch.Tensor) -> None:
        """Set the device states directly (simulation only), clipped to each device's bounds
        (with write noise: the hidden weights; the visible ones get fresh write noise unless
        ``apply_write_noise_on_set`` is false)."""
        self.weights.copy_(check_float(w, "w", self.shape))
        self._clip_into_bounds()
        self._on_set()

    # ---- native operations -----------------------------------------------------------
    def _forward(self, x):
        if self.engine == "numba":
            return self._compiled_mvm(x, False, False, False, 1.0, 0)[0]
        return analog_mvm(x, self.weights, self.io, self.gen)

    def _backward(self, d):
        if self.engine == "numba":
            return self._compiled_mvm(d, True, False, False, 1.0, 0)[0]
        return analog_mvm(d, self.weights.T, self.io, self.gen)

    def _managed_mvm(self, v, transposed, noise_management, bound_management, bm_bound,
                     max_halvings):
        if self.engine != "numba":
            return None
        return self._compiled_mvm(v, transposed, noise_management, bound_management,
                                  bm_bound, max_halvings)

    def _compiled_mvm(self, v, transposed, nm, bm, bm_bound, max_halvings):
        """The numba MVM of :mod:`rpuhw.sim.mvm` (noise from this array's generator)."""
        io = self.io
        va = as_f32_array(v)
        n = va.shape[0]
        xn, scale, live, exact, counters = self._mvm_scratch(va.shape)
        inp_res = float(io.inp_res or 0.0)
        n_live = prepare_kernel(va, nm, float(io.inp_bound), inp_res, xn, scale, live, exact)
        if n_live == NONFINITE:
            raise ValueError(f"{'d' if transposed else 'x'}: contains non-finite values "
                             "(nan or inf)")
        w = self.weights
        n_out = w.shape[1] if transposed else w.shape[0]
        if small_product(n, va.shape[1], n_out, transposed):
            y = np.empty((n, n_out), np.float32)
            product_kernel(xn, w.numpy(), transposed, y)
        else:
            y = (torch.from_numpy(xn) @ (w if transposed else w.T)).numpy()
        out = np.empty((n, n_out), np.float32)
        finish_kernel(y, va, w.numpy(), transposed, live, exact, scale, bm,
                      float(bm_bound), int(max_halvings), float(io.out_noise),
                      float(io.inp_bound), inp_res, float(io.out_bound),
                      float(io.out_res or 0.0), self._call_seed(), out, counters)
        return torch.from_numpy(out), tuple(counters.tolist())

    def _mvm_scratch(self, shape: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """Work arrays of a compiled MVM of inputs ``shape`` [N, n_in], kept between calls
        (fresh ones cost an allocation each per call): the array's inputs ``xn``, and per
        vector ``scale``, ``live``, ``exact``; the 4 ``counters`` (every one written by
        ``finish_kernel``). Nothing of them outlives a call (the output is fresh)."""
        cache = self.__dict__.setdefault("_scratch", {})
        bufs = cache.get(shape)
        if bufs is None:
            if len(cache) >= 8:  # (a few shapes per array in practice)
                cache.clear()
            n = shape[0]
            bufs = cache[shape] = (np.empty(shape, np.float32), np.empty(n, np.float32),
                                   np.empty(n, np.bool_), np.empty(n, np.bool_),
                                   np.empty(4, np.int64))
        return bufs

    def _read(self):
        w = self.weights.clone()
        if self.io.read_noise > 0:
            w += self.io.read_noise * torch.randn(w.shape, generator=self.gen)
        return w

    def _update(self, x_bits, d_bits):
        if self.engine == "numba" and x_bits.shape[1] <= MAX_BL:
            return self._update_packed(PackedBits.from_bits(x_bits, d_bits))
        moved = update_torch(self.model, self.state, self._moved(), x_bits, d_bits, self.gen)
        if self._hidden is None:
            self.weights = moved
        else:
            self._hidden = moved
            self.weights = write_noise(self.model, self.state, moved, self.weights,
                                       pulsed_devices(x_bits, d_bits), self.gen)
        self.decay()

    def _update_packed(self, packed: PackedBits):
        if self.engine != "numba":
            return self._update(*packed.to_bits())
        kernel = kernels.update_kernel_for(self.model.nb_pulse)
        moved = self.weights.numpy() if self._hidden is None else self._hidden.numpy()
        kernel(packed.x_nz, packed.x_pos, packed.d_nz, packed.d_pos, moved,
               self._prm, self._const, self._call_seed(), self.model.noisy, *self._wn_args())
        self.decay()

    def _update_signed(self, sx: np.ndarray, sd: np.ndarray, bl: int, seed: int) -> bool:
        """The pulse trains ``encode_packed_np(sx, sd, bl, seed)``, applied by the update
        kernel; both kernels run on the background thread when it is on (the array's
        call seed is drawn here, so the result is the same either way)."""
        if self.engine != "numba" or bl > MAX_BL:
            return False
        P, cols, rows = sx.shape[0], sx.shape[1], sd.shape[1]
        x_nz, x_pos, d_nz, d_pos = self._mask_buffers(P)
        encode = encode_kernel_for(P * (cols + rows) * bl)
        update = kernels.update_kernel_for(self.model.nb_pulse)
        w = self._moved().numpy()  # (waits for an earlier pending update)
        call_seed, noisy, wn_args = self._call_seed(), self.model.noisy, self._wn_args()
        decay = self._decay_job()

        def job() -> None:
            encode(sx, sd, bl, np.uint64(seed), x_nz, x_pos, d_nz, d_pos)
            update(x_nz, x_pos, d_nz, d_pos, w, self._prm, self._const, call_seed, noisy,
                   *wn_args)
            if decay is not None:
                decay()

        if background.enabled() and P * (cols + rows) * bl >= background.MIN_SLOTS:
            self._pending = background.submit(job)
        else:
            job()
        return True

    def _mask_buffers(self, P: int):
        """Work arrays for the packed masks of a P-update call, kept between calls (fresh
        ones cost page faults). Only the update job uses them, and this array's jobs
        run one after the other (a new one is made after ``self.weights`` waited)."""
        buf = getattr(self, "_masks", None)
        if buf is None or buf[0].shape[0] < P:
            n = max(P, 1)
            buf = (np.empty((n, self.cols), np.uint64), np.empty((n, self.cols), np.uint64),
                   np.empty((n, self.rows), np.uint64), np.empty((n, self.rows), np.uint64))
            self._masks = buf
        return tuple(b[:P] for b in buf)

    def _pulse(self, counts):
        if self.engine == "numba":
            kernel = kernels.pulse_kernel_for(self.model.nb_pulse)
            if self._pending is not None:
                self._wait()  # after a pending update (pulses run in place: sparse
                # counts, as mp's and the transfers', cost less than the hand-over)
            kernel(counts.numpy(), self._moved().numpy(), self._prm, self._const,
                   self._call_seed(), self.model.noisy, *self._wn_args())
            return
        moved = apply_counts(self.model, self.state, self._moved(), counts.abs().float()[None],
                             (counts > 0)[None], self.gen)
        if self._hidden is None:
            self.weights = moved
        else:
            self._hidden = moved
            self.weights = write_noise(self.model, self.state, moved, self.weights, counts != 0,
                                       self.gen)

    def _pulse_sparse(self, rows: np.ndarray, cols: np.ndarray, counts: np.ndarray,
                      m: int) -> bool:
        """``_pulse`` of the counts whose ``m`` non-zero entries are listed in row-major
        order (int32 ``rows``, ``cols``, ``counts``; in range and non-zero, unchecked):
        the same pulses and draws as ``_pulse`` of the dense counts, without building or
        scanning them. False (nothing done) when the array has no compiled engine."""
        if self.engine != "numba":
            return False
        cached = self.__dict__.get("_sparse_pulse")  # (model, its kernel)
        if cached is None or cached[0] is not self.model:
            cached = self._sparse_pulse = (self.model,
                                           kernels.pulse_sparse_kernel_for(self.model.nb_pulse))
        kernel = cached[1]
        if self._pending is not None:
            self._wait()
        kernel(rows, cols, counts, m, self._moved().numpy(), self._prm, self._const,
               self._call_seed(), self.model.noisy, *self._wn_args())
        return True

    # ---- torch-style state -----------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Weights, per-device parameters, seed and RNG state (for checkpoints); with write
        noise also the hidden weights (``hidden``)."""
        out = {"weights": self.weights.clone(), "state": {k: v.clone() for k, v in
                                                          self.state.items()},
               "seed": self.seed, "rng": self.gen.get_state(), "seeds": self._seeds.state,
               "model": self.model.name}
        if self._hidden is not None:
            out["hidden"] = self._hidden.clone()
        return out

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the model name and shapes must match."""
        if sd.get("model") != self.model.name:
            raise ValueError(f"state_dict: model {sd.get('model')!r} does not match "
                             f"{self.model.name!r}")
        if tuple(sd["weights"].shape) != self.shape:
            raise ValueError(f"state_dict: expected weights {list(self.shape)}, got "
                             f"{list(sd['weights'].shape)}")
        self.weights.copy_(sd["weights"])
        if self._hidden is not None:
            self._hidden.copy_(sd.get("hidden", sd["weights"]))
        for k, v in sd["state"].items():
            self.state[k].copy_(v)
        self._prm[:] = self.model.packed_state(self.state)
        self.seed = sd["seed"]
        self.gen.set_state(sd["rng"])
        if "seeds" in sd:
            self._seeds.state = int(sd["seeds"])
