"""Which Muon learning rate trains the medium baseline best?

Hypothesis (seed 000): with Muon on the hidden matrices and AdamW on embeddings/head/norms, 0.02 is near the
optimum; 0.05 is unstable and 0.005 under-trains. The seed's values are kept at both scales.

    python sweeps/lr.py                   # smoke: medium at 1/4 width
    python sweeps/lr.py --scale full      # medium 384/6/8, 50M tokens
    python sweeps/lr.py --refine 20       # Optuna: log-uniform muon_lr and lr around the grid's best

Results: results/lr/results.csv, MLflow experiment "lr", Optuna studies "lr" and "lr-refine".
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="lr", preset="medium",
    overrides=dict(optimizer="muon", lr=3e-3),  # AdamW groups (embeddings, head, norms) at 3e-3
    space=Space(muon_lr=[0.005, 0.01, 0.02, 0.05]),  # <- the intervention
    baseline={"muon_lr": 0.02},
    refine_space={"muon_lr": ("loguniform", 0.003, 0.1), "lr": ("loguniform", 3e-4, 1e-2)},
    hypothesis="Muon LR 0.02 is near-optimal for the medium model; 0.05 diverges or trails",
    description="Muon+AdamW learning-rate grid 0.005/0.01/0.02/0.05 on medium (seed 000)",
    # every LR to the end: early stopping across an LR axis favours small LRs (bench/asha.py, RESULTS.md 2026-11-30)
    early_stopping=False,
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000),
)

if __name__ == "__main__":
    main(EXPERIMENT)
