"""A tuned scaling ladder: L(N) from the smaller sizes predicts the largest, held out.

Hypothesis: trained at 20 tokens per parameter with the LR tuned per size, val loss follows a power law in
parameters well enough that a fit on the smaller sizes predicts the largest within 2 % and its 95 % prediction
interval covers the measurement.

    python sweeps/ladder.py               # laptop: 5 sizes 29k-349k params (12x), LR tuned per size, 2 seeds
    python sweeps/ladder.py --dry-run     # the tuning runs and the seed runs, tokens/param, epochs, time
    python sweeps/ladder.py --scale full  # 5 sizes 3M-40M params, V=8k, on the attached Ray cluster
    python sweeps/isoflop.py              # the other scaling question: compute-optimal N at fixed FLOPs

One protocol for every size, fixed before any size is seen (tinylm.sweep.pipeline.tune_lr): the size rule's LR
(tinylm.config.laptop_lr) x {1/2, 1, 2} on a tuning seed, every run to its end at full length (early stopping
across an LR axis is biased, RESULTS.md 2026-11-30), a grid extended by the same ratio while its lowest loss is
at an edge; then 2 seeds per size at its tuned LR (the grid's centre unless another LR beat it by more than one
seed's noise, 0.02 nats). The held-out largest size is tuned by that same rule. The report fits L(N) on total and
on non-embedding parameters, flags a degenerate irreducible term and fits the exponent in N of each size's
lowest-loss LR beside the rule's -1/3. Laptop data: State of the Union (public domain), BPE-384: 5.36M train
tokens, so the largest size reads 1.3 epochs (flagged). The family (shapes, data) and the report live in
tinylm.sweep.ladder, shared with sweeps/isoflop.py.
Results: results/ladder/ (seed runs), results/ladder-lr*/ (tuning), results/analysis/ladder/REPORT.md.
"""

from tinylm.sweep import Experiment, ladder
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="ladder", preset="medium", space=ladder.sizes,  # <- the sizes (tinylm.sweep.ladder.SHAPES)
    hypothesis="a power law fitted on the smaller sizes predicts the largest within 2 % (20 tokens/param, tuned LR)",
    description="scaling ladder: 5 sizes spanning >= 10x params, 20 tokens/param, LR tuned per size, held-out largest",
    # every size on 20 tokens per parameter of its own, its warmup and rule LR (the LR grid's centre) by the size
    # rules; smoke: the base's short run
    tokens_per_param=ladder.TOKENS_PER_PARAM,
    tokens_per_param_per_point={"laptop": ladder.TOKENS_PER_PARAM, "full": ladder.TOKENS_PER_PARAM},
    early_stopping=False, lr_grid=ladder.LR_MULT, options=dict(seeds=2),
    overrides=ladder.FAMILY["full"], laptop=ladder.FAMILY["laptop"],
    smoke=dict(ladder.FAMILY["smoke"], train_tokens=16_384, eval_every_tokens=4_096),
    after=ladder.report,
)

if __name__ == "__main__":
    main(EXPERIMENT)
