"""Running a sweep: the grid (and an optional Optuna refinement) as Tune runs, resumed when run again.

    run_sweep(Sweep("glu"), BASE, {"glu_factor": [2.0, 2.66, 3.0, 4.0]})          # grid
    run_sweep(Sweep("glu", refine=20), BASE, SPACE)                                 # + Optuna around the best

A restarted sweep resumes each trial from its last checkpoint. ``time_attr`` for ASHA is tokens seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import replace

import optuna
import pandas as pd
import ray
from ray import tune

from tinylm import layout
from tinylm.config import Config
from tinylm.layout import VARIANT
from tinylm.sweep import Sweep
from tinylm.tune.callbacks import KillStopper, SharedKillRule, TrackingCallback
from tinylm.tune.console import Console
from tinylm.tune.grid import grid_space
from tinylm.tune.resources import connect
from tinylm.tune.results import results_table
from tinylm.tune.search import PruningOptunaSearch, optuna_space, record_grid_in_optuna, tell_grid_results
from tinylm.tune.stopping import early_stop_warnings, make_scheduler, probes_for
from tinylm.tune.worker import SWEEP_ENTRY, trial_driver

log = logging.getLogger("tinylm.tune")


def run_sweep(sweep: Sweep, base: Config, space: dict, refine_space: dict | None = None) -> pd.DataFrame:
    """Run (or resume) a grid sweep, then optionally an Optuna refinement; returns the ranked results table.

    Args:
        sweep: sweep settings (name, results dir, seeds, ASHA / kill rule, cluster, tracking, optuna storage).
        base: the Config every trial starts from.
        space: Config field -> list of values (a grid), or ``VARIANT`` -> list of dicts of fields.
        refine_space: Config field -> Tune domain for Optuna (default: around the grid's numeric axes).
    """
    from tinylm.tracking import check_tracking

    uri = sweep.uri()
    check_tracking(uri)  # fail before any compute when the tracking server is down
    os.makedirs(sweep.root, exist_ok=True)
    base = base.replace(probes=probes_for(sweep, base))  # a wsd sweep with ASHA probes its rungs
    for line in early_stop_warnings(sweep, base, space):
        log.warning(line)
    # raises on bad configs before anything is scheduled; baseline first and shuffled when trials can stop early
    param_space = grid_space(base, space, sweep.seeds, baseline=sweep.baseline,
                             shuffle=sweep.asha or math.isfinite(sweep.kill_margin))
    sweep = replace(sweep, axes=tuple(k for k in space if k != VARIANT) + (("seed",) if sweep.seeds > 1 else ()))
    console = Console(os.path.join(sweep.root, sweep.name, "output.log")) if sweep.console and Console.wanted() \
        else contextlib.nullcontext()
    with console:
        return _run_sweep(sweep, base, space, refine_space, uri, param_space)


def _run_sweep(sweep: Sweep, base: Config, space: dict, refine_space: dict | None, uri: str,
               param_space: dict) -> pd.DataFrame:
    from tinylm.tracking import Tracker

    res = connect(sweep)
    from tinylm.perf import git_info

    tracker = Tracker(uri, experiment=sweep.name, artifact_root=os.path.join(sweep.root, "mlartifacts"))
    parent = tracker.start_sweep(
        sweep_key=layout.sweep_key(sweep.name, sweep.root), params={"space": json.dumps(space, default=str)[:6000],
                                                        "base": base.name, "scale": base.scale},
        tags={"tinylm.sweep": sweep.name, **git_info()}, description=sweep.description, hypothesis=sweep.hypothesis)
    t0 = time.time()
    try:
        _fit(sweep, base, param_space, res, parent, refine=False)
        table = results_table(sweep)  # read once: Optuna's record of the grid, the refinement's start, the result
        record_grid_in_optuna(sweep, table, param_space)
        if sweep.refine:
            _fit(sweep, base, optuna_space(base, space, table, refine_space), res, parent, refine=True, grid=table)
            table = results_table(sweep)
    except KeyboardInterrupt:
        tracker.finish_run(parent, "interrupted", "interrupted by the user; run the same command to resume")
        raise
    tracker.finish_run(parent, "completed", "", {"n_trials": len(table), "wall_s": time.time() - t0})
    return table


def _fit(sweep: Sweep, base: Config, param_space: dict, res: dict, parent: str, refine: bool,
         grid: pd.DataFrame | None = None) -> None:
    name = f"{sweep.name}-refine" if refine else sweep.name
    # on a multi-node cluster Ray's storage must be shared: TINYLM_STORAGE=s3://bucket/prefix (cluster/aws.yaml)
    storage_root = os.environ.get("TINYLM_STORAGE") or os.path.join(sweep.root, "ray")
    # what every trial's driver reads (worker.trial_driver): the Sweep's trial fields (Sweep.for_trials) + resources
    param_space[SWEEP_ENTRY] = {**sweep.for_trials(), "storage_root": storage_root, **res}
    rule = SharedKillRule(f"{sweep.root}/{name}", margin=sweep.kill_margin, window=sweep.kill_window or (
        1_000_000 if base.scale == "full" else max(1, base.train_tokens // 6)))
    scheduler = make_scheduler(sweep, base)
    search = None
    if refine:
        space = {k: v for k, v in param_space.items() if isinstance(v, tune.search.sample.Domain)}
        # tell the study what the grid already measured (issue 12: re-running the grid's best points as "seeds"
        # reproduced their losses and explored nothing): every refinement trial is a new point
        n_known = tell_grid_results(sweep.storage(), name, space, grid)
        log.info("refine study %s starts from %d grid results", name, n_known)
        search = PruningOptunaSearch(space=space, metric="val_loss", mode="min",
                                     storage=optuna.storages.RDBStorage(url=sweep.storage()), study_name=name)
        param_space = {k: v for k, v in param_space.items() if not isinstance(v, tune.search.sample.Domain)}
    trainable = tune.with_resources(trial_driver, res["trial_resources"])
    path = os.path.join(storage_root, name)
    callbacks = [TrackingCallback(sweep, rule, parent, phase="refine" if refine else "grid")]
    if tune.Tuner.can_restore(path):
        log.warning("resuming sweep %s from %s", name, path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                                   param_space=param_space)
    else:
        tuner = tune.Tuner(
            trainable, param_space=param_space,
            tune_config=tune.TuneConfig(metric="val_loss", mode="min", scheduler=scheduler, search_alg=search,
                                        num_samples=sweep.refine if refine else 1,
                                        max_concurrent_trials=res["concurrent"],
                                        # local mode: the next trial runs in the same process (imports paid)
                                        reuse_actors=res["local"]),
            run_config=tune.RunConfig(name=name, storage_path=storage_root, callbacks=callbacks,
                                      stop=KillStopper(rule, probing=bool(base.probe_tokens)), verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                                      # local mode has no Train worker restarts: Tune retries the trial
                                      failure_config=tune.FailureConfig(
                                          max_failures=sweep.max_failures if res["local"] else 1)))
    grid = tuner.fit()
    # Tune catches SIGINT, saves its state and returns normally: trials still PENDING/RUNNING mean "interrupted"
    trials = grid._experiment_analysis.trials
    unfinished = [t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    # with max_concurrent_trials, trials are created only as slots free: an interrupt between two trials leaves
    # the rest not even PENDING, so count them too
    expected = (sweep.refine if refine else 1) * math.prod(
        len(v["grid_search"]) for v in param_space.values() if isinstance(v, dict) and "grid_search" in v)
    if unfinished or len(trials) < expected:
        raise KeyboardInterrupt(f"{len(unfinished) + max(0, expected - len(trials))} trial(s) unfinished")


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


__all__ = ["run_sweep", "shutdown"]
