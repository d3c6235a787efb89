"""The only module that imports ray: grid and Optuna sweeps, ASHA and the kill rule, MLflow logging, resume.

Pattern (Ray Train V2 inside Tune, STACK.md): each Tune trial runs a *driver function* that builds a
``TorchTrainer`` calling ``tinylm.train.train`` unchanged, named after the trial id (no timestamp). Two paths:

- 1-worker trials (the default on one machine): Train's local mode (``num_workers=0``) runs the train function in
  the Tune trial's own process, which asks for the trial's CPUs / GPU fraction, and Tune reuses that process for
  the next trial (``reuse_actors``): no controller, placement group or worker process per trial and deepspeed
  imported once per process (issue 12: ~27 s -> ~1.3 s from one trial's end to the next one's first step).
  Local mode runs no Train callbacks, so the function reports every eval (and its checkpoint) to Tune itself, and
  it resets the process's state per trial (process group, DeepSpeed's groups, RNGs, peak memory). A crashed
  trial is retried by Tune from its last checkpoint.
- multi-worker trials: a driver holding a ``tune_driver`` slot (a custom resource a cluster puts on its on-demand
  head) runs a TorchTrainer worker group with Train's FailureConfig (worker restarts from the last checkpoint).

A restarted sweep resumes each trial from its last checkpoint. ``time_attr`` for ASHA is tokens seen.

    run_sweep("glu", BASE, {"glu_factor": [2.0, 2.66, 3.0, 4.0]})          # grid
    run_sweep("glu", BASE, SPACE, refine=20)                                  # + Optuna around the grid's best
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import sys
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

from tinylm import layout
from tinylm.config import FIELDS, Config, ConfigError, check_keys
from tinylm.layout import VARIANT, mask_uri  # VARIANT: a grid key whose values are dicts of Config fields
from tinylm.ranking import plain
from tinylm.rules import DEFAULT_MARGIN, KillRule

log = logging.getLogger("tinylm.tune")
STATUS_DONE = ("completed", "diverged")
STOPPED_EARLY = ("stopped_asha", "killed_rule")  # statuses of trials a scheduler ended before their last token
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
    brackets: int = 1  # ASHA brackets (1 = plain successive halving with one grace period)
    kill_margin: float = DEFAULT_MARGIN  # PRD kill rule: perplexity relative to the baseline's (tinylm.rules)
    kill_window: int = 0  # ... for this many consecutive tokens (0 = 1M at full scale, 1/6 of the run at smoke)
    baseline: dict = field(default_factory=dict)  # Config fields that identify the baseline trial
    address: str | None = None  # Ray cluster to attach to (or RAY_ADDRESS); None = a local Ray
    workers: int = 0  # Train workers per trial (0 = 1 on CPU, gpus_per_trial on GPUs)
    gpus_per_trial: int = 1
    trials_per_gpu: int = 0  # K trials share each GPU (fractional GPUs); on CPU: K trials per machine (0 = auto)
    local_mode: bool | None = None  # 1-worker trials train in the Tune trial's process (None = when workers == 1,
    # unless TINYLM_LOCAL_MODE=0)
    console: bool = True  # our lines on the terminal, Ray's and DeepSpeed's output in <results>/<name>/output.log
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
        return layout.resolve_uri(self.tracking_uri or None, self.root)

    def storage(self) -> str:
        return (self.optuna_storage or os.environ.get("TINYLM_OPTUNA_STORAGE")
                or f"sqlite:///{os.path.join(self.root, 'optuna.db')}")


# --- inside Ray Train workers --------------------------------------------------------------------------
def _worker_loop(loop: dict) -> None:
    t_fn = time.time()
    import torch

    from tinylm import perf

    perf.reset_marks(trial=loop["t_trial"], worker_fn=t_fn, import_torch=time.time())
    import tinylm.engine  # noqa: F401 - deepspeed: paid once per process

    perf.mark("import_deepspeed")
    from tinylm.train import train

    torch.set_num_threads(max(1, int(loop["threads"])))
    _quiet_ray_train()
    cfg = Config.from_dict(loop["cfg"])
    local = bool(loop.get("local"))
    if local:  # Train's local mode, in a Tune actor that may have run other trials before: reset its state
        tinylm.engine.fresh_process(cfg.seed)
        _log_like_a_train_worker()
        rank, ckpt = 0, tune.get_checkpoint()
    else:
        rank, ckpt = ray.train.get_context().get_world_rank(), ray.train.get_checkpoint()
    if loop.get("gpu_fraction", 1) < 1 and torch.cuda.is_available():  # K trials per GPU: 1/K of its memory each
        torch.cuda.set_per_process_memory_fraction(0.95 * loop["gpu_fraction"])
    resume = None
    if ckpt is not None:  # a restarted worker group (or a resumed sweep): continue from the last checkpoint
        with ckpt.as_directory() as d:
            with open(os.path.join(d, layout.COMPLETE)) as f:
                tag = json.load(f)["tag"]
            resume = os.path.join(loop["out_dir"], f"restored-{rank}")
            shutil.rmtree(resume, ignore_errors=True)
            shutil.copytree(d, os.path.join(resume, tag))

    def report(metrics: dict, ckpt_dir: str | None) -> None:
        m = {**metrics, "is_baseline": int(loop["is_baseline"])}
        if local:  # local mode runs no Train callbacks (TuneReportCallback sees nothing): report to Tune directly
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)
        # rank 0 uploads the checkpoint: with one node (or a shared out_dir) it holds every rank's shards
        elif ckpt_dir and rank == 0:
            ray.train.report(m, checkpoint=Checkpoint.from_directory(ckpt_dir))
        else:
            ray.train.report(m)

    try:
        train(cfg, loop["out_dir"], report=report, resume_from=resume, should_stop=_tune_stopping if local else None)
    finally:
        if local:  # before Train's local controller tears down torch's group behind DeepSpeed's back
            tinylm.engine.end_distributed()


def _tune_stopping() -> bool:
    """True once Tune asked this trial to stop (ASHA, the kill rule, or to reuse the actor for the next trial).
    Tune only acts on that at the next report (up to one eval later), and gives a reused actor 2 s to finish."""
    try:
        from ray.train._internal.session import get_session  # Tune's function-trainable session (private)

        session = get_session()
        return bool(session is not None and session.stop_event.is_set())
    except (ImportError, AttributeError):  # moved: we only lose the prompt stop
        return False


def _log_like_a_train_worker() -> None:
    """tinylm's INFO lines (per eval, "resumed at step ...") reach the sweep's log from a Tune actor too (Ray Train
    sets this up in its workers; a Tune actor logs WARNING and up only)."""
    lg = logging.getLogger("tinylm")
    if not lg.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", datefmt="%H:%M:%S"))
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)


def _quiet_ray_train() -> None:
    """Ray Train logs every report in full at INFO (a logger named by its file), and "Running in local mode" at
    every trial; our one line per eval is enough."""
    logging.getLogger("ray.train.v2.api.config").setLevel(logging.WARNING)
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
    base = dict(cfg=cfg.to_dict(), out_dir=layout.trial_dir(s["root"], s["name"], trial_id), t_trial=time.time(),
                threads=s["cpus_per_worker"], is_baseline=is_baseline(cfg, s["baseline"]),
                gpu_fraction=s["gpu_per_worker"], local=s["local"])
    if s["local"]:
        # Train V2 local mode (num_workers=0): the train function runs here, in the Tune trial's process, which
        # Tune reuses for the next trial — no controller, placement group or worker process per trial, and
        # deepspeed imported once per process. It has no worker-level restart: a failed trial is retried by Tune
        # (FailureConfig of the Tuner) from its last checkpoint.
        _quiet_ray_train()
        TorchTrainer(_worker_loop, train_loop_config=base, scaling_config=ScalingConfig(num_workers=0),
                     run_config=ray.train.RunConfig(name=f"{s['name']}-{trial_id}",
                                                    storage_path=os.path.join(s["storage_root"], "train"))).fit()
        return
    resources = {"CPU": s["cpus_per_worker"]} | ({"GPU": s["gpu_per_worker"]} if s["use_gpu"] else {})
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


# --- the terminal: our lines only (Ray's, DeepSpeed's, MLflow's output goes to a log file) ----------------
class Console:
    """While a sweep runs, everything written to this process's stdout/stderr (Ray's driver logs, the output of
    trial processes that Ray forwards, DeepSpeed, MLflow) goes to a log file at the file-descriptor level; our
    progress lines (``say``) go to the terminal, and so do warnings and errors logged by tinylm and errors logged
    by Ray (a failed trial). Off in notebooks and with TINYLM_VERBOSE=1 (everything on the terminal, as before)."""

    active: Console | None = None

    def __init__(self, log_path: str):
        self.log_path, self.term, self._saved, self._handler, self._dedup = log_path, None, None, None, None

    @staticmethod
    def wanted() -> bool:
        return os.environ.get("TINYLM_VERBOSE", "") in ("", "0") and "ipykernel" not in sys.modules

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._saved = (os.dup(1), os.dup(2))
        self.term = open(os.dup(self._saved[0]), "w", buffering=1)  # noqa: SIM115 - closed in __exit__
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        self._handler = _TerminalHandler(self)
        self._handler.setLevel(logging.WARNING)  # tinylm: warnings and up; ray: errors (see emit)
        for name in ("tinylm", "ray"):
            logging.getLogger(name).addHandler(self._handler)
        Console.active = self
        # Ray groups repeated lines from trial processes into "[repeated Nx]" summaries that it prints seconds
        # later, after this Console has closed (on the terminal): forward every line as it comes instead, to the log
        self._dedup = _set_ray_log_dedup(False)
        self.say(f"Ray / DeepSpeed / MLflow output: {self.log_path}")
        return self

    def say(self, line: str) -> None:
        print(line, flush=True)  # the log keeps our lines too, in context
        if self.term is not None:
            self.term.write(line + "\n")

    def __exit__(self, *exc):
        if ray.is_initialized():
            time.sleep(1.0)  # lines Ray is still forwarding from trial processes that just ended go to the log too
        _set_ray_log_dedup(self._dedup)
        Console.active = None
        for name in ("tinylm", "ray"):
            logging.getLogger(name).removeHandler(self._handler)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self.term.close()
        self.term = None
        return False


def _set_ray_log_dedup(on: bool | None) -> bool | None:
    """Switch Ray's driver-side deduplication of forwarded worker lines (RAY_DEDUP_LOGS, read once at import);
    returns the previous setting (None: this Ray has no such switch, nothing changed)."""
    import ray._private.ray_logging as ray_logging

    previous = getattr(ray_logging, "RAY_DEDUP_LOGS", None)
    if previous is not None and on is not None:
        ray_logging.RAY_DEDUP_LOGS = on
    return previous


class _TerminalHandler(logging.Handler):
    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < (logging.WARNING if record.name.startswith("tinylm") else logging.ERROR):
            return
        if record.name.startswith("tinylm"):  # Ray's loggers write their records to the log themselves
            print(f"{record.levelname} {record.name}: {record.getMessage()}", file=sys.stderr, flush=True)
        msg = record.getMessage().strip().splitlines()
        if msg and self.console.term is not None:
            self.console.term.write(f"{record.levelname.lower()}: {msg[0]} (details: {self.console.log_path})\n")


def say(line: str) -> None:
    """One line of our progress view: on the terminal (and in the log) while a Console is active, else printed."""
    if Console.active is not None:
        Console.active.say(line)
    else:
        print(line, flush=True)


def bar(frac: float, width: int = 10) -> str:
    n = int(round(max(0.0, min(1.0, frac)) * width))
    return f"[{'#' * n}{'.' * (width - n)}] {100 * frac:3.0f}%"


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
        say(f"[{self.sweep.name}] {trial.trial_id} {self.axes(trial)} | started")

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
            tokens, total = int(result["tokens"]), int(trial.config.get("train_tokens") or 0)
            say(f"[{self.sweep.name}] {trial.trial_id} {self.axes(trial)} | tokens {tokens:,}/{total:,} "
                f"{bar(tokens / max(1, total))} | val_loss {result['val_loss']:.4f} ppl {result['val_ppl']:.1f} | "
                f"{result.get('tokens_per_s', 0):,.0f} tok/s mfu {100 * result.get('mfu', 0):.1f}% | running")

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
        say(f"[{self.sweep.name}] {trial.trial_id} {self.axes(trial)} | tokens {int(last.get('tokens', 0)):,} | "
            f"val_loss {last.get('val_loss', float('nan')):.4f} | {status} {reason}".rstrip())

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
           | {"RAY_TRAIN_V2_ENABLED": "1",
              # trial processes write unbuffered, so Ray forwards their lines while the sweep's Console still sends
              # them to the log file (buffered, they surfaced on the terminal when the reused actors exited)
              "PYTHONUNBUFFERED": "1"}}
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
    local_mode = sweep.local_mode
    if local_mode is None and os.environ.get("TINYLM_LOCAL_MODE") in ("0", "1"):
        local_mode = os.environ["TINYLM_LOCAL_MODE"] == "1"
    plan = plan_resources(cpus=int(res.get("CPU", 1)), gpus=int(res.get("GPU", 0)), workers=sweep.workers,
                          gpus_per_trial=sweep.gpus_per_trial, trials_per_gpu=sweep.trials_per_gpu,
                          max_concurrent=sweep.max_concurrent, local_mode=local_mode,
                          driver_slots=int(res.get("tune_driver", 0)))
    if not plan["local"] and "tune_driver" not in res:
        raise ConfigError("the Ray cluster has no 'tune_driver' resource for trial drivers; start the head with "
                          "ray start --head --resources='{\"tune_driver\": 8}' (cluster/aws.yaml does)")
    return plan


def plan_resources(cpus: int, gpus: int, workers: int = 0, gpus_per_trial: int = 1, trials_per_gpu: int = 0,
                   max_concurrent: int = 0, local_mode: bool | None = None, driver_slots: int = 0) -> dict:
    """How a sweep's trials split the cluster (a pure function: no Ray).

    GPUs: each Train worker gets 1/K of a GPU (K = ``trials_per_gpu``, default 1), so K trials share one GPU;
    ``concurrent`` = whole GPUs x K / workers per trial; CPUs are split evenly among the workers that run at
    once (at most 8 threads each). Each trial also caps its CUDA memory at 1/K of the GPU.
    CPU only: K trials at once per machine (default: one per core), the cores split evenly as threads.
    1-worker trials run in Train's local mode (in the Tune trial's process, reused) unless ``local_mode`` is
    False; multi-worker trials run a TorchTrainer from a driver that holds one ``tune_driver`` slot (the
    cluster head's custom resource), so their concurrency is also capped by ``driver_slots``.
    """
    if trials_per_gpu < 0 or max_concurrent < 0 or workers < 0:
        raise ConfigError(f"trials_per_gpu={trials_per_gpu}, max_concurrent={max_concurrent}, workers={workers}: "
                          "each must be >= 0 (0 = auto)")
    k = trials_per_gpu or 1
    if gpus:
        workers = workers or gpus_per_trial
        gpu_per_worker = 1.0 / k
        concurrent = max_concurrent or max(1, (gpus * k) // workers)
        cpus_per_worker = max(1, min(8, cpus // max(1, concurrent * workers)))
    else:
        workers = workers or 1
        gpu_per_worker = 0.0
        concurrent = max_concurrent or max(1, (trials_per_gpu or cpus // workers))
        cpus_per_worker = max(1, cpus // (concurrent * workers))
    local = workers == 1 if local_mode is None else bool(local_mode)
    if local and workers != 1:
        raise ConfigError(f"local_mode needs 1 worker per trial, got workers={workers}")
    if not local:
        concurrent = min(concurrent, driver_slots) if driver_slots else concurrent
    return {"use_gpu": bool(gpus), "workers": workers, "cpus_per_worker": cpus_per_worker, "concurrent": concurrent,
            "gpu_per_worker": gpu_per_worker, "local": local,
            # what one trial asks Tune for: local mode trains in the trial itself; a TorchTrainer driver needs none
            "trial_resources": ({"cpu": cpus_per_worker} | ({"gpu": gpu_per_worker} if gpus else {})) if local
            else {"cpu": 0, "tune_driver": 1}}


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def grid_order(key: str, values: list, baseline: dict) -> list:
    """The order Tune walks a grid axis in when trials can be stopped early: the baseline's value first, then the
    rest in a fixed shuffled order. Tune runs a grid in list order, and asynchronous ASHA promotes whatever reaches
    a rung while it holds too few results to compare against, so a grid written worst-first (say, LRs ascending)
    ran its worst trials to the end; and the kill rule can stop nobody until the baseline has results
    (bench/asha.py). Deterministic, so a resumed sweep sees the same order."""
    import random

    def is_base(v) -> bool:
        if key == VARIANT:
            return bool(baseline) and isinstance(v, dict) and all(v.get(k) == b for k, b in baseline.items() if k in v)
        return key in baseline and v == baseline[key]

    first = [v for v in values if is_base(v)][:1]
    rest = [v for v in values if not (first and v is first[0])]
    random.Random(f"tinylm-grid-{key}").shuffle(rest)
    return first + rest


def grid_space(base: Config, space: dict, seeds: int, baseline: dict | None = None, shuffle: bool = False) -> dict:
    """Tune's param_space for a grid over ``space`` (× ``seeds``) on ``base``; every point is checked first.
    ``shuffle``: walk each axis baseline-first, the rest shuffled (``grid_order``), for sweeps that stop early."""
    check_keys({k: v for k, v in space.items() if k != VARIANT})
    for k, values in space.items():  # fail fast: every grid point must build a valid Config
        for v in values if isinstance(values, list) else []:
            build_config(base.to_dict() | ({k: v} if k != VARIANT else {VARIANT: v}))
    out = {k: v for k, v in base.to_dict().items()}
    for k, values in space.items():
        if isinstance(values, list) and shuffle:
            values = grid_order(k, values, baseline or {})
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
    from tinylm.tracking import check_tracking

    uri = sweep.uri()
    check_tracking(uri)  # fail before any compute when the tracking server is down
    os.makedirs(sweep.root, exist_ok=True)
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
                                  grace_period=sweep.grace_tokens or max(1, base.train_tokens // 4),
                                  brackets=sweep.brackets)
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
    trainable = tune.with_resources(_trial_driver, res["trial_resources"])
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
                                      stop=KillStopper(rule), verbose=0,
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
    if not refine:
        record_grid_in_optuna(sweep, base, param_space)


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
        params = {k: plain(row[k]) for k in axes if k in row and k != VARIANT}
        dists = {k: optuna.distributions.CategoricalDistribution(list(param_space[k]["grid_search"])) for k in params}
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


SHOW = ("val_loss", "val_ppl", "tokens", "params_total", "latency_ms_b1_l128", "peak_mem_mb", "tokens_per_s")


def results_table(sweep: Sweep) -> pd.DataFrame:
    """All trials of the sweep from the tracking store, ranked by val loss (one source of truth across resumes)."""
    from tinylm.tracking import load_runs

    df = load_runs(sweep.uri(), sweep=sweep.name)
    df = df.sort_values("val_loss", na_position="last").reset_index(drop=True)
    return df


def print_results(sweep: Sweep, table: pd.DataFrame, space: dict) -> str:
    from tinylm.tracking import ui_url

    axes = [k for k in space if k in table.columns] + (["seed"] if sweep.seeds > 1 else [])
    if VARIANT in space:
        axes += sorted({k for v in space[VARIANT] for k in v} & set(table.columns))
    cols = ["trial_id", *dict.fromkeys(axes), *[c for c in SHOW if c in table.columns], "status"]
    out_csv = os.path.join(sweep.root, sweep.name, "results.csv")
    os.makedirs(os.path.dirname(out_csv), exist_ok=True)
    table.to_csv(out_csv, index=False)
    text = table[cols].to_string(index=False, float_format=lambda x: f"{x:,.4g}")
    msg = (f"\n{text}\n\n{tokens_footer(table)}\n"
           f"results CSV   : {out_csv}\n"
           f"MLflow        : mlflow ui --backend-store-uri {mask_uri(sweep.uri())} --host 127.0.0.1, then open\n"
           f"                {ui_url(sweep.uri())} (MLflow's model training view)\n"
           f"Optuna        : optuna-dashboard {mask_uri(sweep.storage())} --host 127.0.0.1\n"
           f"analysis      : python -m tinylm.analysis {sweep.name}")
    print(msg)
    return msg


def tokens_spent(table: pd.DataFrame) -> tuple[int, int]:
    """(tokens trained, tokens the full grid would train: every trial to its train_tokens)."""
    spent = int(pd.to_numeric(table.get("tokens"), errors="coerce").fillna(0).sum()) if "tokens" in table else 0
    full = int(pd.to_numeric(table.get("train_tokens"), errors="coerce").fillna(0).sum()) \
        if "train_tokens" in table else 0
    return spent, full


def stopped_early(table: pd.DataFrame) -> int:
    """How many trials of a results table ASHA or the kill rule stopped."""
    return int(table["status"].isin(STOPPED_EARLY).sum()) if "status" in table else 0


def tokens_footer(table: pd.DataFrame) -> str:
    spent, full = tokens_spent(table)
    early = stopped_early(table)
    share = f" = {spent / full:.0%} of the full grid's {full:,}" if full else ""
    return f"tokens spent  : {spent:,}{share} ({early} of {len(table)} trials stopped early)"


def shutdown() -> None:
    if ray.is_initialized():
        ray.shutdown()


__all__ = ["Sweep", "VARIANT", "print_results", "results_table", "run_sweep", "shutdown"]
