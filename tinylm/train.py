"""``train(cfg, out_dir) -> metrics``: one training run, a plain function with no import-time side effects.

It runs in one process (``python -m tinylm.train --preset debug``) and, unchanged, inside a Ray Train worker
(tinylm.tune passes ``report`` and ``resume_from``). Run length, evals and checkpoints are counted in tokens.

    python -m tinylm.train --preset debug
    python -m tinylm.train --preset debug --n_layer 3 --mlp swiglu --glu_factor 2.66 --norm rmsnorm --pos rope
    python -m tinylm.train --preset debug --sanity overfit     # PRD phase 0: memorise ~1k tokens
    python -m tinylm.train --preset debug --sanity lr_range    # PRD phase 0: LR range test
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from tinylm.budget import param_counts
from tinylm.config import ARCH_FIELDS, Config, ConfigError, add_config_args, config_from_args
from tinylm.model import GPT, flops_per_token

log = logging.getLogger("tinylm.train")
# report(metrics, checkpoint_dir | None): Ray's report on a cluster, a logger or nothing locally
Report = Callable[[dict, "str | None"], None]


@dataclass
class Run:
    """Everything a training loop needs, built once by ``setup``."""

    cfg: Config
    out_dir: str
    engine: object
    model: GPT
    optimizer: torch.optim.Optimizer
    data: object
    device: torch.device
    rank: int
    world: int
    ds_config: dict
    info: dict


def pick_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but CUDA is not available; use device=auto or cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def setup(cfg: Config, out_dir: str) -> Run:
    """Distributed init, data (rank 0 builds the cache first), model, optimizer, DeepSpeed engine."""
    from tinylm import engine as eng
    from tinylm.data import load_data
    from tinylm.optim import build_optimizer
    from tinylm.perf import provenance

    rank, world = eng.init_distributed()
    device = pick_device(cfg)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if rank == 0:
        data = load_data(cfg)
    eng.barrier()
    if rank != 0:
        data = load_data(cfg)
    if data.tokenizer.n_vocab > cfg.vocab_size:
        raise ConfigError(f"vocab_size={cfg.vocab_size} < tokenizer size {data.tokenizer.n_vocab}")
    torch.manual_seed(cfg.seed)
    model = GPT(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    engine, conf = eng.build_engine(model, optimizer, cfg)
    counts = param_counts(cfg)
    sample = np.asarray(data.val[:200_000])  # bytes per val token, for bits-per-byte (tokenizer-independent)
    n_bytes = len(data.tokenizer.decode(sample[sample != data.tokenizer.eot_token].tolist()).encode("utf-8"))
    data.meta["val_bytes_per_token"] = n_bytes / max(1, len(sample))
    info = {**provenance(device), "tokenizer_hash": data.tokenizer_hash, "data_fingerprint": data.fingerprint,
            "data_source": str(data.meta.get("source", "")), "world_size": str(world),
            "ds_config": json.dumps(conf, sort_keys=True)}
    os.makedirs(out_dir, exist_ok=True)
    if rank == 0:
        with open(os.path.join(out_dir, "run_info.json"), "w") as f:
            json.dump({"config": cfg.to_dict(), "info": info, "params": counts, "data": data.meta}, f, indent=2,
                      default=str)
    return Run(cfg, out_dir, engine, model, optimizer, data, device, rank, world, conf, info)


def _batch(run: Run, split: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    from tinylm.data import get_batch

    x, y = get_batch(split, run.cfg.batch_size, run.cfg.block_size, rng)
    return x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)


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
    """Mean val loss over a fixed set of val batches (same batches every eval, so curves are comparable)."""
    run.engine.eval()
    rng = np.random.default_rng(12345)
    n = max(1, run.cfg.eval_tokens // (run.cfg.batch_size * run.cfg.block_size))
    losses = []
    for _ in range(n):
        x, y = _batch(run, run.data.val, rng)
        losses.append(run.engine(x, y)[1].item())
    run.engine.train()
    return float(np.mean(losses))


def train(cfg: Config, out_dir: str, report: Report | None = None, resume_from: str | None = None) -> dict:
    """Train one model.

    Args:
        cfg: the run's Config (run length in tokens: train_tokens, eval_every_tokens, ckpt_every_tokens).
        out_dir: this run's folder: DeepSpeed checkpoints under ``ckpt/``, the final model under ``model/``.
        report: called on every rank at every eval with (metrics, checkpoint dir or None).
        resume_from: a checkpoint folder to continue from (defaults to ``out_dir/ckpt`` when it holds one).

    Returns:
        Final metrics (val loss/ppl, params, tokens, FLOPs, time, throughput, MFU, memory, latency, evals) plus
        ``status`` (completed | diverged) and ``stop_reason``; provenance strings under ``info``.
    """
    from tinylm import engine as eng
    from tinylm.checkpoint import save_pretrained
    from tinylm.optim import set_lr
    from tinylm.perf import peak_flops, peak_memory_mb

    run = setup(cfg, out_dir)
    ckpt_dir = os.path.join(out_dir, "ckpt")
    tokens_per_step = cfg.tokens_per_step * run.world
    total_steps = max(1, math.ceil(cfg.train_tokens / tokens_per_step))
    eval_every = max(1, round(cfg.eval_every_tokens / tokens_per_step))
    ckpt_every = max(1, round(cfg.ckpt_every_tokens / tokens_per_step)) if cfg.ckpt_every_tokens else eval_every
    rng = np.random.default_rng([cfg.seed, run.rank])
    step, elapsed, history = 0, 0.0, []
    state = eng.load_checkpoint(run.engine, resume_from or ckpt_dir, check=lambda saved: check_resume(cfg, saved))
    if state is not None:
        step, elapsed, history = state["step"], state["elapsed_s"], state.get("history", [])
        rng.bit_generator.state = state["rng"][run.rank] if run.rank < len(state["rng"]) else rng.bit_generator.state
        log.info("resumed at step %d (%d tokens) from %s", step, step * tokens_per_step, resume_from or ckpt_dir)

    fpt = flops_per_token(cfg)
    peak = peak_flops(run.device, cfg.precision)
    counts = param_counts(cfg)
    sizes = {"params_total": counts["total"], "params_nonembed": counts["nonembed"],
             "params_embed": counts["embedding"], "embed_share": counts["embedding"] / counts["total"],
             "flops_per_token": fpt}
    bpt = run.data.meta["val_bytes_per_token"]
    status, stop_reason = "completed", ""
    window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()
    metrics: dict = state.get("metrics", {}) if state else {}
    last_ckpt = None
    run.engine.train()
    while step < total_steps:
        lr = set_lr(run.optimizer, cfg, step * tokens_per_step)
        loss = train_step(run, lambda: _batch(run, run.data.train, rng))
        step += 1
        if not math.isfinite(loss):  # NaN/inf guard: stop with a recorded reason instead of wasting compute
            status, stop_reason = "diverged", f"non-finite train loss ({loss}) at step {step}"
            log.error(stop_reason)
            break
        window_loss, window_steps = window_loss + loss, window_steps + 1
        if step % eval_every == 0 or step == total_steps:
            now = time.perf_counter()
            dt = now - window_t
            elapsed += dt
            val = evaluate(run)
            tps = window_steps * tokens_per_step / dt
            metrics = {"tokens": step * tokens_per_step, "step": step, "train_loss": window_loss / window_steps,
                       "val_loss": val, "val_ppl": math.exp(min(val, 50)), "val_bpb": val / math.log(2) / bpt,
                       "lr": lr, "tokens_per_s": tps,
                       "mfu": fpt * tps / (peak * run.world), "peak_mem_mb": peak_memory_mb(run.device),
                       "elapsed_s": elapsed, "train_flops": fpt * step * tokens_per_step, **sizes}
            history.append({k: metrics[k] for k in ("tokens", "train_loss", "val_loss")})
            if run.rank == 0:
                log.info("step %5d | tokens %s/%s | loss %.4f | val %.4f | ppl %.1f | %s tok/s | mfu %.1f%%",
                         step, f"{metrics['tokens']:,}", f"{total_steps * tokens_per_step:,}",
                         metrics["train_loss"], val, metrics["val_ppl"], f"{tps:,.0f}", 100 * metrics["mfu"])
            ckpt = None
            if step % ckpt_every == 0 or step == total_steps:
                ckpt = eng.save_checkpoint(run.engine, ckpt_dir, f"step{step:08d}", {
                    "step": step, "tokens_seen": step * tokens_per_step, "elapsed_s": elapsed,
                    "history": history, "config": cfg.to_dict(), "rng": gather_rng(rng, run.world),
                    "metrics": metrics})
                last_ckpt = ckpt
            if report is not None and step < total_steps:
                report(metrics, ckpt)
            if not math.isfinite(val):
                status, stop_reason = "diverged", f"non-finite val loss at step {step}"
                break
            window_loss, window_steps, window_t = 0.0, 0, time.perf_counter()

    final = dict(metrics)
    # every result carries the scheduler's keys (Tune rejects a result without its metric): a run that diverged
    # before its first eval reports NaN, which ASHA ignores and Optuna records as FAIL
    final.setdefault("tokens", step * tokens_per_step)
    for key in ("val_loss", "val_ppl", "val_bpb"):
        final.setdefault(key, float("nan"))
    final.update(status=status, stop_reason=stop_reason, train_flops=fpt * step * tokens_per_step,
                 train_time_s=elapsed, **sizes)
    if metrics:
        final.update(final_val_loss=metrics["val_loss"], final_val_ppl=metrics["val_ppl"],
                     final_val_bpb=metrics["val_bpb"])
    if status == "completed":
        final.update(end_of_run_evals(run))
    if run.rank == 0 and status == "completed":
        save_pretrained(os.path.join(out_dir, "model"), run.model, cfg, run.data.tokenizer, extra=run.info)
    if run.rank == 0:  # one writer: ranks share out_dir on one node
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(final, f, indent=2, default=str)
    final["info"] = run.info
    if report is not None:
        # the last report carries a checkpoint: Ray Train V2 keeps no metrics for a run that reported none
        report({k: v for k, v in final.items() if k != "info"} | run.info, last_ckpt)
    return final


def check_resume(cfg: Config, saved: dict) -> None:
    """Only execution settings may change when resuming; an architecture change is refused."""
    changed = {k: (saved[k], getattr(cfg, k)) for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)}
    if changed:
        raise ConfigError(f"cannot resume: architecture fields changed since the checkpoint (saved -> now): "
                          f"{changed}; only execution settings (precision, compile, attention, "
                          "activation_checkpointing, batch_size/grad_accum, zero_stage) may change on resume. "
                          "Use a new output folder to train the new architecture.")


def gather_rng(rng: np.random.Generator, world: int) -> list:
    """Every rank's data RNG state (so a resumed run draws the same batches), gathered to all ranks."""
    import torch.distributed as dist

    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, rng.bit_generator.state)
    else:
        states = [rng.bit_generator.state]
    return states


