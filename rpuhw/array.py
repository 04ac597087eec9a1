"""The CrossPointArray contract: what every backend (simulator, bench, ArC TWO) does.

An array of ``rows x cols`` devices holds dimensionless weights ``w`` (device
states in the model's units). Rows are outputs, columns inputs: ``y = W x``.
All methods take and return CPU torch tensors (float32 unless stated) and work
on batches. Subclasses implement the ``_native`` methods they support and list
them in :attr:`CrossPointArray.capabilities`; the rest are emulated here from
the native ones (announced once per class in the ``rpuhw`` log):

* ``forward``/``backward`` from ``read`` + a digital matmul,
* ``update`` from digital coincidence counting + ``pulse`` (one pulse program
  per rank-1 update, per slot where the directions change within an update),
* ``pulse`` from single-device ``update`` calls,
* ``read`` from ``forward`` of unit vectors,
* ``program`` always by the closed write-verify loop on ``pulse`` + ``read``,
* ``read_devices`` from ``read`` (picking the devices),
* ``set_weights``, ``load_state_dict`` by ``program`` (write-verify), ``state_dict``
  by ``read``.

Besides the operations, every array answers what the layers above may ask of it
without knowing its type: :meth:`CrossPointArray.info` (the device's ``dw_min``, mean
weight range, conductance range, read voltage and output bound where known),
:meth:`CrossPointArray.stats` (traffic counters; hardware: instrument messages) and
:meth:`CrossPointArray.snapshot` (settings to store beside a measurement).

Every public method validates its arguments first and raises ``ValueError``
naming the expected and given shapes, dtypes or values; a rejected call changes
nothing in the array.
"""

from __future__ import annotations

import logging
import math
from abc import ABC
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np
import torch

from rpuhw.periphery.bits import PackedBits

log = logging.getLogger("rpuhw")


@dataclass(frozen=True)
class Capabilities:
    """Which operations a backend performs natively (the others are emulated)."""

    forward: bool = False
    """Analog MVM ``y = W x`` in one array cycle."""
    backward: bool = False
    """Transposed analog MVM ``z = W^T d``."""
    update: bool = False
    """Parallel stochastic pulse-coincidence rank-1 updates."""
    pulse: bool = False
    """Per-device signed pulse counts (serial addressing)."""
    read: bool = False
    """Read every device's weight."""

    def native(self) -> list[str]:
        return [f.name for f in fields(self) if getattr(self, f.name)]


@dataclass(frozen=True)
class ArrayInfo:
    """What is known of an array's devices and analog periphery (None: not known)."""

    dw_min: float
    """Mean weight change of one pulse (weight units): update management's step."""
    w_min: float | None = None
    """Mean lower weight bound of the devices (weight units)."""
    w_max: float | None = None
    """Mean upper weight bound of the devices (weight units)."""
    g_min: float | None = None
    """Conductance (S) at ``w_min`` (devices whose weight maps to a conductance)."""
    g_max: float | None = None
    """Conductance (S) at ``w_max``."""
    read_voltage: float | None = None
    """Voltage (V) across a device while it is read."""
    out_bound: float | None = None
    """Forward/backward outputs saturate at ``±out_bound`` (output units): bound
    management's threshold."""


@dataclass
class ProgramReport:
    """Outcome of :meth:`CrossPointArray.program` (write-verify)."""

    converged: bool
    """Every device ended within ``tol`` of its target (or could not move further)."""
    iterations: int
    """Read-pulse rounds performed."""
    max_error: float
    """Largest |W - target| at the last read (weight units)."""
    rms_error: float
    """Root-mean-square |W - target| at the last read."""
    pulses: int
    """Total pulses applied."""
    history: list[float] = field(default_factory=list)
    """max_error after each read."""


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    raise ValueError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")


