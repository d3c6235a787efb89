"""Seeds until the answer is clear: decisions that stay valid when seeds are added after looking at the data.

A sweep run with ``--until-conclusive`` looks at its comparisons after ``n_first`` seeds per variant, then after
each added seed, up to ``n_max`` (a schedule fixed before the first look). Testing at a fixed α at every look would
inflate the error rate (a null effect crosses p < 0.05 at some look far more often than 5 % of the time), so the
family error α is spent across the looks with Lan & DeMets' O'Brien–Fleming-type function

    α(t) = 2 − 2 Φ(z_{1−α/2} / √t),   t = n / n_max   (α(1) = α),

and look k tests at ``α_k = α(t_k) − α(t_{k−1})``: little early, most at the last look. At each look, against the
baseline (the two-way variant × seed fit of ``tinylm.analysis.stats``, pooled over every variant):

- **different**: Holm over the comparisons at α_k (the family's smallest p below α_k / m, ...);
- **equivalent**: the (1 − 2 α_k / m) confidence interval of Δ PPL inside ± the margin, m comparisons (two
  one-sided tests at α_k / m: Bonferroni, so no comparison of the family is called equivalent by chance);
- **open**: neither; more seeds may decide it.

By the union bound over looks, the chance of any false "different" (no true effect) is at most Σ α_k = α, and of
any false "equivalent" (a true effect at or beyond the margin) at most α too, whatever the dependence between
looks: valid, conservative. ``tests/test_sequential.py`` measures both rates on synthetic sweeps.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.stats as sps

from tinylm.analysis import stats

ALPHA = 0.05


def spent(t: float, alpha: float = ALPHA) -> float:
    """α spent by information fraction ``t`` in (0, 1] (O'Brien–Fleming-type; 0 at t = 0, α at t = 1)."""
    if t <= 0:
        return 0.0
    return float(2 * sps.norm.sf(sps.norm.isf(alpha / 2) / math.sqrt(min(t, 1.0))))


def look_alpha(n: int, n_first: int, n_max: int, alpha: float = ALPHA) -> float:
    """The level of the look after ``n`` seeds, on the schedule ``n_first``, ``n_first + 1``, ..., ``n_max``."""
    if not n_first <= n <= n_max:
        raise ValueError(f"look after {n} seeds is outside the schedule {n_first}..{n_max}")
    before = spent((n - 1) / n_max, alpha) if n > n_first else 0.0
    return spent(n / n_max, alpha) - before


def pct(delta_loss: float | np.ndarray) -> float | np.ndarray:
    """Δ val loss (nats) -> relative perplexity change in percent."""
    return 100.0 * np.expm1(delta_loss)


def decide(y: np.ndarray, group: np.ndarray, seed: np.ndarray, baseline: object, alpha_k: float,
           margin_pct: float = 5.0) -> pd.DataFrame:
    """One look: every group against ``baseline`` on the loss ``y`` (one value per trial), at level ``alpha_k``.

    ``y`` may carry a trailing axis of simulations (trials, sims): the same code decides each column (the tests
    use that). Returns one row per compared group (per simulation): group, delta_pct, lo_pct, hi_pct (the
    (1 − 2 α_k / m) interval of m comparisons), p, p_holm, reading (different | equivalent | open), dof."""
    y = np.asarray(y, dtype=float)
    fit = stats.two_way_fit(np.asarray(group), np.asarray(seed).astype(str), y)
    others = [g for g in fit.groups if g != baseline]
    rows = []
    for g in others:
        est = fit.contrast(baseline, g)
        if est is None:
            m = se = np.full(y.shape[1:], np.nan)
        else:
            m, se = np.asarray(est[0], float), np.asarray(est[1], float)
        lo, hi, _, p = stats.t_test(m, se, fit.dof, level=1 - 2 * alpha_k / len(others))
        rows.append((g, m, lo, hi, p))
    if not rows:
        return pd.DataFrame(columns=["group", "delta_pct", "lo_pct", "hi_pct", "p", "p_holm", "reading", "dof"])
    p_holm = stats.holm(np.stack([np.atleast_1d(r[4]) for r in rows]))
    out = []
    for (g, m, lo, hi, p), ph in zip(rows, p_holm, strict=True):
        m, lo, hi, p = (np.atleast_1d(v) for v in (m, lo, hi, p))
        diff = ph < alpha_k
        equiv = (pct(lo) > -margin_pct) & (pct(hi) < margin_pct)
        reading = np.where(diff, "different", np.where(equiv, "equivalent", "open"))
        for i in range(len(m)):
            out.append({"group": g, "sim": i, "delta_pct": float(pct(m[i])), "lo_pct": float(pct(lo[i])),
                        "hi_pct": float(pct(hi[i])), "p": float(p[i]), "p_holm": float(ph[i]),
                        "reading": str(reading[i]), "dof": fit.dof})
    table = pd.DataFrame(out)
    return table.drop(columns="sim") if y.ndim == 1 else table


def conclusive(look: pd.DataFrame) -> bool:
    """Every comparison of one look decided (different or equivalent)."""
    return bool(len(look)) and bool((look["reading"] != "open").all())


def describe(look: pd.DataFrame, n: int, n_first: int, n_max: int, alpha_k: float, margin_pct: float) -> str:
    """The look as text: its level and schedule, then one line per comparison."""
    head = (f"look after {n} seeds per variant (schedule {n_first}..{n_max}, O'Brien-Fleming-type alpha spending; "
            f"this look at alpha {alpha_k:.4f}, equivalence margin ±{margin_pct:g} % PPL):")
    level = 100 * (1 - 2 * alpha_k / max(1, len(look)))
    lines = [f"  {r.group}: {r.delta_pct:+.2f} % PPL ({level:.1f} % CI {r.lo_pct:+.2f} to "
             f"{r.hi_pct:+.2f} %), p {r.p:.3g}, Holm p {r.p_holm:.3g}: {r.reading}" for r in look.itertuples()]
    return "\n".join([head, *lines])
