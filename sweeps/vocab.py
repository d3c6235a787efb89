"""Vocabulary size and head tying: 8k vs 16k x tied vs untied output head.

Hypothesis: on a small model the 16k vocabulary's shorter sequences do not pay for its larger embedding, and
tying the head saves parameters at no perplexity cost. Loss per token is not comparable across vocabularies:
compare val_bpb (bits per byte), which the runs log.

    python sweeps/vocab.py                # smoke: 1k vs 2k vocab at 1/4-width medium
    python sweeps/vocab.py --scale full   # 8k vs 16k on medium, 50M tokens

Results: results/vocab/results.csv, MLflow "vocab" (rank by val_bpb).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main


def space(scale: str) -> Space:
    sizes = {"smoke": [1024, 2048], "laptop": [1000, 2000]}.get(scale, [8000, 16000])  # laptop: V/8 (LAPTOP_RULES)
    return Space(vocab_size=sizes,  # <- the intervention
                 tie_embeddings=[True, False])


EXPERIMENT = Experiment(
    name="vocab", preset="medium", space=space, baseline={"tie_embeddings": True},
    hypothesis="8k beats 16k in bits per byte at this size; tying costs nothing",
    description="vocabulary 8k/16k x tied/untied head on medium",
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