def check_float(value, name: str, shape: tuple[int | None, ...],
                finite: bool = True) -> torch.Tensor:
    """Validate a float tensor of ``shape`` (None = any size); return CPU float32.

    Raises ValueError naming the expected and given shape/dtype, or non-finite entries
    (``finite=False`` skips that test, for callers whose compiled kernels do it).
    """
    t = _as_tensor(value, name)
    if len(shape) == 2 and t.dim() == 2:  # the common case, without the generic loop
        (s0, s1), (g0, g1) = shape, t.shape
        bad = (s0 is not None and s0 != g0) or (s1 is not None and s1 != g1)
    else:
        bad = t.dim() != len(shape) or any(
            s is not None and s != g for s, g in zip(shape, t.shape, strict=True))
    if bad:
        expect = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise ValueError(f"{name}: expected shape {expect}, got {list(t.shape)}")
    if t.dtype is not torch.float32 or not t.is_cpu or t.requires_grad:
        if not t.is_floating_point():
            raise ValueError(f"{name}: expected a floating-point tensor, got {t.dtype}")
        t = t.detach().to("cpu", torch.float32)
    # one reduction: max|t| is nan or inf exactly when some entry is
    if finite and t.numel() and not math.isfinite(float(t.abs().amax())):
        raise ValueError(f"{name}: contains non-finite values (nan or inf)")
    return t


def check_bits(value, name: str, lines: int) -> torch.Tensor:
    """Validate int8 bits ``[P, BL, lines]`` with entries in {-1, 0, +1}."""
    t = _as_tensor(value, name)
    if t.dim() != 3 or t.shape[2] != lines:
        raise ValueError(f"{name}: expected shape [P, BL, {lines}], got {list(t.shape)}")
    if t.dtype != torch.int8:
        raise ValueError(f"{name}: expected dtype torch.int8, got {t.dtype}")
    t = t.detach().cpu()
    if t.numel() and ((t < -1) | (t > 1)).any():  # not abs(): int8 abs(-128) == -128
        raise ValueError(f"{name}: entries must be -1, 0 or +1")
    return t


def check_counts(value, name: str, shape: tuple[int, int]) -> torch.Tensor:
    """Validate integer pulse counts ``[rows, cols]``; return int32."""
    t = _as_tensor(value, name)
    if tuple(t.shape) != shape:
        raise ValueError(f"{name}: expected shape {list(shape)}, got {list(t.shape)}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name}: expected an integer tensor, got {t.dtype}")
    lim, info = torch.iinfo(torch.int32).max, torch.iinfo(t.dtype)
    if (info.max > lim or info.min < -lim) and t.numel():
        lo, hi = torch.aminmax(t)  # one pass (int32: only -2**31 is out of range)
        if int(hi) > lim or int(lo) < -lim:
            raise ValueError(f"{name}: entries must lie within ±{lim}")
    return t.detach().cpu().to(torch.int32)


