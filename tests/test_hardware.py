"""Driver checks against REAL instruments: ``pytest --instrument=RESOURCE [...]``.

Skipped unless ``--instrument`` is given. Only harmless operations: identify,
reset, error queue, 0 V with a small compliance and outputs off (SMUs), all
relays open (707B), a 0.1 V pulse shape with output off (33500B). Nothing is
ever turned on, so no DUT needs to be connected.
"""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.timeout(60)

MODELS = [(r"MODEL 2450", "keithley2450"), (r"Model 26\d\dB", "keithley2600b"),
          (r"Model 70[78]B", "keithley707b"), (r"335\d\dB", "keysight33500b")]


def _open(resource, backend):
    from rpuhw.drivers.instruments import get_driver
    from rpuhw.drivers.transport import VisaTransport

    t = VisaTransport(resource, backend=backend)
    for pattern, name in MODELS:
        if re.search(pattern, t.idn or "", re.IGNORECASE):
            return get_driver(name)(t, v_limit=1.0), name
    t.close()
    pytest.skip(f"{resource}: no rpuhw driver for {t.idn!r}")


def test_real_instrument(instrument_resource, request):
    if instrument_resource is None:
        pytest.skip("no --instrument RESOURCE given")
    inst, name = _open(instrument_resource, request.config.getoption("instrument_backend"))
    try:
        inst.reset()
        if name == "keithley2450":
            inst.source_voltage(0.0, 1e-4)
            inst.output(False)
        elif name == "keithley2600b":
            for ch in (inst.a, inst.b):
                ch.source_voltage(0.0, 1e-4)
                ch.output(False)
        elif name == "keithley707b":
            inst.open_all()
            assert inst.closed() == []
        else:
            inst.voltage_limits(0.5)
            inst.configure_pulse(0.1, 0.0, 1e-6, 1e-3, 1)
            inst.output(False)
    finally:
        inst.close()
