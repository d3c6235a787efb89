"""The scaling ladder's model family, its grids and its reports: what ``sweeps/ladder.py`` (a tuned ladder with a
held-out largest size) and ``sweeps/isoflop.py`` (compute-optimal N at fixed FLOPs) declare their sweeps from.

- ``FAMILY``: the data and vocabulary of the family per scale; ``SHAPES``: the ladder's sizes (d, layers, heads;
  d_ff = 4 d); ``shape``: one size's Config fields;
- ``sizes(scale)``: the ladder's Space, one variant per size (its run length and LR come from the Experiment's
  ``tokens_per_param_per_point``: 20 tokens per parameter, the size rule's LR);
- ``isoflop_space(scale, base)``: ``BUDGETS`` x the 4 sizes of ``ISO_SHAPES`` nearest each budget's
  20-tokens-per-parameter size, D = C / (6 N), the size rule's LR;
- ``report`` / ``isoflop_report``: the Experiments' ``after`` hooks, which read the stored sweeps through
  ``tinylm.analysis.ladder``.

No Ray here (the dry run imports it).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

from tinylm.config import Config
from tinylm.sweep.experiment import SIZE_RULED
from tinylm.sweep.space import Space

TOKENS_PER_PARAM = 20.0  # the ladder's sizes, and the centre of each isoFLOP budget's sizes
LR_MULT = (0.5, 1.0, 2.0)  # the ladder's LR grid: multipliers of each size's rule LR (tinylm.sweep.run.tune_lr)
# (d_model, layers, heads): head size 16-20 at laptop, d/L 16-40; d_ff = 4 d (the seed presets' GPT-2 MLP)
SHAPES = {
    "smoke": [(32, 1, 2), (32, 2, 2), (48, 2, 3), (64, 2, 4)],
    "laptop": [(32, 1, 2), (40, 2, 2), (56, 2, 2), (64, 3, 4), (80, 4, 5)],
    "full": [(192, 3, 3), (256, 4, 4), (384, 6, 6), (512, 8, 8), (640, 10, 10)],
}
FAMILY = {"laptop": dict(dataset="sotu", vocab_size=384), "smoke": dict(dataset="sotu", vocab_size=384),
          "full": dict(vocab_size=8192)}
BUDGETS = {"smoke": (1e9, 3e9, 1e10), "laptop": (4e11, 1.2e12, 3.6e12), "full": (1e17, 3e17, 1e18)}  # FLOPs
ISO_SHAPES = {  # more, finer shapes than the ladder's: each budget takes the 4 whose compute-optimal size is nearest
    "smoke": SHAPES["smoke"],
    "laptop": [(32, 1, 2), (32, 2, 2), (40, 2, 2), (48, 2, 3), (56, 2, 2), (64, 2, 4), (64, 3, 4), (80, 3, 5)],
    "full": SHAPES["full"],
}


def shape(d: int, layers: int, heads: int) -> dict:
    """One size of the family as the Config fields it sets."""
    return dict(n_embd=d, n_layer=layers, n_head=heads, d_ff=4 * d)


def sizes(scale: str) -> Space:
    """The ladder: one variant per size of ``SHAPES[scale]``, smallest first."""
    return Space(variants=[shape(*s) for s in SHAPES[scale]])


def isoflop_space(scale: str, base: Config) -> Space:
    """Every (budget, size) run of the isoFLOP sweep at ``scale`` from ``base`` (the family's Config there): per
    budget C of ``BUDGETS``, the 4 sizes of ``ISO_SHAPES`` whose parameter count is nearest (in log) the
    20-tokens-per-parameter size sqrt(C / 120), each trained on D = C / (6 N) tokens with its run length, warmup
    and LR from the size rules (``Config.with_tokens_per_param``; no LR tuning in this experiment)."""
    from tinylm.budget import num_params

    counted = [(s, num_params(base.replace(**shape(*s)))) for s in ISO_SHAPES[scale]]
    out = []
    for c in BUDGETS[scale]:
        n_star = math.sqrt(c / (6 * TOKENS_PER_PARAM))  # the 20-tokens-per-parameter size, the grid's centre
        near = sorted(counted, key=lambda s: abs(math.log(s[1] / n_star)))[:4]
        for s, n in sorted(near, key=lambda s: s[1]):
            cfg = base.replace(**shape(*s)).with_tokens_per_param(c / (6 * n) / n)
            out.append(shape(*s) | {k: getattr(cfg, k) for k in SIZE_RULED})
    return Space(variants=out)


def epochs_of_largest(base: Config, space: Space, size: Callable[[dict], float]) -> float:
    """Epochs of the corpus that the grid point of ``space`` largest by ``size`` reads (nan: corpus size unknown)."""
    from tinylm.sweep.plan import corpus_tokens

    largest = base.replace(**max(Space.of(space).points(), key=size))
    avail, _ = corpus_tokens(largest)
    return largest.train_tokens / avail if avail == avail and avail else math.nan


def report(table, sweep, base: Config, space: Space) -> None:
    """sweeps/ladder.py's ``after``: once the seed runs end, the ladder's REPORT.md from the stored seed and tuning
    sweeps (``tinylm.analysis.ladder.report``), with the epochs the largest size (d x L) read."""
    from tinylm.analysis import ladder

    epochs = epochs_of_largest(base, space, lambda p: p["n_embd"] * p["n_layer"])
    ladder.report(sweep.uri(), sweep.name, os.path.join(sweep.root, "analysis", sweep.name), base.scale, epochs)


def isoflop_report(table, sweep, base: Config, space: Space) -> None:
    """sweeps/isoflop.py's ``after``: the isoFLOP REPORT.md and points.csv (``tinylm.analysis.ladder.isoflop_report``),
    with the epochs the longest run read."""
    from tinylm.analysis import ladder

    epochs = epochs_of_largest(base, space, lambda p: p["train_tokens"])
    ladder.isoflop_report(sweep.uri(), sweep.name, os.path.join(sweep.root, "analysis", sweep.name), base.scale,
                          epochs)


__all__ = ["BUDGETS", "FAMILY", "ISO_SHAPES", "LR_MULT", "SHAPES", "TOKENS_PER_PARAM", "isoflop_report",
           "isoflop_space", "report", "shape", "sizes"]