class CrossPointArray(ABC):  # noqa: B024 - every hook is optional, see capabilities
    """An array of ``rows x cols`` resistive devices (rows = outputs, columns = inputs)."""

    capabilities: Capabilities = Capabilities()
    """Operations this backend does natively."""

    serial_reads: ClassVar[bool] = False
    """Reads address one device at a time (instrument benches): :meth:`read_devices`
    reads only the chosen devices (``_read_devices``) instead of the whole array."""

    _announced: set = set()

    def __init__(self, rows: int, cols: int):
        for name, n in (("rows", rows), ("cols", cols)):
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{name}: expected a positive integer, got {n!r}")
        self.rows = rows
        self.cols = cols

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, cols)``."""
        return (self.rows, self.cols)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rows={self.rows}, cols={self.cols})"

    def close(self) -> None:  # noqa: B027 - optional hook, a no-op for simulators
        """Release the backend (hardware: outputs off, sessions closed); idempotent.
        Simulators hold nothing to release. Arrays are context managers that close."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _emulating(self, op: str, how: str) -> None:
        key = (type(self), op)
        if key not in CrossPointArray._announced:
            CrossPointArray._announced.add(key)
            log.info("%s: %s is emulated through %s", type(self).__name__, op, how)

    # ---- public contract -------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N analog MVMs ``y = W x``: x [N, cols] in the DAC range [-1, 1] -> y [N, rows].

        Output carries the array's read noise and saturates at its output bound;
        no noise/bound management here (that is the periphery's job).
        """
        x = check_float(x, "x", (None, self.cols))
        if self.capabilities.forward:
            return self._forward(x)
        self._emulating("forward", "read + digital matmul")
        return x @ self._mvm_weights().T

    def backward(self, d: torch.Tensor) -> torch.Tensor:
        """N transposed MVMs ``z = W^T d``: d [N, rows] -> z [N, cols]."""
        d = check_float(d, "d", (None, self.rows))
        if self.capabilities.backward:
            return self._backward(d)
        self._emulating("backward", "read + digital matmul")
        return d @ self._mvm_weights()

    def update(self, x_bits, d_bits=None) -> None:
        """P stochastic pulse-coincidence rank-1 updates, applied in order.

        ``x_bits[P, BL, cols]`` and ``d_bits[P, BL, rows]`` are int8 in {-1, 0, +1};
        device (i, j) gets one pulse in slot t of update p when both bits are
        non-zero, potentiating when their product is +1, depressing when -1.
        A :class:`~rpuhw.periphery.bits.PackedBits` may be passed alone instead.
        """
        if isinstance(x_bits, PackedBits):
            if d_bits is not None:
                raise ValueError("d_bits: must be omitted when x_bits is PackedBits")
            packed = x_bits
            if (packed.rows, packed.cols) != self.shape:
                raise ValueError(f"PackedBits: expected {self.rows} rows x {self.cols} cols, "
                                 f"got {packed.rows} x {packed.cols}")
            if packed.n_updates == 0:
                return
            if self.capabilities.update:
                return self._update_packed(packed)
            x_bits, d_bits = packed.to_bits()
        else:
            x_bits = check_bits(x_bits, "x_bits", self.cols)
            d_bits = check_bits(d_bits, "d_bits", self.rows)
            if x_bits.shape[:2] != d_bits.shape[:2]:
                raise ValueError(f"x_bits and d_bits: expected the same [P, BL], got "
                                 f"{list(x_bits.shape[:2])} and {list(d_bits.shape[:2])}")
            if x_bits.shape[0] == 0 or x_bits.shape[1] == 0:
                return
            if self.capabilities.update:
                return self._update(x_bits, d_bits)
        self._emulating("update", "digital coincidence counting + pulse")
        self._update_by_pulses(x_bits, d_bits)

    def pulse(self, counts: torch.Tensor) -> None:
        """Per-device signed pulse counts [rows, cols] (serial addressing).

        Device (i, j) gets ``|counts[i, j]|`` pulses, all potentiating when
        positive, all depressing when negative.
        """
        counts = check_counts(counts, "counts", self.shape)
        if not counts.any():
            return
        if self.capabilities.pulse:
            return self._pulse(counts)
        self._emulating("pulse", "single-device updates")
        for i, j in counts.nonzero().tolist():
            n = int(counts[i, j])
            x = torch.zeros(1, abs(n), self.cols, dtype=torch.int8)
            d = torch.zeros(1, abs(n), self.rows, dtype=torch.int8)
            x[0, :, j] = 1 if n > 0 else -1
            d[0, :, i] = 1
            self._update(x, d)

    def decay(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """One decay step of every device, as at the end of an update cycle (aihwkit's
        ``decayWeights``, once per mini-batch), for callers that move the devices through
        :meth:`pulse`, which has none (:meth:`update` includes it). A no-op here: real
        devices relax in time by themselves; simulated ones with ``lifetime`` override it
        (:meth:`rpuhw.sim.array.SimulatedArray.decay`)."""

    def read(self) -> torch.Tensor:
        """Read every device: W [rows, cols] (with the backend's read noise)."""
        if self.capabilities.read:
            return self._read()
        self._emulating("read", "forward of unit vectors")
        return self.forward(torch.eye(self.cols)).T.contiguous()

    def program(self, target: torch.Tensor, tol: float = 0.01, max_iter: int = 20,
                max_pulses: int = 1000, mask: torch.Tensor | None = None) -> ProgramReport:
        """Closed-loop write-verify: read, pulse towards ``target``, repeat.

        Each round reads W, and gives every device outside ``tol`` a signed pulse
        count ``round((target - w) / step)`` (capped at ``max_pulses``), where
        ``step`` is the device's own step size as measured by the previous
        rounds (initially :meth:`nominal_step`). Stops when all devices are
        within ``tol`` or after ``max_iter`` rounds; a target beyond a device's
        bound leaves that device unconverged (reported, not raised). ``mask`` (bool
        [rows, cols]): program only these devices (the others get no pulse and do not
        count in the report's errors).
        """
        target = check_float(target, "target", self.shape)
        if mask is not None:
            mask = torch.as_tensor(mask)
            if mask.dtype != torch.bool or tuple(mask.shape) != self.shape:
                raise ValueError(f"mask: expected a bool tensor of shape {list(self.shape)}")
        if not (isinstance(tol, (int, float)) and tol > 0):
            raise ValueError(f"tol: expected a positive number, got {tol!r}")
        if not (isinstance(max_iter, int) and max_iter >= 1):
            raise ValueError(f"max_iter: expected a positive integer, got {max_iter!r}")
        if isinstance(max_pulses, bool) or not (isinstance(max_pulses, int) and max_pulses >= 1):
            raise ValueError(f"max_pulses: expected a positive integer, got {max_pulses!r}")
        step = torch.full(self.shape, float(self.nominal_step()))
        history: list[float] = []
        total = 0
        w = self.read()
        for it in range(1, max_iter + 1):
            err = target - w if mask is None else torch.where(mask, target - w, 0.0)
            history.append(float(err.abs().max()))
            todo = err.abs() > tol
            if not todo.any():
                return self._report(True, it - 1, err if mask is None else err[mask], total,
                                    history)
            counts = torch.round(err / step).clamp(-max_pulses, max_pulses).to(torch.int32)
            counts = torch.where(todo, counts, torch.zeros_like(counts))
            counts = torch.where(todo & (counts == 0), torch.sign(err).to(torch.int32), counts)
            self.pulse(counts)
            total += int(counts.abs().sum())
            w_new = self.read()
            c = counts.float()
            moved = (w_new - w) / torch.where(counts != 0, c, torch.ones_like(c))
            ok = (counts != 0) & (moved > 0.1 * step) & torch.isfinite(moved)
            step = torch.where(ok, 0.5 * step + 0.5 * moved, step)
            w = w_new
        err = target - w if mask is None else torch.where(mask, target - w, 0.0)
        history.append(float(err.abs().max()))
        if mask is not None:
            err = err[mask]
        return self._report(bool((err.abs() <= tol).all()), max_iter, err, total, history)

    @staticmethod
    def _report(ok: bool, it: int, err: torch.Tensor, total: int, history) -> ProgramReport:
        if err.numel() == 0:
            err = torch.zeros(1)
        return ProgramReport(converged=ok, iterations=it, max_error=float(err.abs().max()),
                             rms_error=float(err.pow(2).mean().sqrt()), pulses=total,
                             history=history)

    def nominal_step(self) -> float:
        """Expected weight change of one pulse (for program's first round)."""
        return 0.001

    def info(self) -> ArrayInfo:
        """What is known of the devices and the analog periphery (see :class:`ArrayInfo`);
        the default knows only :meth:`nominal_step`."""
        return ArrayInfo(dw_min=self.nominal_step())

    def read_devices(self, devices: list[tuple[int, int]]) -> torch.Tensor:
        """Weights of the listed ``(row, col)`` devices: float32 [n], one read each where
        the backend addresses devices serially, else picked from :meth:`read`."""
        devices = [(int(i), int(j)) for i, j in devices]
        for i, j in devices:
            if not (0 <= i < self.rows and 0 <= j < self.cols):
                raise ValueError(f"devices: ({i}, {j}) is outside the {self.rows} x "
                                 f"{self.cols} array")
        if self.serial_reads:
            return self._read_devices(devices)
        w = self.read()
        if not devices:
            return torch.zeros(0)
        rows, cols = zip(*devices, strict=True)
        return w[list(rows), list(cols)].contiguous()

    def set_weights(self, w: torch.Tensor) -> None:
        """Write the weights ``w [rows, cols]``: an initial state, not a result.

        Simulators set the device states directly (clipped to each device's bounds);
        the default is a short write-verify (:meth:`program`, two rounds, tolerance two
        steps), which is what setting a weight means on hardware.
        """
        w = check_float(w, "w", self.shape)
        self.program(w, tol=2 * self.nominal_step(), max_iter=2)

    def state_dict(self) -> dict[str, Any]:
        """The array's state for checkpoints; the default holds the weights as read."""
        return {"weights": self.read()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; the default writes the saved weights back by
        write-verify (ten rounds, tolerance two steps)."""
        weights = state.get("weights") if isinstance(state, dict) else None
        if weights is None:
            raise ValueError("state_dict: expected a mapping with 'weights'")
        self.program(check_float(weights, "weights", self.shape),
                     tol=2 * self.nominal_step(), max_iter=10)

    def stats(self) -> dict[str, int]:
        """Traffic counters since the array was opened (hardware: ``messages`` and
        ``queries`` sent to its instruments); the default has none."""
        return {}

    def snapshot(self) -> dict[str, Any] | str:
        """The backend's settings, stored beside measurements (hardware: instrument
        identities, bias scheme, pulse shapes, limits); the default is ``repr(self)``."""
        return repr(self)

    # ---- backend hooks ---------------------------------------------------------------
    def _mvm_weights(self) -> torch.Tensor:
        """Weights an emulated forward/backward multiplies with (default: a fresh read;
        slow backends may reuse one read until the next pulse)."""
        return self.read()

    def _managed_mvm(self, v: torch.Tensor, transposed: bool, noise_management: bool,
                     bound_management: bool, bm_bound: float,
                     max_halvings: int) -> tuple[torch.Tensor, tuple[int, int, int, int]] | None:
        """Optional native hook: the periphery's noise- and bound-managed MVMs in one call.

        Must give what :class:`~rpuhw.periphery.Periphery` computes through
        ``forward``/``backward`` (same distribution) and return ``(y, (array calls,
        vectors sent, BM halvings, unresolved vectors))``; raise ValueError on
        non-finite input. ``v`` is float32 [N, cols] (``transposed``: [N, rows]).
        None (the default) = not offered: the periphery runs its generic path.
        """
        return None

    def _update_signed(self, sx: np.ndarray, sd: np.ndarray, bl: int, seed: int) -> bool:
        """Optional native hook: apply the pulse trains of signed probabilities.

        ``sx [P, cols]``, ``sd [P, rows]`` are float32 ``sign * p`` as the periphery
        computed them; the bits must be those of
        ``rpuhw.periphery.encode.encode_packed_np(sx, sd, bl, seed)``, applied as
        :meth:`update` would. The backend may finish the work later (in the
        background) as long as every later call on the array sees it done. Return
        False (the default) when not offered: the periphery encodes and calls
        :meth:`update`.
        """
        return False

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _update(self, x_bits: torch.Tensor, d_bits: torch.Tensor) -> None:
        raise NotImplementedError

    def _update_packed(self, packed: PackedBits) -> None:
        self._update(*packed.to_bits())

    def _pulse(self, counts: torch.Tensor) -> None:
        raise NotImplementedError

    def _read(self) -> torch.Tensor:
        raise NotImplementedError

    def _read_devices(self, devices: list[tuple[int, int]]) -> torch.Tensor:
        raise NotImplementedError

    def _update_by_pulses(self, x_bits: torch.Tensor, d_bits: torch.Tensor) -> None:
        """Emulated update: per update, count coincidences digitally and pulse them.

        Exact when the directions of a device's pulses do not change within an
        update (the usual sign-consistent streams); otherwise that update is
        split into its slots so the order of directions is kept.
        """
        xf, df = x_bits.float(), d_bits.float()
        for p in range(x_bits.shape[0]):
            signed = df[p].T @ xf[p]
            total = df[p].abs().T @ xf[p].abs()
            if torch.equal(signed.abs(), total):
                self.pulse(signed.round().to(torch.int32))
            else:
                for t in range(x_bits.shape[1]):
                    self.pulse(torch.outer(df[p, t], xf[p, t]).round().to(torch.int32))
