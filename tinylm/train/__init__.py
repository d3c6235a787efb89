"""``train(cfg, out_dir) -> metrics``: one training run, a plain function with no import-time side effects.

It runs in one process (the command ``python -m tinylm.train``, in ``tinylm/train/cli.py``, which this
library never imports) and, unchanged, inside a Ray Train worker (tinylm.tune passes ``report`` and
``resume_from``). Run length, evals and checkpoints are counted in tokens. The parts every loop shares (checks,
setup, schedule, resume, saves) are in ``tinylm/train/run.py``; a config of ``seeds_per_trial`` > 1 trains its K
seeds as one batched model in ``tinylm/train/ensemble.py``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from tinylm.config import Config
from tinylm.regime import EVAL_SEED
from tinylm.train.run import (
    Interrupted,
    Report,
    Run,
    SaveError,
    efficiency_metrics,
    eval_batches,
    eval_metrics,
    eval_share,
    final_metrics,
    gather_rng,
    kept,
    load_resume_state,
    log,
    preflight,
    sample_batch,
    saving,
    schedule,
    setup,
    suite_metrics,
    val_windows,
    write_json,
)


def train_step(run: Run, batches: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> float:
    """One optimiser step (grad_accum micro-batches); DeepSpeed scales, clips and steps at the boundary."""
    total = 0.0
    for _ in range(run.cfg.grad_accum):
        x, y = batches()
        _, loss = run.engine(x, y)
        run.engine.backward(loss)
        run.engine.step()
        total += loss.item()
    return total / run.cfg.grad_accum


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean val loss over a fixed set of val batches (same batches every eval, so curves are comparable).

    Every rank draws the same ``n`` batches from the same seed (so the set does not depend on the world size)
    and runs the model on its share (``eval_share``) only; the loss sums are all-reduced. Under ZeRO-3 a forward
    pass is collective (parameters are gathered), so a rank with one batch fewer runs one more, uncounted.
    """
    from tinylm import engine as eng

    run.engine.eval()
    rng = np.random.default_rng(EVAL_SEED)  # tinylm.regime scores its references on these same windows
    n = eval_batches(run.cfg)
    losses = [run.engine(x, y)[1].item() for x, y in val_windows(run, rng)]
    if run.cfg.zero_stage == 3 and len(losses) < math.ceil(n / run.world):
        run.engine(*sample_batch(run, run.data.val, rng))
    run.engine.train()
    return eng.all_reduce_sum(float(np.sum(losses)), run.device) / n  # world 1: exactly np.mean(losses)


def train(cfg: Config, out_dir: str, report: Report | None = None, resume_from: str | None = None,
          should_stop: Callable[[], bool] | None = None, force: bool = False) -> dict:
    """Train one model.

    Args:
        cfg: the run's Config (run length in tokens: train_tokens, eval_every_tokens, ckpt_every_tokens).
        out_dir: this run's folder: DeepSpeed checkpoints under ``ckpt/``, the final model under ``model/``.
        report: called on every rank at every eval with (metrics, checkpoint dir or None).
        resume_from: a checkpoint folder to continue from (defaults to ``out_dir/ckpt`` when it holds one).
        should_stop: checked before every step (one-rank runs): True ends the run as "stopped" — a scheduler
            (ASHA, the kill rule) stopped it, and the process should be free for the next trial now.
        force: start from scratch in a folder that holds other files (``claim_folder`` refuses it otherwise).

    Returns:
        Final metrics (val loss/ppl, params, tokens, FLOPs, time, throughput, MFU, memory, latency, evals) plus
        ``status`` (completed | diverged) and ``stop_reason``; provenance strings under ``info``.

    Raises:
        Interrupted: Ctrl-C in the loop; the last checkpoint stays (a partial save is removed).
        SaveError: a full disk while saving; what was saved before stays, and the message says what.
    """
    if cfg.seeds_per_trial > 1:  # K seeds as one batched model: the same contract, one row per member
        from tinylm.train.ensemble import train_ensemble

        return train_ensemble(cfg, out_dir, report, resume_from, should_stop, force)
    resumed_from = preflight(cfg, out_dir, resume_from, force=force)
    run = setup(cfg, out_dir, write_info=False)
    p = resume_or_start(run, resume_from, resumed_from)
    run.engine.train()
    try:  # Ctrl-C: the last complete checkpoint stays (a partial save removes itself); the caller says how far
        while p.step < p.total_steps:
            if should_stop is not None and should_stop():
                p.status, p.stop_reason = "stopped", f"stopped by the scheduler at step {p.step}"
                break
            if not step_once(run, p):
                break
            if (p.step % p.eval_every == 0 or p.step == p.total_steps) and not eval_point(run, p, report):
                break
    except KeyboardInterrupt:
        raise Interrupted(p.tokens, p.saved) from None
    return finish(run, p, report)


