"""How should a fixed parameter budget be split between the token embedding and the backbone?

Hypothesis (PRD): at 10M parameters and V=16k, 35 % in the embedding beats both 25 % (too narrow: d=160) and
45 % (too shallow: 4-7 layers) in validation perplexity. The solver re-derives width/depth/d_ff per share so
every variant has the same total (within 1 %).

    python sweeps/embed.py                # laptop replica: 246k params, V=1536 (d = 40/56/72), 5 tokens/param
    python sweeps/embed.py --dry-run      # the trials, shapes and estimated time
    python sweeps/embed.py --scale full   # 10M params, V=16k, 50M tokens

Results: results/embed/results.csv, MLflow "embed"; the analysis plots PPL vs embedding share.
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="embed", preset="budget-10m",
    space=Space(embed_share=[0.25, 0.35, 0.45]),  # <- the intervention
    baseline={"embed_share": 0.35},
    hypothesis="35 % of params in the embedding beats 25 % and 45 % at a fixed 10M budget",
    description="embedding share 25/35/45 % at fixed total params, V=16k (PRD)",
    smoke=dict(train_tokens=240_000, eval_every_tokens=40_000),
    laptop=dict(target_params=245_760),  # d = 40 / 56 / 72 at 25 / 35 / 45 % (V=1536): every share is reachable
)

if __name__ == "__main__":
    main(EXPERIMENT)