def end_of_run_evals(run: Run) -> dict:
    """Latency at batch 1 (L=128/512), inference tokens/s, and the eval tasks named in ``cfg.evals``."""
    from tinylm.evals import efficiency, run_suite

    out = {}
    model = run.model
    eff = efficiency(model, run.cfg, device=run.device)
    eff["infer_peak_mem_mb"] = eff.pop("peak_mem_mb", float("nan"))  # training's peak stays peak_mem_mb
    out.update(eff)
    if run.cfg.evals:
        tasks = "all" if run.cfg.evals == "all" else run.cfg.evals.split(",")
        out.update(run_suite(model, run.data.tokenizer, tasks=tasks, n=run.cfg.eval_n, device=run.device,
                             seed=run.cfg.seed))
    model.train()
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tinylm.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--out", default=None, help="output folder (default results/runs/<name>-<time>)")
    p.add_argument("--sanity", choices=("overfit", "lr_range"), default=None, help="PRD phase-0 checks")
    p.add_argument("--track", action="store_true", help="log the run to MLflow (sqlite under results/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    out = args.out or os.path.join("results", "runs", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    if args.sanity:
        from tinylm import sanity

        return getattr(sanity, args.sanity)(cfg, out)
    t0 = time.perf_counter()
    if args.track:  # the notebook API's path: one MLflow parent + child run around the same train()
        from tinylm.api import run_experiment

        result = run_experiment(cfg, out_dir=out, track=True)
        final = {**result.metrics, "info": result.info}
    else:
        final = train(cfg, out)
    keys = ("status", "final_val_loss", "final_val_ppl", "tokens", "params_total", "tokens_per_s", "mfu",
            "latency_ms_b1_l128", "peak_mem_mb")
    print(json.dumps({k: final.get(k) for k in keys}, indent=1, default=str))
    print(f"wall time {time.perf_counter() - t0:.1f} s; model and metrics in {out}")
    return final


if __name__ == "__main__":
    main()
