"""Seed 000 baselines on the eval suite: random (theoretical), untrained (100 steps), small trained (1000 steps).

Hypothesis: on most tasks the primary metric orders trained > untrained > random, and re-running the suite on
the same model moves no metric by more than 2 % (the suite is deterministic; ``seed`` fixes the subset).

    python sweeps/baselines.py                 # smoke: medium at 1/4 width (V=2k, T=128), ~10 min on 2 CPU cores
    python sweeps/baselines.py --scale full    # medium (384/6/8, V=8k, T=256): 1000 steps = 4M tokens (use a GPU)
    python sweeps/baselines.py --dry-run       # the two tiers' shapes and tokens, then exit

Scale: ``Config.from_name("medium", scale=...)`` trained with ``tinylm.train.train`` for 100 and 1000 optimizer
steps; the random tier is each task's ``eval_<task>_random`` (chance level computed from its data).
Results: results/baselines/baselines.csv and baselines.md (one row per task and tier), checks printed.
"""

import argparse
import logging
import os

import pandas as pd

from tinylm.checkpoint import load_pretrained
from tinylm.config import Config
from tinylm.evals import TASKS, run_suite
from tinylm.markdown_table import md_table
from tinylm.train import train

STEPS = {"untrained": 100, "trained": 1000}  # <- the intervention: optimizer steps


def evaluate_tier(cfg: Config, steps: int, out: str, n: int, repeats: int) -> tuple[dict, float]:
    tokens = steps * cfg.tokens_per_step
    train(cfg.replace(name=f"baseline-{steps}", train_tokens=tokens, eval_every_tokens=tokens, evals=""), out)
    model, _, tok = load_pretrained(os.path.join(out, "model"))
    runs = [run_suite(model, tok, n=n, seed=cfg.seed) for _ in range(repeats)]
    keys = [k for k in runs[0] if not k.endswith("time_s")]
    drift = max((abs(r[k] - runs[0][k]) / max(abs(runs[0][k]), 1e-12) for r in runs[1:] for k in keys), default=0)
    return runs[0], drift


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", choices=("smoke", "laptop", "full"), default="smoke",
                   help="smoke: mechanics (default here: the tiers are step counts, not a scaling claim)")
    p.add_argument("--dry-run", action="store_true", help="print the tiers (shape, params, tokens) and exit")
    p.add_argument("--n", type=int, default=200, help="examples per task")
    p.add_argument("--repeats", type=int, default=2, help="suite runs per model (variance check)")
    p.add_argument("--out", default="results/baselines")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = Config.from_name("medium", scale=args.scale, seed=0)
    if args.dry_run:
        from tinylm.budget import num_params

        for name, steps in STEPS.items():
            tokens = steps * cfg.tokens_per_step
            print(f"{name}: {steps} steps = {tokens:,} tokens on medium at {args.scale} (d={cfg.n_embd}, "
                  f"L={cfg.n_layer}, heads={cfg.n_head}, V={cfg.vocab_size}, {num_params(cfg):,} params, "
                  f"{tokens / num_params(cfg):.2f} tokens/param), then the eval suite ({args.n} examples/task)")
        return
    res = {name: evaluate_tier(cfg, steps, os.path.join(args.out, name), args.n, args.repeats)
           for name, steps in STEPS.items()}
    rows = []
    for t, task in TASKS.items():
        m = f"eval_{t}_{task.primary}"
        u, tr = res["untrained"][0], res["trained"][0]
        rows.append(dict(task=t, metric=task.primary, random=u[f"eval_{t}_random"], untrained=u[m],
                         untrained_se=u.get(m + "_stderr"), trained=tr[m], trained_se=tr.get(m + "_stderr"),
                         ordered=tr[m] > u[m] > u[f"eval_{t}_random"]))
    df = pd.DataFrame(rows)
    os.makedirs(args.out, exist_ok=True)
    df.to_csv(os.path.join(args.out, "baselines.csv"), index=False)
    md = md_table(df.values.tolist(), list(df.columns))
    with open(os.path.join(args.out, "baselines.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    better = int((df.trained > df.untrained).sum()), int((df.untrained > df.random).sum())
    drift = max(d for _, d in res.values())
    print(f"trained > untrained on {better[0]}/{len(df)} tasks, untrained > random on {better[1]}/{len(df)}, "
          f"both on {int(df.ordered.sum())}/{len(df)}: {'PASS' if df.ordered.sum() > len(df) / 2 else 'FAIL'}")
    print(f"max relative change across {args.repeats} suite runs: {100 * drift:.3f} % "
          f"{'PASS' if drift < 0.02 else 'FAIL'} (< 2 %)")


if __name__ == "__main__":
    main()
