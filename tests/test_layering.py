"""The import graph holds the layering of docs/architecture.md.

Every module of the three source folders (``rpuhw/``, ``drivers/`` -> ``rpuhw.drivers``,
``calibration/`` -> ``rpuhw.calibration``, and ``demo/`` -> ``rpuhw.demo``) is parsed with
:mod:`ast`; every ``import`` and ``from ... import`` in it, at any depth (a lazy import
inside a function is still an arrow), is an arrow from that module to the imported one.
The arrows in :data:`NEVER` must not occur. A registry entry such as
``"rpuhw.drivers.bench:open_bench"`` is a string, not an import: that is how the core
reaches the hardware backends (lazily, through :mod:`rpuhw.registry`).

Besides the static graph, ``import rpuhw.array`` (the contract) is run in a fresh
interpreter, which must load neither numba nor the simulator.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"rpuhw": "rpuhw", "drivers": "rpuhw.drivers", "calibration": "rpuhw.calibration",
           "demo": "rpuhw.demo"}
"""Source folder -> import name (pyproject's package-dir)."""

SPLIT_OFF = ("rpuhw.drivers", "rpuhw.calibration", "rpuhw.demo")
"""Packages of the rpuhw namespace that are not the core."""

NEVER: list[tuple[str, str, str]] = [
    ("core", "rpuhw.drivers", "the core reaches hardware backends through the registry only"),
    ("core", "rpuhw.calibration", "the core knows nothing of fitting"),
    ("core", "rpuhw.demo", "nothing imports the demo"),
    ("rpuhw.array", "rpuhw.sim", "the contract is below every backend"),
    ("rpuhw.array", "rpuhw.devices", "the contract knows no device model"),
    ("rpuhw.periphery", "rpuhw.sim", "the periphery is below the simulator"),
    ("rpuhw.periphery", "rpuhw.devices", "the periphery is backend-independent"),
    ("rpuhw.devices", "rpuhw.sim", "a device model is data and a step rule, below the engines"),
    ("rpuhw.devices", "rpuhw.periphery", "a device model knows no periphery"),
    ("rpuhw.drivers", "rpuhw.nn", "drivers know no torch layers"),
    ("rpuhw.drivers", "rpuhw.train", "drivers know no training"),
    ("rpuhw.drivers", "rpuhw.schedule", "drivers know no scheduler"),
    ("rpuhw.drivers", "rpuhw.calibration", "instruments know no fitting"),
    ("rpuhw.drivers", "rpuhw.demo", "nothing imports the demo"),
    ("rpuhw.calibration", "rpuhw.drivers", "protocols run on any CrossPointArray"),
    ("rpuhw.calibration", "rpuhw.nn", "calibration knows no torch layers"),
    ("rpuhw.calibration", "rpuhw.demo", "nothing imports the demo"),
    ("any", "tests", "nothing imports the tests"),
    ("any", "examples", "nothing imports the examples"),
    ("any", "benchmarks", "nothing imports the benchmarks"),
]
"""(importer, imported, why): ``core`` is every rpuhw module outside :data:`SPLIT_OFF`;
``any`` every module; otherwise a module or package prefix."""


def module_name(path: Path) -> str:
    """Import name of a source file (``drivers/bench.py`` -> ``rpuhw.drivers.bench``)."""
    rel = path.relative_to(ROOT)
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    parts[-1] = parts[-1].removesuffix(".py")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    """Every module of the source folders by import name."""
    out = {}
    for folder in FOLDERS:
        base = ROOT / folder
        if base.is_dir():
            for path in sorted(base.rglob("*.py")):
                out[module_name(path)] = path
    return out


def imports_of(name: str, text: str, is_package: bool = False) -> set[str]:
    """Modules imported anywhere in ``text`` (relative imports resolved against ``name``)."""
    found = set()
    package = name if is_package else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # ``from rpuhw import sim`` imports the submodule rpuhw.sim
            found.update(f"{target}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _matches(module: str, group: str) -> bool:
    if group == "any":
        return True
    if group == "core":
        return _within(module, "rpuhw") and not any(_within(module, s) for s in SPLIT_OFF)
    return _within(module, group)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Arrows of ``graph`` (module -> imported modules) that :data:`NEVER` forbids."""
    out = []
    for module, targets in sorted(graph.items()):
        for src, dst, why in NEVER:
            if not _matches(module, src):
                continue
            for target in sorted(targets):
                if _within(target, dst):
                    out.append(f"{module} imports {target} ({src} -> {dst} never: {why})")
    return out


def import_graph() -> dict[str, set[str]]:
    return {name: imports_of(name, path.read_text(), path.name == "__init__.py")
            for name, path in sources().items()}


def test_the_import_graph_holds_the_layering():
    graph = import_graph()
    assert len(graph) > 50  # the walk found the project
    problems = violations(graph)
    assert not problems, "forbidden imports:\n" + "\n".join(problems)


@pytest.mark.parametrize("module, imported", [
    ("rpuhw.periphery.encode", "rpuhw.sim.kernels"),
    ("rpuhw.devices.soft_bounds", "rpuhw.sim.array"),
    ("rpuhw.train", "rpuhw.drivers.bench"),
    ("rpuhw.drivers.bench", "rpuhw.nn"),
    ("rpuhw.array", "rpuhw.sim"),
    ("rpuhw.calibration.fit", "tests.conformance"),
])
def test_a_forbidden_import_is_caught(module, imported):
    """The check fails when one forbidden arrow is added to the real graph."""
    graph = import_graph()
    graph.setdefault(module, set()).add(imported)
    assert any(v.startswith(f"{module} imports {imported} ") for v in violations(graph))


def test_lazy_and_relative_imports_are_arrows():
    text = "from .bench import x\n\ndef f():\n    from rpuhw.sim import kernels\n"
    found = imports_of("rpuhw.drivers.arc2", text)
    assert {"rpuhw.drivers.bench", "rpuhw.sim.kernels"} <= found
    assert "rpuhw.drivers.bench" in imports_of("rpuhw.drivers", "from .bench import x", True)


def test_every_rule_is_written_in_the_architecture_doc():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for src, dst, _ in NEVER:
        assert f"`{src}` → `{dst}`" in doc, f"docs/architecture.md does not list {src} -> {dst}"


def test_importing_the_contract_loads_no_backend():
    code = ("import sys, rpuhw.array, rpuhw.periphery.bits\n"
            "bad = [m for m in ('numba', 'rpuhw.sim', 'rpuhw.devices', 'rpuhw.drivers') "
            "if m in sys.modules]\n"
            "print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True)
    assert out.stdout.strip() == "", f"import rpuhw.array loaded {out.stdout.strip()}"


def test_every_package_folder_is_listed_in_pyproject():
    """A wheel holds only pyproject's ``packages``: every folder with an ``__init__.py``
    under a mapped source folder must be listed (``rpuhw.algorithms`` once was not, so
    only editable installs had the training algorithms)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
                 ["tool"]["setuptools"]["packages"])
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found - listed == set(), f"not in pyproject's packages: {sorted(found - listed)}"
