"""isoFLOP: at a fixed compute budget, which model size reaches the lowest loss?

Hypothesis: at each FLOP budget loss has a minimum in N, and the compute-optimal N_opt grows ~ C^0.5 (Chinchilla).
3 budgets x the 4 sizes of the ladder family nearest each budget's 20-tokens-per-parameter size, D = C / (6 N),
one seed, LR from the size rule. N_opt is read only where the sampled sizes bracket the minimum (else n/a), with
a delta-method interval; the exponents use the bracketed budgets only.

    python sweeps/isoflop.py              # laptop: 12 runs, ~6 min here
    python sweeps/isoflop.py --dry-run
Results: results/isoflop/, results/analysis/isoflop/REPORT.md (+ points.csv).
"""

from __future__ import annotations

import math
import os
import runpy

from tinylm.config import Config
from tinylm.experiment import VARIANT, Experiment
from tinylm.sweep.__main__ import main

# the ladder's model family (shapes, data, 20 tokens per parameter at the grid's centre), from its own script
LADDER = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ladder.py"))
FAMILY, SHAPES, TOKENS_PER_PARAM, shape = (LADDER[k] for k in ("FAMILY", "SHAPES", "TOKENS_PER_PARAM", "shape"))
BUDGETS = {"smoke": (1e9, 3e9, 1e10), "laptop": (4e11, 1.2e12, 3.6e12), "full": (1e17, 3e17, 1e18)}
ISO_SHAPES = {  # more, finer shapes than the ladder's: each budget takes the 4 whose compute-optimal size is nearest
    "smoke": SHAPES["smoke"],
    "laptop": [(32, 1, 2), (32, 2, 2), (40, 2, 2), (48, 2, 3), (56, 2, 2), (64, 2, 4), (64, 3, 4), (80, 3, 5)],
    "full": SHAPES["full"],
}


def iso_points(scale: str) -> list[dict]:
    """Every (budget, size) run: D = C / (6 N), the size's LR rule (no LR tuning in this experiment)."""
    from tinylm.budget import num_params

    base = EXPERIMENT.base(scale)
    shapes = [(s, num_params(shape(base, *s))) for s in ISO_SHAPES[scale]]
    out = []
    for c in BUDGETS[scale]:
        n_star = math.sqrt(c / (6 * TOKENS_PER_PARAM))  # the 20-tokens-per-parameter size, the grid's centre
        near = sorted(shapes, key=lambda s: abs(math.log(s[1] / n_star)))[:4]
        for (d, layers, heads), n in sorted(near, key=lambda s: s[1]):
            cfg = shape(base, d, layers, heads).with_tokens_per_param(c / (6 * n) / n)
            out.append(dict(n_embd=d, n_layer=layers, n_head=heads, d_ff=4 * d, train_tokens=cfg.train_tokens,
                            eval_every_tokens=cfg.eval_every_tokens, warmup_tokens=cfg.warmup_tokens, lr=cfg.lr))
    return out


def report(table, sweep, base: Config, space: dict) -> None:
    from tinylm.analysis import ladder
    from tinylm.analysis.plan import corpus_tokens

    largest = base.replace(**max(space[VARIANT], key=lambda v: v["train_tokens"]))
    avail, _ = corpus_tokens(largest)
    epochs = largest.train_tokens / avail if avail == avail and avail else math.nan
    ladder.isoflop_report(sweep.uri(), sweep.name, os.path.join(sweep.root, "analysis", sweep.name), base.scale,
                          epochs)


EXPERIMENT = Experiment(
    name="isoflop", preset="medium", space=lambda scale: {VARIANT: iso_points(scale)},  # <- budgets x sizes
    hypothesis="loss has a minimum in N at each FLOP budget; N_opt grows ~ C^0.5 (Chinchilla)",
    description="isoFLOP: 3 budgets x 4 sizes, LR from the size rule",
    early_stopping=False,
    overrides=FAMILY["full"], laptop=FAMILY["laptop"], smoke=dict(FAMILY["smoke"], eval_every_tokens=4_096),
    after=report,
)

if __name__ == "__main__":
    main(EXPERIMENT)
