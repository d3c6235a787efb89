"""Cosine vs linear vs constant learning-rate schedules (all with the same warmup).

Hypothesis: cosine and linear decay end within 1 % of each other; constant ends clearly worse at the same
tokens because it never anneals.

    python sweeps/schedule.py             # smoke
    python sweeps/schedule.py --scale full

Results: results/schedule/results.csv, MLflow "schedule".
"""

from tinylm.experiment import Experiment, main

EXPERIMENT = Experiment(
    name="schedule", preset="medium",
    space={"schedule": ["cosine", "linear", "constant"]},  # <- the intervention
    baseline={"schedule": "cosine"},
    hypothesis="cosine and linear decay tie; constant trails at equal tokens",
    description="LR schedule cosine / linear / constant with equal warmup on medium",
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
