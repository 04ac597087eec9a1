"""The shared safety envelope and settings (drivers/envelope.py).

One ``Limits``, ``ReadConfig``, ``PulseShape``, ``PulseConfig`` and ``WeightMap``
serve both hardware YAMLs; the bench composes its extras (compliances, burst period)
on top. Each YAML still accepts exactly the keys it did.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest
from bench_yaml import bench_mapping

from rpuhw.config import from_mapping
from rpuhw.drivers.arc2 import Arc2Config, arc2_from_mapping
from rpuhw.drivers.bench_config import BenchConfig, bench_from_mapping
from rpuhw.drivers.envelope import (
    BenchLimits,
    BenchPulseConfig,
    BenchReadConfig,
    Limits,
    PulseConfig,
    PulseShape,
    ReadConfig,
    WeightMap,
)
from rpuhw.errors import ConfigError


def _keys(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls) if f.init}


def test_both_backends_use_the_shared_types():
    bench = typing.get_type_hints(BenchConfig)
    arc2 = typing.get_type_hints(Arc2Config)
    assert (arc2["read"], arc2["pulse"], arc2["limits"], arc2["weights"]) == \
        (ReadConfig, PulseConfig, Limits, WeightMap)
    assert (bench["read"], bench["pulse"], bench["limits"], bench["weights"]) == \
        (BenchReadConfig, BenchPulseConfig, BenchLimits, WeightMap)
    for extra, base in ((BenchReadConfig, ReadConfig), (BenchPulseConfig, PulseConfig),
                        (BenchLimits, Limits)):
        assert issubclass(extra, base)
    cfg = bench_from_mapping(bench_mapping())
    arc = arc2_from_mapping({"rows": 4, "cols": 5})
    assert type(cfg.pulse.potentiation) is type(arc.pulse.depression) is PulseShape


def test_each_yaml_accepts_the_keys_it_did():
    assert _keys(ReadConfig) == {"voltage"}
    assert _keys(BenchReadConfig) == {"voltage", "compliance_a"}
    assert _keys(PulseShape) == {"amplitude", "width_s"}
    assert _keys(PulseConfig) == {"potentiation", "depression"}
    assert _keys(BenchPulseConfig) == {"potentiation", "depression", "period_s",
                                       "compliance_a"}
    assert _keys(Limits) == {"v_max"}
    assert _keys(BenchLimits) == {"v_max", "compliance_max_a"}
    assert _keys(WeightMap) == {"g_min", "g_max", "w_min", "w_max", "dw_min"}
    with pytest.raises(ConfigError, match=r"unknown key \(known keys: v_max\)"):
        arc2_from_mapping({"limits": {"v_max": 2.0, "compliance_max_a": 1e-3}})
    with pytest.raises(ConfigError, match=r"known keys: compliance_a, voltage"):
        from_mapping(BenchReadConfig, {"volts": 0.2})


@pytest.mark.parametrize("cls, data, key", [
    (Limits, {"v_max": 0.0}, "v_max"),
    (BenchLimits, {"v_max": -1.0}, "v_max"),
    (BenchLimits, {"compliance_max_a": 0.0}, "compliance_max_a"),
])
def test_limits_validate_with_the_key(cls, data, key):
    with pytest.raises(ConfigError, match=f"key '{key}': must be > 0"):
        from_mapping(cls, data)


def test_limits_allow_levels_in_zero_to_v_max():
    lim = Limits(v_max=2.0)
    assert lim.allows(2.0) and lim.allows(1e-3)
    assert not any(lim.allows(v) for v in (0.0, -0.1, 2.01, math.nan, math.inf))


def test_pulse_shape_nanos_and_weight_map_round_trip():
    assert PulseShape(width_s=1.2e-6).nanos == 1200 and PulseShape(width_s=4e-10).nanos == 0
    wm = WeightMap()
    assert wm.to_weight(wm.to_conductance(0.25)) == pytest.approx(0.25)
    info = wm.info(read_voltage=0.2)
    assert (info.w_min, info.w_max, info.dw_min, info.read_voltage) == (-0.6, 0.6, 0.001, 0.2)
