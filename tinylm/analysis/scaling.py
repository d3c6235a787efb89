"""Scaling laws over a trials DataFrame: which points enter which fit.

- L(N) (total and non-embedding N: Hoffmann et al. count every parameter, Kaplan et al. drop embeddings) and
  L(D): one point per distinct value, the seed-mean loss, and when the other axis varies too the lowest loss
  over it (the best this sweep reached at that N, the closest it has to Kaplan's loss at convergence).
- L(C): the compute-efficient frontier, the Pareto set of (C, loss) over seed-mean points, as Kaplan et al.
  fit L(C_min).
- L(N, D): every completed trial (Hoffmann et al. fit all their runs).
- isoFLOP minima: runs grouped by FLOP budget, a parabola in log N per budget; N_opt only where the sampled sizes
  bracket its minimum (``fits.isoflop_minima``).

Only completed trials enter the fits: a trial stopped early has a schedule that did not finish.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tinylm.analysis import columns, fits, stats
from tinylm.analysis.pareto import pareto_mask

# fit name -> (x column from stats.prepare, symbol)
ONE_D = {"L(N)": ("N", "N"), "L(N_nonembed)": ("N_nonembed", "N_nonembed"), "L(D)": ("D", "D"), "L(C)": ("C", "C")}


def rounded(v: pd.Series) -> pd.Series:
    """Values equal to 3 significant figures share a key (tokens seen differ by a batch between runs)."""
    return v.map(lambda x: float(f"{x:.3g}") if np.isfinite(x) else np.nan)


def points(df: pd.DataFrame) -> pd.DataFrame:
    """Seed-mean (N, N_nonembed, D, C, loss) per (N, D) of the completed trials with a finite loss."""
    if "group" not in df.columns:
        df = stats.prepare(df)
    d = columns.completed(df)
    d = d[np.isfinite(d["loss"])]
    keys = pd.DataFrame({"kN": rounded(d["N"]), "kD": rounded(d["D"])}, index=d.index)
    cols = ["N", "N_nonembed", "D", "C", "loss"]
    g = d[cols].groupby([keys["kN"], keys["kD"]], dropna=False, sort=True).mean()
    return g.reset_index(drop=True)


def one_d_points(pts: pd.DataFrame, x: str) -> pd.DataFrame:
    """The points an L(x) fit uses (see the module docstring), sorted by x."""
    if x == "C":
        p = pts[pareto_mask(pts["C"].to_numpy(), pts["loss"].to_numpy())]
        return p.sort_values("C", kind="stable").reset_index(drop=True)
    key = rounded(pts[x])
    idx = pts["loss"].groupby(key).idxmin().dropna().astype(int)
    return pts.loc[idx].sort_values(x, kind="stable").reset_index(drop=True)


def scaling_fits(df: pd.DataFrame, *, n_boot: int = 200, seed: int = 0, level: float = 0.95
                 ) -> dict[str, fits.PowerLawFit | fits.NotEnoughPoints]:
    """Every law this sweep can support; the ones it cannot are returned as their ``NotEnoughPoints``.

    Keys: ``L(N)``, ``L(N_nonembed)``, ``L(D)``, ``L(C)``, ``L(N,D)``.
    """
    if "group" not in df.columns:
        df = stats.prepare(df)
    pts = points(df)
    out: dict[str, fits.PowerLawFit | fits.NotEnoughPoints] = {}
    for name, (col, sym) in ONE_D.items():
        p = one_d_points(pts, col)
        try:
            out[name] = fits.fit_power_law(p[col].to_numpy(), p["loss"].to_numpy(), name=sym, n_boot=n_boot,
                                           seed=seed, level=level)
        except fits.NotEnoughPoints as e:
            out[name] = e
    done = columns.completed(df)
    done = done[np.isfinite(done["loss"])]
    try:
        out["L(N,D)"] = fits.fit_chinchilla(done["N"].to_numpy(), done["D"].to_numpy(), done["loss"].to_numpy(),
                                            n_boot=n_boot, seed=seed, level=level)
    except fits.NotEnoughPoints as e:
        out["L(N,D)"] = e
    return out


def isoflop(df: pd.DataFrame, rel_tol: float = 0.1) -> tuple[list[dict], dict | fits.NotEnoughPoints]:
    """isoFLOP minima per budget and the exponents of N_opt, D_opt in C (or why they cannot be had).
    Raises ``NotEnoughPoints`` when no budget has three distinct N."""
    if "group" not in df.columns:
        df = stats.prepare(df)
    pts = points(df)
    rows = fits.isoflop_minima(pts["C"].to_numpy(), pts["N"].to_numpy(), pts["loss"].to_numpy(), rel_tol=rel_tol)
    try:
        exps: dict | fits.NotEnoughPoints = fits.isoflop_exponents(rows)
    except fits.NotEnoughPoints as e:
        exps = e
    return rows, exps
