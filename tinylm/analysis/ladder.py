"""A tuned scaling ladder with a held-out prediction, and isoFLOP minima with intervals (sweeps/ladder.py).

Pure functions over a trials table (``stats.prepare``-d):

- ``best_per_size``: per model size, the LR whose (seed-mean) final val loss is lowest among completed trials,
  with the grid it was picked from and whether it sits at the grid's edge;
- ``loglog_fit``: log L = c − α log N by least squares (the exponent of a pure power law, Kaplan-style: with five
  or fewer sizes a three-parameter E + A·N^−α fit has one or two degrees of freedom left, so it is reported but
  not trusted), with a t interval on α and a t *prediction* interval for a new size (the scatter of the points
  about the line is the noise a new point also has);
- ``heldout``: fit on every size but the largest, predict the largest, report the error and whether the 95 %
  prediction interval covers the measured loss;
- ``lr_exponent``: log lr* = a + b log N over the sizes' tuned LRs, b with its t interval (the rule assumes −1/3);
- ``ladder_points``: the sizes of a ladder run on one protocol (``tinylm.sweep.pipeline.tune_lr`` then seeds): per
  size the seed-mean loss at its tuned LR, joined with the LR grid and edge of its tuning runs;
- ``report`` / ``isoflop_report``: read the stored sweeps and write REPORT.md + points.csv (the after hooks of
  sweeps/ladder.py and sweeps/isoflop.py, ``tinylm.sweep.ladder.report`` / ``isoflop_report``, call them once
  their runs end);
- ``isoflop_table``: per FLOP budget a parabola of loss in log N, its argmin N_opt and tokens per parameter, with
  a delta-method interval, only where the minimum is bracketed by the sampled sizes (else n/a and why); then
  N_opt ∝ C^a across the bracketed budgets.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from tinylm.analysis import fits, validity
from tinylm.analysis.scaling import rounded

RULE_LR_EXPONENT = -1 / 3  # tinylm.config.laptop_lr: Porian et al.'s lr ~ N^(-1/3)


def best_per_size(df: pd.DataFrame) -> pd.DataFrame:
    """One row per size: N, D, tokens_per_param, best lr, loss (seed mean at that lr), the lr grid, n_done
    (completed trials at this size), edge ("low"/"high"/"")."""
    size = rounded(df["N"])  # one key per size: N to 3 significant figures, as the scaling fits group it
    keep = np.isfinite(df["loss"].to_numpy(float))
    if "status" in df.columns:
        keep &= (df["status"].astype(str) == "completed").to_numpy()
    done = df[keep]
    rows = []
    for key, g in done.groupby(size[keep].to_numpy(), sort=True):
        per_lr = g.groupby("lr")["loss"].mean()
        grid = sorted(float(x) for x in df.loc[size == key, "lr"].unique())
        best = float(per_lr.idxmin())
        edge = "low" if best == grid[0] and len(grid) > 1 else ("high" if best == grid[-1] and len(grid) > 1 else "")
        gb = g[g["lr"] == best]
        rows.append({"N": float(gb["N"].mean()), "D": float(gb["D"].mean()), "C": float(gb["C"].mean()),
                     "tokens_per_param": float(gb["D"].mean() / gb["N"].mean()), "lr": best,
                     "loss": float(per_lr.min()), "lr_grid": grid, "n_done": len(g), "edge": edge,
                     "n_embd": gb["n_embd"].iloc[0] if "n_embd" in gb else np.nan,
                     "n_layer": gb["n_layer"].iloc[0] if "n_layer" in gb else np.nan})
    return pd.DataFrame(rows).sort_values("N", kind="stable").reset_index(drop=True)


def ladder_points(seeds: pd.DataFrame, tuning: pd.DataFrame) -> pd.DataFrame:
    """Per size: the seed runs' mean loss at the size's tuned LR (``best_per_size`` of ``seeds``, where each size
    has one LR), its s.d. over seeds (``loss_sd``) and seed count (``n_seeds``), non-embedding N, and the LR grid
    its tuning runs tried with the edge flag (``best_per_size`` of ``tuning``; the grid of the seed runs when there
    are no tuning runs). Both tables ``stats.prepare``-d."""
    pts = best_per_size(seeds)
    if not len(pts):
        return pts
    done = seeds[np.isfinite(seeds["loss"].to_numpy(float)) & (seeds.get("status", "completed") == "completed")]
    size = rounded(done["N"])
    per = done.groupby(size.to_numpy())
    key = rounded(pts["N"]).to_numpy()
    pts["loss_sd"] = [float(per.get_group(k)["loss"].std(ddof=1)) if per.get_group(k)["loss"].size > 1 else np.nan
                      for k in key]
    pts["n_seeds"] = [int(per.get_group(k)["loss"].size) for k in key]
    pts["N_nonembed"] = [float(per.get_group(k)["N_nonembed"].mean()) for k in key]
    tuned = best_per_size(tuning) if len(tuning) else pd.DataFrame()
    if len(tuned):
        by = dict(zip(rounded(tuned["N"]).to_numpy(), tuned.to_dict("records"), strict=True))
        pts["lr_grid"] = [by[k]["lr_grid"] if k in by else g for k, g in zip(key, pts["lr_grid"], strict=True)]
        pts["edge"] = [by[k]["edge"] if k in by else "untuned" for k in key]
        pts["tuned_lr"] = [by[k]["lr"] if k in by else np.nan for k in key]
    return pts


def lowest_loss_lr(points: pd.DataFrame) -> pd.Series:
    """Per size, the LR of its lowest tuning loss (``tuned_lr``), else the LR its seeds ran at (no tuning runs)."""
    return points["tuned_lr"].fillna(points["lr"]) if "tuned_lr" in points else points["lr"]


def lr_exponent(points: pd.DataFrame, level: float = 0.95) -> dict | None:
    """log lr* = a + b log N over the sizes (>= 3) whose lowest-loss tuning LR (``tuned_lr``; the seeds' ``lr``
    without tuning runs) is interior: b, its t interval and n; None when fewer than 3 sizes qualify (an LR at its
    grid's edge is a bound, not an optimum). The optimum measured, not the LR the tie rule kept for the seeds."""
    p = points[points["edge"].astype(str) == ""] if "edge" in points else points
    if len(p) < 3:
        return None
    x, y = np.log(p["N"].to_numpy(float)), np.log(lowest_loss_lr(p).to_numpy(float))
    b, a = np.polyfit(x, y, 1)
    resid = y - (a + b * x)
    k = len(x)
    se = math.sqrt(float(resid @ resid) / (k - 2) / float(((x - x.mean()) ** 2).sum())) if k > 2 else math.nan
    t = float(sps.t.ppf(0.5 + level / 2, k - 2))
    return {"b": float(b), "ci": (float(b - t * se), float(b + t * se)), "n": k, "rule": RULE_LR_EXPONENT}


def degenerate_e(held: dict | None, points: pd.DataFrame) -> str | None:
    """Why the E + A·N^−α fit's irreducible loss E cannot be read as one (``None`` when it can): E <= 0 (a
    loss below zero nats at infinite N), or E within 2 % of the smallest measured loss (the curve is flat at
    once: A and α then fit noise)."""
    w = (held or {}).get("with_E")
    if not w:
        return None
    e = float(w["params"]["E"])
    lowest = float(points["loss"].min())
    if e <= 0:
        return f"the fitted irreducible loss E = {e:.3g} is not positive: the E term is degenerate here"
    if e >= 0.98 * lowest:
        return (f"the fitted irreducible loss E = {e:.3g} is within 2 % of the lowest measured loss {lowest:.3g}: "
                "the E term is degenerate here (the sizes do not reach the curve's bend)")
    return None


def loglog_fit(n: np.ndarray, loss: np.ndarray, level: float = 0.95) -> dict:
    """log L = c − α log N: α, its t interval, and what ``predict`` needs. Needs >= 3 points."""
    x, y = np.log(np.asarray(n, float)), np.log(np.asarray(loss, float))
    k = len(x)
    if k < 3:
        raise fits.NotEnoughPoints(f"a log-log fit with an interval needs >= 3 sizes; got {k}")
    slope, intercept = np.polyfit(x, y, 1)
    resid = y - (intercept + slope * x)
    s = math.sqrt(float(resid @ resid) / (k - 2))
    sxx = float(((x - x.mean()) ** 2).sum())
    t = float(sps.t.ppf(0.5 + level / 2, k - 2))
    se = s / math.sqrt(sxx)
    return {"alpha": -slope, "alpha_ci": (-slope - t * se, -slope + t * se), "c": intercept, "s": s, "n": k,
            "xbar": float(x.mean()), "sxx": sxx, "t": t, "level": level}


def predict(fit: dict, n0: float) -> tuple[float, float, float]:
    """(prediction, PI low, PI high) of the loss at ``n0`` from ``loglog_fit`` (a t prediction interval in log)."""
    x0 = math.log(n0)
    yhat = fit["c"] - fit["alpha"] * x0
    half = fit["t"] * fit["s"] * math.sqrt(1 + 1 / fit["n"] + (x0 - fit["xbar"]) ** 2 / fit["sxx"])
    return math.exp(yhat), math.exp(yhat - half), math.exp(yhat + half)


def heldout(points: pd.DataFrame, level: float = 0.95, with_e: bool = True) -> dict:
    """Fit on all sizes but the largest, predict the largest. Keys: fit, n_fit, N_heldout, measured, predicted,
    pi (lo, hi), error_pct ((predicted − measured) / measured), covered, flags (non-monotone fitted points,
    ``validity.check_fit``; an exponent outside ``fits.EXPONENT_RANGE``), and the E + A·N^−α fit on the same points
    when it converges (and ``with_e``)."""
    p = points.sort_values("N")
    if len(p) < 4:
        raise fits.NotEnoughPoints(f"a held-out check needs >= 4 sizes (3 to fit, 1 to predict); got {len(p)}")
    train, test = p.iloc[:-1], p.iloc[-1]
    fit = loglog_fit(train["N"].to_numpy(), train["loss"].to_numpy(), level)
    pred, lo, hi = predict(fit, float(test["N"]))
    measured = float(test["loss"])
    flags = validity.check_fit(train["N"].to_numpy(), train["loss"].to_numpy(), "N")
    if not fits.EXPONENT_RANGE[0] <= fit["alpha"] <= fits.EXPONENT_RANGE[1]:
        flags.append(f"implausible exponent α = {fit['alpha']:.3g} (LM studies: ~0.05-0.5)")
    out = {"fit": fit, "n_fit": len(train), "N_heldout": float(test["N"]), "measured": measured, "predicted": pred,
           "pi": (lo, hi), "error_pct": 100 * (pred - measured) / measured, "covered": bool(lo <= measured <= hi),
           "flags": flags}
    out["with_E"] = None
    if with_e:
        try:
            e_fit = fits.fit_power_law(train["N"].to_numpy(), train["loss"].to_numpy(), n_boot=0)
            out["with_E"] = {"params": e_fit.params, "predicted": float(e_fit.predict(float(test["N"]))),
                             "dof": len(train) - 3}
        except (fits.NotEnoughPoints, ValueError):
            pass
    return out


def isoflop_table(points: pd.DataFrame, rel_tol: float = 0.1, level: float = 0.95
                  ) -> tuple[list[dict], dict | None]:
    """Per budget (``fits.isoflop_minima`` with its delta-method interval): N_opt (parabola argmin in log N, NaN
    with a ``reason`` when not bracketed), tokens/param at N_opt and intervals on both; then the exponents of N_opt
    and D_opt in C (``fits.isoflop_exponents``; None with < 2 bracketed budgets). No budget with 3 sizes: ([], None)."""
    try:
        rows = fits.isoflop_minima(points["C"].to_numpy(float), points["N"].to_numpy(float),
                                   points["loss"].to_numpy(float), rel_tol=rel_tol, level=level)
    except fits.NotEnoughPoints:
        return [], None
    for r in rows:  # D_opt = C / (6 N_opt): tokens per parameter C / (6 N_opt^2), decreasing in N_opt
        ci = r["N_opt_ci"]
        r["tokens_per_param"] = r["D_opt"] / r["N_opt"]
        r["tpp_ci"] = (r["C"] / 6 / ci[1] ** 2, r["C"] / 6 / ci[0] ** 2) if ci else None
    try:
        exps = fits.isoflop_exponents(rows)
    except fits.NotEnoughPoints:
        exps = None
    return rows, exps


def ladder_markdown(points: pd.DataFrame, held: dict | None, scale: str, flags: list[str],
                    iso: tuple[list[dict], dict | None] | None = None, held_nonembed: dict | None = None,
                    lr_exp: dict | None = None) -> str:
    """The ladder's REPORT.md: claim, diagnostics, then the numbers (``held_nonembed``: the held-out fit on
    non-embedding N; ``lr_exp``: ``lr_exponent``)."""
    from tinylm.analysis.validity import SCALE_CLAIMS
    from tinylm.markdown_table import md_table

    lines = ["# Scaling ladder report", ""]
    if held is not None:
        f = held["fit"]
        lo, hi = held["pi"]
        lines += ["## Verdict", "",
                  f"L(N) = exp(c)·N^−α fitted on the {held['n_fit']} smallest sizes: α = {f['alpha']:.3f} "
                  f"(95 % CI {f['alpha_ci'][0]:.3f}-{f['alpha_ci'][1]:.3f}). Held-out largest size "
                  f"(N = {held['N_heldout']:,.0f}): predicted {held['predicted']:.4f}, "
                  f"measured {held['measured']:.4f}, "
                  f"error {held['error_pct']:+.2f} %; the 95 % prediction interval [{lo:.4f}, {hi:.4f}] "
                  f"{'covers' if held['covered'] else 'does NOT cover'} the measurement"
                  f" (target |error| <= 2 %: {'met' if abs(held['error_pct']) <= 2 else 'missed'}).",
                  ""]
        if held.get("with_E"):
            w = held["with_E"]
            lines += [f"With an irreducible term, E + A·N^−α on the same points "
                      f"({w['dof']} d.o.f. left: not trusted): "
                      f"E = {w['params']['E']:.3g}, α = {w['params']['alpha']:.3g}, "
                      f"predicted {w['predicted']:.4f}.", ""]
    if held_nonembed is not None:
        f = held_nonembed["fit"]
        lines += [f"On non-embedding parameters: α = {f['alpha']:.3f} (95 % CI {f['alpha_ci'][0]:.3f}-"
                  f"{f['alpha_ci'][1]:.3f}); held-out error {held_nonembed['error_pct']:+.2f} %, the prediction "
                  f"interval {'covers' if held_nonembed['covered'] else 'does NOT cover'} the measurement.", ""]
    if lr_exp is not None:
        lines += [f"Tuned LR vs N: lr* ∝ N^{lr_exp['b']:.3f} (95 % CI {lr_exp['ci'][0]:.3f} to {lr_exp['ci'][1]:.3f}, "
                  f"{lr_exp['n']} sizes with an interior optimum); the size rule assumes N^{lr_exp['rule']:.3f}.", ""]
    elif len(points):
        lines += ["Tuned LR vs N: not fitted (fewer than 3 sizes with an interior LR optimum).", ""]
    claim = SCALE_CLAIMS.get(scale, scale)
    if len(points):
        claim = (f"{scale.upper()} scale, sizes {points['N'].min():,.0f}-{points['N'].max():,.0f} params at "
                 f"{points['tokens_per_param'].median():.0f} tokens/param. It can claim: how loss scales with N over "
                 "this range for this family and data, and whether a fit on the smaller sizes predicts the largest. "
                 "It cannot claim: an exponent for other ranges (small-N curves bend), data or shapes.")
    lines += ["## What this run can claim", "", claim, "", "## Validity diagnostics", ""]
    lines += [f"- ⚠ {x}" for x in flags] or ["- nothing flagged"]
    if len(points):
        sd = points["loss_sd"] if "loss_sd" in points else pd.Series(np.nan, index=points.index)
        ne = points["N_nonembed"] if "N_nonembed" in points else pd.Series(np.nan, index=points.index)
        low = lowest_loss_lr(points)
        lines += ["", "## Best LR per size", "",
                  "The seeds run at the tuning's centre unless another LR beat it by more than one seed's noise "
                  "(tinylm.sweep.pipeline.pick_lr); the lowest-loss LR is the optimum measured.", "",
                  md_table([[r["N"], ne[i], r["n_embd"], r["n_layer"], r["D"], r["tokens_per_param"], r["lr"],
                             ", ".join(f"{v:.2g}" for v in r["lr_grid"]), low[i], r["edge"] or "inside",
                             r["n_done"], r["loss"], sd[i]] for i, r in points.iterrows()],
                           ["N", "N non-embedding", "d", "L", "tokens", "tokens/param", "LR of the seeds",
                            "LR grid tried", "lowest-loss LR", "lowest at edge?", "runs at that LR",
                            "val loss (mean)", "s.d. over seeds"]), ""]
    if iso is not None:
        rows, exps = iso
        lines += ["## isoFLOP minima", "",
                  md_table([[r["C"], r["n_points"], r["N_opt"],
                             f"{r['N_opt_ci'][0]:.3g}-{r['N_opt_ci'][1]:.3g}" if r["N_opt_ci"] else "n/a",
                             r["tokens_per_param"],
                             f"{r['tpp_ci'][0]:.3g}-{r['tpp_ci'][1]:.3g}" if r["tpp_ci"] else "n/a",
                             "yes" if r["bracketed"] else f"no: n/a ({r['reason']})"] for r in rows],
                           ["C (FLOPs)", "sizes", "N_opt", "95 % CI (delta method)", "tokens/param at N_opt",
                            "95 % CI", "bracketed"]), ""]
        if exps:
            left = f" ({exps['n_excluded']} unbracketed budget(s) left out)" if exps["n_excluded"] else ""
            lines.append(f"N_opt ∝ C^{exps['a']:.3f}, D_opt ∝ C^{exps['b']:.3f} over {exps['n_budgets']} bracketed "
                         f"budgets{left}.")
        else:
            lines.append("N_opt ∝ C^a: not fitted (fewer than 2 budgets with a bracketed minimum).")
    return "\n".join(lines) + "\n"


def ladder_flags(points: pd.DataFrame, held: dict | None, epochs: float = math.nan) -> list[str]:
    out = []
    lowest = lowest_loss_lr(points) if len(points) and points["edge"].astype(bool).any() else None  # edges only
    for i, r in points.iterrows():
        if r["edge"]:
            low = lowest[i]
            ran = "" if math.isclose(low, r["lr"], rel_tol=1e-6) else f" (the seeds ran at {r['lr']:.3g})"
            out.append(f"N={r['N']:,.0f}: the lowest-loss LR {low:.3g} is at the {r['edge']} edge of its grid "
                       f"{[float(f'{v:.3g}') for v in r['lr_grid']]}{ran}: the optimum may lie beyond it, the "
                       "tuned loss may be too high")
        if r["tokens_per_param"] < 19.5:
            out.append(f"N={r['N']:,.0f}: {r['tokens_per_param']:.1f} tokens per parameter (< 20)")
    if len(points) >= 3 and points["N"].is_unique:  # one best point per size (not isoFLOP's several per size)
        by_n = points.sort_values("N")
        x, y = np.log(by_n["N"].to_numpy(float)), np.log(by_n["loss"].to_numpy(float))
        local = -np.diff(y) / np.diff(x)
        if local.max() > 1.5 * max(local.min(), 1e-9):
            out.append("the log-log slope is not constant: local exponents " +
                       ", ".join(f"{v:.3f}" for v in local) + " from the smallest to the largest size (a pure power "
                       "law has one); extrapolation from the smaller sizes is biased")
    if held is not None:
        out += held["flags"]
        if held["fit"]["n"] < 4:
            out.append(f"the law is fitted on {held['fit']['n']} sizes: its interval is wide and its exponent fragile")
    if epochs == epochs and epochs > 1:
        out.append(f"data repeats: the largest size reads {epochs:.2f} epochs of the corpus (a data-constrained law)")
    return out


def _stored(uri: str, names: list[str]) -> pd.DataFrame:
    from tinylm import tracking
    from tinylm.analysis import stats

    frames = [tracking.load_runs(uri, sweep=n) for n in names]
    frames = [f for f in frames if len(f)]
    return stats.prepare(pd.concat(frames, ignore_index=True)) if frames else pd.DataFrame()


def _write(out_dir: str, points: pd.DataFrame, text: str) -> str:
    """``out_dir``/points.csv and REPORT.md; prints the report and returns its path."""
    import os

    os.makedirs(out_dir, exist_ok=True)
    points.to_csv(os.path.join(out_dir, "points.csv"), index=False)
    path = os.path.join(out_dir, "REPORT.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    return path


def report(uri: str, name: str, out_dir: str, scale: str, epochs: float = math.nan) -> str:
    """The ladder run on one protocol (``tinylm.sweep.pipeline.tune_lr`` per size, then seeds at the tuned LRs): reads
    the seed sweep ``name`` and its tuning sweeps (``name``-lr, -lr-x1, ...) from the store at ``uri``, writes
    ``out_dir``/REPORT.md and points.csv, prints the report and returns its path. ``epochs``: of the largest size."""
    from tinylm import tracking

    stored = [str(n) for n in dict.fromkeys(tracking.list_sweeps(uri)["sweep"])]
    tuning_names = [n for n in stored if n == f"{name}-lr" or n.startswith(f"{name}-lr-x")]
    seeds, tuning = _stored(uri, [name]), _stored(uri, tuning_names)
    pts = ladder_points(seeds, tuning) if len(seeds) else pd.DataFrame()
    held = held_ne = None
    if len(pts):
        try:
            held = heldout(pts)
            held_ne = heldout(pts.assign(N=pts["N_nonembed"]), with_e=False)
        except fits.NotEnoughPoints as e:
            print(f"no held-out check: {e}")
    flags = ladder_flags(pts, held, epochs) if len(pts) else ["no completed runs"]
    if len(pts) and (pts["n_seeds"] < 2).any():
        flags.append("fewer than 2 seeds at some sizes: the seed noise of a size is not measured there")
    if len(pts) and (pts["edge"] == "untuned").any():
        flags.append("some sizes have no LR tuning runs: their LR is the rule's, not an optimum")
    e_flag = degenerate_e(held, pts)
    if e_flag:
        flags.append(e_flag)
    text = ladder_markdown(pts, held, scale, flags, held_nonembed=held_ne,
                           lr_exp=lr_exponent(pts) if len(pts) else None)
    return _write(out_dir, pts, text)


def isoflop_report(uri: str, name: str, out_dir: str, scale: str, epochs: float = math.nan) -> str:
    """isoFLOP minima of the sweep ``name`` (budgets x sizes, one seed, LR by the size rule) to
    ``out_dir``/REPORT.md and points.csv; prints the report and returns its path."""
    df = _stored(uri, [name])
    pts = (df[df["status"].astype(str) == "completed"][["N", "D", "C", "loss", "lr"]].copy() if len(df)
           else pd.DataFrame(columns=["N", "D", "C", "loss", "lr"]))
    flags = ladder_flags(pts.assign(edge="", tokens_per_param=25.0), None, epochs)
    text = ladder_markdown(pd.DataFrame(), None, scale, flags, iso=isoflop_table(pts))
    return _write(out_dir, pts, text)
