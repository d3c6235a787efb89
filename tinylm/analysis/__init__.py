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
- ``report``: ``build_report`` writes REPORT.md, CSVs and figures; ``python -m tinylm.analysis`` runs it on a store.

Nothing here imports mlflow: the CLI reaches the store through ``tinylm.tracking``, imported when it runs.
Nothing is re-exported here: import a name from the module that defines it (``tinylm.analysis.fits``, ...).
"""
