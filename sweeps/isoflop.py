"""isoFLOP: at a fixed compute budget, which model size reaches the lowest loss?

Hypothesis: at each FLOP budget loss has a minimum in N, and the compute-optimal N_opt grows ~ C^0.5 (Chinchilla).
3 budgets x the 4 sizes of the ladder family nearest each budget's 20-tokens-per-parameter size, D = C / (6 N),
one seed, LR from the size rule. N_opt is read only where the sampled sizes bracket the minimum (else n/a), with
a delta-method interval; the exponents use the bracketed budgets only.

    python sweeps/isoflop.py              # laptop: 12 runs, ~6 min here
    python sweeps/isoflop.py --dry-run
Budgets, sizes and the report: tinylm.sweep.ladder (BUDGETS, ISO_SHAPES, isoflop_space, isoflop_report).
Results: results/isoflop/, results/analysis/isoflop/REPORT.md (+ points.csv).
"""

from tinylm.sweep import Experiment, ladder
from tinylm.sweep.cli import main

EXPERIMENT = Experiment(
    name="isoflop", preset="medium",
    space=lambda scale: ladder.isoflop_space(scale, EXPERIMENT.base(scale)),  # <- budgets x sizes
    hypothesis="loss has a minimum in N at each FLOP budget; N_opt grows ~ C^0.5 (Chinchilla)",
    description="isoFLOP: 3 budgets x 4 sizes, LR from the size rule",
    early_stopping=False,
    overrides=ladder.FAMILY["full"], laptop=ladder.FAMILY["laptop"],
    smoke=dict(ladder.FAMILY["smoke"], eval_every_tokens=4_096),
    after=ladder.isoflop_report,
)

if __name__ == "__main__":
    main(EXPERIMENT)
