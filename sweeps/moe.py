"""Do experts pay at a fixed budget, counted as the parameters a token uses or as all parameters?

Hypothesis: at 10M parameters (V=16k, 35 % in the embedding) a top-k mixture of experts beats the dense model in
validation perplexity by more than 5 % at equal ACTIVE parameters (same FLOPs per token, more total parameters),
and is no better at equal TOTAL parameters (its experts are then smaller or its layers fewer).
Variants: dense, and E in {4, 8} experts x top-k in {1, 2}, each solved once at equal active and once at equal
total parameters (``budget_params``); the solver re-derives width, depth and each expert's d_ff
(tinylm.budget: the router and every expert counted; FLOPs per token from active parameters).

    python sweeps/moe.py --analyze        # laptop replica: 143k params, V=1536, 20 tokens/param, LR tuned per
                                          # variant, then 3 seeds each, verdict; routing balance per run
    python sweeps/moe.py --dry-run        # the 9 variants' shapes, total and active params, time
    python sweeps/moe.py --scale full     # 10M params, V=16k, 50M tokens per trial, on the attached Ray cluster
    python sweeps/moe.py --scale smoke    # mechanics only (seconds per trial; claims nothing)

Experts are SwiGLU, dropless (capacity_factor 0), with the Switch load-balancing loss (0.01) and the router
z-loss (0.001) in the training loss (validation loss is the cross-entropy alone); under Muon each expert's matrix
is orthogonalised on its own. Every run logs its routing balance (``moe_max_over_mean``, ``moe_load_cv``).
Results: results/moe/results.csv, MLflow experiment "moe", REPORT.md under results/analysis/moe (with --analyze).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

DENSE = dict(n_experts=0, top_k=1, budget_params="total")
MOE = [dict(n_experts=e, top_k=k, budget_params=b) for b in ("active", "total") for e in (4, 8) for k in (1, 2)]

EXPERIMENT = Experiment(
    name="moe",
    preset="budget-10m",  # 10M params, V=16k, SwiGLU, RMSNorm, RoPE; dims from the solver, per variant
    space=Space(variants=[DENSE, *MOE]),  # <- the intervention
    baseline=dict(n_experts=0),
    hypothesis="top-k experts beat dense by > 5 % perplexity at equal active params, and not at equal total params",
    description="MoE (E 4/8 x top-k 1/2) vs dense at equal active and at equal total params",
    early_stopping=False, options=dict(seeds=3), tokens_per_param=20.0, lr_grid=(2.0, 4.0, 8.0),
    smoke=dict(train_tokens=65_536, eval_every_tokens=16_384),
)

if __name__ == "__main__":
    main(EXPERIMENT)
