"""Which optimizations buy speed or memory, and which cost loss? (seed: LLM training experiments & optimizations)

Hypothesis: execution toggles (torch.compile, bf16/fp16, activation checkpointing, gradient accumulation, the SDPA
kernel vs the math attention) change tokens/s and peak memory but not the final loss beyond noise; architecture
toggles (RMSNorm, RoPE, SwiGLU) change the loss. Every row is the GPT-2-style baseline plus ONE toggle; grad_accum
halves batch_size so tokens per step match. No ASHA, no kill rule, one trial at a time so timings compare.

    python sweeps/speed.py                  # smoke: medium preset shrunk, 24k tokens per row, local Ray (CPU)
    python sweeps/speed.py --scale full     # medium (seed baseline), 50M tokens per row, on the Ray cluster
    python sweeps/speed.py --seeds 3        # mean over seeds in the before/after table

Results: results/speed/speed_table.{md,csv} (before/after with % change vs the baseline row; the .md is also an
artifact of the sweep's MLflow parent run), results/speed/results.csv, MLflow experiment "speed".
"""

import os

from tinylm import ablation, layout
from tinylm.sweep import Experiment
from tinylm.sweep.cli import main

BASELINE = dict(compile=False, precision="fp32", activation_checkpointing=False, grad_accum=1, attention="sdpa",
                norm="layernorm", pos="learned", mlp="gelu")  # GPT-2 style, plain fp32 eager


def toggles(scale: str) -> list[dict]:
    b = EXPERIMENT.base(scale).batch_size
    rows = [{"compile": True}, {"precision": "bf16"}, {"precision": "fp16"}, {"activation_checkpointing": True},
            {"grad_accum": 2, "batch_size": b // 2},  # same tokens per optimizer step
            {"attention": "math"}, {"norm": "rmsnorm"}, {"pos": "rope"}, {"mlp": "swiglu"}]  # <- the interventions
    import torch

    if scale == "smoke" and not torch.cuda.is_available():  # DeepSpeed has no fp16 on CPU ("not supported")
        rows.remove({"precision": "fp16"})
    return rows


def report(table, sweep, base, space) -> None:
    """Before/after table per toggle: CSV + markdown in results/speed, the markdown on the MLflow parent run."""
    from tinylm.tracking import Tracker, list_sweeps

    rows = ablation.ablation_table(table, base, ablation.toggles_of(space))
    paths = ablation.write(rows, os.path.join(sweep.root, sweep.name), "speed_table",
                           title=f"speed ablation ({base.scale}, {base.train_tokens:,} tokens per row)")
    parents = list_sweeps(sweep.uri())
    parent = parents[parents.sweep_key == layout.sweep_key(sweep.name, sweep.root)].run_id.iloc[-1]
    tracker = Tracker(sweep.uri(), sweep.name)
    for path in paths.values():
        tracker.log_artifact(parent, path)
    tracker.log_metrics(parent, {f"{r.toggle}/{m}_pct": getattr(r, f"{m}_pct") for r in rows.itertuples()
                                 for m in ablation.METRICS if r.kind != "baseline"}, step=0)
    print(ablation.to_markdown(rows) + f"\nspeed table: {paths['md']} (+ .csv; MLflow parent run {parent})")


EXPERIMENT = Experiment(
    name="speed",
    preset="medium",  # the seed baseline: d=384, 6 layers, 8 heads, d_ff 1536
    space=lambda scale: ablation.space(BASELINE, toggles(scale)),
    baseline=BASELINE, overrides=BASELINE, early_stopping=False,
    options=dict(max_concurrent=1),  # every row runs to the end, alone (fair timings)
    hypothesis="execution toggles change speed/memory but not loss; architecture toggles change loss",
    description="one-at-a-time optimization ablation: compile, precision, act. checkpointing, grad accum, "
                "attention kernel, RMSNorm, RoPE, SwiGLU vs a GPT-2-style fp32 baseline",
    smoke=dict(train_tokens=24_576, eval_every_tokens=12_288, eval_tokens=4_096, warmup_tokens=2_048),
    after=report,
)

if __name__ == "__main__":
    main(EXPERIMENT)
