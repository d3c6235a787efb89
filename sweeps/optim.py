"""AdamW vs Lion vs Muon on the medium baseline, each at its customary learning rate.

Hypothesis: Muon (matrices; AdamW for embeddings/head/norms, as modded-nanogpt) reaches AdamW's final loss in
fewer tokens; Lion needs an LR ~3-10x below AdamW's (Chen et al. 2023) and then matches it.

    python sweeps/optim.py                # smoke
    python sweeps/optim.py --scale full   # medium, 50M tokens

Results: results/optim/results.csv, MLflow "optim"; compare the curves in the report (fig_curves).
"""

from tinylm.experiment import Experiment, main

EXPERIMENT = Experiment(
    name="optim", preset="medium",
    space={"__variant": [  # <- the intervention: optimizer with its own LR
        {"optimizer": "adamw", "lr": 1e-3},
        {"optimizer": "lion", "lr": 2e-4, "beta2": 0.99},
        {"optimizer": "muon", "lr": 1e-3, "muon_lr": 0.02},
    ]},
    baseline={"optimizer": "adamw"},
    hypothesis="Muon reaches AdamW's final loss in fewer tokens; Lion matches AdamW at ~1/5 the LR",
    description="optimizer comparison AdamW / Lion / Muon on medium",
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000),
)

if __name__ == "__main__":
    main(EXPERIMENT)
