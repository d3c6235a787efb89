"""The train loop of a trial of K seeds trained as one batched model (``Config.seeds_per_trial`` = K > 1).

``train`` hands such a config here; the contract is ``train``'s (preflight, the DeepSpeed engine, checkpoints in
tokens, reports, Ctrl-C, a failed save that keeps what was computed), with every member a run of its own:

- member k is the solo run of seed ``cfg.seed + k`` (``tinylm.config.member_config``): the same init, its own
  data order (the solo run's generator), its own gradient clipping, and its own NaN guard: a member whose loss is
  not finite is marked diverged, its gradients are zeroed from then on, and the others go on unchanged;
- at every eval each member gets the metrics a solo run reports (its own val loss on the same val windows);
  ``report`` gets their mean over the live members (what ASHA and the kill rule compare: a trial's decision is
  about its config, not one seed) plus ``members_json``, the per-member metrics, from which the sweep writes one
  MLflow run, one results row and one Optuna value per member;
- at the end each member has its own folder ``members/seed<s>/`` with ``metrics.json`` and ``model/`` (a plain
  GPT, loadable like any run's); the trial's ``metrics.json`` holds the mean and the list of members.

The checkpoint holds every member (stacked weights and optimizer state, each member's data generator, history
and status) and resumes them together.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tinylm.config import Config, ConfigError, ensemble_handoff, member_config, member_seeds
from tinylm.ensemble import clip_per_member, quarantine
from tinylm.layout import MEMBERS, member_dir
from tinylm.regime import EVAL_SEED
from tinylm.train.run import (
    Interrupted,
    Report,
    Run,
    efficiency_metrics,
    eval_batches,
    eval_metrics,
    final_metrics,
    gather_rng,
    kept,
    load_resume_state,
    preflight,
    saving,
    schedule,
    setup,
    suite_metrics,
    val_windows,
    write_json,
)

log = logging.getLogger("tinylm.train")


@dataclass
class Members:
    """Where a batched trial is between steps: the schedule (``tinylm.train.run.schedule``), then per member."""

    tokens_per_step: int  # per member, across every rank
    total_steps: int
    eval_every: int
    ckpt_every: int
    sizes: dict
    peak: float
    seeds: list[int]
    rngs: list[np.random.Generator]  # each member's batches on this rank: the solo run's generator
    step: int = 0
    elapsed: float = 0.0
    lr: float = 0.0
    history: list = field(default_factory=list)  # per member: (tokens, losses) at every eval
    metrics: list = field(default_factory=list)  # per member: the latest eval's
    status: list = field(default_factory=list)  # per member: running, then completed | diverged | stopped
    stop_reason: list = field(default_factory=list)
    saved: int | None = None
    last_ckpt: str | None = None
    window_loss: torch.Tensor | None = None  # (K,) on the device: summed train losses since the last eval
    dead_at: torch.Tensor | None = None  # (K,) on the device: the step of a member's first non-finite loss, or -1
    window_steps: int = 0
    window_t: float = field(default_factory=time.perf_counter)

    @property
    def k(self) -> int:
        return len(self.seeds)

    @property
    def tokens(self) -> int:
        return self.step * self.tokens_per_step

    @property
    def live(self) -> list[int]:
        return [k for k in range(self.k) if self.status[k] == "running"]


def start(run: Run, resume_from: str | None, resumed_from: dict) -> Members:
    cfg = run.cfg
    seeds = member_seeds(cfg)
    state = load_resume_state(run, resume_from, resumed_from)
    if state is not None and state.get("seeds") != seeds:
        raise ConfigError(f"cannot resume: the checkpoint holds the members of seeds {state.get('seeds')}, this run "
                          f"has seeds {seeds} (seed={cfg.seed}, seeds_per_trial={cfg.seeds_per_trial}); use a new "
                          "output folder")
    k = len(seeds)
    p = Members(**schedule(run), seeds=seeds, rngs=[np.random.default_rng([s, run.rank]) for s in seeds],
                history=[[] for _ in seeds], metrics=[{} for _ in seeds], status=["running"] * k,
                stop_reason=[""] * k, window_loss=torch.zeros(k, dtype=torch.float64, device=run.device),
                dead_at=torch.full((k,), -1, dtype=torch.long, device=run.device))
    if state is not None:
        p.step, p.elapsed, p.history, p.metrics = state["step"], state["elapsed_s"], state["history"], state["metrics"]
        p.status, p.stop_reason, p.saved = state["status"], state["stop_reason"], state.get("tokens_seen")
        p.dead_at = torch.tensor(state["dead_at"], dtype=torch.long, device=run.device)
        for rng, states in zip(p.rngs, state["rngs"], strict=True):
            if run.rank < len(states):
                rng.bit_generator.state = states[run.rank]
    return p


def member_batches(run: Run, split: np.ndarray, p: Members) -> tuple[torch.Tensor, torch.Tensor]:
    """(K, B, T) inputs and targets: member k's micro-batch drawn from its own generator, as its solo run would."""
    from tinylm.data import get_batch

    pairs = [get_batch(split, run.cfg.batch_size, run.cfg.block_size, rng) for rng in p.rngs]
    x, y = torch.stack([a for a, _ in pairs]), torch.stack([b for _, b in pairs])
    return x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)


