"""The one registry style (rpuhw.registry): decorator, lazy strings, errors that list names."""

from __future__ import annotations

import pytest

from rpuhw.errors import ConfigError
from rpuhw.registry import Registry


def test_decorator_by_name_attribute_and_explicit_name():
    reg: Registry = Registry("widget", key="widget")

    @reg.register
    class A:
        name = "a"

    @reg.register("bee")
    class B:
        pass

    assert reg.get("a") is A and reg.get("bee") is B
    assert reg.names() == ["a", "bee"] and "a" in reg and "c" not in reg and len(reg) == 2


def test_a_class_without_a_name_is_refused_at_registration():
    reg: Registry = Registry("widget")
    with pytest.raises(TypeError, match="has no 'name'"):
        reg.register(type("Nameless", (), {}))


def test_unknown_name_is_a_config_error_naming_the_key_and_the_known_names():
    reg: Registry = Registry("widget", key="widget")
    reg.add("one", 1)
    reg.add("two", 2)
    with pytest.raises(ConfigError, match=r"key 'widget': unknown widget 'three' "
                                          r"\(known: one, two\)"):
        reg.get("three")


def test_lazy_string_is_imported_on_first_use_only():
    reg: Registry = Registry("thing")
    reg.add("frac", "fractions:Fraction")
    reg.add("broken", "no_such_module_xyz:thing")  # naming it imports nothing: no error yet
    import fractions

    assert reg.get("frac") is fractions.Fraction
    assert reg.names() == ["broken", "frac"]


def test_lazy_string_that_does_not_resolve_says_not_available():
    reg: Registry = Registry("backend", key="spec")
    reg.add("gone", "no_such_module_xyz:thing")
    with pytest.raises(ConfigError, match="backend 'gone' is not available"):
        reg.get("gone")


def test_case_insensitive_names_and_remove():
    reg: Registry = Registry("driver", case_insensitive=True)
    reg.add("Keithley2450", 1, usage="keithley2450 (SCPI)")
    assert reg.get("KEITHLEY2450") == 1 and reg.usage("keithley2450") == "keithley2450 (SCPI)"
    reg.remove("keithley2450")
    assert "keithley2450" not in reg and reg.usage("x", default="x:...") == "x:..."
