"""The only package that imports ray: grid and Optuna sweeps, ASHA and the kill rule, MLflow logging, resume.

Pattern (Ray Train V2 inside Tune, supported since Ray 2.51): each Tune trial runs a driver function that builds
a ``TorchTrainer`` calling ``tinylm.train.train`` unchanged, named after the trial id (no timestamp).

    run_sweep(Sweep("glu"), BASE, Space(glu_factor=[2.0, 2.66, 3.0, 4.0]))         # grid
    run_sweep(Sweep("glu", refine=20), BASE, SPACE)                                 # + Optuna around the best

Where things live (re-exported here: what the sweep runner, the sweep scripts and bench/ call as ``tinylm.tune.X``;
everything else is imported from the module that defines it):

- ``runner``: ``run_sweep`` (and the Tuner setup: ASHA, the kill rule, resume), ``shutdown``
- ``worker``: what runs in a trial: the per-trial driver and the train loop of Ray Train's workers
- ``grid``: the param space of a grid (``grid_space``, ``grid_order``), a sampled point -> Config (``build_config``)
- ``stopping``: ASHA and its rungs, the wsd probes, the kill rule as a Tune Stopper (``KillStopper``), replays
- ``callbacks``: one MLflow run per trial, a finished trial's status
- ``search``: Optuna: the refinement space and searcher, the grid's results told to the studies
- ``resources``: start or attach to Ray (``connect``), how trials split the machine (``plan_resources``)
- ``console``: the terminal view (``Console``, ``say``, ``bar``)
- ``results``: the ranked results table, the printed summary, tokens spent, ``STOPPED_EARLY``, trials that did
  not end as planned (``unplanned``)
- ``state``: what keeps a sweep's stores honest: one sweep per results folder (``SweepLock``), corrupt sqlite
  stores refused, a resumed sweep's grid checked against the one it was created with
- ``Sweep`` (the settings of a sweep, each flag declared on its field) and ``Space`` (the grid) live in
  ``tinylm.sweep``, which calls this package; this package reads them and imports nothing of it at run time.

Tests patch ``run_sweep``, ``print_results`` and ``shutdown`` on this package; ``tinylm.sweep.pipeline`` calls them as
``tune.X``, and nothing inside the package calls them, so a patch here is what every caller sees.
"""

from __future__ import annotations

from tinylm.tune.grid import build_config, grid_order, grid_space, is_baseline
from tinylm.tune.resources import connect
from tinylm.tune.results import print_results, results_table, stopped_early, tokens_spent, unplanned
from tinylm.tune.runner import run_sweep, shutdown

__all__ = ["build_config", "connect", "grid_order", "grid_space", "is_baseline", "print_results",
           "results_table", "run_sweep", "shutdown", "stopped_early", "tokens_spent", "unplanned"]
