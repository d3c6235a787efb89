"""Attention heads at a fixed width: 5 / 8 / 10 / 16 heads at hidden 320, 6 layers.

Hypothesis: with the parameter count fixed (heads only re-partition the 320 dims), 8 heads of 40 beat both a
few wide heads and many 20-dim heads. The seed lists 12 heads, but 320 % 12 != 0: that point fails the
divisibility check before anything is scheduled (`--set`-style overrides get the same check), so the grid uses
10, the nearest valid count.

    python sweeps/heads.py                # smoke: hidden 80 (heads of 16/10/8/5 dims), 3 layers
    python sweeps/heads.py --scale full   # hidden 320, 6 layers, 50M tokens

Results: results/heads/results.csv, MLflow "heads"; ppl_per_mparam in tinylm.api.compare("heads").
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="heads", preset="medium",
    overrides=dict(n_embd=320, n_layer=6, n_head=5, d_ff=1280),
    space=lambda scale: Space(n_head=[5, 8, 10] if scale == "laptop" else [5, 8, 10, 16]),  # <- the intervention
    # laptop: width/2 (not /4) so 5-10 heads keep a head size >= 16 (16 heads would be 10), V/4 to keep the share
    laptop=dict(n_embd=160, d_ff=640, vocab_size=2048),
    baseline={"n_head": 8},
    hypothesis="8 heads beat 5 and 16 at hidden 320 with equal parameters",
    description="number of attention heads 5/8/10/16 at hidden 320, 6 layers",
    smoke=dict(n_embd=80, n_layer=3, d_ff=320, train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
