"""Width scaling (seed 001): 128 / 256 / 384 / 512 hidden at the medium depth, head size 64.

Hypothesis: loss falls as a power law in non-embedding parameters as width grows at fixed depth and tokens;
fitting L(N) across this sweep and depth.py tells whether depth or width buys more per parameter.

    python sweeps/width.py                # smoke: 32..128 wide, 3 layers
    python sweeps/width.py --scale full   # 128..512 wide, 6 layers, 50M tokens

Results: results/width/results.csv, MLflow "width"; python -m tinylm.analysis width fits L(N).
"""

from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main


def space(scale: str) -> Space:
    div, head = (4, 16) if scale in ("smoke", "laptop") else (1, 64)
    return Space(variants=[{"n_embd": w // div, "n_head": w // div // head, "d_ff": 4 * w // div}  # <-
                           for w in (128, 256, 384, 512)])


EXPERIMENT = Experiment(
    name="width", preset="medium", space=space, baseline={"n_head": 6},  # 384 wide = the medium baseline
    hypothesis="loss is a power law in non-embedding params along width at fixed depth",
    description="hidden size 128/256/384/512 at 6 layers, head size 64 (seed 001)",
    # a scaling sweep: at laptop scale each width trains on 20 tokens per parameter, its LR/warmup by the size rules
    tokens_per_param_per_point={"laptop": 20},
    # a scaling fit needs every size trained to the end: early stopping would drop the models that learn
    # slowest at first (the big ones) and bias the exponent
    early_stopping=False,
    smoke=dict(train_tokens=200_000, eval_every_tokens=40_000, lr=3e-3),
)

if __name__ == "__main__":
    main(EXPERIMENT)