@dataclass
class Progress:
    """Where a run is between steps: its schedule (in optimizer steps), what it measured and what it saved."""

    tokens_per_step: int  # across every rank
    total_steps: int
    eval_every: int
    ckpt_every: int
    rng: np.random.Generator  # this rank's batches
    sizes: dict  # parameter counts and FLOPs per token: in every eval's metrics and in the final ones
    peak: float  # the device's peak FLOP/s, MFU's denominator
    step: int = 0
    elapsed: float = 0.0  # training seconds (evals and probes not counted)
    history: list = field(default_factory=list)  # (tokens, losses) at every eval: kept in the checkpoints
    metrics: dict = field(default_factory=dict)  # the latest eval's
    saved: int | None = None  # the tokens of the newest checkpoint on disk
    last_ckpt: str | None = None  # saved by this process
    status: str = "completed"
    stop_reason: str = ""
    lr: float = 0.0
    started: bool = False  # the first step is done (the start-up marks are written)
    probed: dict = field(default_factory=dict)  # tokens and seconds spent on wsd cooldown probes
    pending: list = field(default_factory=list)  # the probe points still ahead
    window_loss: float = 0.0  # the train loss summed since the last eval ...
    window_steps: int = 0  # ... over this many steps ...
    window_t: float = field(default_factory=time.perf_counter)  # ... which began then

    @property
    def tokens(self) -> int:
        return self.step * self.tokens_per_step


def resume_or_start(run: Run, resume_from: str | None, resumed_from: dict) -> Progress:
    """The run's schedule, and where it starts: from its checkpoint (``load_resume_state``) or from step 0."""
    cfg = run.cfg
    state = load_resume_state(run, resume_from, resumed_from)
    p = Progress(**schedule(run), rng=np.random.default_rng([cfg.seed, run.rank]))
    if state is not None:
        p.step, p.elapsed, p.history = state["step"], state["elapsed_s"], state.get("history", [])
        if run.rank < len(state["rng"]):
            p.rng.bit_generator.state = state["rng"][run.rank]
        p.metrics, p.saved = state.get("metrics", {}), state.get("tokens_seen")
    p.probed = {k: p.metrics.get(k, 0) for k in ("probe_tokens", "probe_time_s")} if cfg.probe_tokens else {}
    p.pending = [t for t in cfg.probe_tokens if t > p.tokens]
    return p


def step_once(run: Run, p: Progress) -> bool:
    """One optimizer step at the scheduled LR; False when the train loss is not finite (the run diverged)."""
    from tinylm.machine import mark, write_marks
    from tinylm.optim import set_lr

    p.lr = set_lr(run.optimizer, run.cfg, p.tokens)
    loss = train_step(run, lambda: sample_batch(run, run.data.train, p.rng))
    p.step += 1
    if run.rank == 0 and not p.started:  # start-up phases, for bench/overhead.py
        p.started = True
        mark("first_step")
        write_marks(run.out_dir)
    if not math.isfinite(loss):  # NaN/inf guard: stop with a recorded reason instead of wasting compute
        p.status, p.stop_reason = "diverged", f"non-finite train loss ({loss}) at step {p.step}"
        log.error(p.stop_reason)
        return False
    p.window_loss, p.window_steps = p.window_loss + loss, p.window_steps + 1
    return True


