"""fp32 vs bf16 training: does mixed precision change the loss, and what does it buy?

Hypothesis: bf16 matches fp32's final loss within 1 % and is ~2x faster on GPUs; on a CPU it is slower for tiny
models (RESULTS.md, 2026-11-22: ~10x slower here), so read the throughput columns per device.

    python sweeps/precision.py            # smoke on this CPU
    python sweeps/precision.py --scale full --address auto    # on GPUs

Results: results/precision/results.csv, MLflow "precision" (tokens_per_s, peak_mem_mb, final_val_loss).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="precision", preset="medium",
    space=Space(precision=["fp32", "bf16"]),  # <- the intervention
    baseline={"precision": "fp32"},
    early_stopping=False,  # a throughput comparison: every row must finish
    hypothesis="bf16 matches fp32's loss within 1 %; the speed-up depends on the device",
    description="training precision fp32 vs bf16 on medium",
    smoke=dict(train_tokens=120_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
