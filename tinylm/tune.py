"""The only module that imports ray: grid and Optuna sweeps, ASHA and the kill rule, MLflow logging, resume.

Pattern (Ray Train V2 inside Tune, STACK.md): each Tune trial runs a *driver function* that needs no CPU (a
``tune_driver`` custom resource, which a cluster puts on its on-demand head) and builds a ``TorchTrainer`` whose
workers call ``tinylm.train.train`` unchanged. The Train run is named after the trial id, so a restarted
sweep resumes each trial from its last checkpoint. ``time_attr`` for ASHA is tokens seen.

    run_sweep("glu", BASE, {"glu_factor": [2.0, 2.66, 3.0, 4.0]})          # grid
    run_sweep("glu", BASE, SPACE, refine=20)                                  # + Optuna around the grid's best
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field, replace

import optuna
import pandas as pd
import ray
import ray.train
from ray import tune
from ray.train import Checkpoint, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from tinylm.config import FIELDS, Config, ConfigError, check_keys
from tinylm.rules import KillRule

log = logging.getLogger("tinylm.tune")
VARIANT = "__variant"  # a grid key whose values are dicts of Config fields changed together
STATUS_DONE = ("completed", "diverged")
TUNE_KEYS = ("training_iteration", "time_this_iter_s", "timestamp", "pid", "iterations_since_restore",
             "time_since_restore", "time_total_s")  # Tune's bookkeeping, not metrics


@dataclass(frozen=True)
class Sweep:
    """Settings of one sweep invocation (everything that is not a Config field)."""

    name: str
    results_dir: str = "results"
    seeds: int = 1
    refine: int = 0  # Optuna trials after the grid (0 = grid only)
    asha: bool = True
    grace_tokens: int = 0  # ASHA grace period in tokens (0 = 1/4 of train_tokens)
    reduction_factor: int = 2
    kill_margin: float = 0.5  # PRD kill rule: ppl points worse than the baseline ...
    kill_window: int = 0  # ... for this many consecutive tokens (0 = 1M at full scale, 1/6 of the run at smoke)
    baseline: dict = field(default_factory=dict)  # Config fields that identify the baseline trial
    address: str | None = None  # Ray cluster to attach to (or RAY_ADDRESS); None = a local Ray
    workers: int = 0  # Train workers per trial (0 = 1 on CPU, gpus_per_trial on GPUs)
    gpus_per_trial: int = 1
    max_concurrent: int = 0  # 0 = from the resources
    max_failures: int = 2  # worker failures survived per trial (restarts from the last checkpoint)
    tracking_uri: str = ""  # "" = $MLFLOW_TRACKING_URI or sqlite under results_dir
    optuna_storage: str = ""  # "" = $TINYLM_OPTUNA_STORAGE or sqlite under results_dir
    hypothesis: str = ""
    description: str = ""
    axes: tuple = ()  # the grid's axes, for progress lines

    @property
    def root(self) -> str:
        return os.path.abspath(self.results_dir)

    def uri(self) -> str:
        from tinylm.tracking import default_uri

        return self.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_uri(self.root)

    def storage(self) -> str:
        return (self.optuna_storage or os.environ.get("TINYLM_OPTUNA_STORAGE")
                or f"sqlite:///{os.path.join(self.root, 'optuna.db')}")


# --- inside Ray Train workers --------------------------------------------------------------------------
def _worker_loop(loop: dict) -> None:
    import torch

    from tinylm.train import train

    torch.set_num_threads(max(1, int(loop["threads"])))
    _quiet_ray_train()
    cfg = Config.from_dict(loop["cfg"])
    rank = ray.train.get_context().get_world_rank()
    resume = None
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:  # a restarted worker group (or a resumed sweep): continue from the last checkpoint
        with ckpt.as_directory() as d:
            with open(os.path.join(d, "tinylm_complete.json")) as f:
                tag = json.load(f)["tag"]
            resume = os.path.join(loop["out_dir"], f"restored-{rank}")
            shutil.rmtree(resume, ignore_errors=True)
            shutil.copytree(d, os.path.join(resume, tag))

    def report(metrics: dict, ckpt_dir: str | None) -> None:
        m = {**metrics, "is_baseline": int(loop["is_baseline"])}
        # rank 0 uploads the checkpoint: with one node (or a shared out_dir) it holds every rank's shards
        if ckpt_dir and rank == 0:
            ray.train.report(m, checkpoint=Checkpoint.from_directory(ckpt_dir))
        else:
            ray.train.report(m)

    train(cfg, loop["out_dir"], report=report, resume_from=resume)


def _quiet_ray_train() -> None:
    """Ray Train logs every report in full at INFO (a logger named by its file); our one line per eval is enough."""
    try:
        from ray.train.v2._internal.execution import context

        logging.getLogger(context.__file__).setLevel(logging.WARNING)
    except ImportError:  # a private module: if it moves, we only lose the quieting
        pass


# --- the per-trial driver (a Tune function trainable) ------------------------------------------------------
def _trial_driver(config: dict) -> None:
    s = config["__sweep"]
    cfg = build_config(config)
    trial_id = tune.get_context().get_trial_id()
    base = dict(cfg=cfg.to_dict(), out_dir=os.path.join(s["root"], s["name"], "trials", trial_id),
                threads=s["cpus_per_worker"], is_baseline=is_baseline(cfg, s["baseline"]))
    resources = {"CPU": s["cpus_per_worker"]} | ({"GPU": 1} if s["use_gpu"] else {})
    trainer = TorchTrainer(
        _worker_loop, train_loop_config=base,
        scaling_config=ScalingConfig(num_workers=s["workers"], use_gpu=s["use_gpu"], resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if s["use_gpu"] else "gloo"),
        run_config=ray.train.RunConfig(
            name=f"{s['name']}-{trial_id}",  # stable: a restarted sweep resumes this Train run
            storage_path=os.path.join(s["storage_root"], "train"), callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=s["max_failures"])),
    )
    trainer.fit()


def build_config(sampled: dict) -> Config:
    """``Config(**base, **sampled)``: Tune's param space holds every Config field plus an optional variant."""
    values = {k: v for k, v in sampled.items() if k in FIELDS}
    values.update(sampled.get(VARIANT) or {})
    return Config.from_dict(values)


