"""``--dry-run``: the trials a sweep would run, what they cost here or on a cluster, and what they could claim.

Pure functions of the Experiment and the base Config (no Ray, no stores): ``plan(exp, base, seeds)`` walks the
grid as Tune does (``Space.points``) and describes every trial (shape, params, embedding share, real
GLU factor, tokens, tokens per parameter, epochs of the corpus, FLOPs, estimated wall time); ``diagnose`` lists
what makes the trials unable to answer the question (undertrained by design, data repeats, head size < 16, a GLU
factor or embedding share the budget could not meet, smoke scale); ``print_plan`` prints both.

The time estimate is a measured model, not a guess: ``THROUGHPUT`` holds CPU time per token measured here with one
thread per trial (the local sweep's layout: one trial per core), fitted on the layer count and FLOPs per token.
"""

from __future__ import annotations

import glob
import json
import math
import os
from pathlib import Path

import pandas as pd

from tinylm.budget import flops_per_token
from tinylm.config import FIELDS, LAPTOP_RULES, Config
from tinylm.sweep.settings import MAX_SEEDS
from tinylm.sweep.space import Space

# Measured here (2026-11-30, tinylm.train on one thread, DeepSpeed fp32, block 128, batch 16,
# laptop configs, CPU seconds per token between the first and last of 4 evals, so other jobs' load (~4-8 on 2 cores)
# does not enter): GLU 2.0 (9 x 32) 59.6 us, GLU 4.0 (6 x 32) 48.9 us, small (2 x 64) 28.0 us, medium (3 x 96)
# 66.8 us per token. Least squares on budget.flops_per_token: us/token = -0.30 + 4.27 * layers + 17.89 * MFLOP/token
# (each within 6 %): tiny models pay a per-layer cost (kernel launches, Python) on top of ~56 GFLOP/s. Wall time =
# CPU time when every trial has its own core (the local sweep runs one single-thread trial per core).
THROUGHPUT = {"const_s": -0.30e-6, "per_layer_s": 4.27e-6, "per_flop_s": 17.89e-12,
              "source": "measured here, 1 thread per trial: us/token = -0.30 + 4.27 L + 17.89 MFLOP/token"}
TRIAL_OVERHEAD_S = 5.0  # per trial start-up after tinylm.tune's local-mode work (~30 s before it)
RAY_START_S = 15.0  # ray.init + MLflow/Optuna stores, once per sweep
GPU_FLOPS = 3.0e14  # one H100-class GPU at ~30 % of its bf16 peak: the cluster estimate's assumption
# shown in their own columns
SHOWN = ("seed", "n_embd", "n_layer", "n_head", "d_ff", "train_tokens", "eval_every_tokens", "warmup_tokens")
CORPUS_BYTES = {"wiki-offline": 4.9e6, "shakespeare": 5.1e6, "sotu": 10.8e6}


