"""Sweeps and tuning on Ray: ``rpuhw sweep``, ``rpuhw sweep-report``, ``rpuhw tune``.

A sweep file (SWEEP.yaml) names a ``base`` training config (any keys of ``rpuhw train
--config``) and how trials vary it: a ``grid`` (cartesian product of axes, or a list of
grids whose union is taken), ``random`` samples, or a ``search`` (Ray Tune with its
Optuna searcher). Each trial runs the same code as ``rpuhw train --config`` in a Ray
worker. Modules, one job each:

* :mod:`~rpuhw.sweep.spec`: parse and check the file (:class:`~rpuhw.sweep.spec.SweepSpec`)
* :mod:`~rpuhw.sweep.trials`: expand it into trials
* :mod:`~rpuhw.sweep.device`: ``device.KEY`` axes -> a per-trial device YAML
* :mod:`~rpuhw.sweep.trial`: run one trial (in a worker), record errors
* :mod:`~rpuhw.sweep.results`: the output folder: results.csv/parquet, trial JSONs, resume
* :mod:`~rpuhw.sweep.engine`: run the trials on Ray (local or a cluster), progress line
* :mod:`~rpuhw.sweep.search`: ``search:`` sweeps and ``rpuhw tune`` on Ray Tune + Optuna
* :mod:`~rpuhw.sweep.report`: ``sweep-report``: tables over seeds and plots
* :mod:`~rpuhw.sweep.cli`: the three commands

Ray and Optuna are imported only inside the commands' run functions (``rpuhw train``'s
start-up time does not pay for them). See docs/sweeps.md.
"""