def step_members(run: Run, p: Members) -> None:
    """One optimizer step of every member, with no host sync (a GPU keeps queueing work): a member whose train loss
    is not finite gets its step recorded in ``dead_at`` on the device and its gradients zeroed before the clip and
    the step, now and at every later step; ``mark_diverged`` reads it at the next eval."""
    from tinylm.optim import set_lr

    p.lr = set_lr(run.optimizer, run.cfg, p.tokens)
    if ensemble_handoff(run.cfg):
        total = handoff_step(run, p)
    else:
        total = torch.zeros(p.k, dtype=torch.float64, device=run.device)
        for _ in range(run.cfg.grad_accum):
            x, y = member_batches(run, run.data.train, p)
            losses, loss = run.engine(x, y)
            run.engine.backward(loss)
            total += losses.double()
            if run.engine.is_gradient_accumulation_boundary():
                guard_and_clip(run, p, total)
            run.engine.step()
    p.step += 1
    p.window_loss += total / run.cfg.grad_accum
    p.window_steps += 1


def guard_and_clip(run: Run, p: Members, total: torch.Tensor, grads: list[torch.Tensor] | None = None) -> None:
    """Record this step in ``dead_at`` for every member whose summed train loss ``total`` is not finite, zero the
    gradients (``p.grad``, or ``grads``) of every dead member and clip each member's own: on the device, no host
    sync."""
    p.dead_at = torch.where(~torch.isfinite(total) & (p.dead_at < 0), p.step + 1, p.dead_at)
    quarantine(run.model, p.dead_at >= 0, grads)
    clip_per_member(run.model, run.cfg.grad_clip, grads)


def handoff_step(run: Run, p: Members) -> torch.Tensor:
    """The step at bf16 / ZeRO 1/2 (tinylm.config.ensemble_handoff): the members' gradients taken outside
    DeepSpeed and accumulated in fp32 over the micro-batches (averaged over the ranks, as DeepSpeed averages),
    quarantined and clipped per member, then one DeepSpeed backward of the surrogate whose gradient they are, and
    its step (bf16 master weights, ZeRO partitions, as for any run). Across ranks the clip needs the averaged
    gradient, so it is averaged here and DeepSpeed's own reduction then averages equal values: one extra
    all-reduce of the gradients per step. Returns the summed train losses (K,)."""
    from tinylm import engine as eng
    from tinylm.ensemble import member_grads

    total = torch.zeros(p.k, dtype=torch.float64, device=run.device)
    grads = None
    for _ in range(run.cfg.grad_accum):
        x, y = member_batches(run, run.data.train, p)
        losses, loss = run.model(x, y)  # the module itself: DeepSpeed's forward would hook a backward it never gets
        g = member_grads(run.model, loss / run.cfg.grad_accum)
        grads = g if grads is None else [a.add_(b) for a, b in zip(grads, g, strict=True)]
        total += losses.double()
    eng.all_reduce_mean_(grads)
    guard_and_clip(run, p, total, grads)
    _, surrogate = run.engine(handoff=grads)
    run.engine.backward(surrogate)
    run.engine.step()
    return total


def mark_diverged(p: Members) -> None:
    """Members whose train loss went non-finite since the last look are diverged, with the step (one host sync)."""
    for k, at in enumerate(p.dead_at.tolist()):
        if at >= 0 and p.status[k] == "running":
            p.status[k], p.stop_reason[k] = "diverged", f"non-finite train loss at step {at}"


@torch.no_grad()
def evaluate_members(run: Run) -> np.ndarray:
    """Each member's mean val loss over the fixed val windows every run is scored on (``tinylm.train.evaluate``'s
    batches: one generator seeded EVAL_SEED, shared among ranks), (K,) float64."""
    from tinylm import engine as eng

    run.engine.eval()
    sums = torch.zeros(run.cfg.seeds_per_trial, dtype=torch.float64, device=run.device)
    for x, y in val_windows(run, np.random.default_rng(EVAL_SEED)):  # (B, T): the same windows for every member
        sums += run.engine(x, y)[0].double()
    run.engine.train()
    return np.array([eng.all_reduce_sum(v, run.device) for v in sums.tolist()]) / eval_batches(run.cfg)


