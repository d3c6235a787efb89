"""BPE vs character-level tokenization at the same model and training bytes.

Hypothesis: BPE reaches lower bits per byte than characters for the same compute, because each token carries
~4 bytes of text. Token-level losses are not comparable: rank by val_bpb.

    python sweeps/tokenizer.py            # smoke
    python sweeps/tokenizer.py --scale full

Results: results/tokenizer/results.csv, MLflow "tokenizer" (val_bpb).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main


def space(scale: str) -> Space:
    bpe = {"smoke": 2048, "laptop": 1000}.get(scale, 8000)  # laptop: V/8 (LAPTOP_RULES)
    return Space(variants=[{"tokenizer": "bpe", "vocab_size": bpe},  # <- the intervention
                           {"tokenizer": "char", "vocab_size": 512}])


EXPERIMENT = Experiment(
    name="tokenizer", preset="medium", space=space, baseline={"tokenizer": "bpe"},
    hypothesis="BPE beats characters in bits per byte at equal compute",
    description="byte-level BPE vs character-level tokenizer on medium",
    early_stopping=False,  # losses are in different units: ASHA and the kill rule would compare tokens to characters
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