def seconds_here(cfg: Config) -> float:
    """Estimated wall time of one trial on this machine (training + evals, without the per-trial start-up)."""
    per_token = max(2e-6, THROUGHPUT["const_s"] + THROUGHPUT["per_layer_s"] * cfg.n_layer
                    + THROUGHPUT["per_flop_s"] * flops_per_token(cfg))
    evals = max(1, cfg.train_tokens // max(1, cfg.eval_every_tokens)) * cfg.eval_tokens / 3  # forward only
    return per_token * (cfg.train_tokens + evals)


def corpus_tokens(cfg: Config) -> tuple[float, bool]:
    """(train tokens available, exact?): from the token cache when this corpus/tokenizer/split was built whole,
    else ~ from the corpus size at ~3.2 bytes per token. A cache cut at a token budget (``max_tokens``: its
    ``n_train_tokens_available`` is null) does not know the corpus's size and is skipped, as is an unreadable one
    (a failed ``--max_tokens 10`` run's cache crashed every later dry run)."""
    from tinylm.data import default_cache

    want = (cfg.dataset, cfg.tokenizer, cfg.vocab_size, cfg.num_documents, cfg.val_fraction)
    for meta in glob.glob(str(default_cache() / "tokens" / "*" / "meta.json")):
        try:
            m = json.loads(Path(meta).read_text())
            s = m.get("settings", {})
            have = (s.get("dataset"), s.get("tokenizer"), s.get("vocab_size"), s.get("num_documents"),
                    s.get("val_fraction"))
            available = m.get("n_train_tokens_available", m.get("n_train_tokens"))
        except (OSError, ValueError, AttributeError):
            continue
        if have == want and isinstance(available, int | float) and available > 0:
            return float(available), True
    size = CORPUS_BYTES.get(cfg.dataset)
    if size is None:
        return math.nan, False
    if cfg.num_documents:
        size *= min(1.0, cfg.num_documents / 10_000)
    return size * (1 - cfg.val_fraction) / 3.2, False


def expand(space: Space, seeds: int, base: Config) -> list[dict]:
    """The grid points with their seed (``base.seed`` on), in Tune's order: each point's seeds together."""
    return [p | {"seed": s} for p in Space.of(space).points() for s in range(base.seed, base.seed + max(1, seeds))]


def describe(cfg: Config, point: dict) -> dict:
    from tinylm.budget import param_counts

    c = param_counts(cfg)
    avail, exact = corpus_tokens(cfg)
    fpt = flops_per_token(cfg)
    epochs = cfg.train_tokens / avail if avail and avail == avail else math.nan
    return {
        "point": ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items()
                           if k not in SHOWN), "seed": point.get("seed"),
        "d": cfg.n_embd, "L": cfg.n_layer, "heads": cfg.n_head, "head_size": cfg.head_dim, "d_ff": cfg.ffn_hidden,
        "V": cfg.vocab_size, "params": c["total"], "share_embed": c["embedding"] / c["total"],
        "glu_real": cfg.ffn_hidden / cfg.n_embd, "glu_requested": cfg.glu_factor, "d_over_L": cfg.n_embd / cfg.n_layer,
        "tokens": cfg.train_tokens, "tokens_per_param": cfg.train_tokens / c["total"], "epochs": epochs,
        "epochs_exact": exact, "lr": cfg.lr, "batch_tokens": cfg.tokens_per_step, "warmup": cfg.warmup,
        "flops": fpt * cfg.train_tokens, "est_s_here": seconds_here(cfg),
        "est_gpu_s": fpt * cfg.train_tokens / GPU_FLOPS, "target_params": cfg.target_params,
        "embed_share_requested": cfg.embed_share,
    }


