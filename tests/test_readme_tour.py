"""The README's "A short tour" runs as written (issue 16, item 1).

The commands are parsed from README.md's tour block by tools/readme_tour.py (not copied
here) and run in order at the reduced size the README names (``--quick``: QUICK_FLAGS
appended); each must exit 0 and print lines of the shape the README shows.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _load_tour():
    spec = importlib.util.spec_from_file_location("readme_tour", ROOT / "tools/readme_tour.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["readme_tour"] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


tour = _load_tour()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_readme_tour_runs_as_written(tmp_path):
    """Every command of the tour, as the README writes it (plus the documented --quick
    flags), exits 0 and prints the README's lines in order (numbers and fit-model names
    may differ, added lines are allowed); the background emulator is stopped by the
    tour's own ``kill %1`` with exit status 0."""
    steps = tour.parse_tour(README.read_text())
    results = tour.run_tour(steps, tmp_path, quick=True, log=lambda _: None)
    errors = tour.failures(steps, results)
    assert not errors, "\n".join(errors)
    assert len(results) == len(steps)


def test_tour_is_parsed_from_the_readme():
    steps = tour.parse_tour(README.read_text())
    emulate = steps[0]
    assert emulate.background and emulate.subcommand == "emulate"
    assert emulate.expected == ["ready bench.yaml"]
    assert steps[-1].kill_job == 1  # the tour stops its own emulator
    subs = [s.subcommand for s in steps]
    for sub in ("characterize", "fit", "validate", "train"):
        assert sub in subs
    # a continued command is one shell line without the README's comment
    char = steps[subs.index("characterize")]
    assert len(char.source) == 2 and "\\" not in char.text and "#" not in char.text
    assert char.text.endswith("-o meas.csv")
    # every step shows some output except the ones that print nothing
    assert all(s.expected for s in steps if s.kill_job is None)


def test_readme_names_the_reduced_size_the_test_runs():
    text = README.read_text()
    words = " ".join(text.split())
    for sub, flags in tour.QUICK_FLAGS.items():
        assert f"`{shlex.join(flags)}` to `rpuhw {sub}`" in words, (sub, flags)
    # and the chip the tour emulates holds conv1 (16 x 26), the bug of issue 16
    emulate = tour.parse_tour(text)[0].text.split()
    rows = int(emulate[emulate.index("--rows") + 1])
    cols = int(emulate[emulate.index("--cols") + 1])
    assert rows >= 16 and cols >= 26


def test_quick_flags_are_appended_before_nothing_else():
    step = tour.Step(["$ rpuhw characterize --array sim --rows 4 --cols 4 \\",
                      "      --pulses 500 -o meas.csv     # a comment"])
    assert step.shell(quick=False) == ("rpuhw characterize --array sim --rows 4 --cols 4 "
                                       "--pulses 500 -o meas.csv")
    assert step.shell(quick=True).endswith("-o meas.csv --devices 8 --max-pulses 300")
    bg = tour.Step(["$ rpuhw emulate --bench-out b.yaml &   # serve"])
    assert bg.background and bg.shell(quick=True) == "rpuhw emulate --bench-out b.yaml"
    assert tour.Step(["$ echo '#not a comment' # a comment"]).text == "echo '#not a comment'"