def eval_point(run: Run, p: Progress, report: Report | None) -> bool:
    """An eval (and a wsd probe when one is due), its metrics logged, a checkpoint when one is due, the report;
    False when the val loss is not finite (the run diverged)."""
    from tinylm.optim import probe_length

    cfg = run.cfg
    dt = time.perf_counter() - p.window_t
    p.elapsed += dt
    val = evaluate(run)
    tps = p.window_steps * p.tokens_per_step / dt
    probe = {}
    if p.pending and p.tokens >= p.pending[0] and p.step < p.total_steps:
        p.pending = [t for t in p.pending if t > p.tokens]
        if p.tokens <= cfg.stable_tokens:  # an eval past the stable phase is already in the real decay
            t0 = time.perf_counter()
            probe["probe_loss"], spent = cooldown_probe(run, p.tokens, p.tokens_per_step)
            p.probed["probe_tokens"] += spent
            p.probed["probe_time_s"] += time.perf_counter() - t0
    p.metrics = {**eval_metrics(run, tokens=p.tokens, step=p.step, train_loss=p.window_loss / p.window_steps,
                                val=val, lr=p.lr, tps=tps, mfu=p.sizes["flops_per_token"] * tps / (p.peak * run.world),
                                elapsed=p.elapsed, sizes=p.sizes),
                 **p.probed, **probe, **run.model.routing_stats()}  # an MoE's routing balance at the last batch
    p.history.append({k: p.metrics[k] for k in ("tokens", "train_loss", "val_loss", "probe_loss") if k in p.metrics})
    if run.rank == 0:
        log.info("step %5d | tokens %s/%s | loss %.4f | val %.4f | ppl %.1f | %s tok/s | mfu %.1f%%",
                 p.step, f"{p.tokens:,}", f"{p.total_steps * p.tokens_per_step:,}", p.metrics["train_loss"], val,
                 p.metrics["val_ppl"], f"{tps:,.0f}", 100 * p.metrics["mfu"])
        if probe:
            log.info("probe at %s tokens: a cooldown of %s tokens reaches val %.4f", f"{p.tokens:,}",
                     f"{probe_length(cfg, p.tokens):,}", probe["probe_loss"])
    ckpt = save_progress(run, p, val) if p.step % p.ckpt_every == 0 or p.step == p.total_steps else None
    if report is not None and p.step < p.total_steps:
        report(p.metrics, ckpt)
    if not math.isfinite(val):
        p.status, p.stop_reason = "diverged", f"non-finite val loss at step {p.step}"
        return False
    p.window_loss, p.window_steps, p.window_t = 0.0, 0, time.perf_counter()
    return True


def save_progress(run: Run, p: Progress, val: float) -> str:
    """A resumable checkpoint of the run at this step (engine state, data RNGs, history, latest metrics)."""
    from tinylm import engine as eng

    ckpt_dir, tag = os.path.join(run.out_dir, "ckpt"), f"step{p.step:08d}"
    with saving(os.path.join(ckpt_dir, tag), f"training stopped at {p.tokens:,} tokens (val loss {val:.4f}); "
                f"{kept(p.saved)}: free space and rerun the same command to go on"):
        ckpt = eng.save_checkpoint(run.engine, ckpt_dir, tag, {
            "step": p.step, "tokens_seen": p.tokens, "elapsed_s": p.elapsed, "history": p.history,
            "config": run.cfg.to_dict(), "rng": gather_rng(p.rng, run.world), "metrics": p.metrics,
            "tokenizer_hash": run.data.tokenizer_hash})
    p.last_ckpt, p.saved = ckpt, p.tokens
    return ckpt


