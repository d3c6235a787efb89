"""How does context length trade perplexity against cost?

Hypothesis: at equal tokens per step, 512 beats 256 in perplexity with a modest throughput loss, while 1024 adds
little for a model this small (seed: 256 / 512 / 1024 on medium).

    python sweeps/seq.py                  # smoke: 64 / 128 / 256 at 1/4 width
    python sweeps/seq.py --scale full     # 256 / 512 / 1024 on medium, 50M tokens

Results: results/seq/results.csv, MLflow "seq"; the analysis draws fig_context (loss vs sequence length).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main


def space(scale: str) -> Space:
    lengths, batch_tokens = {"smoke": ((64, 128, 256), 1024), "laptop": ((64, 128, 256), 2048)}.get(
        scale, ((256, 512, 1024), 8192))
    # the batch holds the same number of tokens at every length, so runs differ only in context
    return Space(variants=[{"block_size": t, "batch_size": batch_tokens // t} for t in lengths])  # <-


EXPERIMENT = Experiment(
    name="seq", preset="medium", space=space, baseline={"block_size": 256},
    hypothesis="512 beats 256 at equal tokens; 1024 adds little at this size",
    description="sequence length 256/512/1024 at a fixed tokens-per-step budget",
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
