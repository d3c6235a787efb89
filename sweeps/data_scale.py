"""Data scaling (seed 001): the same model trained on 1x / 2x / 4x / 8x the data.

Hypothesis: validation loss follows L(D) = E + B / D^beta with beta ~ 0.3 (Chinchilla); each doubling of the
data buys less. Run length grows with the data (one pass over it), so D is both unique and seen tokens.

    python sweeps/data_scale.py           # smoke: 60k..480k tokens on 1/4-width medium
    python sweeps/data_scale.py --scale full   # 6.25M..50M tokens on medium

Results: results/data_scale/results.csv, MLflow "data_scale"; python -m tinylm.analysis data_scale fits L(D).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main


def space(scale: str) -> Space:
    # laptop: 1x = 2.5 tokens per parameter of medium's laptop replica (443k params), so 8x = 20 (the full scale's
    # 0.45-3.6 tokens/param could not support an L(D) fit); sotu holds ~4M tokens at V=1024: 8x repeats (flagged)
    base = {"smoke": 60_000, "laptop": 1_107_600}.get(scale, 6_250_000)
    return Space(variants=[{"data_scale": float(k), "max_tokens": base, "train_tokens": base * k,  # <-
                            "eval_every_tokens": base * k // 4} for k in (1, 2, 4, 8)])


EXPERIMENT = Experiment(
    name="data_scale", preset="medium", space=space, baseline={"data_scale": 1.0},
    # trials have different lengths by design, and a scaling fit needs every point trained to the end
    early_stopping=False,
    # an L(D) fit: the dry run flags every point below 20 tokens per parameter (at laptop scale, all but 8x)
    fit_tokens_per_param=20,
    hypothesis="loss follows E + B/D^beta with beta ~ 0.3",
    description="data scale 1x/2x/4x/8x at a fixed model (seed 001)",
    smoke=dict(lr=3e-3),
    laptop=dict(dataset="sotu"),
)

if __name__ == "__main__":
    main(EXPERIMENT)