def eval_members(run: Run, p: Members, report: Report | None) -> None:
    """An eval of every member, their metrics, a checkpoint when one is due, and the report (the live members'
    mean, with each member's metrics in ``members_json``). A member whose val loss is not finite is diverged."""
    mark_diverged(p)
    dt = time.perf_counter() - p.window_t
    p.elapsed += dt
    vals = evaluate_members(run)
    train_loss = (p.window_loss / max(1, p.window_steps)).tolist()
    tps = p.window_steps * p.tokens_per_step / max(dt, 1e-9)  # each member's tokens/s; the trial did K times that
    fpt = p.sizes["flops_per_token"]
    for k in range(p.k):
        if p.status[k] != "running":
            continue  # a diverged member's metrics stay those of its last good eval
        val = float(vals[k])
        p.metrics[k] = {**eval_metrics(run, tokens=p.tokens, step=p.step, train_loss=train_loss[k], val=val, lr=p.lr,
                                       tps=tps, mfu=fpt * tps * p.k / (p.peak * run.world), elapsed=p.elapsed,
                                       sizes=p.sizes),
                        "trial_tokens_per_s": tps * p.k, "seeds_per_trial": p.k}
        p.history[k].append({key: p.metrics[k][key] for key in ("tokens", "train_loss", "val_loss")})
        if not math.isfinite(val):
            p.status[k], p.stop_reason[k] = "diverged", f"non-finite val loss at step {p.step}"
    if run.rank == 0:
        live = [float(vals[k]) for k in p.live]
        spread = f"{min(live):.4f}-{max(live):.4f}" if live else "none live"
        log.info(
            "step %5d | tokens %s/%s | val mean %.4f (%s) over %d of %d members | %s member-tok/s | mfu %.1f%%",
            p.step, f"{p.tokens:,}", f"{p.total_steps * p.tokens_per_step:,}", float(np.mean(live)) if live
            else float("nan"), spread, len(live), p.k, f"{tps:,.0f}", 100 * fpt * tps * p.k / (p.peak * run.world))
    ckpt = save_members(run, p) if p.step % p.ckpt_every == 0 or p.step == p.total_steps else None
    if report is not None and p.step < p.total_steps and p.live:
        report(summary(p), ckpt)
    p.window_loss, p.window_steps, p.window_t = torch.zeros_like(p.window_loss), 0, time.perf_counter()


def summary(p: Members, rows: list[dict] | None = None, live: list[int] | None = None) -> dict:
    """What a trial reports: the mean of every numeric metric over its live members (all members when none is
    live), ``members_live``, and ``members_json`` (each member's metrics with its seed and status: running until
    the end)."""
    rows = rows if rows is not None else p.metrics
    live = p.live if live is None else live
    use = [rows[k] for k in (live or range(p.k)) if rows[k]]
    keys = [key for key in (use[0] if use else {}) if isinstance(use[0][key], (int, float))
            and not isinstance(use[0][key], bool) and key != "seed"]
    out = {key: float(np.mean([r[key] for r in use if key in r])) for key in keys}
    for key in ("tokens", "step", "seeds_per_trial"):
        if key in out:
            out[key] = int(round(out[key]))
    members = [{**rows[k], "seed": p.seeds[k], "status": p.status[k], "stop_reason": p.stop_reason[k]}
               for k in range(p.k)]
    return {**out, "members_live": len(live), MEMBERS: json.dumps(members, default=float)}


def save_members(run: Run, p: Members) -> str:
    """A resumable checkpoint of every member (stacked weights and optimizer state, their generators, histories,
    statuses and latest metrics)."""
    from tinylm import engine as eng

    ckpt_dir, tag = os.path.join(run.out_dir, "ckpt"), f"step{p.step:08d}"
    with saving(os.path.join(ckpt_dir, tag), f"training stopped at {p.tokens:,} tokens; {kept(p.saved)}: free space "
                "and rerun the same command to go on"):
        ckpt = eng.save_checkpoint(run.engine, ckpt_dir, tag, {
            "step": p.step, "tokens_seen": p.tokens, "elapsed_s": p.elapsed, "history": p.history,
            "config": run.cfg.to_dict(), "seeds": p.seeds, "rngs": [gather_rng(r, run.world) for r in p.rngs],
            "metrics": p.metrics, "status": p.status, "stop_reason": p.stop_reason, "dead_at": p.dead_at.tolist(),
            "tokenizer_hash": run.data.tokenizer_hash})
    p.last_ckpt, p.saved = ckpt, p.tokens
    return ckpt