def is_baseline(cfg: Config, baseline: dict) -> bool:
    return bool(baseline) and all(getattr(cfg, k) == v for k, v in baseline.items())


# --- Tune callbacks: the kill rule and MLflow ------------------------------------------------------------
_RULES: dict[str, KillRule] = {}


def _shared_rule(key: str, state: dict) -> KillRule:
    """Unpickle to ONE rule per sweep: Tune restores the stopper and the callbacks separately, and the
    callback must see the stopper's kill reasons."""
    if key not in _RULES:
        rule = KillRule()
        rule.__dict__.update(state)
        rule.key = key
        _RULES[key] = rule
    return _RULES[key]


class SharedKillRule(KillRule):
    def __init__(self, key: str, **kwargs):
        super().__init__(**kwargs)
        self.key = key
        _RULES[key] = self

    def __reduce__(self):
        return _shared_rule, (self.key, {k: v for k, v in self.__dict__.items() if k != "key"})


class KillStopper(tune.Stopper):
    def __init__(self, rule: KillRule):
        self.rule = rule

    def __call__(self, trial_id: str, result: dict) -> bool:
        if "val_ppl" not in result or result.get("status") in STATUS_DONE:
            return False
        return self.rule.update(trial_id, int(result["tokens"]), float(result["val_ppl"]),
                                bool(result.get("is_baseline"))) is not None

    def stop_all(self) -> bool:
        return False