def finish(run: Run, p: Progress, report: Report | None) -> dict:
    """The run's final metrics; a completed run's model, then metrics.json, then the end-of-run evals (a failure
    there loses neither) and metrics.json again with them; the last report."""
    from tinylm.checkpoint import save_pretrained

    cfg, out_dir = run.cfg, run.out_dir
    final = final_metrics(p.metrics, tokens=p.tokens, trained=p.tokens, status=p.status, stop_reason=p.stop_reason,
                          elapsed=p.elapsed, sizes=p.sizes)
    # the model and the metrics are on disk before the end-of-run evals: a failure there loses neither
    if run.rank == 0 and p.status == "completed":
        with saving(os.path.join(out_dir, "model"), f"{kept(p.saved)}: free space and rerun the same command to "
                    "write the model from it"):
            save_pretrained(os.path.join(out_dir, "model"), run.model, cfg, run.data.tokenizer, extra=run.info)
    if run.rank == 0:  # one writer: ranks share out_dir on one node
        with saving(os.path.join(out_dir, "metrics.json"), f"the run {p.status} at {final['tokens']:,} tokens "
                    f"(val loss {final['val_loss']:.4f}); {kept(p.saved)}"):
            write_json(os.path.join(out_dir, "metrics.json"), final)
    if p.status == "completed":
        try:
            final.update(end_of_run_evals(run))
        except Exception as e:  # noqa: BLE001 - recorded, and the CLI exits non-zero; the trained model stays
            final["evals_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            log.error("end-of-run evals failed (%s); the model and metrics are kept in %s", final["evals_error"],
                      out_dir)
        if run.rank == 0:
            with saving(os.path.join(out_dir, "metrics.json"), f"the model and the metrics without the evals are "
                        f"kept in {out_dir}"):
                write_json(os.path.join(out_dir, "metrics.json"), final)
    final["info"] = run.info
    if report is not None:
        # the last report carries a checkpoint: Ray Train V2 keeps no metrics for a run that reported none
        report({k: v for k, v in final.items() if k != "info"} | run.info, p.last_ckpt)
    return final


def cooldown_probe(run: Run, tokens: int, tokens_per_step: int) -> tuple[float, int]:
    """The val loss a wsd run cut here would reach: a throw-away branch cools the LR down linearly to
    ``min_lr_ratio`` over ``probe_length`` tokens (so the branch is a complete wsd run of the same ``decay_frac``),
    is evaluated, and is thrown away; the run goes on from the exact state it had (``engine.branch``).

    Under a decaying schedule a mid-run loss favours small LRs (a large LR pays off only once it decays): a
    probe compares every LR as a finished run of this length (Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"). That removes the schedule's share of the bias, not
    the horizon's: the best LR of a short run is still larger than a long run's (RESULTS.md, 2026-11-30).
    Returns (loss, tokens the branch trained); its batches come from their own generator.
    """
    from tinylm import engine as eng
    from tinylm.optim import cooldown_factor, probe_length, set_lr_factor

    steps = max(1, math.ceil(probe_length(run.cfg, tokens) / tokens_per_step))
    rng = np.random.default_rng([run.cfg.seed, run.rank, tokens, 1])
    with eng.branch(run.engine, os.path.join(run.out_dir, "probe")):
        for i in range(steps):
            set_lr_factor(run.optimizer, run.cfg, cooldown_factor(run.cfg, i * tokens_per_step,
                                                                   steps * tokens_per_step))
            train_step(run, lambda: sample_batch(run, run.data.train, rng))
        loss = evaluate(run)
    return loss, steps * tokens_per_step


def end_of_run_evals(run: Run) -> dict:
    """Latency at batch 1 (L=128/512), inference tokens/s, and the eval tasks named in ``cfg.evals``."""
    out = {**efficiency_metrics(run.model, run.cfg, run.device),
           **suite_metrics(run.model, run.cfg, run.data.tokenizer, run.device)}
    run.model.train()
    return out


__all__ = ["Interrupted", "Report", "Run", "SaveError", "eval_share", "evaluate", "gather_rng", "preflight",
           "sample_batch", "setup", "train", "train_step"]
