"""Depth scaling: 4 / 8 / 12 layers at width 512 (seeds 001 and "architecture experimentation").

Hypothesis: at width 512 going from 4 to 8 layers pays in perplexity, 8 to 12 much less, while latency grows
linearly with depth; the efficiency score (perplexity per million parameters) peaks at 8.

    python sweeps/depth.py                # smoke: width 128, 2/4/6 layers
    python sweeps/depth.py --scale full   # width 512, 4/8/12 layers, 50M tokens

Results: results/depth/results.csv (with ppl_per_mparam via tinylm.api.compare), MLflow "depth".
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="depth", preset="large",
    space=lambda scale: Space(n_layer=[2, 4, 6] if scale in ("smoke", "laptop") else [4, 8, 12]),  # <-
    baseline=lambda scale: {"n_layer": 4 if scale in ("smoke", "laptop") else 8},
    overrides=dict(n_embd=512, n_head=8, d_ff=2048),
    hypothesis="4->8 layers pays at width 512, 8->12 much less; latency grows linearly",
    description="depth 4/8/12 at width 512",
    # at laptop scale each depth trains on 20 tokens per parameter, its LR/warmup by the size rules
    tokens_per_param_per_point={"laptop": 20},
    # a scaling fit needs every size trained to the end: early stopping would drop the models that learn
    # slowest at first (the big ones) and bias the exponent
    early_stopping=False,
    smoke=dict(n_embd=128, n_head=8, d_ff=512, train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
