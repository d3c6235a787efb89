"""Which of the seed architectures gives the best perplexity for its cost?

Hypothesis: validation loss falls as a power law in non-embedding parameters across small -> xlarge (seed 000:
small 256/4/4, medium 384/6/8 = baseline, large 512/8/8, xlarge 768/12/12, d_ff = 4 d), at the same tokens.

    python sweeps/arch.py                 # smoke: each preset at 1/4 width, 1/2 depth, V=2k
    python sweeps/arch.py --scale full    # the seed sizes, 50M tokens each, on the attached Ray cluster

Results: results/arch/results.csv, MLflow experiment "arch"; python -m tinylm.analysis arch fits L(N).
"""

from tinylm.config import Config
from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

DIMS = ("n_embd", "n_layer", "n_head", "d_ff")
PRESETS = ("small", "medium", "large", "xlarge")


def space(scale: str) -> Space:  # each preset's shape at this scale (its laptop replica at laptop scale)
    return Space(variants=[{k: getattr(Config.from_name(p, scale=scale), k) for k in DIMS} for p in PRESETS])  # <-


EXPERIMENT = Experiment(
    name="arch", preset="medium", space=space,
    baseline=lambda scale: {"n_embd": Config.from_name("medium", scale=scale).n_embd},  # medium = baseline
    hypothesis="loss falls as a power law in non-embedding params from small to xlarge",
    description="seed architectures small/medium/large/xlarge at equal tokens",
    # at laptop scale each preset's replica trains on 20 tokens per parameter (a scaling fit), LR/warmup by the
    # size rules
    tokens_per_param_per_point={"laptop": 20},
    # a scaling fit needs every size trained to the end: early stopping would drop the models that learn
    # slowest at first (the big ones) and bias the exponent
    early_stopping=False,
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
