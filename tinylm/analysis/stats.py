"""Statistics over seeds: mean ± std per configuration, t-tests between configurations (two-way pooled, paired or
Welch; Holm's correction over a sweep's comparisons), Spearman correlations.

A configuration is every Config field except ``seed`` (and the ``name`` label): trials that differ only in the
seed are repeats of one configuration.
"""

from __future__ import annotations

from dataclasses import dataclass

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


@dataclass(frozen=True)
class TwoWay:
    """Least squares of a metric on configuration + seed (additive, no interaction) over every trial with a seed.

    Same-seed runs of different configurations share the data order, so the seed effect is removed as pairing
    does, but the residual pools the noise of every configuration: k configurations on n shared seeds give a
    comparison (k−1)(n−1) d.o.f. where the paired test has n−1. ``coef`` and ``s2`` carry a trailing axis when
    the fit was given several response columns at once (simulations reuse this exact code)."""

    groups: tuple  # configuration ids, in the design's column order
    design: np.ndarray  # (trials, p): configuration and seed indicators
    pinv: np.ndarray  # (p, trials) its pseudo-inverse
    coef: np.ndarray  # (p,) or (p, sims): a least-squares solution (estimable contrasts do not depend on which)
    s2: np.ndarray  # residual variance, () or (sims,)
    dof: int  # residual degrees of freedom

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def contrast(self, ga: object, gb: object) -> tuple[np.ndarray, np.ndarray] | None:
        """(estimate, standard error) of effect(gb) − effect(ga), or None when the data cannot identify it (the two
        configurations are not linked through shared seeds) or no residual d.o.f. remain."""
        if ga not in self.groups or gb not in self.groups or self.dof < 1:
            return None
        c = np.zeros(self.pinv.shape[0])
        c[self.groups.index(gb)] += 1.0
        c[self.groups.index(ga)] -= 1.0
        w = c @ self.pinv  # the estimate is w · y
        if not np.allclose(w @ self.design, c, atol=1e-8):  # c not in the row space of X: not estimable
            return None
        return c @ self.coef, np.sqrt(self.s2 * float(w @ w))


def two_way_fit(group: np.ndarray, seed: np.ndarray, y: np.ndarray) -> TwoWay:
    """``TwoWay`` of ``y`` (trials,) or (trials, sims) on configuration ids ``group`` and ``seed`` (trials,)."""
    gi, groups = pd.factorize(np.asarray(group))
    si, _ = pd.factorize(np.asarray(seed))
    n, k = len(gi), len(groups)
    x = np.zeros((n, k + si.max() + 1))
    x[np.arange(n), gi] = 1.0
    x[np.arange(n), k + si] = 1.0
    pinv = np.linalg.pinv(x)
    coef = pinv @ y
    resid = y - x @ coef
    dof = n - int(np.linalg.matrix_rank(x))
    s2 = (resid ** 2).sum(axis=0) / dof if dof > 0 else np.full(np.shape(y)[1:], np.nan)
    return TwoWay(tuple(groups.tolist()), x, pinv, coef, np.asarray(s2), dof)


def two_way(df: pd.DataFrame, metric: str) -> TwoWay | None:
    """``two_way_fit`` of ``metric`` over the trials with a value and a seed (configurations from ``group``); None
    when there is no seed column or fewer than three configurations (with two, it is the paired t-test)."""
    if "seed" not in df.columns:
        return None
    groups = df["group"] if "group" in df.columns else group_ids(df)
    v = pd.to_numeric(df[metric], errors="coerce")
    ok = v.notna() & df["seed"].notna()
    if groups[ok].nunique() < 3:
        return None
    return two_way_fit(groups[ok].to_numpy(), df.loc[ok, "seed"].astype(str).to_numpy(), v[ok].to_numpy(float))


def holm(p: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values along axis 0 (a family per column); NaN entries are not in the family and
    stay NaN. Reject where adjusted p < α: the family-wise error rate stays ≤ α under any dependence."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, axis=0, kind="stable")  # NaN last
    ps = np.take_along_axis(p, order, axis=0)
    m = np.isfinite(p).sum(axis=0)
    k = np.arange(p.shape[0]).reshape((-1,) + (1,) * (p.ndim - 1))
    adj = np.minimum(1.0, np.maximum.accumulate((m - k) * ps, axis=0))
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=0)
    return out


