"""Which of the seed architectures gives the best perplexity for its cost?

Hypothesis: validation loss falls as a power law in non-embedding parameters across small -> xlarge (seed 000:
small 256/4/4, medium 384/6/8 = baseline, large 512/8/8, xlarge 768/12/12, d_ff = 4 d), at the same tokens.

    python sweeps/arch.py                 # smoke: each preset at 1/4 width, 1/2 depth, V=2k
    python sweeps/arch.py --scale full    # the seed sizes, 50M tokens each, on the attached Ray cluster

Results: results/arch/results.csv, MLflow experiment "arch"; python -m tinylm.analysis arch fits L(N).
"""

from tinylm.config import Config
from tinylm.experiment import VARIANT, Experiment
from tinylm.sweep.__main__ import main

DIMS = ("n_embd", "n_layer", "n_head", "d_ff")
RUN = ("train_tokens", "eval_every_tokens", "warmup_tokens", "lr")  # laptop: per size, from the size rules


def space(scale: str) -> dict:
    presets = ("small", "medium", "large", "xlarge")
    if scale == "laptop":  # each preset's laptop replica, each trained on 20 tokens per parameter (a scaling fit)
        cfgs = [Config.from_name(p, scale="laptop").with_tokens_per_param(20) for p in presets]
        return {VARIANT: [{k: getattr(c, k) for k in (*DIMS, *RUN)} for c in cfgs]}
    return {VARIANT: [{k: getattr(Config.from_name(p, scale=scale), k) for k in DIMS} for p in presets]}  # <-


EXPERIMENT = Experiment(
    name="arch", preset="medium", space=space,
    baseline=lambda scale: {"n_embd": Config.from_name("medium", scale=scale).n_embd},  # medium = baseline
    hypothesis="loss falls as a power law in non-embedding params from small to xlarge",
    description="seed architectures small/medium/large/xlarge at equal tokens",
    # a scaling fit needs every size trained to the end: early stopping would drop the models that learn
    # slowest at first (the big ones) and bias the exponent
    early_stopping=False,
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
