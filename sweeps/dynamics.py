"""Training dynamics of the baseline: one long run, eval and checkpoint every 1k steps.

Question: when does the medium model's validation loss flatten, and is the cosine tail worth its tokens? The
curve (val loss, train loss, LR, throughput vs tokens) is logged to MLflow; every checkpoint is kept by Ray.

    python sweeps/dynamics.py             # smoke: 1/4-width medium, eval + checkpoint every 50 steps
    python sweeps/dynamics.py --scale full   # medium, 200M tokens, eval + checkpoint every 1k steps

Results: MLflow experiment "dynamics" (metric curves keyed by tokens), results/dynamics/; fig_curves in the report.
"""

from tinylm.config import Config
from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

STEP_TOKENS = {s: Config.from_name("medium", scale=s).tokens_per_step for s in ("smoke", "full")}

EXPERIMENT = Experiment(
    name="dynamics", preset="medium",
    space=Space(),  # one run: the object of study is its curve
    overrides=dict(train_tokens=200_000_000, eval_every_tokens=1000 * STEP_TOKENS["full"]),
    smoke=dict(train_tokens=400_000, eval_every_tokens=50 * STEP_TOKENS["smoke"], lr=3e-3),
    hypothesis="the medium model's val loss is still falling at 200M tokens (not data-saturated)",
    description="one long baseline run with an eval and a checkpoint every 1k steps",
    early_stopping=False,
)

if __name__ == "__main__":
    main(EXPERIMENT)
