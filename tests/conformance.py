"""Backends the CrossPointArray conformance suite (test_conformance.py) runs against.

Adding a backend to the suite is adding one :class:`BackendCase` to :data:`CASES`:
a factory ``(rows, cols, seed) -> array`` and a few numbers saying what the
backend is like (exact or noisy, bounded or not, its step size and noise levels).
The tests derive every tolerance from these numbers, so they stay the same for
all backends.

Two test-only backends make the base class emulate what they lack:
:class:`PulseReadArray` (native pulse + read only: forward, backward and update
are emulated) and :class:`UpdateForwardArray` (native update + forward only:
read, backward and pulse are emulated). Both wrap an exact :class:`IdealArray`,
so their results must equal the ideal backend's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from rpuhw import open_array
from rpuhw.array import Capabilities, CrossPointArray
from rpuhw.device_spec import DeviceSpec
from rpuhw.devices import get_model
from rpuhw.ideal import IdealArray
from rpuhw.periphery.io import IOConfig
from rpuhw.sim.array import SimulatedArray

Factory = Callable[[int, int, "int | None"], CrossPointArray]


@dataclass(frozen=True)
class BackendCase:
    """One backend under test and what the suite may expect of it."""

    name: str
    """Test id."""
    factory: Factory
    """``factory(rows, cols, seed) -> CrossPointArray``; a new array with all weights 0."""
    exact: bool = False
    """No noise anywhere and no bounds: forward/backward/read are exact and every pulse
    adds exactly ``±step``."""
    has_bounds: bool = True
    """Weights saturate at (per-device) bounds."""
    noisy_read: bool = False
    """``read()`` carries random noise (two reads of an unchanged array differ)."""
    step: float = 0.001
    """Typical weight change of one pulse (the mean over devices)."""
    read_tol: float = 0.0
    """Standard deviation of the noise of one ``read()`` entry (0 when reads are exact)."""
    out_noise: float = 0.0
    """Standard deviation of the Gaussian noise on each forward/backward output."""
    w_limit: float = math.inf
    """No weight ever exceeds this in magnitude (a sane bound for bounded backends)."""
    program_tol: float = 0.0005
    """Tolerance to ask of ``program`` (must exceed the read noise and the c2c noise of a
    few pulses)."""
    max_stuck: int = 0
    """Devices of a test array (<= 30 devices) that may not respond to pulses at all.
    The simulator draws a device's step as ``dw_min * [1 + 0.3 xi]_+``, which is 0 for
    xi < -3.33 (p = 4.3e-4 per device; P(>= 2 of 30 stuck) ~ 8e-5), so sim cases allow 1."""
    saturation_pulses: int = 20_000
    """Pulses that surely drive every device into its bound (has_bounds backends)."""
    saturation_calls: int = 1
    """``pulse`` calls of ``saturation_pulses`` that take a device from one bound to the
    other (a one-sided pair: 3; its two devices first both saturate near w = 0, and a
    refresh lowers them)."""
    seeded: bool = True
    """Equal seeds and equal calls give identical results."""
    spec: str | None = None
    """The ``open_array`` spec that opens this backend, if any."""

    def __post_init__(self):
        if self.noisy_read != (self.read_tol > 0):
            raise ValueError(f"{self.name}: noisy_read and read_tol > 0 must agree")
        if self.exact and (self.has_bounds or self.noisy_read or self.out_noise
                           or self.max_stuck):
            raise ValueError(f"{self.name}: an exact backend has no bounds, noise or "
                             "stuck devices")

    def __str__(self) -> str:
        return self.name


class PulseReadArray(CrossPointArray):
    """Test-only backend with native pulse and read only (the rest is emulated)."""

    capabilities = Capabilities(pulse=True, read=True)

    def __init__(self, rows: int, cols: int, dw: float = 0.001, seed: int | None = None):
        super().__init__(rows, cols)
        self._inner = IdealArray(rows, cols, dw=dw)

    def nominal_step(self) -> float:
        return self._inner.nominal_step()

    def _pulse(self, counts):
        self._inner.pulse(counts)

    def _read(self):
        return self._inner.read()


class UpdateForwardArray(CrossPointArray):
    """Test-only backend with native update and forward only (the rest is emulated)."""

    capabilities = Capabilities(update=True, forward=True)

    def __init__(self, rows: int, cols: int, dw: float = 0.001, seed: int | None = None):
        super().__init__(rows, cols)
        self._inner = IdealArray(rows, cols, dw=dw)

    def nominal_step(self) -> float:
        return self._inner.nominal_step()

    def _update(self, x_bits, d_bits):
        self._inner.update(x_bits, d_bits)

    def _forward(self, x):
        return self._inner.forward(x)


def _sim_read_noise(rows: int, cols: int, seed: int | None) -> CrossPointArray:
    spec = DeviceSpec(model=get_model("constant_step")(), io=IOConfig(read_noise=0.005))
    return SimulatedArray(rows, cols, device=spec, seed=seed)


def _pair_sim(rows: int, cols: int, seed: int | None, refresh=None) -> CrossPointArray:
    """A one-sided pair of default constant-step devices without a spread of their
    bounds: a pair reads 0 with both devices at their lower bounds only where the two
    bounds agree (spread by 30 %, a fresh pair's weights would be up to +-0.3), and the
    refresh thresholds are then the same for every pair. ``refresh``: a
    :class:`rpuhw.pair.RefreshConfig` (default: the pair's)."""
    from rpuhw.devices.base import PulsedDeviceParams
    from rpuhw.pair import OneSidedPair

    spec = DeviceSpec(model=get_model("constant_step")(PulsedDeviceParams(w_min_dtod=0.0,
                                                                          w_max_dtod=0.0)))
    pair = OneSidedPair(*(SimulatedArray(rows, cols, device=spec,
                                         seed=None if seed is None else 2 * seed + k)
                          for k in (0, 1)), refresh=refresh)
    pair.set_weights(torch.zeros(rows, cols))
    return pair


# The simulator's defaults (rpuhw.devices.base.PulsedDeviceParams, rpuhw.periphery.io.IOConfig):
# dw_min 0.001, 30 % d2d and c2c spread of the step, bounds ±0.6 with 30 % d2d spread
# (so |w| < 0.6 * (1 + 0.3 * 6) < 2 for any plausible draw), out_noise 0.06.
_SIM = dict(exact=False, has_bounds=True, step=0.001, out_noise=0.06, w_limit=2.0,
            program_tol=0.02, max_stuck=1)

CASES: list[BackendCase] = [
    BackendCase("ideal", lambda r, c, s: open_array("ideal", r, c, seed=s), exact=True,
                has_bounds=False, spec="ideal"),
    BackendCase("sim", lambda r, c, s: open_array("sim", r, c, seed=s), spec="sim", **_SIM),
    BackendCase("sim-torch", lambda r, c, s: SimulatedArray(r, c, seed=s, engine="torch"),
                **_SIM),
    BackendCase("sim-soft_bounds", lambda r, c, s: open_array("sim:soft_bounds", r, c, seed=s),
                spec="sim:soft_bounds", **_SIM),
    BackendCase("sim-read_noise", _sim_read_noise, noisy_read=True, read_tol=0.005, **_SIM),
    # a G+/G- pair (rpuhw.pair): weights in +-(w_max - w_min) of one device (< 2 * 2),
    # forward/backward the difference of two noisy MVMs (sqrt 2 x 0.06), two devices per
    # weight that may be stuck
    BackendCase("pair-sim", _pair_sim, **{**_SIM, "w_limit": 4.0,
                                          "out_noise": 0.06 * math.sqrt(2), "max_stuck": 2,
                                          "saturation_calls": 3}),
    BackendCase("emulated-ops", lambda r, c, s: PulseReadArray(r, c, seed=s), exact=True,
                has_bounds=False),
    BackendCase("emulated-update", lambda r, c, s: UpdateForwardArray(r, c, seed=s),
                exact=True, has_bounds=False),
]
"""Every backend the conformance suite runs against (bench and ArC TWO add theirs here)."""


# ---- ArC TWO (drivers/arc2.py; added by the arc2 helper) ----------------------------------
def _arc2(rows: int, cols: int, seed: int | None) -> CrossPointArray:
    """ArcTwoArray on a fake pyarc2.Instrument over a default-device SimulatedArray chip
    (test_arc2.SimChip); the case is skipped where pyarc2 is not installed."""
    from test_arc2 import fake_arc2_array

    return fake_arc2_array(rows, cols, seed)


# forward/backward are emulated as read + digital matmul, so no output noise beyond the read's
CASES.append(BackendCase("arc2", _arc2, **{**_SIM, "out_noise": 0.0}))


# ---- Bench (drivers/bench.py) over the shipped emulators, real pyvisa-py sockets ----------
def _bench(rows: int, cols: int, seed: int | None,
           pulse_source: str = "generator") -> CrossPointArray:
    """BenchArray (2600B + TSP-linked 707B + 33500B, or with ``pulse_source="smu"`` the
    2600B's sense channel pulsing) on ``rpuhw emulate``'s servers in this process, through
    pyvisa-py on 127.0.0.1; the chip is the simulator's default device with a conductance
    block, starting at weight 0. The servers stop after the array is closed or collected."""
    import weakref

    import torch

    from rpuhw.device_spec import ConductanceMap
    from rpuhw.drivers.bench import BenchArray
    from rpuhw.drivers.bench_config import bench_from_mapping
    from rpuhw.drivers.emulators import Emulator, PulsePhysics

    spec = DeviceSpec(model=get_model("constant_step")(),
                      conductance=ConductanceMap(g_min=5e-5, g_max=1.5e-4))
    # switching threshold 0.7 V above V/2 = 0.6 V: half-selected devices are not disturbed
    # (the contract's pulse addresses single devices; disturb is tested in test_emulators)
    emu = Emulator(spec, rows=rows, cols=cols, seed=seed or 0,
                   physics=PulsePhysics(v_min=0.7), pulse_source=pulse_source).start()
    emu.chip.array.set_weights(torch.zeros(rows, cols))
    arr = BenchArray(bench_from_mapping(emu.bench_config(), source="<emulated bench>"))
    weakref.finalize(arr, emu.stop)
    return arr


# reads print 6 significant digits (the 2600B's default ASCII precision): a read is exact
# to ~1e-6 in weight, far inside every tolerance; forward/backward = read + digital matmul
CASES.append(BackendCase("bench", _bench, seeded=False, **{**_SIM, "out_noise": 0.0}))
# the same bench pulsed by the 2600B's sense channel (rpuhw emulate --pulse-source smu)
CASES.append(BackendCase("bench-smu-pulse", lambda r, c, s: _bench(r, c, s, "smu"),
                         seeded=False, **{**_SIM, "out_noise": 0.0}))
