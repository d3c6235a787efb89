"""Post-hoc analysis of sweeps: pure functions over the trials DataFrame of ``tinylm.tracking.load_runs``.

- ``fits``: L(x) = E + A·x^-α and L(N, D) = E + A/N^α + B/D^β (Huber on log-loss, LSE form, L-BFGS from a grid,
  bootstrap CIs), compute-optimal allocation, isoFLOP minima (only when bracketed, delta-method CIs); ``scaling``
  picks each law's points from a sweep.
- ``pareto``: non-dominated trials of val loss vs latency / memory / params.
- ``decision``: the PRD rule on the verdict's CI (≥ 5 % better PPL at equal or lower latency and model memory,
  both measured alone after the sweep by ``tinylm.footprint``; a tie only when the CI lies inside ±5 %).
- ``stats``: mean ± std over seeds, two-way (configuration × seed) / paired / Welch t-tests, Holm, Spearman.
- ``cost``: device-hours and dollars from a price table.
- ``verdict``: effects vs the baseline with CIs (two-way t pooling the seeds), raw and Holm p, the seed noise
  floor, the exact minimum detectable effect, an equivalence reading and the regime (runs vs the bigram), as
  sentences; ``validity``: the diagnostics at the top of every
  report (scale claims, tokens/param, end-of-run slope, LR at a grid edge, refused fits).
- ``ladder``: best LR per size, held-out prediction with a prediction interval, isoFLOP minima with intervals.
- ``plan``: ``--dry-run`` (the trials a sweep would run, a measured time model, diagnostics).
- ``report``: ``build_report`` writes REPORT.md, CSVs and figures; ``python -m tinylm.analysis`` runs it on a store.

Nothing here imports mlflow: the CLI reaches the store through ``tinylm.tracking``, imported when it runs.
"""

from tinylm.analysis.cost import DEFAULT_PRICES, load_prices, sweep_cost, trial_costs
from tinylm.analysis.decision import Decision, decide
from tinylm.analysis.fits import (
    NotEnoughPoints,
    PowerLawFit,
    compute_optimal,
    fit_chinchilla,
    fit_power_law,
    isoflop_exponents,
    isoflop_minima,
)
from tinylm.analysis.pareto import pareto_front, pareto_fronts, pareto_mask
from tinylm.analysis.report import build_report
from tinylm.analysis.scaling import isoflop, scaling_fits
from tinylm.analysis.stats import (
    compare,
    group_over_seeds,
    hparam_correlations,
    prepare,
    task_correlations,
    tests_vs,
)

__all__ = ["DEFAULT_PRICES", "Decision", "NotEnoughPoints", "PowerLawFit", "build_report", "compare",
           "compute_optimal", "decide", "fit_chinchilla", "fit_power_law", "group_over_seeds", "hparam_correlations",
           "isoflop", "isoflop_exponents", "isoflop_minima", "load_prices", "pareto_front", "pareto_fronts",
           "pareto_mask", "prepare", "scaling_fits", "sweep_cost", "task_correlations", "tests_vs", "trial_costs"]
