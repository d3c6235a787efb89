"""Running a sweep: the grid (and an optional Optuna refinement) as Tune runs, resumed when run again.

    run_sweep(Sweep("glu"), BASE, Space(glu_factor=[2.0, 2.66, 3.0, 4.0]))         # grid
    run_sweep(Sweep("glu", refine=20), BASE, SPACE)                                 # + Optuna around the best

A restarted sweep resumes each trial from its last checkpoint. ``time_attr`` for ASHA is tokens seen.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shlex
import sys
import time
from dataclasses import replace
from typing import TYPE_CHECKING

import optuna
import pandas as pd
import ray
from ray import tune

from tinylm import layout
from tinylm.config import Config
from tinylm.tune.callbacks import TrackingCallback
from tinylm.tune.console import Console
from tinylm.tune.grid import grid_space
from tinylm.tune.resources import connect
from tinylm.tune.results import PLANNED, STATUS_DONE, results_table, write_csv
from tinylm.tune.search import make_searcher, record_grid_in_optuna, refinement_space
from tinylm.tune.state import SweepLock, check_grid, check_ray_storage, check_sqlite_stores, grid_spec
from tinylm.tune.stopping import KillStopper, SharedKillRule, early_stop_warnings, make_scheduler, probes_for
from tinylm.tune.worker import SWEEP_ENTRY, trial_driver

if TYPE_CHECKING:  # a sweep's settings and grid, handed in by tinylm.sweep (which calls this package)
    from tinylm.sweep.settings import Sweep
    from tinylm.sweep.space import Space

log = logging.getLogger("tinylm.tune")


def run_sweep(sweep: Sweep, base: Config, space: Space, refine_space: dict | None = None) -> pd.DataFrame:
    """Run (or resume) a grid sweep, then optionally an Optuna refinement; returns the ranked results table.

    Args:
        sweep: sweep settings (name, results dir, seeds, ASHA / kill rule, cluster, tracking, optuna storage).
        base: the Config every trial starts from.
        space: the grid, a ``tinylm.sweep.Space``.
        refine_space: Config field -> Tune domain for --refine (default: around the grid's numeric axes).

    Refused before anything starts (``SweepStateError``, one line): another sweep holds the results folder, a
    sqlite store is corrupt, Ray's storage cannot be used, or the grid differs from the one the sweep being
    resumed was created with. Whatever stops it after its MLflow parent run started leaves no run RUNNING.
    """
    from tinylm.tracking import check_tracking

    space = space
    uri = sweep.uri()
    check_tracking(uri)  # fail before any compute when the tracking server is down
    base = base.replace(probes=probes_for(sweep, base))  # a wsd sweep with ASHA probes its rungs
    if sweep.seeds_per_trial > 1:  # --seeds-per-trial K: K seeds of a grid point as one batched model per trial
        base = base.replace(seeds_per_trial=sweep.seeds_per_trial)
    # raises on bad configs before anything is scheduled; baseline first and shuffled when trials can stop early
    param_space = grid_space(base, space, sweep.seeds, baseline=sweep.baseline,
                             shuffle=sweep.asha or math.isfinite(sweep.kill_margin))
    with SweepLock(sweep.root, command=shlex.join(sys.argv)):
        check_sqlite_stores(uri, sweep.storage())
        check_ray_storage(_storage_root(sweep))
        _check_grid(sweep, param_space, refine=False)
        if sweep.refine:  # its space is known after the grid; the number of its trials is known now
            _check_grid(sweep, {}, refine=True, only=("samples",))
        for line in early_stop_warnings(sweep, base, space):
            log.warning(line)
        sweep = replace(sweep, axes=tuple(space.axes) + (("seed",) if sweep.seeds > 1 else ()))
        console = Console(os.path.join(sweep.root, sweep.name, "output.log")) if sweep.console and Console.wanted() \
            else contextlib.nullcontext()
        with console:
            return _run_sweep(sweep, base, space, refine_space, uri, param_space)


def _storage_root(sweep: Sweep) -> str:
    # on a multi-node cluster Ray's storage must be shared: TINYLM_STORAGE=s3://bucket/prefix (cluster/aws.yaml)
    return os.environ.get("TINYLM_STORAGE") or os.path.join(sweep.root, "ray")


def _check_grid(sweep: Sweep, param_space: dict, refine: bool, only: tuple[str, ...] = ()) -> None:
    """The grid (or refinement) of a sweep being resumed must be the one it was created with
    (``state.check_grid``); a new one is recorded in ``<results>/<sweep>/grid.json`` (``refine-grid.json``)."""
    name = f"{sweep.name}-refine" if refine else sweep.name
    path = os.path.join(_storage_root(sweep), name)
    spec_file = os.path.join(sweep.root, sweep.name, "refine-grid.json" if refine else "grid.json")
    if refine:  # its searched domains and trial count; its fixed values follow the best trial, which may move
        param_space = {k: v for k, v in param_space.items() if isinstance(v, tune.search.sample.Domain)}
    check_grid(name, spec_file, grid_spec(param_space, sweep.refine if refine else 1), path,
               resuming=tune.Tuner.can_restore(path), only=only)


def _run_sweep(sweep: Sweep, base: Config, space: Space, refine_space: dict | None, uri: str,
               param_space: dict) -> pd.DataFrame:
    from tinylm.tracking import Tracker

    res = connect(sweep)
    from tinylm.machine import git_info

    tracker = Tracker(uri, experiment=sweep.name, artifact_root=os.path.join(sweep.root, "mlartifacts"))
    parent = tracker.start_sweep(
        sweep_key=layout.sweep_key(sweep.name, sweep.root),
        params={"space": json.dumps(dict(space.items()), default=str)[:6000], "base": base.name, "scale": base.scale},
        tags={"tinylm.sweep": sweep.name, **git_info()}, description=sweep.description, hypothesis=sweep.hypothesis)
    t0 = time.time()
    grid_done = False
    try:
        _fit(sweep, base, param_space, res, parent, tracker, refine=False)
        table = results_table(sweep)  # read once: Optuna's record of the grid, the refinement's start, the result
        record_grid_in_optuna(sweep, table, param_space)
        grid_done = True
        if sweep.refine:
            _fit(sweep, base, refinement_space(base, space, table, refine_space), res, parent, tracker, refine=True,
                 grid=table)
            table = results_table(sweep)
    except BaseException as e:  # noqa: BLE001 - whatever ended the sweep, no run may stay RUNNING
        _close_stopped_sweep(sweep, tracker, parent, e, None if grid_done else param_space)
        raise
    tracker.finish_run(parent, "completed", "", {"n_trials": len(table), "wall_s": time.time() - t0})
    return table


def _close_stopped_sweep(sweep: Sweep, tracker, parent: str, error: BaseException, grid_params: dict | None) -> None:
    """A sweep that stopped before its end (an interrupt, or an error after its parent run started): every store
    says so. Trials still running in MLflow become "interrupted" (the same command resumes them), the parent
    "interrupted" or "failed", results.csv shows the same, and the grid trials that did end are in Optuna."""
    interrupted = isinstance(error, KeyboardInterrupt)
    first = (str(error).strip().splitlines() or [""])[0][:300]
    why = "interrupted by the user" if interrupted else f"the sweep stopped on {type(error).__name__}: {first}"
    steps = [
        lambda: tracker.close_open_children(parent, "interrupted",
                                            f"{why} before this trial ended; run the same command to resume it"),
        lambda: tracker.finish_run(parent, "interrupted" if interrupted else "failed",
                                   f"{why}; run the same command to resume"),
    ]
    for step in steps:
        try:
            step()
        except Exception as e:  # noqa: BLE001 - a broken store must not hide what stopped the sweep
            log.warning("could not record the stopped sweep %s in MLflow: %s: %s", sweep.name, type(e).__name__, e)
    try:
        if sweep.refine:
            _mark_refine_trials_interrupted(sweep)
        table = results_table(sweep)
        write_csv(sweep, table)
        if grid_params is not None and "status" in table:
            # final endings only: unfinished and errored trials resume (Optuna gets them when the grid is done)
            record_grid_in_optuna(sweep, table[table["status"].isin(PLANNED + STATUS_DONE)], grid_params)
    except Exception as e:  # noqa: BLE001
        log.warning("could not write the results of the stopped sweep %s: %s: %s", sweep.name, type(e).__name__, e)


def unfinished_trials(trials: list, statuses: dict[str, str], callback: TrackingCallback) -> list:
    """The trials of a fit that did not end, by the tracking store's record (``statuses``: trial id -> status):
    Tune marks the trials an interrupt stopped TERMINATED in memory, so its own status cannot tell. A trial that
    reported its end (a final ``status``) but whose record the stopped driver never wrote is recorded now through
    ``callback``: no rerun would ever run it again."""
    unfinished = [t for t in trials if statuses.get(t.trial_id, "running") in ("running", "interrupted")]
    for t in [t for t in unfinished if (t.last_result or {}).get("status") in STATUS_DONE]:
        callback.on_trial_complete(0, trials, t)
        unfinished.remove(t)
    return unfinished


def _mark_refine_trials_interrupted(sweep: Sweep) -> None:
    """Optuna has no "interrupted" state: the refinement's trials left RUNNING (the resumed searcher tells them
    later) say so in their ``tinylm_status``, as MLflow does."""
    storage = optuna.storages.RDBStorage(url=sweep.storage())
    try:
        study_id = storage.get_study_id_from_name(f"{sweep.name}-refine")
    except KeyError:
        return
    for t in storage.get_all_trials(study_id, deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        storage.set_trial_user_attr(trial_id, "tinylm_status", "interrupted")


def _fit(sweep: Sweep, base: Config, param_space: dict, res: dict, parent: str, tracker, refine: bool,
         grid: pd.DataFrame | None = None) -> None:
    name = f"{sweep.name}-refine" if refine else sweep.name
    storage_root = _storage_root(sweep)
    if refine:  # the grid's was checked before the sweep started
        _check_grid(sweep, param_space, refine=True)
    # what every trial's driver reads (worker.trial_driver): the Sweep's trial fields (Sweep.for_trials) + resources
    param_space[SWEEP_ENTRY] = {**sweep.for_trials(), "storage_root": storage_root, **res}
    rule = SharedKillRule(f"{sweep.root}/{name}", margin=sweep.kill_margin, window=sweep.kill_window or (
        1_000_000 if base.scale == "full" else max(1, base.train_tokens // 6)))
    scheduler = make_scheduler(sweep, base)
    search = None
    if refine:  # the searcher --search names (tinylm.tune.search.SEARCHERS) over the refinement's domains
        search, param_space = make_searcher(sweep, name, param_space, grid)
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
    # Tune catches SIGINT, saves its state (live trials RUNNING) and returns normally after marking them TERMINATED
    # in memory: only the callback's record says which trials really ended (on_trial_complete / on_trial_error)
    trials = grid._experiment_analysis.trials
    unfinished = unfinished_trials(trials, tracker.trial_statuses(parent), callbacks[0])
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
