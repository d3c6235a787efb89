"""Is a 2.66x SwiGLU as good as 4x at a fixed parameter budget?

Hypothesis: at 10M parameters (V=16k, 35 % in the embedding) a SwiGLU MLP with expansion 2.66 matches 4.0 in
validation perplexity within 5 %, while its extra depth (more layers fit the budget) costs latency.
Every variant has the same total parameter count: the budget solver re-derives width, depth and d_ff.

    python sweeps/glu.py                  # smoke: ~0.66M params, V=4k, 4 variants, local Ray, minutes on a CPU
    python sweeps/glu.py --scale full     # 10M params, V=16k, 50M tokens per trial, on the attached Ray cluster
    python sweeps/glu.py --refine 20      # Optuna refinement of glu_factor and lr around the grid's best

Results: results/glu/results.csv, MLflow experiment "glu", Optuna study "glu"; python -m tinylm.analysis glu.
"""

from tinylm.experiment import Experiment, main

EXPERIMENT = Experiment(
    name="glu",
    preset="budget-10m",  # 10M params, V=16k, SwiGLU, RMSNorm, RoPE; dims from the solver
    space={"glu_factor": [2.0, 2.66, 3.0, 4.0]},  # <- the intervention
    baseline={"glu_factor": 4.0},
    hypothesis="SwiGLU 2.66x matches 4x within 5 % perplexity at a fixed parameter budget",
    description="GLU expansion factor at fixed total params (seed: 2.0 / 2.66 / 3.0 / 4.0)",
    smoke=dict(train_tokens=240_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
