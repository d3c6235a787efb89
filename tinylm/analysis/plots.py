"""The report's figures. Each function writes one PNG and returns its path, or None when its axis does not vary.

Figures are built on ``matplotlib.figure.Figure`` (Agg canvas, no pyplot state), so this works headless, in
threads and in tests, and importing it changes no global backend.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from tinylm.analysis import columns, fits, stats
from tinylm.analysis.pareto import FRONTS, pareto_mask
from tinylm.analysis.scaling import one_d_points, points

DPI = 120
AXIS_LABELS = {"N": "parameters N (total)", "N_nonembed": "non-embedding parameters", "D": "tokens D",
               "C": "training FLOPs C", "loss": "final val loss", "ppl": "final val perplexity"}


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _distinct(v: pd.Series) -> int:
    v = pd.to_numeric(v, errors="coerce").dropna()
    return int(np.unique(np.round(v.to_numpy(dtype=float), 6)).size)


def fig_scaling(df: pd.DataFrame, fitted: dict, out_dir: Path) -> Path | None:
    """Loss against N, D and C (log x) with the fitted law, one panel per axis that varies."""
    pts = points(df)
    panels = [(x, name) for x, name in (("N", "L(N)"), ("D", "L(D)"), ("C", "L(C)")) if _distinct(pts[x]) >= 2]
    if not panels:
        return None
    fig = Figure(figsize=(4.2 * len(panels), 3.6))
    for i, (x, name) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        done = columns.completed(df)
        ax.scatter(done[x], done["loss"], s=12, color="0.6", label="trials")
        used = one_d_points(pts, x)
        ax.scatter(used[x], used["loss"], s=28, color="C0", label="fit points")
        fit = fitted.get(name)
        if isinstance(fit, fits.PowerLawFit):
            grid = np.geomspace(used[x].min(), used[x].max(), 100)
            ax.plot(grid, fit.predict(grid), color="C3", label=f"E={fit.params['E']:.3g}, "
                                                               f"α={fit.params['alpha']:.3g}")
        else:
            ax.set_title("not enough points to fit", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel(AXIS_LABELS[x])
        ax.set_ylabel(AXIS_LABELS["loss"])
        ax.legend(fontsize=7)
    return _save(fig, out_dir / "fig_scaling.png")


def _vary(df: pd.DataFrame, x: str, y: str, path: Path, xlabel: str, ylabel: str, xlog: bool = False) -> Path:
    """Mean ± std over seeds of ``y`` against ``x``, one line per setting of the other varying fields."""
    others = [c for c in columns.varying_columns(df) if c != x]
    series = columns.labels(df, others) if others else pd.Series("", index=df.index)
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for i, (lab, g) in enumerate(df.groupby(series, sort=True)):
        xv = pd.to_numeric(g[x].map(lambda v: float(v) if isinstance(v, bool | np.bool_) else v), errors="coerce")
        agg = pd.to_numeric(g[y], errors="coerce").groupby(np.round(xv, 6)).agg(["mean", "std"]).sort_index()
        ax.errorbar(agg.index, agg["mean"], yerr=agg["std"].fillna(0), marker="o", capsize=3, color=f"C{i % 10}",
                    label=lab or None)
    if xlog:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if series.nunique() > 1:
        ax.legend(fontsize=7)
    return _save(fig, path)


def fig_context(df: pd.DataFrame, out_dir: Path) -> Path | None:
    if "block_size" not in columns.varying_columns(df):
        return None
    return _vary(df, "block_size", "loss", out_dir / "fig_context.png", "context length (block_size)",
                 AXIS_LABELS["loss"], xlog=True)


def fig_glu(df: pd.DataFrame, out_dir: Path) -> Path | None:
    if "glu_factor" not in columns.varying_columns(df):
        return None
    return _vary(df, "glu_factor", "ppl", out_dir / "fig_glu.png", "MLP expansion (glu_factor)", AXIS_LABELS["ppl"])


def fig_embed_share(df: pd.DataFrame, out_dir: Path) -> Path | None:
    """PPL against the embedding share of the parameters (per configuration, mean ± std over seeds)."""
    if "share_embed" not in df.columns or _distinct(np.round(df["share_embed"], 3)) < 2:
        return None
    g = stats.group_over_seeds(df, ["share_embed", "ppl"]).sort_values("share_embed_mean", kind="stable")
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    ax.errorbar(g["share_embed_mean"], g["ppl_mean"], yerr=g["ppl_std"].fillna(0), marker="o", capsize=3)
    ax.set_xlabel("embedding share of parameters")
    ax.set_ylabel(AXIS_LABELS["ppl"])
    return _save(fig, out_dir / "fig_embed_share.png")


def fig_curves(df: pd.DataFrame, curves: pd.DataFrame | None, out_dir: Path, max_labels: int = 12) -> Path | None:
    """Validation loss against tokens seen, one line per run, coloured by configuration."""
    if curves is None or not len(curves):
        return None
    lab = dict(zip(df["run_id"].astype(str), df["label"], strict=False)) if "run_id" in df.columns else {}
    order = {r: i for i, r in enumerate(df["run_id"].astype(str))} if "run_id" in df.columns else {}
    colour = {g: f"C{i % 10}" for i, g in enumerate(dict.fromkeys(df["label"]))} if "label" in df.columns else {}
    c = curves.assign(run_id=curves["run_id"].astype(str))
    fig = Figure(figsize=(6.0, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    seen: set[str] = set()
    for run_id in sorted(c["run_id"].unique(), key=lambda r: (order.get(r, len(order)), r)):
        g = c[c["run_id"] == run_id].sort_values("tokens", kind="stable")
        label = lab.get(run_id, run_id)
        show = label not in seen and len(seen) < max_labels
        seen.add(label)
        ax.plot(g["tokens"], g["value"], color=colour.get(label, "0.5"), lw=1, alpha=0.8, marker=".", ms=3,
                label=label if show else None)
    ax.set_xscale("log")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("val loss")
    ax.legend(fontsize=6)
    return _save(fig, out_dir / "fig_curves.png")


def fig_benchmarks(grouped: pd.DataFrame, out_dir: Path, max_configs: int = 12) -> Path | None:
    """Per-task eval accuracy per configuration (mean ± std over seeds)."""
    tasks = [c[:-5] for c in grouped.columns if c.startswith("eval_") and c.endswith("_mean")
             and c != "eval_score_mean" and c[:-5].endswith(("_acc", "_acc_norm"))]
    tasks = [t for t in tasks if not (t.endswith("_acc") and f"{t}_norm" in tasks)]
    tasks = [t for t in tasks if grouped[f"{t}_mean"].notna().any()]
    if not tasks:
        return None
    g = grouped.head(max_configs)
    fig = Figure(figsize=(max(5.0, 1.2 * len(tasks) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(g)
    xs = np.arange(len(tasks))
    for i, (_, row) in enumerate(g.iterrows()):
        means = [row[f"{t}_mean"] for t in tasks]
        errs = [0 if pd.isna(row[f"{t}_std"]) else row[f"{t}_std"] for t in tasks]
        ax.bar(xs + i * width - 0.4 + width / 2, means, width, yerr=errs, capsize=2, color=f"C{i % 10}",
               label=row["label"])
    ax.set_xticks(xs, [t[5:] for t in tasks], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=6)
    return _save(fig, out_dir / "fig_benchmarks.png")


def fig_pareto(df: pd.DataFrame, grouped: pd.DataFrame, name: str, out_dir: Path) -> Path | None:
    """Trials (grey), configurations (means over seeds) and their Pareto front of val loss against one cost
    (``pareto.FRONTS[name]``)."""
    col, xlabel = FRONTS[name]
    xm = f"{col}_mean"
    if col not in df.columns or xm not in grouped.columns or "loss_mean" not in grouped.columns:
        return None
    x = pd.to_numeric(df[col], errors="coerce")
    ok = x.notna() & df["loss"].notna()
    g = grouped[grouped[xm].notna() & grouped["loss_mean"].notna()]
    if not len(g):
        return None
    front = g[pareto_mask(g[xm].to_numpy(), g["loss_mean"].to_numpy())].sort_values([xm, "loss_mean"])
    fig = Figure(figsize=(5.6, 4.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(x[ok], df.loc[ok, "loss"], s=10, color="0.7", label="trials")
    ax.scatter(g[xm], g["loss_mean"], s=22, color="C0", label="configurations (mean)")
    ax.step(front[xm], front["loss_mean"], where="post", color="C3", marker="o", label="Pareto front")
    for _, r in front.iterrows():
        ax.annotate(str(r["label"]), (r[xm], r["loss_mean"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
    lo, hi = g[xm].min(), g[xm].max()
    if lo > 0 and hi / lo > 20:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(AXIS_LABELS["loss"])
    ax.legend(fontsize=7)
    return _save(fig, out_dir / f"fig_pareto_{name}.png")
