"""A tiny real sweep for the tests (debug preset, seconds per trial): one good LR and three bad ones, so ASHA
has something to stop. Run as a script like any sweep: python tests/tiny_sweep.py --results DIR.
TINY_SPACE='{"lr": [...]}' replaces the grid (the fault-tolerance tests inject a diverging LR that way)."""

import json
import os

from tinylm.sweep import Experiment
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="tiny", preset="debug",
    space=json.loads(os.environ.get("TINY_SPACE", "null")) or {"lr": [3e-3, 1e-6, 2e-6, 3e-6]},  # <- 1 good LR
    baseline={"lr": 3e-3},
    hypothesis="a 3e-3 LR beats 1e-6..3e-6 (a test fixture)",
    description="test fixture sweep",
    smoke=dict(train_tokens=16_384, eval_every_tokens=2_048, eval_tokens=2_048),
)

if __name__ == "__main__":
    main(EXPERIMENT)