class TrackingCallback(tune.Callback):
    """One MLflow child run per trial, nested under the sweep's parent; keyed by trial id (no duplicates)."""

    def __init__(self, sweep: Sweep, rule: KillRule, parent_run_id: str, phase: str = "grid"):
        self.sweep, self.rule, self.parent, self.phase = sweep, rule, parent_run_id, phase
        self._tracker, self._runs = None, {}

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; the client is rebuilt
        return {**self.__dict__, "_tracker": None, "_runs": {}}

    @property
    def tracker(self):
        if self._tracker is None:
            from tinylm.tracking import Tracker

            self._tracker = Tracker(self.sweep.uri(), experiment=self.sweep.name,
                                    artifact_root=os.path.join(self.sweep.root, "mlartifacts"))
        return self._tracker

    def _run(self, trial) -> str:
        if trial.trial_id not in self._runs:
            cfg = build_config(trial.config)
            self._runs[trial.trial_id] = self.tracker.trial_run(
                self.parent, trial.trial_id, cfg.to_dict(),
                tags={"tinylm.sweep": self.sweep.name, "ray_trial_id": trial.trial_id, "tinylm.phase": self.phase,
                      "is_baseline": str(is_baseline(cfg, self.sweep.baseline)).lower()})
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._run(trial)
        print(f"[{self.sweep.name}] start {trial.trial_id} {self.axes(trial)}", flush=True)

    def axes(self, trial) -> str:
        cfg = trial.config
        keys = [k for k in self.sweep.axes if k in cfg] + [k for k in (cfg.get(VARIANT) or {})]
        vals = {**cfg, **(cfg.get(VARIANT) or {})}
        return " ".join(f"{k}={vals[k]}" for k in dict.fromkeys(keys))

    def on_trial_result(self, iteration, trials, trial, result, **info):
        numeric = {k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                   and k not in TUNE_KEYS}
        self.tracker.log_metrics(self._run(trial), numeric, step=int(result.get("tokens", 0)))
        if "val_loss" in result and "status" not in result:
            print(f"[{self.sweep.name}] {trial.trial_id} tokens {int(result['tokens']):>11,} val_loss "
                  f"{result['val_loss']:.4f} ppl {result['val_ppl']:9.2f} {result.get('tokens_per_s', 0):8,.0f} tok/s",
                  flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status, reason = trial_status(trial.trial_id, last, self.rule, asha=self.sweep.asha)
        run_id = self._run(trial)
        strings = {k: str(v) for k, v in last.items() if k in ("git_sha", "git_dirty", "git_diff_sha", "hostname",
                   "device", "tokenizer_hash", "data_fingerprint", "data_source", "world_size", "torch")}
        self.tracker.set_tags(run_id, strings)
        cfg = build_config(trial.config)
        self.tracker.log_dict(run_id, cfg.to_dict(), "config.json")
        if last.get("ds_config"):
            self.tracker.log_dict(run_id, json.loads(last["ds_config"]), "ds_config.json")
        final = {k: v for k, v in last.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.tracker.log_dict(run_id, final | {"status": status, "stop_reason": reason}, "final_metrics.json")
        self.tracker.finish_run(run_id, status, reason, final)
        print(f"[{self.sweep.name}] {status:>12} {trial.trial_id} {self.axes(trial)} val_loss "
              f"{last.get('val_loss', float('nan')):.4f} {reason}", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        err = ""
        if getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                err = f.read()[-2000:]
        self.tracker.finish_run(self._run(trial), "failed", err or "trial raised an error")


def trial_status(trial_id: str, last: dict, rule: KillRule, asha: bool = True) -> tuple[str, str]:
    """completed / diverged (the run said so), killed_rule (the PRD rule fired), else stopped by ASHA."""
    if last.get("status") in STATUS_DONE:
        return last["status"], str(last.get("stop_reason", ""))
    if trial_id in rule.reasons:
        return "killed_rule", rule.reasons[trial_id]
    if not asha:
        return "failed", f"ended at {int(last.get('tokens', 0)):,} tokens without a final result"
    return "stopped_asha", f"stopped early by ASHA at {int(last.get('tokens', 0)):,} tokens"


class PruningOptunaSearch(OptunaSearch):
    """OptunaSearch that stores trials stopped early (ASHA / kill rule) as PRUNED, so the dashboard shows them
    (stock OptunaSearch stores them COMPLETE — STACK.md)."""

    def on_trial_complete(self, trial_id, result=None, error=False):
        if result and result.get("status") not in STATUS_DONE and not error and trial_id in self._ot_trials:
            ot_trial = self._ot_trials[trial_id]
            ot_trial.set_user_attr("tinylm_status", "stopped_early")
            self._ot_study.tell(ot_trial, None, state=optuna.trial.TrialState.PRUNED)
            self._completed_trials.add(trial_id)
            return
        super().on_trial_complete(trial_id, result, error)


# --- sweep entry points --------------------------------------------------------------------------------
def connect(sweep: Sweep) -> dict:
    """Start or attach to Ray and size trials from its resources. Returns the per-trial settings."""
    address = sweep.address or os.environ.get("RAY_ADDRESS")
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("TINYLM_", "HF_", "DS_"))}
           | {"RAY_TRAIN_V2_ENABLED": "1"}}
    if not ray.is_initialized():
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            # A fixed GCS port, announced to every worker as RAY_ADDRESS: Train V2's placement-group cleaner
            # looks the cluster up through the State API, and with two Ray instances on one machine (two sweeps)
            # an unaddressed lookup fails, so a stopped trial's placement group would never be released.
            port = _free_port()
            env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
            cpus = os.cpu_count() or 1
            os.environ["RAY_GCS_SERVER_PORT"] = str(port)
            try:
                # the dashboard serves that State API (STACK.md: without it ASHA-stopped trials leak their
                # placement groups); it binds 127.0.0.1
                ray.init(address="local", num_cpus=cpus, resources={"tune_driver": cpus * 2}, runtime_env=env,
                         dashboard_host="127.0.0.1", logging_level=logging.WARNING)
            finally:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
    res = ray.cluster_resources()
    if "tune_driver" not in res:
        raise ConfigError("the Ray cluster has no 'tune_driver' resource for trial drivers; start the head with "
                          "ray start --head --resources='{\"tune_driver\": 8}' (cluster/aws.yaml does)")
    gpus = int(res.get("GPU", 0))
    if gpus:
        workers = sweep.workers or sweep.gpus_per_trial
        cpus_per_worker = max(1, min(8, int(res.get("CPU", 1) // max(gpus, 1))))
        concurrent = sweep.max_concurrent or max(1, gpus // workers)
    else:
        workers = sweep.workers or 1
        cpus = int(res.get("CPU", 1))
        concurrent = sweep.max_concurrent or max(1, cpus // workers)
        cpus_per_worker = max(1, cpus // (concurrent * workers))
    return {"use_gpu": bool(gpus), "workers": workers, "cpus_per_worker": cpus_per_worker,
            "concurrent": min(concurrent, int(res["tune_driver"]))}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grid_space(base: Config, space: dict, seeds: int) -> dict:
    check_keys({k: v for k, v in space.items() if k != VARIANT})
    for k, values in space.items():  # fail fast: every grid point must build a valid Config
        for v in values if isinstance(values, list) else []:
            build_config(base.to_dict() | ({k: v} if k != VARIANT else {VARIANT: v}))
    out = {k: v for k, v in base.to_dict().items()}
    for k, values in space.items():
        out[k] = tune.grid_search(values) if isinstance(values, list) else values
    if seeds > 1:
        out["seed"] = tune.grid_search(list(range(base.seed, base.seed + seeds)))
    return out


def run_sweep(sweep: Sweep, base: Config, space: dict, refine_space: dict | None = None) -> pd.DataFrame:
    """Run (or resume) a grid sweep, then optionally an Optuna refinement; returns the ranked results table.

    Args:
        sweep: sweep settings (name, results dir, seeds, ASHA / kill rule, cluster, tracking, optuna storage).
        base: the Config every trial starts from.
        space: Config field -> list of values (a grid), or ``VARIANT`` -> list of dicts of fields.
        refine_space: Config field -> Tune domain for Optuna (default: around the grid's numeric axes).
    """
    from tinylm.tracking import Tracker, check_tracking

    uri = sweep.uri()
    check_tracking(uri)  # fail before any compute when the tracking server is down
    os.makedirs(sweep.root, exist_ok=True)
    param_space = grid_space(base, space, sweep.seeds)  # raises on bad configs before anything is scheduled
    sweep = replace(sweep, axes=tuple(k for k in space if k != VARIANT) + (("seed",) if sweep.seeds > 1 else ()))
    res = connect(sweep)
    from tinylm.perf import git_info

    tracker = Tracker(uri, experiment=sweep.name, artifact_root=os.path.join(sweep.root, "mlartifacts"))
    parent = tracker.start_sweep(
        sweep_key=f"{sweep.name}@{sweep.root}", params={"space": json.dumps(space, default=str)[:6000],
                                                        "base": base.name, "scale": base.scale},
        tags={"tinylm.sweep": sweep.name, **git_info()}, description=sweep.description, hypothesis=sweep.hypothesis)
    t0 = time.time()
    try:
        _fit(sweep, base, param_space, res, parent, refine=False)
        if sweep.refine:
            grid = results_table(sweep)
            _fit(sweep, base, optuna_space(base, space, grid, refine_space), res, parent, refine=True, grid=grid)
    except KeyboardInterrupt:
        tracker.finish_run(parent, "interrupted", "interrupted by the user; run the same command to resume")
        raise
    table = results_table(sweep)
    tracker.finish_run(parent, "completed", "", {"n_trials": len(table), "wall_s": time.time() - t0})
    return table


def _fit(sweep: Sweep, base: Config, param_space: dict, res: dict, parent: str, refine: bool,
         grid: pd.DataFrame | None = None) -> None:
    name = f"{sweep.name}-refine" if refine else sweep.name
    # on a multi-node cluster Ray's storage must be shared: TINYLM_STORAGE=s3://bucket/prefix (cluster/aws.yaml)
    storage_root = os.environ.get("TINYLM_STORAGE") or os.path.join(sweep.root, "ray")
    param_space["__sweep"] = {"name": sweep.name, "root": sweep.root, "storage_root": storage_root,
                              "baseline": sweep.baseline, "max_failures": sweep.max_failures, **res}
    rule = SharedKillRule(f"{sweep.root}/{name}", margin=sweep.kill_margin, window=sweep.kill_window or (
        1_000_000 if base.scale == "full" else max(1, base.train_tokens // 6)))
    scheduler = FIFOScheduler()
    if sweep.asha:
        scheduler = ASHAScheduler(time_attr="tokens", max_t=base.train_tokens, reduction_factor=sweep.reduction_factor,
                                  grace_period=sweep.grace_tokens or max(1, base.train_tokens // 4))
    search = None
    if refine:
        domains = [k for k, v in param_space.items() if isinstance(v, tune.search.sample.Domain)]
        # seed the study with the grid's two best points (Optuna evaluates them first)
        done = grid[grid["status"].isin(STATUS_DONE)] if grid is not None else grid
        points = [{k: _py(row[k]) for k in domains if k in row} for _, row in done.head(2).iterrows()] \
            if done is not None else []
        search = PruningOptunaSearch(
            space={k: v for k, v in param_space.items() if isinstance(v, tune.search.sample.Domain)},
            metric="val_loss", mode="min", points_to_evaluate=[p for p in points if p] or None,
            storage=optuna.storages.RDBStorage(url=sweep.storage()), study_name=name)
        param_space = {k: v for k, v in param_space.items() if not isinstance(v, tune.search.sample.Domain)}
    trainable = tune.with_resources(_trial_driver, {"cpu": 0, "tune_driver": 1})
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
                                        max_concurrent_trials=res["concurrent"]),
            run_config=tune.RunConfig(name=name, storage_path=storage_root, callbacks=callbacks,
                                      stop=KillStopper(rule), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    grid = tuner.fit()
    # Tune catches SIGINT, saves its state and returns normally: trials still PENDING/RUNNING mean "interrupted"
    unfinished = [t for t in grid._experiment_analysis.trials if t.status not in ("TERMINATED", "ERROR")]
    if unfinished:
        raise KeyboardInterrupt(f"{len(unfinished)} trial(s) unfinished")
    if not refine:
        record_grid_in_optuna(sweep, base, param_space)


def _py(v):
    """numpy scalars -> Python (Optuna and Tune want plain types)."""
    return v.item() if hasattr(v, "item") else v


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


def optuna_space(base: Config, space: dict, grid: pd.DataFrame, refine_space: dict | None) -> dict:
    """Refinement space: given, or log-uniform over [min/2, max*2] of each numeric grid axis around the best."""
    out = {k: v for k, v in base.to_dict().items()}
    if grid is not None and len(grid):
        best = grid.iloc[0]
        out.update({k: best[k] for k in space if k in FIELDS and k in best})
    if refine_space:
        out.update({k: domain(k, v) for k, v in refine_space.items()})
        return out
    for k, values in space.items():
        if k in FIELDS and isinstance(values, list) and all(isinstance(v, (int, float)) for v in values):
            lo, hi = min(values) / 2, max(values) * 2
            out[k] = (tune.qlograndint(max(1, int(lo)), int(hi), 1) if FIELDS[k].type in ("int", int)
                      else tune.loguniform(lo, hi))
        elif k in FIELDS and isinstance(values, list):
            out[k] = tune.choice(values)
    return out


def record_grid_in_optuna(sweep: Sweep, base: Config, param_space: dict) -> None:
    """Store grid trials in the Optuna study named after the sweep (COMPLETE or PRUNED), once each."""
    from tinylm.tracking import load_runs

    try:
        df = load_runs(sweep.uri(), sweep=sweep.name)
    except Exception as e:  # noqa: BLE001 - nothing to record yet
        log.warning("no trials to record in Optuna: %s", e)
        return
    study = optuna.create_study(study_name=sweep.name, storage=optuna.storages.RDBStorage(url=sweep.storage()),
                                direction="minimize", load_if_exists=True)
    seen = {t.user_attrs.get("ray_trial_id") for t in study.get_trials(deepcopy=False)}
    axes = [k for k, v in param_space.items() if isinstance(v, dict) and "grid_search" in v]
    for _, row in df[df["phase"] == "grid"].iterrows():
        if row["trial_id"] in seen:
            continue
        params = {k: _py(row[k]) for k in axes if k in row and k != VARIANT}
        dists = {k: optuna.distributions.CategoricalDistribution(list(param_space[k]["grid_search"])) for k in params}
        loss = float(row["val_loss"]) if pd.notna(row.get("val_loss")) else None
        if row["status"] == "completed" and loss is not None and math.isfinite(loss):
            state = optuna.trial.TrialState.COMPLETE
        elif row["status"] in ("stopped_asha", "killed_rule") and loss is not None:
            state = optuna.trial.TrialState.PRUNED
        else:  # diverged / failed: the dashboard shows them as failed, with the reason
            state, loss = optuna.trial.TrialState.FAIL, None
        tokens = int(row.get("tokens", 0) or 0)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=dists, state=state,
            value=loss if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={tokens: loss} if loss is not None and math.isfinite(loss) else {},
            user_attrs={"ray_trial_id": row["trial_id"], "tinylm_status": row["status"],
                        "stop_reason": str(row.get("stop_reason", ""))}))


SHOW = ("val_loss", "val_ppl", "tokens", "params_total", "latency_ms_b1_l128", "peak_mem_mb", "tokens_per_s")


def results_table(sweep: Sweep) -> pd.DataFrame:
    """All trials of the sweep from the tracking store, ranked by val loss (one source of truth across resumes)."""
    from tinylm.tracking import load_runs

    df = load_runs(sweep.uri(), sweep=sweep.name)
    df = df.sort_values("val_loss", na_position="last").reset_index(drop=True)
    return df


def print_results(sweep: Sweep, table: pd.DataFrame, space: dict) -> str:
    axes = [k for k in space if k in table.columns] + (["seed"] if sweep.seeds > 1 else [])
    if VARIANT in space:
        axes += sorted({k for v in space[VARIANT] for k in v} & set(table.columns))
    cols = ["trial_id", *dict.fromkeys(axes), *[c for c in SHOW if c in table.columns], "status"]
    out_csv = os.path.join(sweep.root, sweep.name, "results.csv")
    os.makedirs(os.path.dirname(out_csv), exist_ok=True)
    table.to_csv(out_csv, index=False)
    text = table[cols].to_string(index=False, float_format=lambda x: f"{x:,.4g}")
    msg = (f"\n{text}\n\n"
           f"results CSV   : {out_csv}\n"
           f"MLflow        : mlflow ui --backend-store-uri {mask(sweep.uri())} --host 127.0.0.1\n"
           f"Optuna        : optuna-dashboard {mask(sweep.storage())} --host 127.0.0.1\n"
           f"analysis      : python -m tinylm.analysis {sweep.name}")
    print(msg)
    return msg


def mask(uri: str) -> str:
    import re

    return re.sub(r"//([^:/@]+):([^@]+)@", r"//\1:***@", uri)


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


__all__ = ["Sweep", "VARIANT", "print_results", "results_table", "run_sweep", "shutdown"]
