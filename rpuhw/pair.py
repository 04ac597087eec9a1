"""``pair:SPEC``: a G+/G- pair of one-directional devices per weight, with refresh.

Some devices only move one way in training: a PCM cell's conductance grows by gradual
SET pulses and falls only by an abrupt RESET. Such devices learn as a pair per weight
(Nandakumar et al. 2020; aihwkit's ``OneSidedUnitCell``, its ``PCMPresetUnitCell``):

* the weight is ``w = g+ - g-`` (two arrays ``plus`` and ``minus`` of ``SPEC``, each
  ``rows x cols``);
* an update or a pulse that raises ``w`` potentiates ``g+``, one that lowers it
  potentiates ``g-``: every device only ever gets potentiating pulses in training;
* both devices of a weight climb towards their upper bound over time, and the pair stops
  learning once one saturates. A **refresh** therefore checks every ``refresh_every``
  updates which pairs have both devices high (the larger above ``refresh_upper_thres``
  of the device range, the smaller above ``refresh_lower_thres``), reads their weight
  ``w``, and writes ``g+ = w_min + max(w, 0)``, ``g- = w_min + max(-w, 0)`` by
  write-verify (:meth:`~rpuhw.array.CrossPointArray.program` restricted to those
  devices): the weight is kept, the headroom comes back.

Built only on the :class:`~rpuhw.array.CrossPointArray` contract of the two halves, so
any backend can carry a pair; forward and backward are the difference of the halves'
MVMs (two output reads subtracted after the ADC, each with its own noise and bound: where
either half saturates, the difference is reported saturated so that bound management
sees it). The refresh's write-verify depresses devices with the backend's depressing
pulses (a RESET-and-SET on real PCM is a backend's own business).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from rpuhw.array import ArrayInfo, Capabilities, CrossPointArray, check_float
from rpuhw.errors import ConfigError
from rpuhw.periphery.io import SAT_RTOL


@dataclass(frozen=True)
class RefreshConfig:
    """When and how a pair refreshes (the period and thresholds under aihwkit's
    ``OneSidedUnitCell`` names; the write-verify keys are rpuhw's)."""

    refresh_every: int = 1
    """Check for pairs to refresh after every this many updates or pulse calls (0: never)."""
    refresh_upper_thres: float = 0.75
    """A pair is refreshed when its larger device is above this fraction of the device
    range ``w_min + f (w_max - w_min)`` ..."""
    refresh_lower_thres: float = 0.25
    """... and its smaller device above this fraction: both carry conductance that the
    weight does not need."""
    refresh_tol_steps: float = 2.0
    """Write-verify tolerance of the refresh, in nominal steps (``dw_min``)."""
    refresh_max_iter: int = 10
    """Write-verify rounds of one refresh."""

    def validate(self) -> None:
        if isinstance(self.refresh_every, bool) or not (
                isinstance(self.refresh_every, int) and self.refresh_every >= 0):
            raise ConfigError(f"expected an integer >= 0, got {self.refresh_every!r}",
                              key="refresh_every")
        for key in ("refresh_upper_thres", "refresh_lower_thres"):
            v = getattr(self, key)
            if not (isinstance(v, (int, float)) and 0 < v < 1):
                raise ConfigError(f"expected a fraction in (0, 1), got {v!r}", key=key)
        if self.refresh_lower_thres > self.refresh_upper_thres:
            raise ConfigError(f"must not exceed refresh_upper_thres "
                              f"({self.refresh_upper_thres}), got {self.refresh_lower_thres}",
                              key="refresh_lower_thres")


class OneSidedPair(CrossPointArray):
    """``w = plus - minus``; every training pulse potentiates one of the two devices."""

    capabilities = Capabilities(forward=True, backward=True, update=True, pulse=True,
                                read=True)

    def __init__(self, plus: CrossPointArray, minus: CrossPointArray,
                 refresh: RefreshConfig | None = None):
        if plus.shape != minus.shape:
            raise ValueError(f"minus: expected the shape of plus {list(plus.shape)}, got "
                             f"{list(minus.shape)}")
        super().__init__(*plus.shape)
        self.plus, self.minus = plus, minus
        self.refresh = refresh or RefreshConfig()
        self.refresh.validate()
        info = plus.info()
        if info.w_min is None or info.w_max is None:
            raise ConfigError(f"{plus!r} does not know its device bounds (w_min, w_max), "
                              "which a pair needs for its refresh", key="spec")
        self.w_lo, self.w_hi = float(info.w_min), float(info.w_max)
        self._info = info
        self.updates = 0
        """Updates and pulse calls since the array was opened (the refresh's clock)."""
        self.refreshed = 0
        """Pairs refreshed since the array was opened."""

    def __repr__(self) -> str:
        return f"OneSidedPair({self.plus!r}, {self.minus!r})"

    def close(self) -> None:
        self.plus.close()
        self.minus.close()

    # ---- what is known ---------------------------------------------------------------
    def nominal_step(self) -> float:
        return self.plus.nominal_step()

    def info(self) -> ArrayInfo:
        """One device's step; the weight range ``[-(w_max - w_min), w_max - w_min]``."""
        span = self.w_hi - self.w_lo
        return ArrayInfo(dw_min=self._info.dw_min, w_min=-span, w_max=span,
                         out_bound=self._info.out_bound)

    # ---- MVMs ------------------------------------------------------------------------
    def _difference(self, yp: torch.Tensor, ym: torch.Tensor) -> torch.Tensor:
        y = yp - ym
        bound = self._info.out_bound
        if bound is not None:
            sat = (yp.abs() >= bound * (1 - SAT_RTOL)) | (ym.abs() >= bound * (1 - SAT_RTOL))
            if sat.any():
                y = torch.where(sat, torch.where(y < 0, -bound, bound), y)
        return y

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._difference(self.plus.forward(x), self.minus.forward(x))

    def _backward(self, d: torch.Tensor) -> torch.Tensor:
        return self._difference(self.plus.backward(d), self.minus.backward(d))

    def _read(self) -> torch.Tensor:
        return self.plus.read() - self.minus.read()

    # ---- updates ---------------------------------------------------------------------
    def _update(self, x_bits: torch.Tensor, d_bits: torch.Tensor) -> None:
        # update p: device (i, j) gets a potentiating pulse of g+ for every slot whose
        # bits multiply to +1 and one of g- for every slot at -1; the two are different
        # devices, so their pulses may go out in any order
        xp, xn = x_bits.clamp(min=0).float(), (-x_bits).clamp(min=0).float()
        dp, dn = d_bits.clamp(min=0).float(), (-d_bits).clamp(min=0).float()
        for p in range(x_bits.shape[0]):
            up = dp[p].T @ xp[p] + dn[p].T @ xn[p]
            down = dp[p].T @ xn[p] + dn[p].T @ xp[p]
            self._apply(up.round().to(torch.int32), down.round().to(torch.int32))
        self._tick()

    def _pulse(self, counts: torch.Tensor) -> None:
        self._split(counts)
        self._tick()

    def _split(self, counts: torch.Tensor) -> None:
        self._apply(counts.clamp(min=0), (-counts).clamp(min=0))

    def _apply(self, up: torch.Tensor, down: torch.Tensor) -> None:
        """Potentiate g+ by ``up`` pulses and g- by ``down`` (counts >= 0)."""
        if up.any():
            self.plus.pulse(up)
        if down.any():
            self.minus.pulse(down)

    def decay(self) -> None:
        self.plus.decay()
        self.minus.decay()

    # ---- refresh ---------------------------------------------------------------------
    def _tick(self) -> None:
        self.updates += 1
        every = self.refresh.refresh_every
        if every and self.updates % every == 0:
            self.refresh_now()

    def due(self, gp: torch.Tensor, gm: torch.Tensor) -> torch.Tensor:
        """Pairs to refresh, from the two halves' reads ``gp``, ``gm`` (bool [rows, cols])."""
        span = self.w_hi - self.w_lo
        hi, lo = torch.maximum(gp, gm), torch.minimum(gp, gm)
        return ((hi > self.w_lo + self.refresh.refresh_upper_thres * span)
                & (lo > self.w_lo + self.refresh.refresh_lower_thres * span))

    def refresh_now(self) -> int:
        """Refresh the pairs that are due (:meth:`due`); returns how many."""
        gp, gm = self.plus.read(), self.minus.read()
        mask = self.due(gp, gm)
        n = int(mask.sum())
        if n == 0:
            return 0
        w = gp - gm
        step = self.nominal_step()
        kw = dict(tol=self.refresh.refresh_tol_steps * step,
                  max_iter=self.refresh.refresh_max_iter, mask=mask,
                  # a round may take a device at a quarter of the nominal step across
                  # the whole range
                  max_pulses=max(1, math.ceil(4 * (self.w_hi - self.w_lo) / step)))
        self.plus.program(self.w_lo + w.clamp(min=0), **kw)
        self.minus.program(self.w_lo + (-w).clamp(min=0), **kw)
        self.refreshed += n
        return n

    # ---- state -----------------------------------------------------------------------
    def set_weights(self, w: torch.Tensor) -> None:
        """``g+ = w_min + max(w, 0)``, ``g- = w_min + max(-w, 0)`` (each half's own
        ``set_weights``)."""
        w = check_float(w, "w", self.shape)
        self.plus.set_weights(self.w_lo + w.clamp(min=0))
        self.minus.set_weights(self.w_lo + (-w).clamp(min=0))

    def state_dict(self) -> dict[str, Any]:
        return {"plus": self.plus.state_dict(), "minus": self.minus.state_dict(),
                "updates": self.updates, "refreshed": self.refreshed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not (isinstance(state, dict) and "plus" in state and "minus" in state):
            raise ValueError("state_dict: expected a mapping with 'plus' and 'minus'")
        self.plus.load_state_dict(state["plus"])
        self.minus.load_state_dict(state["minus"])
        self.updates = int(state.get("updates", 0))
        self.refreshed = int(state.get("refreshed", 0))

    def stats(self) -> dict[str, int]:
        out: dict[str, int] = {"refreshed": self.refreshed}
        for half in (self.plus, self.minus):
            for k, v in half.stats().items():
                out[k] = out.get(k, 0) + v
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"pair": {"plus": self.plus.snapshot(), "minus": self.minus.snapshot(),
                         "refresh": vars(self.refresh).copy()}}


def open_pair(arg: str, rows: int, cols: int, seed: int | None) -> OneSidedPair:
    """``pair:SPEC``: two arrays of ``SPEC`` (seeds ``2 seed`` and ``2 seed + 1``), every
    device at its lower bound (weights 0)."""
    from rpuhw.backends import open_array

    if not arg:
        raise ConfigError("'pair' needs the spec of its devices, e.g. 'pair:sim:preset:PCM'",
                          key="spec")
    if arg.startswith("pair:"):
        raise ConfigError(f"a pair of pairs is not a device: 'pair:{arg}'", key="spec")
    s = None if seed is None else 2 * seed
    plus = open_array(arg, rows, cols, seed=s)
    try:
        minus = open_array(arg, rows, cols, seed=None if s is None else s + 1)
    except Exception:
        plus.close()
        raise
    pair = OneSidedPair(plus, minus)
    pair.set_weights(torch.zeros(rows, cols))  # both devices RESET: at w_min, weight 0
    return pair
