"""Statistics over seeds: mean ± std per configuration, t-tests between configurations, Spearman correlations.

A configuration is every Config field except ``seed`` (and the ``name`` label): trials that differ only in the
seed are repeats of one configuration.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats as sps

from tinylm.analysis import columns

# Metrics summarised per configuration when present (eval_* columns are added after these, sorted).
METRICS = ("loss", "ppl", "final_val_loss", "final_val_ppl", "val_loss", "tokens", "params_total",
           "params_nonembed", "share_embed", "flops_per_token", "train_flops", "train_time_s", "tokens_per_s", "mfu",
           "peak_mem_mb", "latency_ms_b1_l128", "latency_ms_b1_l512", "infer_tokens_per_s", "eval_score")


def prepare(df: pd.DataFrame) -> pd.DataFrame:
    """Trials in a stable order with derived columns: ``loss``, ``ppl``, ``N``, ``N_nonembed``, ``D``, ``C``,
    ``share_embed`` (measured embedding share), ``label`` (from the varying config fields) and ``group`` (one
    integer per configuration, in order of first appearance)."""
    df = columns.sort_trials(df.copy())
    df["loss"] = columns.loss(df)
    df["ppl"] = columns.ppl(df)
    df["N"] = columns.params(df, "total")
    df["N_nonembed"] = columns.params(df, "nonembed")
    df["D"] = columns.tokens(df)
    df["C"] = columns.flops(df)
    df["share_embed"] = columns.embed_share(df)
    df["label"] = columns.labels(df)
    df["group"] = group_ids(df)
    return df


def group_ids(df: pd.DataFrame) -> pd.Series:
    """One integer per configuration (all config fields but seed), numbered in order of first appearance."""
    keys = columns.config_columns(df)
    if not keys:
        return pd.Series(0, index=df.index)
    key = df[keys].astype(str).apply("|".join, axis=1)
    return pd.Series(pd.factorize(key)[0], index=df.index)


def metric_columns(df: pd.DataFrame) -> list[str]:
    """Numeric metric columns present with at least one value: ``METRICS`` then the eval_* columns, sorted."""
    evals = sorted(c for c in df.columns if c.startswith("eval_") and c not in METRICS)
    out = []
    for c in [*METRICS, *evals]:
        if c in df.columns and pd.to_numeric(df[c], errors="coerce").notna().any():
            out.append(c)
    return out


def group_over_seeds(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean ± std over seeds per configuration.

    Args:
        df: trials from ``prepare`` (prepared here when ``group`` is missing).
        metrics: columns to summarise; default ``metric_columns(df)``.

    Returns:
        One row per configuration in order of first appearance: ``group, label``, the config fields, ``n``
        (trials), ``seeds`` (comma-separated), and ``<metric>_mean`` / ``<metric>_std`` (sample std, ddof=1:
        NaN for a single seed).
    """
    if "group" not in df.columns:
        df = prepare(df)
    metrics = metric_columns(df) if metrics is None else [m for m in metrics if m in df.columns]
    cfg = columns.config_columns(df)
    rows = []
    for gid, g in df.groupby("group", sort=True):
        row = {"group": gid, "label": g["label"].iloc[0]}
        row.update({c: g[c].iloc[0] for c in cfg})
        row["n"] = len(g)
        seeds = sorted(g["seed"].dropna().tolist()) if "seed" in g.columns else []
        row["seeds"] = ",".join(columns.fmt_value(s) for s in seeds)
        for m in metrics:
            v = pd.to_numeric(g[m], errors="coerce")
            row[f"{m}_mean"] = v.mean()
            row[f"{m}_std"] = v.std(ddof=1) if v.notna().sum() > 1 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def difference(df: pd.DataFrame, metric: str, a: pd.Series, b: pd.Series, level: float = 0.95) -> dict:
    """The difference b − a of ``metric`` between the trials selected by masks ``a`` and ``b``, with its test and
    ``level`` confidence interval: a paired t-test on the per-seed differences over the seeds both sides share
    when there are at least two, else Welch's t-test when each side has two values, else no test.
    Returns test, n_a, n_b, n_pairs, mean_a, mean_b, delta (the mean paired difference, else mean_b − mean_a),
    ci (on delta, or None), statistic, pvalue (NaN when the differences have no spread), sd_diff (paired only)."""
    va = pd.to_numeric(df.loc[a, metric], errors="coerce")
    vb = pd.to_numeric(df.loc[b, metric], errors="coerce")
    out = {"test": "none", "n_a": int(va.notna().sum()), "n_b": int(vb.notna().sum()), "n_pairs": 0,
           "mean_a": va.mean(), "mean_b": vb.mean(), "delta": float(vb.mean() - va.mean()), "ci": None,
           "statistic": np.nan, "pvalue": np.nan, "sd_diff": np.nan}
    if "seed" in df.columns:
        sa = va.groupby(df.loc[a, "seed"]).mean().dropna()
        sb = vb.groupby(df.loc[b, "seed"]).mean().dropna()
        common = sa.index.intersection(sb.index).sort_values()
        if len(common) >= 2:
            d = (sb[common] - sa[common]).to_numpy(dtype=float)
            n, m, sd = len(d), float(d.mean()), float(d.std(ddof=1))
            half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sd / np.sqrt(n)
            res = sps.ttest_1samp(d, 0.0) if sd > 0 else None  # == ttest_rel(b, a)
            out.update(test="paired t", n_pairs=n, delta=m, ci=(m - half, m + half), sd_diff=sd,
                       statistic=float(res.statistic) if res else np.nan, pvalue=float(res.pvalue) if res else np.nan)
            return out
    if out["n_a"] >= 2 and out["n_b"] >= 2:
        x, y = vb.dropna().to_numpy(float), va.dropna().to_numpy(float)
        res = sps.ttest_ind(x, y, equal_var=False)
        se2x, se2y = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        se = np.sqrt(se2x + se2y)
        dof = (se2x + se2y) ** 2 / (se2x ** 2 / (len(x) - 1) + se2y ** 2 / (len(y) - 1)) if se > 0 else 1.0
        half = float(sps.t.ppf(0.5 + level / 2, dof)) * se
        m = float(x.mean() - y.mean())
        out.update(test="Welch t", delta=m, ci=(m - half, m + half), statistic=float(res.statistic),
                   pvalue=float(res.pvalue))
    return out


