"""The only package that imports ray: grid and Optuna sweeps, ASHA and the kill rule, MLflow logging, resume.

Pattern (Ray Train V2 inside Tune, supported since Ray 2.51): each Tune trial runs a driver function that builds
a ``TorchTrainer`` calling ``tinylm.train.train`` unchanged, named after the trial id (no timestamp).

    run_sweep(Sweep("glu"), BASE, {"glu_factor": [2.0, 2.66, 3.0, 4.0]})          # grid
    run_sweep(Sweep("glu", refine=20), BASE, SPACE)                                 # + Optuna around the best

Where things live (every public name is re-exported here; callers use ``tinylm.tune.X``):

- ``runner``: ``run_sweep`` (and the Tuner setup: ASHA, the kill rule, resume), ``shutdown``
- ``worker``: what runs in a trial: the per-trial driver and the train loop of Ray Train's workers
- ``grid``: the param space of a grid (``grid_space``, ``grid_order``), a sampled point -> Config (``build_config``)
- ``callbacks``: the kill rule as a Tune Stopper, one MLflow run per trial, a finished trial's status
- ``search``: Optuna: the refinement space and searcher, the grid's results told to the studies
- ``resources``: start or attach to Ray (``connect``), how trials split the machine (``plan_resources``)
- ``console``: the terminal view (``Console``, ``say``, ``bar``)
- ``results``: the ranked results table, the printed summary, tokens spent, ``STOPPED_EARLY``, trials that did
  not end as planned (``unplanned``)
- ``state``: what keeps a sweep's stores honest: one sweep per results folder (``SweepLock``), corrupt sqlite
  stores refused, a resumed sweep's grid checked against the one it was created with
- ``Sweep`` (the settings of a sweep, and the sweep scripts' flags) lives in ``tinylm.sweep``: no ray there.

Tests patch ``run_sweep``, ``print_results`` and ``shutdown`` on this package; ``tinylm.experiment`` calls them as
``tune.X``, and nothing inside the package calls them, so a patch here is what every caller sees.
"""

from __future__ import annotations

from tinylm.layout import VARIANT  # a grid key whose values are dicts of Config fields
from tinylm.sweep import Sweep
from tinylm.tune.callbacks import KillStopper, SharedKillRule, TrackingCallback, shared_rule, trial_status
from tinylm.tune.console import Console, bar, say
from tinylm.tune.grid import build_config, grid_order, grid_space, is_baseline
from tinylm.tune.resources import connect, plan_resources
from tinylm.tune.results import (
    PLANNED,
    STATUS_DONE,
    STOPPED_EARLY,
    print_results,
    ranked,
    results_table,
    stopped_early,
    tokens_footer,
    tokens_spent,
    unplanned,
    write_csv,
)
from tinylm.tune.runner import run_sweep, shutdown
from tinylm.tune.search import PruningOptunaSearch, domain, optuna_space, record_grid_in_optuna, tell_grid_results
from tinylm.tune.state import (
    SweepLock,
    SweepStateError,
    check_grid,
    check_ray_storage,
    check_sqlite_stores,
    grid_changes,
    grid_spec,
)

# a sweep interrupted before tune.py became this package pickled its kill rule as tinylm.tune._shared_rule:
# the same command resumes it (Tuner.restore unpickles the stopper and the callbacks)
_shared_rule = shared_rule

__all__ = ["PLANNED", "STATUS_DONE", "STOPPED_EARLY", "VARIANT", "Console", "KillStopper", "PruningOptunaSearch",
           "SharedKillRule", "Sweep", "SweepLock", "SweepStateError", "TrackingCallback", "bar", "build_config",
           "check_grid", "check_ray_storage", "check_sqlite_stores", "connect", "domain", "grid_changes", "grid_order",
           "grid_space", "grid_spec", "is_baseline", "optuna_space", "plan_resources", "print_results", "ranked",
           "record_grid_in_optuna", "results_table", "run_sweep", "say", "shared_rule", "shutdown", "stopped_early",
           "tell_grid_results", "tokens_footer", "tokens_spent", "trial_status", "unplanned", "write_csv"]