def difference(df: pd.DataFrame, metric: str, a: pd.Series, b: pd.Series, level: float = 0.95,
               pooled: TwoWay | None = None) -> dict:
    """The difference b − a of ``metric`` between the trials selected by masks ``a`` and ``b``, with its test and
    ``level`` confidence interval. The test, by preference:

    - ``two-way t``: ``pooled`` (``two_way`` of the sweep, ≥ 3 configurations) when each mask is one of its
      configurations and the seeds link the two: the contrast of the additive fit, t on the fit's residual d.o.f.;
    - ``paired t`` on the per-seed differences over the seeds both sides share, when there are at least two;
    - ``Welch t`` when each side has two values; else no test.

    Returns test, dof, n_a, n_b, n_pairs (shared seeds), mean_a, mean_b, delta (the test's estimate of b − a, else
    mean_b − mean_a), se, ci (on delta, or None), statistic, pvalue (NaN when there is no spread), sd_diff (s.d. of
    a same-seed difference: observed for paired, implied by the pooled variance for two-way)."""
    va = pd.to_numeric(df.loc[a, metric], errors="coerce")
    vb = pd.to_numeric(df.loc[b, metric], errors="coerce")
    out = {"test": "none", "dof": np.nan, "n_a": int(va.notna().sum()), "n_b": int(vb.notna().sum()),
           "n_pairs": 0, "mean_a": va.mean(), "mean_b": vb.mean(), "delta": float(vb.mean() - va.mean()),
           "se": np.nan, "ci": None, "statistic": np.nan, "pvalue": np.nan, "sd_diff": np.nan}
    if "seed" in df.columns:
        sa = va.groupby(df.loc[a, "seed"]).mean().dropna()
        sb = vb.groupby(df.loc[b, "seed"]).mean().dropna()
        common = sa.index.intersection(sb.index).sort_values()
        out["n_pairs"] = len(common)
        est = None
        if pooled is not None and "group" in df.columns:
            ga, gb = df.loc[a, "group"][va.notna()].unique(), df.loc[b, "group"][vb.notna()].unique()
            if len(ga) == 1 and len(gb) == 1:
                est = pooled.contrast(ga[0], gb[0])
        if est is not None:
            m, se = float(est[0]), float(est[1])
            out.update(test="two-way t", dof=float(pooled.dof), sd_diff=float(np.sqrt(2 * pooled.s2)))
            return _t_result(out, m, se, pooled.dof, level)
        if len(common) >= 2:
            d = (sb[common] - sa[common]).to_numpy(dtype=float)
            n, sd = len(d), float(d.std(ddof=1))
            out.update(test="paired t", dof=float(n - 1), sd_diff=sd)  # == ttest_rel(b, a)
            return _t_result(out, float(d.mean()), sd / np.sqrt(n), n - 1, level)
    if out["n_a"] >= 2 and out["n_b"] >= 2:
        x, y = vb.dropna().to_numpy(float), va.dropna().to_numpy(float)
        se2x, se2y = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
        se = float(np.sqrt(se2x + se2y))
        dof = (se2x + se2y) ** 2 / (se2x ** 2 / (len(x) - 1) + se2y ** 2 / (len(y) - 1)) if se > 0 else 1.0
        out.update(test="Welch t", dof=float(dof))  # == ttest_ind(x, y, equal_var=False)
        return _t_result(out, float(x.mean() - y.mean()), se, dof, level)
    return out


def t_test(m: np.ndarray, se: np.ndarray, dof: float, level: float = 0.95
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ci_lo, ci_hi, t, two-sided p) of an estimate ``m`` with standard error ``se`` on ``dof`` d.o.f., elementwise
    (arrays: simulations use the code the report uses)."""
    m, se = np.asarray(m, dtype=float), np.asarray(se, dtype=float)
    half = sps.t.ppf(0.5 + level / 2, dof) * se
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m / se
    return m - half, m + half, t, 2 * sps.t.sf(np.abs(t), dof)


def _t_result(out: dict, m: float, se: float, dof: float, level: float) -> dict:
    """Fill delta, se, ci, statistic and pvalue of ``out`` from ``t_test`` (no spread: statistic and p NaN)."""
    lo, hi, t, p = t_test(m, se, dof, level)
    spread = se > 1e-12 * max(1.0, abs(out["mean_a"]), abs(out["mean_b"]))  # rounding is not a spread
    out.update(delta=m, se=se, ci=(float(lo), float(hi)), statistic=float(t) if spread else np.nan,
               pvalue=float(p) if spread else np.nan)
    return out


def compare(df: pd.DataFrame, metric: str, a: pd.Series, b: pd.Series, pooled: TwoWay | None = None) -> dict:
    """Test whether ``metric`` differs between the trials selected by masks ``a`` and ``b`` (``difference``).
    Returns test, dof, n_a, n_b, n_pairs, mean_a, mean_b, diff (mean_b − mean_a), statistic, pvalue.
    """
    d = difference(df, metric, a, b, pooled=pooled)
    keys = ("test", "dof", "n_a", "n_b", "n_pairs", "mean_a", "mean_b")
    return {**{k: d[k] for k in keys}, "diff": d["mean_b"] - d["mean_a"], "statistic": d["statistic"],
            "pvalue": d["pvalue"]}


def tests_vs(df: pd.DataFrame, metric: str, reference: pd.Series) -> pd.DataFrame:
    """``compare`` every other configuration against the configuration(s) selected by ``reference``, with the
    sweep's ``two_way`` fit, and ``p_holm``: the p-values Holm-adjusted over these comparisons."""
    if "group" not in df.columns:
        df = prepare(df)
    pooled = two_way(df, metric)
    ref_groups = set(df.loc[reference, "group"])
    rows = []
    for gid, g in df.groupby("group", sort=True):
        if gid in ref_groups:
            continue
        r = compare(df, metric, reference, df["group"] == gid, pooled)
        rows.append({"label": g["label"].iloc[0], "metric": metric, **r})
    out = pd.DataFrame(rows)
    if len(out):
        out["p_holm"] = holm(out["pvalue"].to_numpy(float))
    return out


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
