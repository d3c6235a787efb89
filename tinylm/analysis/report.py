"""``build_report``: one sweep's trials -> REPORT.md, results_summary.csv, table_main.csv and figures.

The report is a function of the data only (no clock, stable ordering), so rebuilding it from the same store
gives the same files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tinylm.analysis import columns, cost, decision, fits, pareto, plots, scaling, stats

STATUSES = ("completed", "stopped_asha", "killed_rule", "failed", "diverged", "interrupted")
# Metrics shown in the report's main table (all metric columns go to table_main.csv).
MAIN_METRICS = ("loss", "ppl", "params_total", "share_embed", "tokens_per_s", "latency_ms_b1_l128", "peak_mem_mb",
                "eval_score")


def _f(v: Any, digits: int = 4) -> str:
    if v is None:
        return ""
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return "n/a"
        return f"{v:.{digits}g}"
    return str(v)


def md_table(rows: list[list[Any]], header: list[str]) -> str:
    """A GitHub-flavoured markdown table (no tabulate dependency); '|' in cells is escaped."""
    def cell(v: Any) -> str:
        return _f(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return _f(mean) if pd.isna(std) else f"{_f(mean)} ± {_f(std, 2)}"


def _unique(df: pd.DataFrame, col: str) -> list[str]:
    if col not in df.columns:
        return []
    return sorted({str(v) for v in df[col].dropna() if str(v)})


def _setup(df: pd.DataFrame, sweep: str, meta: Mapping[str, Any]) -> list[str]:
    hyp = meta.get("hypothesis") or ", ".join(_unique(df, "hypothesis")) or "(none recorded)"
    desc = meta.get("description") or "(none recorded)"
    counts = df["status"].astype(str).value_counts() if "status" in df.columns else pd.Series({"unknown": len(df)})
    order = [s for s in STATUSES if s in counts] + sorted(s for s in counts.index if s not in STATUSES)
    axes = columns.varying_columns(df)
    lines = ["## Setup", "", f"- **Sweep:** `{sweep}`", f"- **Hypothesis:** {hyp}", f"- **Description:** {desc}",
             f"- **Trials:** {len(df)} (" + ", ".join(f"{s}: {counts[s]}" for s in order) + ")",
             f"- **Git SHA:** {', '.join(_unique(df, 'git_sha')) or 'n/a'}",
             f"- **Devices:** {', '.join(sorted({str(d) for d in columns.hardware(df).dropna()})) or 'n/a'}",
             f"- **Seeds:** {', '.join(columns.fmt_value(s) for s in sorted(df['seed'].dropna().unique()))}"
             if "seed" in df.columns else "- **Seeds:** n/a"]
    for a in axes:
        vals = sorted(df[a].dropna().unique().tolist(), key=lambda v: (str(type(v)), v))
        lines.append(f"- **Axis `{a}`:** " + ", ".join(columns.fmt_value(v) for v in vals))
    return lines + [""]


def _best(grouped: pd.DataFrame) -> list[str]:
    lines = ["## Best configuration", ""]
    if "loss_mean" not in grouped.columns or grouped["loss_mean"].isna().all():
        return lines + ["No trial has a validation loss.", ""]
    b = grouped.loc[grouped["loss_mean"].idxmin()]
    lines.append(f"**{b['label']}**: val loss {_pm(b['loss_mean'], b['loss_std'])}, "
                 f"PPL {_pm(b.get('ppl_mean'), b.get('ppl_std'))} over {b['n']} trial(s) "
                 f"(seeds {b['seeds'] or 'n/a'}).")
    cfg = columns.config_columns(grouped)
    lines += ["", "<details><summary>full config</summary>", "",
              md_table([[c, b[c]] for c in cfg], ["field", "value"]), "", "</details>", ""]
    return lines


def _results(grouped: pd.DataFrame, tests: pd.DataFrame, base_label: str) -> list[str]:
    shown = [m for m in MAIN_METRICS if f"{m}_mean" in grouped.columns]
    rows = [[r["label"], r["n"], *[_pm(r[f"{m}_mean"], r[f"{m}_std"]) for m in shown]] for _, r in grouped.iterrows()]
    lines = ["## Results (mean ± std over seeds)", "", md_table(rows, ["config", "n", *shown]), "",
             "All metrics: `table_main.csv`; every trial: `results_summary.csv`.", ""]
    if len(tests):
        lines += [f"Val loss against the baseline ({base_label}): paired t-test over shared seeds, Welch's t-test "
                  "when unpaired.", "",
                  md_table([[r["label"], r["test"], r["n_pairs"] or f"{r['n_a']}/{r['n_b']}", r["diff"],
                             r["statistic"], r["pvalue"]] for _, r in tests.iterrows()],
                           ["config", "test", "pairs (or n)", "Δ loss", "t", "p"]), ""]
    return lines


def _with_ci(o: dict, key: str) -> str:
    ci = o.get(f"{key}_ci")
    return _f(float(o[key])) + (f" [{_f(float(ci[0]), 3)}, {_f(float(ci[1]), 3)}]" if ci is not None else "")


def _laws(fitted: dict, df: pd.DataFrame) -> list[str]:
    lines = ["## Scaling laws", "",
             "Huber loss (δ = 1e-3) on log-loss, log-sum-exp parameterisation, L-BFGS from a grid of "
             "initialisations (Hoffmann et al. 2022; Besiroglu et al. 2024); intervals are bootstrap percentiles.",
             ""]
    for name, fit in fitted.items():
        if isinstance(fit, fits.NotEnoughPoints):
            lines += [f"- **{name}**: not enough points: {fit}"]
            continue
        ci = f"{int(round(100 * fit.level))}% CI"
        lines += ["", f"**{name}** ({fit.n_points} points): `{fit.formula()}`", "",
                  md_table([[k, v, lo, hi] for k, v, lo, hi in fit.table()], ["param", "value", f"{ci} lo",
                                                                              f"{ci} hi"]), ""]
        lines += [f"> **Warning:** {w}" for w in fit.warnings()] + ([""] if fit.warnings() else [])
    ch = fitted.get("L(N,D)")
    if isinstance(ch, fits.PowerLawFit):
        cmax = float(np.nanmax(df["C"])) if df["C"].notna().any() else 1e18
        rows = []
        for c in (cmax, 10 * cmax, 100 * cmax):
            o = fits.compute_optimal(ch, c)
            rows.append([c, *(_with_ci(o, k) for k in ("N_opt", "D_opt", "tokens_per_param")), float(o["loss"])])
        lines += ["", "Compute-optimal allocation from L(N,D) under C = 6·N·D (largest C in the sweep, ×10, ×100):",
                  "", md_table(rows, ["C (FLOPs)", "N_opt", "D_opt", "tokens/param", "predicted loss"]), ""]
    try:
        minima, exps = scaling.isoflop(df)
        lines += ["", "isoFLOP minima (parabola of loss in log N per FLOP budget):", "",
                  md_table([[r["C"], r["n_points"], r["N_opt"], r["D_opt"], r["loss_min"],
                             "yes" if r["bracketed"] else "no (extrapolated)"] for r in minima],
                           ["budget C", "points", "N_opt", "D_opt", "loss at min", "bracketed"]), ""]
        if isinstance(exps, dict):
            lines.append(f"N_opt ∝ C^{exps['a']:.3f}, D_opt ∝ C^{exps['b']:.3f} over {exps['n_budgets']} budgets.")
        else:
            lines.append(f"- isoFLOP exponents: not enough points: {exps}")
    except fits.NotEnoughPoints as e:
        lines.append(f"- **isoFLOP**: not enough points: {e}")
    return lines + [""]


def _fronts(grouped: pd.DataFrame) -> list[str]:
    lines = ["## Pareto fronts (val loss vs cost, both minimised; configurations, means over seeds)", ""]
    n = 0
    for name, (col, xlabel) in pareto.FRONTS.items():
        x = f"{col}_mean"
        if x not in grouped.columns or "loss_mean" not in grouped.columns or grouped[x].isna().all():
            continue
        front = pareto.pareto_front(grouped, x, "loss_mean")
        rows = [[r["label"], r["n"], r[x], _pm(r["loss_mean"], r["loss_std"])] for _, r in front.iterrows()]
        lines += [f"**{name}** ({xlabel}): {len(front)} of {int(grouped[x].notna().sum())} configurations", "",
                  md_table(rows, ["config", "n", col, "val loss"]), ""]
        n += 1
    return lines if n else lines + ["No latency, memory or parameter measurements.", ""]


def _decision(dec: decision.Decision | str) -> list[str]:
    lines = ["## Decision (PRD rule)", "",
             "A variant wins if it beats the baseline perplexity by ≥ 5 % at equal or lower latency and memory; "
             "perplexity ties (within 5 %) go to the faster one. Means over seeds.", ""]
    if isinstance(dec, str):
        return lines + [dec, ""]
    lines += [f"Baseline: **{dec.baseline}** ({dec.how}).", "", dec.summary, ""]
    if len(dec.table):
        lines += [md_table([[r["variant"], r["ppl"], f"{r['ppl_change_pct']:+.1f}%", r["latency_ms"],
                             r["peak_mem_mb"], r["verdict"], r["reason"]] for _, r in dec.table.iterrows()],
                           ["variant", "PPL", "Δ PPL", "latency ms", "peak MB", "verdict", "reason"]), ""]
    return lines


def _usd(v: float) -> str:
    return f"{v:.2f}" if v >= 0.01 or v == 0 else f"{v:.2g}"


def _cost(costs: pd.DataFrame, prices: dict[str, float]) -> list[str]:
    tot = cost.sweep_cost(costs)
    lines = ["## Cost", "",
             f"- **Device-hours:** {_f(tot['device_hours'])} over {tot['n_trials']} trials",
             f"- **Estimated cost:** ${_usd(tot['cost_usd'])} ({tot['n_priced']} of {tot['n_trials']} trials priced)",
             "- Prices (USD per device-hour, on-demand list prices; edit with `--prices prices.json`): "
             + ", ".join(f"{k} {v:g}" for k, v in sorted(prices.items()))]
    if tot["unpriced_devices"]:
        lines.append(f"- No price for: {', '.join(tot['unpriced_devices'])}")
    by = costs.groupby(costs["price_key"].fillna("unpriced"), sort=True)[["device_hours", "cost_usd"]].sum()
    if len(by):
        lines += ["", md_table([[k, r["device_hours"], r["cost_usd"]] for k, r in by.iterrows()],
                               ["device", "device-hours", "USD"])]
    return lines + [""]


def _correlations(df: pd.DataFrame) -> list[str]:
    lines = ["## Correlations (Spearman)", ""]
    hp = stats.hparam_correlations(df)
    if len(hp):
        lines += ["Hyperparameter → metric:", "",
                  md_table([[r["hparam"], r["metric"], r["rho"], r["pvalue"], r["n"]] for _, r in hp.iterrows()],
                           ["hparam", "metric", "ρ", "p", "n"]), ""]
    tc = stats.task_correlations(df)
    if len(tc):
        lines += ["Task-to-task:", "", md_table([[i, *r.tolist()] for i, r in tc.iterrows()], ["", *tc.columns]), ""]
    if len(lines) == 2:
        lines += ["Nothing to correlate (no numeric axis varies, or fewer than three trials).", ""]
    return lines


def build_report(df: pd.DataFrame, out_dir: str | Path, sweep_name: str, curves: pd.DataFrame | None = None,
                 baseline: columns.Baseline = None, prices: dict[str, float] | None = None, *,
                 meta: Mapping[str, Any] | None = None, n_boot: int = 200, seed: int = 0) -> Path:
    """Write the sweep's report into ``out_dir`` and return the path of REPORT.md.

    Args:
        df: one row per trial (``tinylm.tracking.load_runs``).
        out_dir: directory for REPORT.md, results_summary.csv, table_main.csv and fig_*.png (created).
        sweep_name: the sweep's name, for the title.
        curves: optional long table ``run_id, tokens, value`` of val loss (``tinylm.tracking.load_curves``).
        baseline: the PRD baseline (see ``columns.baseline_mask``).
        prices: USD per device-hour by device name (default ``cost.DEFAULT_PRICES``).
        meta: the sweep's parent-run fields (hypothesis, description) from ``tinylm.tracking.list_sweeps``.
        n_boot: bootstrap resamples per fitted law; seed: their RNG seed.
    """
    if not len(df):
        raise ValueError(f"sweep {sweep_name!r} has no trials")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("fig_*.png"):  # a rebuild must not keep figures whose axis no longer varies
        old.unlink()
    prices = dict(cost.DEFAULT_PRICES if prices is None else prices)
    df = stats.prepare(df)
    done = columns.completed(df)
    done = done if len(done) else df
    grouped = stats.group_over_seeds(done)
    costs = cost.trial_costs(df, prices)
    summary = pd.concat([df.reset_index(drop=True), costs.drop(columns=["run_id", "trial_id", "device"])], axis=1)
    summary.to_csv(out / "results_summary.csv", index=False)
    grouped.to_csv(out / "table_main.csv", index=False)

    try:
        dec: decision.Decision | str = decision.decide(done, baseline)
        first = done.loc[columns.baseline_mask(done, baseline)[0], "group"].iloc[0]
        base_mask = done["group"] == first
    except (ValueError, KeyError, IndexError) as e:
        dec, base_mask = f"No decision: {e}", pd.Series(False, index=done.index)
    tests = stats.tests_vs(done, "loss", base_mask) if base_mask.any() else pd.DataFrame()
    base_label = done.loc[base_mask, "label"].iloc[0] if base_mask.any() else ""
    fitted = scaling.scaling_fits(df, n_boot=n_boot, seed=seed)

    figs = [plots.fig_scaling(df, fitted, out), plots.fig_context(done, out), plots.fig_embed_share(done, out),
            plots.fig_glu(done, out), plots.fig_curves(df, curves, out), plots.fig_benchmarks(grouped, out),
            *(plots.fig_pareto(done, grouped, name, out) for name in pareto.FRONTS)]
    figs = [f for f in figs if f is not None]

    lines = [f"# Sweep report: {sweep_name}", ""]
    lines += _setup(df, sweep_name, meta or {})
    lines += _best(grouped)
    lines += _results(grouped, tests, base_label)
    lines += _laws(fitted, df)
    lines += _fronts(grouped)
    lines += _decision(dec)
    lines += _cost(costs, prices)
    lines += _correlations(done)
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figs] + [""]
    lines += ["## Discussion", "", "_To be written: what the results say about the hypothesis, caveats (seeds, "
              "scale, early-stopped trials), and the next experiment._", ""]
    path = out / "REPORT.md"
    path.write_text(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)))
    return path