def short_base(base: Config, rank_fraction: float) -> Config:
    """The two-phase pipeline's phase-1 config (``tinylm.sweep.pipeline.two_phase``): ``rank_fraction`` of the run (at
    least one eval interval), its warmup capped at a quarter of that (a laptop warmup would fill most of it)."""
    short_tokens = max(base.eval_every_tokens, int(base.train_tokens * rank_fraction))
    return base.replace(train_tokens=short_tokens,
                        warmup_tokens=min(base.warmup_tokens, short_tokens // 4) if base.warmup_tokens else 0)


RUN_LENGTH = ("train_tokens", "warmup_tokens", "eval_every_tokens")


def lr_point(base: Config, variant: dict, mult: float, fraction: float) -> dict:
    """A variant's LR-tuning run (``tinylm.sweep.pipeline.tune_lr``): its own rule LR (its ``lr``, else the base's)
    x ``mult``; a variant that sets its own run length gets it shortened to ``fraction`` as ``short_base`` does."""
    v = dict(variant)
    if fraction < 1 and any(k in v for k in RUN_LENGTH):
        own = short_base(base.replace(**v), fraction)
        v |= {k: getattr(own, k) for k in RUN_LENGTH}
    return v | {"lr": float(variant.get("lr", base.lr)) * mult}


def plan(exp, base: Config, seeds: int = 1, two_phase: bool = False, rank_fraction: float = 0.25,
         finalists: int = 2, lr_grid: tuple[float, ...] = (), lr_fraction: float = 1.0) -> pd.DataFrame:
    """One row per trial the sweep would start (two-phase: the ranking runs, then finalists x seeds; with an
    ``lr_grid``: first the LR-tuning runs, phase ``lr``, whose extensions past a grid edge are not known yet)."""
    space = exp.space_at(base.scale)
    rows = []
    if lr_grid:  # tinylm.sweep.pipeline.tune_lr: every variant x multiplier, one tuning seed, a fraction of the run
        short = short_base(base, lr_fraction).replace(seed=base.seed + MAX_SEEDS)  # as tune_lr: no seed run's
        for p in expand(space, 1, short):
            for m in lr_grid:
                q = lr_point(base, {k: v for k, v in p.items() if k in FIELDS and k != "seed"}, m, lr_fraction)
                cfg = Config(**(short.to_dict() | q))
                rows.append(describe(cfg, {k: v for k, v in p.items() if k != "lr"} | {"lr_mult": m}
                                     ) | {"phase": "lr"})
    if two_phase:
        short = short_base(base, rank_fraction)
        for p in expand(space, 1, short):
            rows.append(describe(Config(**(short.to_dict() | {k: v for k, v in p.items() if k in FIELDS})), p)
                        | {"phase": "rank"})
        n_final = min(len(rows), finalists + (1 if exp.baseline_at(base.scale) else 0))
        for p in expand(space, max(3, seeds), base)[: n_final * max(3, seeds)]:
            rows.append(describe(Config(**(base.to_dict() | {k: v for k, v in p.items() if k in FIELDS})), p)
                        | {"phase": "final*"})
        return pd.DataFrame(rows)
    tuned = rows
    rows = []
    described: dict[Config, dict] = {}  # seeds share everything else: each grid point is described once
    for p in expand(space, seeds, base):
        cfg = Config(**(base.to_dict() | {k: v for k, v in p.items() if k in FIELDS}))
        key = cfg.replace(seed=base.seed)
        if key not in described:
            described[key] = describe(key, p)
        rows.append(described[key] | {"seed": p.get("seed")})
    if tuned:
        return pd.DataFrame(tuned + [r | {"phase": "seeds*"} for r in rows])
    return pd.DataFrame(rows)


def diagnose(table: pd.DataFrame, scale: str, exp=None) -> list[str]:
    """Why these trials could not support a claim (empty list: nothing found). ``exp``: the Experiment, whose
    ``fit_tokens_per_param`` (None: the most of its ``tokens_per_param_per_point``) is the tokens per parameter
    its claim needs (a scaling fit: 20); without one, or below 1, 1."""
    out = []
    if scale == "smoke":
        out.append("SMOKE scale: mechanics only (head size 8, < 1 token per parameter): the results claim nothing "
                   "about the hypothesis. Use --scale laptop for an answer on this machine.")
    if not len(table):
        return out
    tpp = table["tokens_per_param"]
    fit = getattr(exp, "fit_tokens_per_param", None)
    if fit is None:
        fit = max(getattr(exp, "tokens_per_param_per_point", {}).values(), default=0.0)
    need = max(1.0, float(fit))
    low = table[tpp < 0.97 * need]  # token counts are rounded to whole optimizer steps
    if len(low):
        hi = low["tokens_per_param"].max()
        out.append(f"undertrained by design: {len(low)} trial(s) see {tpp.min():.2g}-{hi:.2g} "
                   f"tokens per parameter (< {need:g}{' for a scaling fit' if need > 1 else ''})")
    small_heads = table[table["head_size"] < 16]
    if len(small_heads):
        out.append(f"head size {int(small_heads['head_size'].min())} < 16 in {len(small_heads)} trial(s)")
    rep = table[table["epochs"] > 1.0]
    if len(rep):
        out.append(f"data repeats: up to {table['epochs'].max():.2f} epochs of the corpus "
                   f"({'exact' if rep['epochs_exact'].all() else 'estimated from its size'}); repeated tokens are "
                   "worth less than new ones (Muennighoff et al. 2023): the law measured is a data-constrained one")
    budget = table[table["target_params"] > 0]
    if len(budget):
        dev = (budget["glu_real"] / budget["glu_requested"] - 1).abs()
        if (dev > 0.10).any():
            out.append(f"GLU factor off by up to {100 * dev.max():.0f} % of the requested one (the budget leaves too "
                       "few layers to match it)")
        sdev = (budget["share_embed"] - budget["embed_share_requested"]).abs()
        if (sdev > 0.011).any():
            out.append(f"embedding share off by up to {100 * sdev.max():.1f} points")
    aspect = table["d_over_L"]
    if ((aspect < 4) | (aspect > 128)).any():
        out.append(f"unusual shapes: d/L from {aspect.min():.2g} to {aspect.max():.3g} (seed presets: 20-64)")
    return out


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h")


def print_plan(exp, base: Config, args, grid: tuple[float, ...] = ()) -> pd.DataFrame:
    """Print the plan, the wall-time estimates, the scale's rules and the diagnostics; returns the plan. ``grid``:
    the LR multipliers the run tunes each variant over first (``tinylm.sweep.pipeline.lr_grid_of``)."""
    table = plan(exp, base, seeds=args.seeds, two_phase=args.two_phase, rank_fraction=args.rank_fraction,
                 finalists=args.finalists, lr_grid=() if args.two_phase else grid, lr_fraction=args.lr_fraction)
    cols = ["point", "seed", "d", "L", "heads", "head_size", "d_ff", "V", "params", "share_embed", "glu_real",
            "tokens", "tokens_per_param", "epochs", "lr", "est_s_here"]
    if "phase" in table.columns:
        cols.insert(0, "phase")
        print("(final*: the finalists are not known before phase 1; the first grid points stand in for them)"
              if args.two_phase else f"(lr: each variant at the rule's LR x {', '.join(f'{m:g}' for m in grid)}, "
              "extended while the best is at an edge; seeds*: at each variant's tuned LR, not known yet)")
    show = table[cols].copy()
    for c, f in (("share_embed", "{:.3f}"), ("glu_real", "{:.2f}"), ("tokens_per_param", "{:.1f}"),
                 ("epochs", "{:.2f}"), ("lr", "{:.2e}"), ("est_s_here", "{:.0f}")):
        show[c] = show[c].map(lambda v, f=f: f.format(v) if v == v else "n/a")
    print(f"DRY RUN: sweep {exp.name!r} at scale {base.scale!r} ({len(table)} trials; nothing is started)")
    print(f"hypothesis: {exp.hypothesis}")
    print(show.to_string(index=False))
    concurrent = args.max_concurrent or max(1, (os.cpu_count() or 1))
    work = float(table["est_s_here"].sum()) + TRIAL_OVERHEAD_S * len(table)
    here = RAY_START_S + work / min(concurrent, max(1, len(table)))
    print(f"\nestimated wall time here: {_fmt_s(here)} ({len(table)} trials, {concurrent} at a time, "
          f"{TRIAL_OVERHEAD_S:g} s start-up per trial; throughput model: {THROUGHPUT['source']}); "
          f"on one GPU at {GPU_FLOPS:.0e} FLOP/s: {_fmt_s(float(table['est_gpu_s'].sum()))} of compute "
          f"({table['flops'].sum():.3g} FLOPs)")
    k = getattr(args, "seeds_per_trial", 1)
    if k > 1:
        print(f"--seeds-per-trial {k}: the seed runs (seeds*) train {k} seeds per trial as one batched model, each "
              "seed still its own row; the estimate counts them as separate trials (on this CPU a batched member "
              "runs at about one model's speed: RESULTS.md)")
    if not exp.early_stopping or args.no_asha:
        print("no ASHA: every trial runs to the end")
    else:
        print("ASHA on: trials it stops early cost less, so this is an upper bound")
    if base.scale == "laptop":
        print("\nlaptop scale rules (tinylm.config.LAPTOP_RULES):")
        for rule, _why in LAPTOP_RULES:
            print(f"  - {rule}")
        if getattr(exp, "warmup_tokens_per_param", 0):
            print(f"  - this experiment's own: warmup = {exp.warmup_tokens_per_param:g} tokens per parameter "
                  f"({base.warmup:,} tokens), capped at 1/4 of the run (its docstring says why)")
    diags = diagnose(table, base.scale, exp)
    print("\ndiagnostics:" if diags else "\ndiagnostics: none (shapes, tokens per parameter and data are sane)")
    for d in diags:
        print(f"  ! {d}")
    return table
