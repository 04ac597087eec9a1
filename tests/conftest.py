"""Shared pytest options.

``pytest --instrument=RESOURCE`` (repeatable) runs tests/test_hardware.py against
real instruments at those VISA resources; without it those tests are skipped.
"""

from __future__ import annotations


def pytest_addoption(parser):
    parser.addoption("--instrument", action="append", default=[], metavar="RESOURCE",
                     help="VISA resource of a real instrument for tests/test_hardware.py "
                          "(repeatable), e.g. TCPIP::192.168.0.12::5025::SOCKET")
    parser.addoption("--instrument-backend", default="@py",
                     help="pyvisa backend for --instrument (default @py)")


def pytest_generate_tests(metafunc):
    if "instrument_resource" in metafunc.fixturenames:
        resources = metafunc.config.getoption("instrument")
        metafunc.parametrize("instrument_resource", resources or [None],
                             ids=resources or ["no-instrument"])


def pytest_configure(config):
    # one torch thread: the suite's tensors are small, and a 2-thread op stalls for
    # milliseconds whenever another process holds the second core
    import torch

    torch.set_num_threads(1)