def compare(df: pd.DataFrame, metric: str, a: pd.Series, b: pd.Series) -> dict:
    """Test whether ``metric`` differs between the trials selected by masks ``a`` and ``b`` (``difference``).
    Returns test, n_a, n_b, n_pairs, mean_a, mean_b, diff (mean_b − mean_a), statistic, pvalue.
    """
    d = difference(df, metric, a, b)
    keys = ("test", "n_a", "n_b", "n_pairs", "mean_a", "mean_b", "statistic", "pvalue")
    return {**{k: d[k] for k in keys[:6]}, "diff": d["mean_b"] - d["mean_a"], **{k: d[k] for k in keys[6:]}}


def tests_vs(df: pd.DataFrame, metric: str, reference: pd.Series) -> pd.DataFrame:
    """``compare`` every other configuration against the configuration(s) selected by ``reference``."""
    if "group" not in df.columns:
        df = prepare(df)
    ref_groups = set(df.loc[reference, "group"])
    rows = []
    for gid, g in df.groupby("group", sort=True):
        if gid in ref_groups:
            continue
        r = compare(df, metric, reference, df["group"] == gid)
        rows.append({"label": g["label"].iloc[0], "metric": metric, **r})
    return pd.DataFrame(rows)


def _eval_columns(df: pd.DataFrame) -> list[str]:
    """Per-task scores: eval_<task>_acc_norm where present, else eval_<task>_acc (eval_score is the mean)."""
    cols = sorted(c for c in df.columns if c.startswith("eval_") and c != "eval_score")
    tasks = {}
    for c in cols:
        if c.endswith("_acc_norm"):
            tasks[c[5:-9]] = c
        elif c.endswith("_acc"):
            tasks.setdefault(c[5:-4], c)
    return [tasks[t] for t in sorted(tasks) if pd.to_numeric(df[tasks[t]], errors="coerce").notna().sum() >= 3]


def task_correlations(df: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation between eval tasks across trials (a square matrix; empty with < 2 tasks)."""
    cols = _eval_columns(df)
    if len(cols) < 2:
        return pd.DataFrame()
    return df[cols].apply(pd.to_numeric, errors="coerce").corr(method="spearman", min_periods=3)


def hparam_correlations(df: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Spearman's ρ (and its p-value) between each numeric varying config field and each metric.

    Rows: hparam, metric, rho, pvalue, n — in config-field order, then metric order; pairs with fewer than
    three trials or a constant side are left out.
    """
    metrics = metrics or [m for m in ("loss", "ppl", "latency_ms_b1_l128", "peak_mem_mb", "tokens_per_s",
                                      "eval_score") if m in df.columns]
    rows = []
    for h in columns.varying_columns(df):
        hv = pd.to_numeric(df[h].map(lambda v: float(v) if isinstance(v, bool | np.bool_) else v),
                           errors="coerce")
        for m in metrics:
            mv = pd.to_numeric(df[m], errors="coerce")
            ok = hv.notna() & mv.notna()
            if ok.sum() < 3 or hv[ok].nunique() < 2 or mv[ok].nunique() < 2:
                continue
            res = sps.spearmanr(hv[ok], mv[ok])
            rows.append({"hparam": h, "metric": m, "rho": float(res.statistic), "pvalue": float(res.pvalue),
                         "n": int(ok.sum())})
    return pd.DataFrame(rows, columns=["hparam", "metric", "rho", "pvalue", "n"])
