"""``build_report``: one sweep's trials -> REPORT.md, results_summary.csv, table_main.csv and figures.

The report is a function of the data only (no clock, stable ordering), so rebuilding it from the same store
gives the same files.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from tinylm.analysis import columns, cost, decision, fits, pareto, plots, scaling, stats, validity, verdict
from tinylm.markdown_table import fmt_cell, md_table

STATUSES = ("completed", "stopped_asha", "killed_rule", "failed", "diverged", "interrupted")
# Metrics shown in the report's main table (all metric columns go to table_main.csv).
MAIN_METRICS = ("loss", "ppl", "ref_bigram_loss", "ref_unigram_loss", "params_total", "share_embed", "tokens_per_s",
                "latency_ms_b1_l128", "peak_mem_mb", "eval_score")  # refs: count models on the same val windows


def _pm(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "n/a"
    return fmt_cell(mean) if pd.isna(std) else f"{fmt_cell(mean)} ± {fmt_cell(std, 2)}"


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
        lines += [f"Val loss against the baseline ({base_label}): a two-way (configuration × seed) t-test pooling "
                  "the seed noise of every configuration where seeds are shared, else paired or Welch's t; p "
                  "Holm-adjusted over these comparisons.", "",
                  md_table([[r["label"], r["test"], r["n_pairs"] or f"{r['n_a']}/{r['n_b']}", r["diff"],
                             r["statistic"], r.get("dof", float("nan")), r["pvalue"], r.get("p_holm", float("nan"))]
                            for _, r in tests.iterrows()],
                           ["config", "test", "pairs (or n)", "Δ loss", "t", "d.o.f.", "p", "Holm p"]), ""]
    return lines


def _with_ci(o: dict, key: str) -> str:
    ci = o.get(f"{key}_ci")
    interval = "" if ci is None else f" [{fmt_cell(float(ci[0]), 3)}, {fmt_cell(float(ci[1]), 3)}]"
    return fmt_cell(float(o[key])) + interval


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
                             "yes" if r["bracketed"] else f"no: n/a ({r.get('reason') or 'not bracketed'})"]
                            for r in minima],
                           ["budget C", "points", "N_opt", "D_opt", "loss at min", "bracketed"]), ""]
        if isinstance(exps, dict):
            left = exps.get("n_excluded", 0)
            lines.append(f"N_opt ∝ C^{exps['a']:.3f}, D_opt ∝ C^{exps['b']:.3f} over {exps['n_budgets']} bracketed "
                         f"budgets" + (f" ({left} left out: no bracketed minimum)." if left else "."))
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
             "perplexity ties go to the faster one. Perplexity is judged on the verdict's 95 % CI: a tie only when "
             "the CI lies inside ±5 %, a CI that straddles the margin is inconclusive. Latency and memory here are "
             "measured after the sweep, each model alone (footprints.csv): latency at batch 1 and 128 tokens, the "
             "median of repeated forwards (on CPU the CPU time of one thread), memory the model's (weights, KV "
             "cache, activations of that forward); a difference within the measured spread counts as equal. The "
             "latency and peak-memory columns of the other tables were measured during the sweep, while other "
             "trials ran.", ""]
    if isinstance(dec, str):
        return lines + [dec, ""]
    lines += [f"Baseline: **{dec.baseline}** ({dec.how}).", "", dec.summary, ""]
    if len(dec.table):
        lines += [md_table([[r["variant"], r["ppl"], f"{r['ppl_change_pct']:+.1f}%", r["latency_ms"],
                             r["peak_mem_mb"], r["verdict"], r["reason"]] for _, r in dec.table.iterrows()],
                           ["variant", "PPL", "Δ PPL", "latency ms", "memory MB", "verdict", "reason"]), ""]
    return lines


def _usd(v: float) -> str:
    return f"{v:.2f}" if v >= 0.01 or v == 0 else f"{v:.2g}"


def _cost(costs: pd.DataFrame, prices: dict[str, float]) -> list[str]:
    tot = cost.sweep_cost(costs)
    lines = ["## Cost", "",
             f"- **Device-hours:** {fmt_cell(tot['device_hours'])} over {tot['n_trials']} trials",
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


def _scale_of(df: pd.DataFrame) -> str:
    scales = sorted({str(s) for s in df["scale"].dropna()}) if "scale" in df.columns else []
    return scales[0] if len(scales) == 1 else (", ".join(scales) or "unknown")


def _validity(df: pd.DataFrame, done: pd.DataFrame, flags: list[str], slopes: pd.DataFrame) -> list[str]:
    scale = _scale_of(df)
    lines = ["## What this run can claim", "", validity.SCALE_CLAIMS.get(scale, f"Scale: {scale}."), "",
             "## Validity diagnostics", ""]
    lines += [f"- ⚠ {f}" for f in flags] if flags else ["- nothing flagged"]
    tt = validity.tokens_table(done, slopes)
    if len(tt):
        lines += ["", md_table([[r["label"], r["n"], r["params"], r["tokens"], r["tokens_per_param"],
                                 r["drop_per_doubling"]] for _, r in tt.iterrows()],
                               ["config", "trials", "params", "tokens", "tokens/param",
                                "end slope: loss drop per 2× tokens (last third, within the run)"])]
    return lines + [""]


def _verdict(v: verdict.Verdict | None, hypothesis: str, reason: str = "") -> list[str]:
    lines = ["## Verdict", ""]
    if v is None:
        return lines + [reason or "No verdict: no baseline configuration with completed trials.", ""]
    if hypothesis:
        lines += [f"Hypothesis: {hypothesis}", ""]
    lines += [v.headline(), ""]
    if v.effects:
        rows = [[e.variant, f"{e.ppl_pct:+.2f} %",
                 f"{e.ci_pct[0]:+.2f} to {e.ci_pct[1]:+.2f} %" if e.ci_pct else "n/a", e.test,
                 e.n_pairs or f"{e.n_variant}/{e.n_baseline}", f"{e.dof:.3g}", verdict.format_p(e.pvalue),
                 verdict.format_p(e.p_holm), e.reading(v.equivalence_pct)] for e in v.effects]
        lines += [md_table(rows, ["variant", "Δ PPL vs baseline", "95 % CI", "test", "pairs (or n)", "d.o.f.", "p",
                                  "Holm p", "reading"]), ""]
    return lines


def _discussion(v: verdict.Verdict | None, flags: list[str], df: pd.DataFrame, fitted: dict, hypothesis: str
                ) -> list[str]:
    """Generated from the numbers: what the effects say, how sure, what could not be seen, the caveats."""
    lines = ["## Discussion (generated from the numbers above)", ""]
    scale = _scale_of(df)
    if v is not None and v.effects:
        eq = v.equivalence_pct
        sig = [e for e in v.effects if e.ci is not None and e.significant]
        tested = [e for e in v.effects if e.ci is not None]
        big = max(v.effects, key=lambda e: abs(e.delta))
        lines.append(f"- Largest effect: {big.variant} at {big.ppl_pct:+.2f} % PPL against {big.baseline}. "
                     f"{len(sig)} of {len(v.effects)} comparison(s) are significant at α = {verdict.ALPHA} after "
                     f"Holm's correction over the {len(v.effects)} comparisons.")
        equiv = [e.variant for e in tested if e.ci_pct and -eq < e.ci_pct[0] and e.ci_pct[1] < eq]
        if equiv:
            lines.append(f"- Equivalent to the baseline within ±{eq:g} % (95 % CI inside the margin): "
                         f"{', '.join(equiv)}.")
        incon = [e.variant for e in tested if e.ci_pct and e.variant not in equiv and e.ci_pct[0] < eq
                 and e.ci_pct[1] > -eq and not e.significant]
        if incon:
            lines.append(f"- Inconclusive at this many seeds: {', '.join(incon)} (CI crosses ±{eq:g} % and no "
                         "significant difference).")
        if v.mde == v.mde:
            lines.append(f"- With {v.n_pairs} seeds ({v.test}, {v.dof:.3g} d.o.f.) the smallest effect this sweep "
                         f"detects reliably is {verdict.pct(v.mde):.2f} % PPL; roughly 4× the seeds halve it.")
        if v.regime:
            lines.append(f"- {v.regime}")
        if v.noise_sd == v.noise_sd:
            small = [e.variant for e in v.effects if abs(e.delta) < 2 * v.noise_sd]
            if small:
                lines.append(f"- Effects within two noise floors (±{verdict.pct(2 * v.noise_sd):.2f} %): "
                             f"{', '.join(small)}.")
        if hypothesis:
            lines.append(f"- Against the hypothesis (\"{hypothesis}\"): read the table's last column; the PRD "
                         "rule's outcome is stated in the verdict.")
    else:
        lines.append("- No comparison against a baseline could be made.")
    for name, fit in fitted.items():
        if isinstance(fit, fits.PowerLawFit) and name == "L(N)":
            ci = fit.ci.get("alpha")
            lines.append(f"- {name}: α = {fit.params['alpha']:.3f}"
                         + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci is not None else "")
                         + " over " + f"{fit.n_points} sizes.")
    lines += ["", "Caveats:", ""]
    lines.append(f"- Scale: {validity.SCALE_CLAIMS.get(scale, scale)}")
    lines += [f"- {f}" for f in flags]
    lines.append("- LR, batch, warmup and β2 come from the scale's size rules, not from a per-variant tune, unless an "
                 "`lr` axis appears above; an LR that suits one variant better biases the comparison.")
    return lines + [""]


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
        fps = decision.footprints(done, cache=out / "footprints.csv")  # each model alone, measured once
        dec: decision.Decision | str = decision.decide(done, baseline, footprints=fps)
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

    hypothesis = (meta or {}).get("hypothesis") or ", ".join(_unique(df, "hypothesis"))
    noise = verdict.noise_floor(done) if "group" in done.columns else (float("nan"), 0)
    slopes = validity.end_slopes(curves, done)
    flags = validity.diagnostics(df, done, slopes, noise[0], sweep_name, fitted)
    v, why = None, ""
    if base_mask.any() and done["loss"].notna().any():
        v = verdict.build(done, base_mask, dec.summary if isinstance(dec, decision.Decision) else str(dec),
                          verdict.equivalence_margin(hypothesis), noise)
        if len(v.effects):
            verdict.paired_table(v.effects).to_csv(out / "effects.csv", index=False)
    else:
        why = dec if isinstance(dec, str) else ""

    lines = [f"# Sweep report: {sweep_name}", ""]
    lines += _verdict(v, hypothesis, why)
    lines += _validity(df, done, flags, slopes)
    lines += _setup(df, sweep_name, meta or {})
    lines += _best(grouped)
    lines += _results(grouped, tests, base_label)
    lines += _laws(fitted, df)
    lines += _fronts(grouped)
    lines += _decision(dec)
    lines += _cost(costs, prices)
    lines += _correlations(done)
    lines += ["## Figures", ""] + [f"![{f.stem}]({f.name})" for f in figs] + [""]
    lines += _discussion(v, flags, df, fitted, hypothesis)
    path = out / "REPORT.md"
    path.write_text(re.sub(r"\n{3,}", "\n\n", "\n".join(lines)))
    return path


def block_sections(df: pd.DataFrame) -> list[tuple[str, str]]:
    """Report sections for runs that carry them: exact recall per context length (``eval_recall_acc_L<L>``, the
    SSM question "when does attention break down?") and an MoE's routing balance (``moe_max_over_mean``,
    ``moe_load_cv``), each per configuration as mean ± s.d. over seeds, with its training throughput beside."""
    if df.empty:
        return []
    df = stats.prepare(df)
    out = []
    recall = sorted((c for c in df.columns if c.startswith("eval_recall_acc_L")),
                    key=lambda c: int(c.rsplit("L", 1)[1]))
    routing = [c for c in ("moe_max_over_mean", "moe_load_cv", "moe_dropped_frac") if c in df.columns]
    for title, cols, note in (
            ("Recall per context length", recall,
             "Accuracy of copying a random sequence of L tokens from the context (``tinylm.evals.recall``; chance "
             "1 / (V - 1)), after training, mean ± s.d. over seeds. Attention can look any earlier token up; a "
             "fixed-size state must hold all L at once."),
            ("MoE routing balance", routing,
             "At the last eval batch, averaged over layers: the busiest expert's load over the mean (1 = balanced), "
             "the loads' coefficient of variation, the assignments dropped over capacity (0 when dropless).")):
        if not cols or df[cols].isna().all().all():
            continue
        rows = []
        for _, g in df.groupby("group", sort=True):
            cells = [_pm(g[c].mean(), g[c].std()) if g[c].notna().sum() > 1 else fmt_cell(g[c].mean()) for c in cols]
            tps = g["tokens_per_s"].mean() if "tokens_per_s" in g else float("nan")
            rows.append([g["label"].iloc[0], len(g), *cells, f"{tps:,.0f}"])
        header = ["configuration", "seeds", *[c.replace("eval_recall_acc_", "").replace("moe_", "") for c in cols],
                  "train tok/s"]
        out.append((title, note + "\n\n" + md_table(rows, header)))
    return out


def report_sweep(uri: str, sweep: str, out: Path, baseline: dict | None, prices: dict, n_boot: int,
                 log: bool = True, also: list[str] | None = None,
                 sections: list[tuple[str, str]] | None = None) -> Path:
    """Build one sweep's report under ``out`` and log its files to the sweep's parent run; returns REPORT.md's path.

    ``also``: more sweeps whose trials belong to this one (the seed rounds of ``--until-conclusive``);
    ``sections``: (title, text) placed under the verdict: how the run got its LRs (the LR phase) and the
    sequential decision of ``--until-conclusive`` (the verdict's fixed-n p-values and intervals do not allow for
    seeds added after looking; that decision does).

    The report is logged only where the store owns the artifacts: a copy of a results folder (its runs point at
    the original's ``mlartifacts``) or one that cannot be written gets the report in ``out`` and one warning."""
    from tinylm import tracking  # the only mlflow module; imported here so the package stays light

    df = tracking.load_runs(uri, sweep=sweep)
    if also:
        df = pd.concat([df, *(tracking.load_runs(uri, sweep=name) for name in also)], ignore_index=True)
    sweeps = tracking.list_sweeps(uri)
    parents = sweeps[(sweeps["sweep"] == sweep) | (sweeps["sweep_key"] == sweep) | (sweeps["experiment"] == sweep)]
    meta = parents.iloc[-1].to_dict() if len(parents) else {}
    curves = tracking.load_curves(uri, df["run_id"].tolist(), metric="val_loss") if len(df) else None
    path = build_report(df, out / sweep, sweep, curves=curves, baseline=baseline, prices=prices, meta=meta,
                        n_boot=n_boot)
    sections = [*(sections or []), *block_sections(df)]
    if sections:
        text = path.read_text()
        added = "".join(f"## {title}\n\n{body.strip()}\n\n" for title, body in sections)
        at = text.find("## What this run can claim")
        path.write_text(text[:at] + added + text[at:] if at >= 0 else text + "\n" + added)
    if log and meta:
        elsewhere = tracking.foreign_artifacts(uri, meta["run_id"])
        if elsewhere:
            logging.getLogger(__name__).warning(
                "report not logged to the sweep's run: its artifacts live in %s, outside the store's folder (a copied "
                "results folder?); the report is in %s only", elsewhere, path.parent)
            return path
        try:
            tracker = tracking.Tracker(uri, meta["experiment"])
            for f in sorted(path.parent.iterdir()):
                if f.is_file():
                    tracker.log_artifact(meta["run_id"], str(f), "report")
        except Exception as e:  # noqa: BLE001 - a read-only store: the report on disk is the result, the log a copy
            logging.getLogger(__name__).warning("report not logged to the sweep's run (%s: %s); the report is in %s "
                                                "only", type(e).__name__, str(e).strip()[:200], path.parent)
    return path
