"""``rpuhw sweep``: check everything, then start Ray and run the trials not yet done.

Order (so that bad input starts nothing and writes nothing): the sweep file and every
trial's config (:func:`~rpuhw.sweep.trials.expand`), the output folder
(:meth:`~rpuhw.sweep.results.SweepDir.check`), ``--address`` reachable; then Ray, then
``DIR/sweep.json``, then the trials.
"""

from __future__ import annotations

import sys
from typing import TextIO

from rpuhw.errors import add_hint
from rpuhw.sweep.engine import Progress, RayOptions
from rpuhw.sweep.results import SweepDir
from rpuhw.sweep.spec import load_spec


def run_sweep(path: str, out: str | None, opts: RayOptions, resume: bool = False,
              dry_run: bool = False, prog: str = "rpuhw sweep",
              stdout: TextIO | None = None) -> int:
    """Run (or ``dry_run``: list) the sweep in file ``path`` into folder ``out``."""
    from rpuhw.sweep.trials import expand

    stdout = stdout or sys.stdout
    spec = load_spec(path)
    if spec.search is not None:
        from rpuhw.sweep.search import run_search

        return run_search(spec, out, opts, resume=resume, dry_run=dry_run, prog=prog,
                          stdout=stdout)
    trials = expand(spec)
    if dry_run:
        for t in trials:
            print(f"{t.id}  " + "  ".join(f"{k}={v}" for k, v in t.params.items()),
                  file=stdout)
        print(f"{len(trials)} trials", file=stdout)
        return 0
    assert out is not None
    sdir = open_sweep_dir(spec, out, resume, opts.address)
    from rpuhw.sweep.engine import run_trials, start_ray

    if resume and not [t for t in trials if t.id not in sdir.load()]:
        sdir.write_tables()
        print(f"{prog}: all {len(trials)} trials done before; nothing to run",
              file=sys.stderr)
        return _summary(sdir, stdout)
    instruments = sorted({i for t in trials for i in t.instruments})
    started = start_ray(opts, instruments)
    try:
        sdir.start(spec)
        todo = [t for t in trials if t.id not in sdir.records]
        failed = sum(r["status"] != "ok" for r in sdir.records.values())
        if resume:
            print(f"{prog}: {len(trials) - len(todo)} of {len(trials)} trials done before, "
                  f"running {len(todo)}", file=sys.stderr)
        progress = Progress(len(trials), done=len(trials) - len(todo), failed=failed)
        try:
            run_trials(todo, sdir, opts, progress)
        except KeyboardInterrupt as exc:
            progress.close()
            add_hint(exc, f"the {len(sdir.records)} finished trials are kept: continue with "
                     f"rpuhw sweep {path} --out {out} --resume")
            raise
        progress.close()
    finally:
        if started:
            import ray

            ray.shutdown()
    sdir.write_tables()
    return _summary(sdir, stdout)


def _summary(sdir: SweepDir, stdout: TextIO) -> int:
    n_err = sum(r["status"] != "ok" for r in sdir.records.values())
    print(f"{len(sdir.records)} trials ({len(sdir.records) - n_err} ok, {n_err} failed); "
          f"results in {sdir.path / 'results.csv'}", file=stdout)
    return 0


def open_sweep_dir(spec, out, resume: bool, address: str | None) -> SweepDir:
    """The sweep's folder, checked against ``spec`` (``--resume``), and ``--address``
    checked reachable: everything a sweep or search refuses before starting Ray."""
    sdir = SweepDir(out, spec.axes())
    sdir.check(spec, resume)
    if address:
        from rpuhw.sweep.engine import check_address

        check_address(address)
    return sdir
