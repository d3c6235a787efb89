"""Is attention necessary at a fixed parameter budget, and when does it break down?

Hypothesis: at 10M parameters (V=16k, 35 % in the embedding) a Mamba-style selective state-space model, and a
hybrid with attention at every second layer, match attention in validation perplexity within 5 %, but the pure
SSM loses exact recall over long contexts (the recall eval: copy a random sequence of L tokens, per L).
Every variant has the same total parameter count: the budget solver re-derives width, depth and d_ff with each
mixer's own per-layer count (tinylm.budget).

    python sweeps/ssm.py --analyze        # laptop replica: 143k params, V=1536, 20 tokens/param, LR tuned per
                                          # variant, then 3 seeds each, verdict + recall per length
    python sweeps/ssm.py --dry-run        # the trials, their shapes, tokens/param and the time it will take
    python sweeps/ssm.py --scale full     # 10M params, V=16k, 50M tokens per trial, on the attached Ray cluster
    python sweeps/ssm.py --scale smoke    # mechanics only (seconds per trial; claims nothing)

The Mamba block is pure PyTorch (a chunked parallel scan, no fused kernel): its CPU speed is not Mamba's, so the
latency column compares implementations, not architectures. Results: results/ssm/results.csv, MLflow experiment
"ssm", REPORT.md under results/analysis/ssm (with --analyze): the verdict per variant against attention and the
recall accuracy per context length (``eval_recall_acc_L<L>``).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

MIXERS = [dict(mixer="attention", attn_every=0), dict(mixer="mamba", attn_every=0),
          dict(mixer="hybrid", attn_every=2)]

EXPERIMENT = Experiment(
    name="ssm",
    preset="budget-10m",  # 10M params, V=16k, SwiGLU, RMSNorm, RoPE; dims from the solver, per mixer
    space=Space(variants=MIXERS),  # <- the intervention
    baseline=dict(mixer="attention"),
    hypothesis="a Mamba SSM (and an attention/SSM hybrid) matches attention within 5 % perplexity at a fixed "
               "parameter budget, but loses exact recall as the context grows",
    description="token mixer at fixed total params: attention / mamba / hybrid (attention every 2nd layer)",
    overrides=dict(evals="recall"),  # exact recall per context length, at the end of every run
    early_stopping=False, options=dict(seeds=3), tokens_per_param=20.0, lr_grid=(2.0, 4.0, 8.0),
    smoke=dict(train_tokens=65_536, eval_every_tokens=16_384),
)

if __name__ == "__main__":
    main(EXPERIMENT)
