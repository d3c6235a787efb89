"""AdamW vs Lion vs Muon on the medium baseline, each at its customary learning rate.

Hypothesis: Muon (matrices; AdamW for embeddings/head/norms, as modded-nanogpt) reaches AdamW's final loss in
fewer tokens; Lion needs an LR ~3-10x below AdamW's (Chen et al. 2023) and then matches it.

    python sweeps/optim.py                # smoke
    python sweeps/optim.py --scale full   # medium, 50M tokens

Results: results/optim/results.csv, MLflow "optim"; compare the curves in the report (fig_curves).
"""

from tinylm.config import Config
from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main


def ref(scale: str) -> float:
    """AdamW's LR: the seed's 1e-3 at full and smoke, the size rule at laptop (tinylm.config.laptop_lr)."""
    return Config.from_name("medium", scale="laptop").lr if scale == "laptop" else 1e-3

EXPERIMENT = Experiment(
    name="optim", preset="medium",
    space=lambda scale: Space(variants=[  # <- the intervention: optimizer with its own LR (AdamW's x 1, Lion's / 5)
        {"optimizer": "adamw", "lr": ref(scale)},
        {"optimizer": "lion", "lr": float(f"{ref(scale) / 5:.3g}"), "beta2": 0.99},
        {"optimizer": "muon", "lr": ref(scale), "muon_lr": 0.02},
    ]),
    baseline={"optimizer": "adamw"},
    hypothesis="Muon reaches AdamW's final loss in fewer tokens; Lion matches AdamW at ~1/5 the LR",
    description="optimizer comparison AdamW / Lion / Muon on medium",
    # every optimizer to the end: each has its own LR, and early stopping across LRs is biased (RESULTS.md)
    early_stopping=False,
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000),
)

if __name__ == "__main__":
    main(EXPERIMENT)