def finish_members(run: Run, p: Members, report: Report | None) -> dict:
    """Each member's final metrics, model (completed members) and ``metrics.json`` in ``members/seed<s>/``, then
    the end-of-run evals per completed member (latency once: the members share the architecture), the trial's
    ``metrics.json`` (the mean, and ``members``) and the last report."""
    from tinylm.checkpoint import save_pretrained

    cfg, out_dir = run.cfg, run.out_dir
    mark_diverged(p)
    live = p.live
    p.status = ["completed" if s == "running" else s for s in p.status]  # the loop ran to its end for them
    finals = []
    for k, seed in enumerate(p.seeds):
        final = final_metrics(p.metrics[k], tokens=p.tokens, trained=p.metrics[k].get("tokens", p.tokens),
                              status=p.status[k], stop_reason=p.stop_reason[k], elapsed=p.elapsed, sizes=p.sizes)
        finals.append({**final, "seed": seed})
    eff = None
    for k, seed in enumerate(p.seeds):
        where = member_dir(out_dir, seed)
        model = run.model.member(k) if p.status[k] == "completed" else None
        if run.rank == 0:
            os.makedirs(where, exist_ok=True)
            if model is not None:
                with saving(os.path.join(where, "model"), f"{kept(p.saved)}: free space and rerun the same command"):
                    save_pretrained(os.path.join(where, "model"), model, member_config(cfg, k), run.data.tokenizer,
                                    extra=run.info)
            with saving(os.path.join(where, "metrics.json"), kept(p.saved)):
                write_json(os.path.join(where, "metrics.json"), finals[k])
        if model is None:
            continue
        try:
            eff = eff or efficiency_metrics(model, member_config(cfg, k), run.device)
            finals[k].update(eff, **suite_metrics(model, member_config(cfg, k), run.data.tokenizer, run.device))
        except Exception as e:  # noqa: BLE001 - recorded; the trained model stays
            finals[k]["evals_error"] = f"{type(e).__name__}: {str(e)[:500]}"
        if run.rank == 0:
            write_json(os.path.join(where, "metrics.json"), finals[k])
    trial = summary(p, finals, live)
    failed = [f"seed {seed}: {f['evals_error']}" for seed, f in zip(p.seeds, finals, strict=True) if "evals_error" in f]
    if failed:  # as a solo run's: the command exits non-zero, the models and metrics stay
        trial["evals_error"] = "; ".join(failed)
    trial.update(status="completed" if live else ("stopped" if "stopped" in p.status else "diverged"),
                 stop_reason="" if live else "; ".join(f"seed {s}: {r}" for s, r in zip(p.seeds, p.stop_reason,
                                                                                        strict=True) if r))
    if run.rank == 0:
        write_json(os.path.join(out_dir, "metrics.json"), {**{k: v for k, v in trial.items() if k != MEMBERS},
                                                            "members": finals})
    trial["info"] = run.info
    if report is not None:
        report({k: v for k, v in trial.items() if k != "info"} | run.info, p.last_ckpt)
    return trial


def train_ensemble(cfg: Config, out_dir: str, report: Report | None = None, resume_from: str | None = None,
                   should_stop: Callable[[], bool] | None = None, force: bool = False) -> dict:
    """Train the ``cfg.seeds_per_trial`` members of ``cfg`` as one batched model; ``tinylm.train.train``'s
    arguments and errors. Returns the trial's metrics (the mean over the members that completed) with
    ``members_json`` (each member's final metrics, seed and status) and ``info``."""
    resumed_from = preflight(cfg, out_dir, resume_from, force=force)
    run = setup(cfg, out_dir, write_info=False)
    p = start(run, resume_from, resumed_from)
    run.engine.train()
    try:
        while p.step < p.total_steps and p.live:
            if should_stop is not None and should_stop():
                for k in p.live:
                    p.status[k], p.stop_reason[k] = "stopped", f"stopped by the scheduler at step {p.step}"
                break
            step_members(run, p)
            if p.step % p.eval_every == 0 or p.step == p.total_steps:
                eval_members(run, p, report)
    except KeyboardInterrupt:
        raise Interrupted(p.tokens, p.saved) from None
    return finish_members(run, p, report)


__all__ = ["train_ensemble"]
