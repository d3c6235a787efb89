"""Is a 2.66x SwiGLU as good as 4x at a fixed parameter budget?

Hypothesis: at 10M parameters (V=16k, 35 % in the embedding) a SwiGLU MLP with expansion 2.66 matches 4.0 in
validation perplexity within 5 %, while its extra depth (more layers fit the budget) costs latency.
Every variant has the same total parameter count: the budget solver re-derives width, depth and d_ff.

    python sweeps/glu.py --analyze        # laptop replica: 143k params, V=1536, 20 tokens/param, LR tuned per
                                          # variant, then 3 seeds each, verdict
    python sweeps/glu.py --dry-run        # the 12 trials, their shapes, tokens/param and the time it will take
    python sweeps/glu.py --scale full     # 10M params, V=16k, 50M tokens per trial, on the attached Ray cluster
    python sweeps/glu.py --two-phase      # PRD: rank all 4 short, then finalists x 3 seeds to the end
    python sweeps/glu.py --scale smoke    # mechanics only (seconds per trial; claims nothing)

Laptop scale (tinylm.config.LAPTOP_RULES): embedding share 35 %, tied, the four GLU factors (real 2.00 / 2.50 /
3.00 / 3.75 at 9 / 8 / 7 / 6 layers of width 32, head size 16) are kept. The regime is kept instead of the PRD's 5
tokens per parameter: 20, so every run ends below the count bigram model (at 5 none did: its seeds measured
plateau escape). LR: the rule's x 2 / 4 / 8 tried per variant on a tuning seed, each a full run, extended while
the lowest loss is at an edge; the seeds use the centre unless another LR beat it by more than 0.02 nats.
Warmup: 4 tokens per parameter (20 % of the run; at the size rule's 1 the 9-layer variant's seeds sometimes left
the unigram plateau late and ended up to 0.1 nats behind, RESULTS.md 2026-12-04); beta2 by the size rule.
No ASHA, no kill rule: a verdict needs every seed of every variant.
Results: results/glu/results.csv, MLflow experiment "glu", REPORT.md under results/analysis/glu (with --analyze).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="glu",
    preset="budget-10m",  # 10M params, V=16k, SwiGLU, RMSNorm, RoPE; dims from the solver
    space=Space(glu_factor=[2.0, 2.66, 3.0, 4.0]),  # <- the intervention
    baseline={"glu_factor": 4.0},
    hypothesis="SwiGLU 2.66x matches 4x within 5 % perplexity at a fixed parameter budget",
    description="GLU expansion factor at fixed total params (seed: 2.0 / 2.66 / 3.0 / 4.0)",
    # the verdict is a paired comparison over seeds: every seed of every variant must finish (two-phase keeps
    # its own short ranking phase for the PRD pipeline)
    early_stopping=False, options=dict(seeds=3),
    # the laptop replica keeps the regime, not only the ratio: at the PRD's 5 tokens per parameter no batch or LR
    # took this 143k model below the count bigram model (RESULTS.md, 2026-12-03 probe); at 20 every run does
    tokens_per_param=20.0,
    # per-variant LR before the seed runs (the PRD's phases): the rule's LR x 2 / 4 / 8 on a tuning seed, full
    # length (a quarter-length run is back on the plateau, where LRs rank by noise: RESULTS.md), extended past an
    # edge; the probe's best at batch 16 was x 4 of the rule
    lr_grid=(2.0, 4.0, 8.0),
    # the deepest variant (9 layers of width 32) at the grid's centre, 5 seeds: warmup over 4 tokens per parameter
    # instead of the rule's 1 ended 0.058 nats lower (paired, p 0.02) and no seed left the plateau late
    warmup_tokens_per_param=4.0,
    smoke=dict(train_tokens=240_000, eval_every_tokens=40_000),
)

if __name__ == "__main__":
    main(EXPERIMENT)
