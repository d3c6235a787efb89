"""The refinement after the grid: its space (``refinement_space``) and its searcher, built by name from
``SEARCHERS`` (``--search``: the Sweep's ``search`` setting): ``optuna`` (TPE, a Tune searcher that records early
stops as PRUNED and is told the grid's results first) or ``random`` (Tune samples the same space). Also what the
grid measured, recorded in the sweep's Optuna study whatever the searcher (the dashboard shows every sweep).

A new search algorithm is one function ``(sweep, name, space, grid) -> Tune searcher or None`` in ``SEARCHERS``
and its name in ``tinylm.sweep.settings.SEARCHERS`` (the flag's choices, checked before Ray starts)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
import pandas as pd
from ray import tune
from ray.tune.search.optuna import OptunaSearch

from tinylm.config import FIELDS, Config, ConfigError
from tinylm.layout import VARIANT
from tinylm.ranking import plain
from tinylm.tune.results import STATUS_DONE, STOPPED_EARLY

if TYPE_CHECKING:  # a sweep's settings and grid, handed in by tinylm.sweep (which calls this package)
    from tinylm.sweep.settings import Sweep
    from tinylm.sweep.space import Space

log = logging.getLogger("tinylm.tune")


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that stores trials stopped early (ASHA / kill rule) as PRUNED, so the dashboard shows them
    (stock OptunaSearch stores them COMPLETE, intermediate values kept)."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result and result.get("status") not in STATUS_DONE and not error and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("tinylm_status", "stopped_early")
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


def domain(name: str, spec):
    """("loguniform"|"uniform", lo, hi) / ("int", lo, hi) / ("choice", [values]) -> a Tune domain."""
    if isinstance(spec, tune.search.sample.Domain):
        return spec
    kinds = {"loguniform": tune.loguniform, "uniform": tune.uniform, "int": tune.randint,
             "choice": lambda values: tune.choice(values)}
    if not (isinstance(spec, tuple) and spec and spec[0] in kinds):
        raise ConfigError(f"refine_space[{name!r}]={spec!r}; use ('loguniform'|'uniform'|'int', lo, hi) or "
                          "('choice', [values])")
    return kinds[spec[0]](*spec[1:])


def refinement_space(base: Config, space: Space, grid: pd.DataFrame, refine_space: dict | None) -> dict:
    """Refinement space: given, or log-uniform over [min/2, max*2] of each numeric grid axis around the best."""
    space = space
    out = {k: v for k, v in base.to_dict().items()}
    if grid is not None and len(grid):
        best = grid.iloc[0]
        out.update({k: best[k] for k in space.axes if k in FIELDS and k in best})
    if refine_space:
        out.update({k: domain(k, v) for k, v in refine_space.items()})
        return out
    for k, values in space.axes.items():
        if k in FIELDS and isinstance(values, list) and all(isinstance(v, (int, float)) for v in values):
            lo, hi = min(values) / 2, max(values) * 2
            out[k] = (tune.qlograndint(max(1, int(lo)), int(hi), 1) if FIELDS[k].type in ("int", int)
                      else tune.loguniform(lo, hi))
        elif k in FIELDS and isinstance(values, list):
            out[k] = tune.choice(values)
    return out


def tell_grid_results(storage: str, study_name: str, space: dict, grid: pd.DataFrame | None) -> int:
    """Add the grid's completed trials (params inside the refine space, finite val loss) to the refine study as
    COMPLETE trials with their measured loss, once each (keyed by Ray trial id). Returns how many it holds."""
    study = optuna.create_study(study_name=study_name, storage=optuna.storages.RDBStorage(url=storage),
                                direction="minimize", load_if_exists=True)
    seen = {t.user_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False)}
    dists = OptunaSearch.convert_search_space(space)
    if grid is None or not len(grid):
        return 0
    known = 0
    for _, row in grid[grid["status"] == "completed"].iterrows():
        loss = float(row["val_loss"]) if pd.notna(row.get("val_loss")) else math.nan
        if not math.isfinite(loss) or any(k not in row or pd.isna(row[k]) for k in dists):
            continue
        params = {k: int(row[k]) if isinstance(d, optuna.distributions.IntDistribution) else plain(row[k])
                  for k, d in dists.items()}
        if not all(d._contains(d.to_internal_repr(params[k])) for k, d in dists.items()):
            continue  # outside the refine space (a given refine_space narrower than the grid)
        known += 1
        if row["trial_id"] in seen:
            continue
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, value=loss,
            user_attrs={"ray_trial_id": row["trial_id"], "tinylm_status": "completed", "source": "grid"}))
    return known


def record_grid_in_optuna(sweep: Sweep, df: pd.DataFrame, param_space: dict) -> None:
    """Store the grid trials of ``df`` (the sweep's results table) in the Optuna study named after the sweep
    (COMPLETE, PRUNED or FAIL), once each."""
    study = optuna.create_study(study_name=sweep.name, storage=optuna.storages.RDBStorage(url=sweep.storage()),
                                direction="minimize", load_if_exists=True)
    seen = {t.user_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False)}
    axes = [k for k, v in param_space.items() if isinstance(v, dict) and "grid_search" in v]

    def choices(k: str) -> list:
        # a batched trial's grid holds its first seed; its members' rows carry their own (tinylm.ensemble): the
        # choices are every member's seed, the same at every call (Optuna refuses a changed distribution)
        grid = list(param_space[k]["grid_search"])
        return [s + j for s in grid for j in range(sweep.seeds_per_trial)] if k == "seed" else grid

    for _, row in df[df["phase"] == "grid"].iterrows():
        if row["trial_id"] in seen:
            continue
        params = {k: plain(row[k]) for k in axes if k in row and k != VARIANT}
        dists = {k: optuna.distributions.CategoricalDistribution(choices(k)) for k in params}
        loss = float(row["val_loss"]) if pd.notna(row.get("val_loss")) else None
        if row["status"] == "completed" and loss is not None and math.isfinite(loss):
            state = optuna.trial.TrialState.COMPLETE
        elif row["status"] in STOPPED_EARLY and loss is not None:
            state = optuna.trial.TrialState.PRUNED
        else:  # diverged / failed: the dashboard shows them as failed, with the reason
            state, loss = optuna.trial.TrialState.FAIL, None
        tokens = int(row["tokens"]) if pd.notna(row.get("tokens")) else 0  # NaN: a trial with no eval
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, state=state,
            value=loss if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={tokens: loss} if loss is not None and math.isfinite(loss) else {},
            user_attrs={"ray_trial_id": row["trial_id"], "tinylm_status": row["status"],
                        "stop_reason": str(row.get("stop_reason", ""))}))


def _optuna(sweep: Sweep, name: str, space: dict, grid: pd.DataFrame | None):
    # tell the study what the grid already measured (re-running the grid's best points as "seeds" reproduced their
    # losses and explored nothing): every refinement trial is a new point
    n_known = tell_grid_results(sweep.storage(), name, space, grid)
    log.info("refine study %s starts from %d grid results", name, n_known)
    return PruningOptunaSearch(space=space, metric="val_loss", mode="min",
                               storage=optuna.storages.RDBStorage(url=sweep.storage()), study_name=name)


def _random(sweep: Sweep, name: str, space: dict, grid: pd.DataFrame | None):
    return None  # Tune's own variant generator samples the domains left in the param space


# name -> (sweep, study name, the refinement's domains, the grid's results) -> a Tune searcher (None: Tune samples
# the domains itself, which then stay in the param space)
SEARCHERS: dict[str, Callable] = {"optuna": _optuna, "random": _random}


def make_searcher(sweep: Sweep, name: str, param_space: dict, grid: pd.DataFrame | None):
    """The refinement's searcher (``sweep.search``) and the param space Tune gets beside it: a searcher takes the
    domains out of it; without one Tune samples them where they are."""
    if sweep.search not in SEARCHERS:
        raise ConfigError(f"--search={sweep.search!r}; choose one of {', '.join(SEARCHERS)}")
    domains = {k: v for k, v in param_space.items() if isinstance(v, tune.search.sample.Domain)}
    search = SEARCHERS[sweep.search](sweep, name, domains, grid)
    if search is None:
        return None, param_space
    return search, {k: v for k, v in param_space.items() if k not in domains}


__all__ = ["SEARCHERS", "PruningOptunaSearch", "domain", "make_searcher", "record_grid_in_optuna", "refinement_space",
           "tell_grid_results"]