def test_line_pattern_numbers_and_model_names():
    models = ["soft_bounds", "exp_step", "piecewise"]
    pat = tour.line_pattern("model exp_step (ok)", models)
    assert pat.fullmatch("model soft_bounds (ok)")
    assert not pat.fullmatch("model soft_bounds (NOT OK: curve misses the data)")
    pat = tour.line_pattern("  g_min [S]             3.491e-05    1.796e-06", models)
    assert pat.fullmatch("  g_min [S]    2.1e-05  1e-06")
    assert not pat.fullmatch("  g_max [S]    2.1e-05  1e-06")
    pat = tour.line_pattern("test error per epoch: 36.00 %, 24.20 %; 24.5 images/s; "
                            "results in run.json", models)
    assert pat.fullmatch("test error per epoch: 90.00 %, 85.00 %; 3 images/s; "
                         "results in run.json")
    assert not pat.fullmatch("test error per epoch: 90.00 %; 3 images/s; results in run.json")
    pat = tour.line_pattern("wrote 16,032 rows (16 devices, pulse-response)", models)
    assert pat.fullmatch("wrote 3216 rows (8 devices, pulse-response)")
    assert not pat.fullmatch("wrote 3216 rows (8 devices, read-noise)")
    # a thin margin's list of tied models varies in length as well as in names
    pat = tour.line_pattern("THIN MARGIN: piecewise, soft_bounds within 2 standard errors "
                            "of the best (piecewise)", models)
    assert pat.fullmatch("THIN MARGIN: exp_step within 2 standard errors of the best "
                         "(soft_bounds)")
    assert pat.fullmatch("THIN MARGIN: exp_step, piecewise, soft_bounds within 2 standard "
                         "errors of the best (exp_step)")
    assert not pat.fullmatch("THIN MARGIN: within 2 standard errors of the best (exp_step)")
    assert not pat.fullmatch("THIN MARGIN: exp_step, within 2 standard errors of the best "
                             "(exp_step)")
    # the fit's explanation is shown up to its first clause ("; ..." matches the rest,
    # whose clauses come and go with the data)
    pat = tour.line_pattern("  piecewise: held-out log-likelihood 104007.3 (one cycle), "
                            "+7.0 over exp_step (standard error 8.0 over 16 devices); ...",
                            models)
    assert pat.fullmatch("  soft_bounds: held-out log-likelihood 10627.6 (one cycle), +15.9 "
                         "over piecewise (standard error 6.2 over 8 devices); THIN MARGIN: x")
    assert pat.fullmatch("  soft_bounds: held-out log-likelihood 10627.6 (one cycle), +15.9 "
                         "over piecewise (standard error 6.2 over 8 devices); it scores")
    assert not pat.fullmatch("  soft_bounds: held-out log-likelihood 10627.6 (one cycle), "
                             "+15.9 over piecewise (standard error 6.2 over 8 devices)")
    assert not pat.fullmatch("  soft_bounds: BIC 10627.6 (one cycle); THIN MARGIN")
    lines = ["model linear_step (ok)", "  linear_step: held-out 1.0 (one cycle; 3 of 6), +2 "
             "over x (standard error 1 over 16 devices); THIN MARGIN: piecewise within 2",
             "  parameter  value", "  g_min [S]  1e-05", "  other 1", "wrote device.yaml"]
    assert tour._trim_fit(lines) == ["model linear_step (ok)",
                                     "  linear_step: held-out 1.0 (one cycle; 3 of 6), +2 over "
                                     "x (standard error 1 over 16 devices); ...",
                                     "  parameter  value", "  g_min [S]  1e-05", "  ...",
                                     "wrote device.yaml"]


def test_shape_check_allows_added_lines_not_missing_ones():
    step = tour.Step(["$ rpuhw fit m.csv -o d.yaml"],
                     ["model exp_step (ok)", "  ...", "wrote d.yaml"])
    assert tour.shape_errors(step, ["model piecewise (ok)", "  note: new line",
                                    "wrote d.yaml"]) == []
    errors = tour.shape_errors(step, ["model piecewise (ok)", "note: nothing written"])
    assert errors and "'wrote d.yaml' has no counterpart" in errors[0]
    # order matters
    assert tour.shape_errors(step, ["wrote d.yaml", "model piecewise (ok)"])


def test_failures_name_the_failing_command_and_the_steps_not_run():
    steps = tour.parse_tour(README.read_text())
    bad = tour.Result(steps[1], 2, [], "rpuhw characterize: error: bench.yaml: not found\n", 1.0)
    ok = tour.Result(steps[0], None, ["ready bench.yaml"], "", 1.0)
    errors = tour.failures(steps, [ok, bad])
    assert "exited 2" in errors[0] and "bench.yaml: not found" in errors[0]
    assert sum("did not run" in e for e in errors) == len(steps) - 2


def test_rewrite_puts_outputs_and_machine_line_in_the_tour_only(tmp_path):
    text = README.read_text()
    steps = tour.parse_tour(text)
    at = text.index(tour.MACHINE_PREFIX)
    machine = text[at:text.index("\n\n", at)]  # the paragraph naming the machine
    same = tour.rewrite(text, steps, [s.expected for s in steps], machine)
    assert same == text  # the README's own outputs: nothing changes
    outputs = [[f"out {i}"] if s.kill_job is None else [] for i, s in enumerate(steps)]
    new = tour.rewrite(text, steps, outputs, tour.MACHINE_PREFIX + "today: 2 cores.")
    again = tour.parse_tour(new)
    assert [s.source for s in again] == [s.source for s in steps]
    assert [s.expected for s in again] == outputs
    assert new.count(tour.MACHINE_PREFIX) == 1 and "today: 2 cores." in new
    # the rest of the README is untouched
    head, tail = text.split("## A short tour")[0], text.split("## The paper's ablation")[1]
    assert new.startswith(head) and new.endswith(tail)


def test_trim_fit_keeps_the_head_the_named_parameters_and_the_wrote_line():
    lines = ["model exp_step (ok)", "  exp_step: BIC -1 lower than x by 2",
             "  parameter                 value   std. error",
             "  g_min [S]             3.491e-05    1.796e-06",
             "  dw_min_dtod               0.208      0.03798",
             "  read_noise              0.00456    4.214e-05",
             "  note: something", "wrote device.yaml, fit.png, fit.json"]
    res = tour.Result(tour.Step(["$ rpuhw fit meas.csv -o device.yaml"]), 0, lines, "", 1)
    assert tour.trimmed(res) == lines[:4] + [lines[5], "  ...", lines[-1]]
