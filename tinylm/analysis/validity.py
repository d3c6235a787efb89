"""Validity diagnostics shown at the top of every report: can these trials support a claim at all?

- the scale and what it can claim (smoke: nothing; laptop: the effect on a replica; full: the experiment);
- tokens per parameter of every trial (scaling fits need >= 20; the PRD's GLU/embed experiments use 5);
- the end-of-run loss slope: d loss / d ln(tokens) over the last third of each run; a run whose loss still falls
  by more than ``UNDERTRAINED_NATS`` per doubling of tokens there is flagged (its ranking may change with more
  training). Where the LR decays over that third (cosine, linear, wsd) the slope includes the schedule's annealing
  and over-states what more tokens give (GLU replica: 0.32-0.35 nats per doubling within the run, 0.18-0.20
  measured by runs of twice the tokens, RESULTS.md 2026-12-04), and the flag says so;
- the seed noise floor (pooled within-configuration s.d.), and configurations run with one seed;
- a tuned LR at the edge of its grid (the optimum may lie outside it);
- data repeats (epochs > 1 of the corpus: the law measured is a data-constrained one);
- a scaling fit over non-monotone points or with an implausible exponent (refused by ``check_fit``).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tinylm.analysis import columns, fits

UNDERTRAINED_NATS = 0.05  # loss drop per doubling of tokens at the end of the run above which a run is flagged
SCALE_CLAIMS = {
    "smoke": ("SMOKE scale: mechanics only. Head size 8 and < 1 token per parameter: the numbers below test the "
              "pipeline, they say nothing about the hypothesis."),
    "laptop": ("LAPTOP scale: a scaled-down replica (tinylm.config.LAPTOP_RULES): embedding share, GLU factor "
               "and tying of the full experiment are kept, and its tokens per parameter unless the experiment sets "
               "a floor that keeps the regime (the table below gives the ratio trained; the verdict's regime line "
               "says whether the runs left the n-gram plateau); the hyperparameters follow size rules or the "
               "per-variant LR tuning. It can claim: the effect at this size (~0.1-1M params) with the stated "
               "intervals. It cannot claim: that the effect holds at the full size (10M+) — that is a prediction "
               "to test at full scale."),
    "full": ("FULL scale: the experiment as specified. Claims hold for this size, data and token budget."),
}


SLOPE_COLUMNS = ["run_id", "label", "slope", "drop_per_doubling", "n_evals", "lr_fall"]
SCHEDULE_FIELDS = ("schedule", "train_tokens", "warmup_tokens", "min_lr_ratio", "decay_frac")
LR_DECAYING = 0.9  # a tail over which the LR ends below this share of its value at the tail's start is annealing


def end_slopes(curves: pd.DataFrame | None, df: pd.DataFrame, tail: float = 1 / 3) -> pd.DataFrame:
    """Per run: d loss / d ln(tokens) fitted on the evals in the last ``tail`` of its tokens (>= 2 evals), the
    loss drop that implies per doubling of tokens, and ``lr_fall``: the LR at the last of those evals over the LR at
    the first, by the run's schedule (``tinylm.optim.lr_factor`` on its ``SCHEDULE_FIELDS``; NaN where ``df`` does
    not hold them). Columns: ``SLOPE_COLUMNS``."""
    rows = []
    if curves is None or not len(curves) or "run_id" not in df.columns:
        return pd.DataFrame(columns=SLOPE_COLUMNS)
    labels = dict(zip(df["run_id"], df.get("label", df["run_id"]), strict=False))
    records = {r["run_id"]: r for r in df.to_dict("records")}
    for rid, c in curves.groupby("run_id"):
        if rid not in labels:
            continue
        c = c.sort_values("tokens")
        c = c[(c["tokens"] > 0) & np.isfinite(c["value"])]
        if len(c) < 2:
            continue
        t_end = float(c["tokens"].max())
        last = c[c["tokens"] >= t_end * (1 - tail)]
        if len(last) < 2:
            last = c.tail(2)
        slope = float(np.polyfit(np.log(last["tokens"].to_numpy(float)), last["value"].to_numpy(float), 1)[0])
        rows.append({"run_id": rid, "label": labels[rid], "slope": slope, "drop_per_doubling": -slope * math.log(2),
                     "n_evals": len(last), "lr_fall": _lr_fall(records[rid], last["tokens"].iloc[0], t_end)})
    return pd.DataFrame(rows, columns=SLOPE_COLUMNS)


def _range(x: pd.Series) -> str:
    lo, hi = f"{x.min():.2g}", f"{x.max():.2g}"
    return lo if lo == hi else f"{lo}-{hi}"


def _lr_fall(row: dict, t0: float, t1: float) -> float:
    """LR at ``t1`` tokens over LR at ``t0`` under the run's schedule (``row``'s ``SCHEDULE_FIELDS``, the other
    Config fields at their defaults); NaN where ``row`` does not say which schedule it ran."""
    from tinylm.config import Config, ConfigError
    from tinylm.optim import lr_factor

    fields = {k: row[k] for k in SCHEDULE_FIELDS if k in row and pd.notna(row[k]) and str(row[k]) != ""}
    if "schedule" not in fields or "train_tokens" not in fields:
        return math.nan
    try:
        cfg = Config.from_dict(fields)
    except (ConfigError, TypeError, ValueError):
        return math.nan
    return lr_factor(cfg, int(t1)) / lr_factor(cfg, int(t0))


def lr_edges(done: pd.DataFrame) -> list[str]:
    """Configurations whose best LR (lowest seed-mean loss over an ``lr`` axis) is the smallest or largest tried."""
    if "lr" not in done.columns or pd.to_numeric(done["lr"], errors="coerce").nunique() < 2:
        return []
    keys = [c for c in columns.config_columns(done) if c not in ("lr", "warmup_tokens")]
    keys = [k for k in keys if done[k].astype(str).nunique() > 1]
    out = []
    groups = done.groupby(keys, sort=True) if keys else [((), done)]
    for key, g in groups:
        means = g.groupby("lr")["loss"].mean().dropna()
        if len(means) < 2:
            continue
        best = float(means.idxmin())
        if best in (float(means.index.min()), float(means.index.max())):
            where = "lowest" if best == float(means.index.min()) else "highest"
            name = ", ".join(f"{k}={v}" for k, v in zip(keys, key if isinstance(key, tuple) else (key,), strict=False))
            out.append(f"best LR {best:.3g} is the {where} of the grid {sorted(float(x) for x in means.index)}"
                       + (f" at {name}" if name else "") + ": the optimum may lie outside the grid")
    return out


def check_fit(x: np.ndarray, y: np.ndarray, name: str = "N") -> list[str]:
    """Reasons not to trust a decreasing power law through (x, y): loss rising with ``name`` anywhere (an
    implausible fitted exponent is ``PowerLawFit.warnings``)."""
    out = []
    order = np.argsort(np.asarray(x, float))
    ys = np.asarray(y, float)[order]
    ups = [i for i in range(1, len(ys)) if ys[i] > ys[i - 1]]
    if ups:
        xs = np.asarray(x, float)[order]
        out.append(f"non-monotone: loss rises from {name}={xs[ups[0] - 1]:.3g} to {xs[ups[0]]:.3g} "
                   f"({len(ups)} rise(s)); a power law in {name} does not describe these points")
    return out


def diagnostics(df: pd.DataFrame, done: pd.DataFrame, slopes: pd.DataFrame, noise_sd: float,
                sweep_name: str = "", fitted: dict | None = None) -> list[str]:
    """Every flag, most serious first (empty: nothing found). ``df`` are all trials, ``done`` the completed ones,
    both prepared by ``stats.prepare``; ``slopes`` is ``end_slopes(curves, done)``, ``noise_sd`` the first of
    ``verdict.noise_floor(done)`` (the report computes both once and shows them too)."""
    flags = []
    scales = sorted({str(s) for s in df["scale"].dropna()}) if "scale" in df.columns else []
    if "smoke" in scales:
        flags.append(SCALE_CLAIMS["smoke"])
    tpp = (done["D"] / done["N"]).replace([np.inf, -np.inf], np.nan).dropna()
    scaling = sweep_name.split("-")[0] in ("arch", "width", "depth", "data_scale", "ladder")
    need = 20.0 if scaling else 1.0
    if len(tpp) and tpp.min() < need:
        flags.append(f"undertrained by design: {int((tpp < need).sum())} trial(s) saw {tpp.min():.2g}-"
                     f"{tpp[tpp < need].max():.2g} tokens per parameter (< {need:g}"
                     + (": a scaling fit over them measures training speed, not capacity)" if scaling else ")"))
    if len(slopes):
        bad = slopes[slopes["drop_per_doubling"] > UNDERTRAINED_NATS]
        fall = bad["lr_fall"].astype(float)
        annealed, steady = bad[fall < LR_DECAYING], bad[~(fall < LR_DECAYING)]
        span = lambda b: f"{b['drop_per_doubling'].min():.3f}-{b['drop_per_doubling'].max():.3f}"  # noqa: E731
        if len(steady):
            flags.append(f"undertrained at the end: {len(steady)} of {len(slopes)} run(s) would still lose "
                         f"{span(steady)} nats of loss per doubling of tokens (threshold {UNDERTRAINED_NATS}); "
                         "rankings may change with longer runs")
        if len(annealed):
            decayed = _range(fall[fall < LR_DECAYING])
            flags.append(f"loss still falling at the end: {len(annealed)} of {len(slopes)} run(s) fell "
                         f"{span(annealed)} nats per doubling of tokens over their last third (threshold "
                         f"{UNDERTRAINED_NATS}) while their LR decayed to {decayed} of its value there: that slope "
                         "includes the schedule's annealing and over-states what more tokens give (about 2x on the "
                         "GLU replica, RESULTS.md 2026-12-04); runs of more tokens measure it. Rankings may change "
                         "with longer runs")
    if not noise_sd == noise_sd:
        flags.append("one seed per configuration: no noise floor, no test; no difference here is significant")
    if "seed" in done.columns and "group" in done.columns:
        single = done.groupby("group")["seed"].nunique()
        if noise_sd == noise_sd and (single < 2).any():
            flags.append(f"{int((single < 2).sum())} configuration(s) have a single completed seed")
    if "status" in df.columns:
        early = df["status"].astype(str).isin(["stopped_asha", "killed_rule", "failed", "diverged"])
        if early.any():
            flags.append(f"{int(early.sum())} trial(s) did not finish (stopped, killed, failed or diverged) and are "
                         "left out of the comparisons")
    flags += lr_edges(done)
    if "epochs" in df.columns:
        ep = pd.to_numeric(df["epochs"], errors="coerce")
        if (ep > 1).any():
            flags.append(f"data repeats: up to {ep.max():.2f} epochs of the corpus")
    for name, fit in (fitted or {}).items():
        if isinstance(fit, fits.PowerLawFit):
            for w in fit.warnings():
                flags.append(f"{name}: {w}")
            if name in ("L(N)", "L(D)"):
                from tinylm.analysis import scaling

                col = fit.variables[0]
                pts = scaling.one_d_points(scaling.points(df), col)
                for w in check_fit(pts[col].to_numpy(), pts["loss"].to_numpy(), col):
                    flags.append(f"{name} refused: {w}")
    return flags


def tokens_table(done: pd.DataFrame, slopes: pd.DataFrame) -> pd.DataFrame:
    """Per configuration: params, tokens, tokens per parameter and the mean end-of-run slope."""
    g = done.assign(tpp=done["D"] / done["N"]).groupby("label", sort=False)
    out = g.agg(params=("N", "mean"), tokens=("D", "mean"), tokens_per_param=("tpp", "mean"), n=("loss", "size"))
    if len(slopes):
        out = out.join(slopes.groupby("label")["drop_per_doubling"].mean().rename("drop_per_doubling"))
    else:
        out["drop_per_doubling"] = np.nan
    return out.reset_index()
