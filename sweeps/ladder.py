"""A tuned scaling ladder: L(N) from the smaller sizes predicts the largest, held out.

Hypothesis: trained at 20 tokens per parameter with the LR tuned per size, val loss follows a power law in
parameters well enough that a fit on the smaller sizes predicts the largest within 2 % and its 95 % prediction
interval covers the measurement.

    python sweeps/ladder.py               # laptop: 5 sizes 29k-349k params (12x), LR tuned per size, 2 seeds
    python sweeps/ladder.py --dry-run     # the tuning runs and the seed runs, tokens/param, epochs, time
    python sweeps/ladder.py --scale full  # 5 sizes 3M-40M params, V=8k, on the attached Ray cluster
    python sweeps/isoflop.py              # the other scaling question: compute-optimal N at fixed FLOPs

One protocol for every size, fixed before any size is seen (tinylm.experiment.tune_lr): the size rule's LR
(tinylm.config.laptop_lr) x {1/2, 1, 2} on a tuning seed, every run to its end at full length (early stopping
across an LR axis is biased, RESULTS.md 2026-11-30), a grid extended by the same ratio while its best is at an
edge; then 2 seeds per size at its tuned LR. The held-out largest size is tuned by that same rule. The report
fits L(N) on total and on non-embedding parameters, flags a degenerate irreducible term and fits the tuned LR's
exponent in N beside the rule's -1/3. Laptop data: State of the Union (public domain), BPE-384: 5.36M train
tokens, so the largest size reads 1.3 epochs (flagged).
Results: results/ladder/ (seed runs), results/ladder-lr*/ (tuning), results/analysis/ladder/REPORT.md.
"""

from __future__ import annotations

import math
import os

from tinylm.config import Config
from tinylm.experiment import VARIANT, Experiment
from tinylm.sweep.__main__ import main

TOKENS_PER_PARAM = 20.0
LR_MULT = (0.5, 1.0, 2.0)
# (d_model, layers, heads): head size 16-20 at laptop, d/L 16-40; d_ff = 4 d (the seed presets' GPT-2 MLP)
SHAPES = {
    "smoke": [(32, 1, 2), (32, 2, 2), (48, 2, 3), (64, 2, 4)],
    "laptop": [(32, 1, 2), (40, 2, 2), (56, 2, 2), (64, 3, 4), (80, 4, 5)],
    "full": [(192, 3, 3), (256, 4, 4), (384, 6, 6), (512, 8, 8), (640, 10, 10)],
}
FAMILY = {"laptop": dict(dataset="sotu", vocab_size=384), "smoke": dict(dataset="sotu", vocab_size=384),
          "full": dict(vocab_size=8192)}


def shape(base: Config, d: int, layers: int, heads: int) -> Config:
    return base.replace(n_embd=d, n_layer=layers, n_head=heads, d_ff=4 * d)


def ladder_points(scale: str) -> list[dict]:
    """One variant per size: its shape, run length (20 tokens per parameter) and the size rule's LR, which the
    LR phase multiplies by ``LR_MULT``."""
    base = EXPERIMENT.base(scale)
    out = []
    for d, layers, heads in SHAPES[scale]:
        cfg = shape(base, d, layers, heads)
        if scale != "smoke":
            cfg = cfg.with_tokens_per_param(TOKENS_PER_PARAM)
        out.append(dict(n_embd=d, n_layer=layers, n_head=heads, d_ff=4 * d, train_tokens=cfg.train_tokens,
                        eval_every_tokens=cfg.eval_every_tokens, warmup_tokens=cfg.warmup_tokens,
                        lr=float(f"{cfg.lr:.3g}")))
    return out


def report(table, sweep, base: Config, space: dict) -> None:
    """After the seed runs: the ladder's REPORT.md from the stored seed and tuning sweeps."""
    from tinylm.analysis import ladder
    from tinylm.analysis.plan import corpus_tokens

    largest = base.replace(**max(space[VARIANT], key=lambda v: v["n_embd"] * v["n_layer"]))
    avail, _ = corpus_tokens(largest)
    epochs = largest.train_tokens / avail if avail == avail and avail else math.nan
    ladder.report(sweep.uri(), sweep.name, os.path.join(sweep.root, "analysis", sweep.name), base.scale, epochs)


EXPERIMENT = Experiment(
    name="ladder", preset="medium", space=lambda scale: {VARIANT: ladder_points(scale)},  # <- the sizes
    hypothesis="a power law fitted on the smaller sizes predicts the largest within 2 % (20 tokens/param, tuned LR)",
    description="scaling ladder: 5 sizes spanning >= 10x params, 20 tokens/param, LR tuned per size, held-out largest",
    tokens_per_param=TOKENS_PER_PARAM, early_stopping=False, lr_grid=LR_MULT, options=dict(seeds=2),
    overrides=FAMILY["full"], laptop=FAMILY["laptop"], smoke=dict(FAMILY["smoke"], train_tokens=16_384,
                                                                  eval_every_tokens=4_096),
    after=report,
)

if __name__ == "__main__":
    main(EXPERIMENT)
