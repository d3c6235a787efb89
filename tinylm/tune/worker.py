"""What runs in a trial: the per-trial driver (a Tune function trainable) and the train loop of Ray Train's workers.

Each Tune trial runs ``trial_driver``, which builds a ``TorchTrainer`` calling ``tinylm.train.train`` unchanged,
named after the trial id (no timestamp, so a restarted sweep resumes it):

- 1-worker trials (the default on one machine): Train's local mode (``num_workers=0``) runs the train function in
  the Tune trial's own process, which Tune reuses for the next trial (``reuse_actors``): no controller, placement
  group or worker process per trial and deepspeed imported once per process (issue 12: ~27 s -> ~1.3 s from one
  trial's end to the next one's first step). Local mode runs no Train callbacks, so the function reports every
  eval (and its checkpoint) to Tune itself, and it resets the process's state per trial (process group,
  DeepSpeed's groups, RNGs, peak memory). A crashed trial is retried by Tune from its last checkpoint.
- multi-worker trials: a driver holding a ``tune_driver`` slot (a custom resource a cluster puts on its on-demand
  head) runs a TorchTrainer worker group with Train's FailureConfig (worker restarts from the last checkpoint).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time

import ray
import ray.train
from ray import tune
from ray.train import Checkpoint, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer
from ray.tune.integration.ray_train import TuneReportCallback

from tinylm import layout
from tinylm.config import Config, member_seeds
from tinylm.tune.grid import build_config, is_baseline

SWEEP_ENTRY = "__sweep"  # the param-space entry that carries the sweep's settings to every trial (runner._fit)


# --- inside Ray Train workers --------------------------------------------------------------------------
def _worker_loop(loop: dict) -> None:
    t_fn = time.time()
    import torch

    from tinylm import machine

    machine.reset_marks(trial=loop["t_trial"], worker_fn=t_fn, import_torch=time.time())
    import tinylm.engine  # noqa: F401 - deepspeed: paid once per process

    machine.mark("import_deepspeed")
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

    node = ray.get_runtime_context().get_node_id()  # which node ran it: the tracking callback tags the trial

    def report(metrics: dict, ckpt_dir: str | None) -> None:
        m = {**metrics, "is_baseline": int(loop["is_baseline"]), "ray_node_id": node}
        if local:  # local mode runs no Train callbacks (TuneReportCallback sees nothing): report to Tune directly
            tune.report(m, checkpoint=tune.Checkpoint.from_directory(ckpt_dir) if ckpt_dir else None)
        # rank 0 uploads the checkpoint: with one node (or a shared out_dir) it holds every rank's shards
        elif ckpt_dir and rank == 0:
            ray.train.report(m, checkpoint=Checkpoint.from_directory(ckpt_dir))
        else:
            ray.train.report(m)

    try:
        train(cfg, loop["out_dir"], report=report, resume_from=resume, should_stop=_tune_stopping if local else None)
        if rank == 0 and layout.is_shared_storage(loop["storage_root"]):
            # on a cluster the trial folder is on this node's disk only: the models go where the head reads them
            # (a batched trial's members each under their own id, as their runs are)
            ids = [loop["trial_id"]] if cfg.seeds_per_trial == 1 else [
                layout.member_id(loop["trial_id"], s) for s in member_seeds(cfg)]
            for run_id in ids:
                model = os.path.join(layout.trial_dir(loop["root"], loop["sweep"], run_id), "model")
                if os.path.isdir(model):
                    layout.publish_model(model, loop["storage_root"], loop["sweep"], run_id)
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
def trial_driver(config: dict) -> None:
    """Tune's trainable: one trial (``config`` = a sampled point + ``__sweep``, ``Sweep.for_trials``)."""
    s = config[SWEEP_ENTRY]
    cfg = build_config(config)
    trial_id = tune.get_context().get_trial_id()
    base = dict(cfg=cfg.to_dict(), out_dir=layout.trial_dir(s["root"], s["name"], trial_id), root=s["root"],
                t_trial=time.time(),
                threads=s["cpus_per_worker"], is_baseline=is_baseline(cfg, s["baseline"]),
                gpu_fraction=s["gpu_per_worker"], local=s["local"], storage_root=s["storage_root"], sweep=s["name"],
                trial_id=trial_id)
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


__all__ = ["SWEEP_ENTRY", "trial_driver"]
