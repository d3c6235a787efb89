"""Cosine vs linear vs constant vs warmup-stable-decay learning-rate schedules (all with the same warmup).

Hypothesis: cosine and linear decay end within 1 % of each other; wsd (constant, then a linear cooldown over the
last 20 %) matches cosine (Hägele et al. 2024); constant ends clearly worse at the same tokens because it never
anneals. Every schedule runs to the end: mid-run losses of different schedules are not comparable (constant
leads until the others decay), so ASHA and the kill rule would judge the schedule, not the run.

    python sweeps/schedule.py             # smoke
    python sweeps/schedule.py --scale full

Results: results/schedule/results.csv, MLflow "schedule".
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="schedule", preset="medium",
    space=Space(schedule=["cosine", "linear", "constant", "wsd"]),  # <- the intervention
    baseline={"schedule": "cosine"},
    hypothesis="cosine, linear decay and wsd tie; constant trails at equal tokens",
    description="LR schedule cosine / linear / constant / wsd with equal warmup on medium",
    early_stopping=False,
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
