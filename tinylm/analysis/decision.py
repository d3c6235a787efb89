"""The PRD decision rule: does any variant beat the baseline?

A variant wins when its perplexity is at least 5 % below the baseline's at equal or lower latency AND equal or
lower peak memory. A perplexity tie (within 5 % either way) goes to the faster of the two: the variant wins the
tie only when it is strictly faster, and (our reading of the rule) it must not need more memory either.

Perplexity is judged on the verdict's 95 % confidence interval of the change (``verdict.effects``: two-way, paired
or Welch t, Holm-adjusted p), never on a point estimate: "better" needs the interval at or below −5 %, "tie" needs
it inside ±5 %, "worse" at or above +5 % (a side beyond the margin also needs Holm-adjusted p < 0.05). When the
interval leaves more than one of these open and they lead to different outcomes, the variant is
``inconclusive``; when every open one loses (say, slower and more memory), it loses. Latency and memory are seed
means. When several variants win, the lowest perplexity among clear winners is named, else the fastest tie
winner. A variant without a latency or memory measurement cannot win; the reason says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tinylm.analysis import columns, stats, verdict

LATENCY = "latency_ms_b1_l128"
MEMORY = "peak_mem_mb"


@dataclass(eq=False)
class Decision:
    winner: str | None  # the winning variant's label, or None
    baseline: str  # the baseline's label
    how: str  # how the baseline was chosen
    summary: str  # one sentence for the report
    table: pd.DataFrame  # variant, ppl, ppl_change_pct, ci_lo_pct, ci_hi_pct, latency_ms, peak_mem_mb, verdict, reason


def _fmt(v: float, unit: str = "") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}{unit}"


def ppl_classes(e: verdict.Effect | None, margin_pct: float) -> set[str]:
    """Which of better (≤ −margin), tie (within ±margin) and worse (≥ +margin) the effect's interval leaves open;
    all three without an interval. A side beyond the margin that is not significant after Holm keeps tie open."""
    if e is None or e.ci_pct is None:
        return {"better", "tie", "worse"}
    lo, hi = e.ci_pct
    out = {c for c, ok in (("better", lo <= -margin_pct), ("tie", lo < margin_pct and hi > -margin_pct),
                           ("worse", hi >= margin_pct)) if ok}
    if "tie" not in out and not e.significant:
        out.add("tie")
    return out


def _judge(v: dict, b: dict, e: verdict.Effect | None, threshold: float) -> tuple[str, str]:
    """(verdict, reason) for one variant: verdict is win | tie-win | lose | inconclusive."""
    if e is None and (math.isnan(v["ppl"]) or math.isnan(b["ppl"])):
        return "lose", "no perplexity to compare"
    m = 100 * threshold
    if e is not None and e.ci_pct is not None:
        ppl = f"PPL {e.ppl_pct:+.1f} % (95 % CI {e.ci_pct[0]:+.1f} to {e.ci_pct[1]:+.1f} %)"
    else:
        change = e.ppl_pct if e is not None else 100 * (v["ppl"] - b["ppl"]) / b["ppl"]
        ppl = f"PPL {change:+.1f} % (no interval: too few trials to test)"
    names = {"lat": "latency", "mem": "peak memory"}
    missing = [k for k in names if math.isnan(v[k]) or math.isnan(b[k])]
    if missing:
        return "lose", f"{ppl}; {' and '.join(names[k] for k in missing)} not measured, so the rule cannot be checked"
    lat_ok, mem_ok, faster = v["lat"] <= b["lat"], v["mem"] <= b["mem"], v["lat"] < b["lat"]
    cost = f"latency {_fmt(v['lat'])} vs {_fmt(b['lat'])} ms, memory {_fmt(v['mem'])} vs {_fmt(b['mem'])} MB"
    slower = " and ".join(n for ok, n in ((lat_ok, "slower"), (mem_ok, "more memory")) if not ok)
    outcome = {"better": ("win", f"{ppl}: ≥ {m:g} % better at equal or lower {cost}") if lat_ok and mem_ok else
               ("lose", f"{ppl}: ≥ {m:g} % better but {slower} ({cost})"),
               "tie": ("tie-win", f"{ppl}: a tie within ±{m:g} % and faster ({cost})") if faster and mem_ok else
               ("lose", f"{ppl}: a tie within ±{m:g} % but {'not faster' if not faster else 'more memory'} ({cost})"),
               "worse": ("lose", f"{ppl}: worse than the baseline by ≥ {m:g} %")}
    open_ = sorted(ppl_classes(e, m), key=["better", "tie", "worse"].index)
    verdicts = {outcome[c][0] for c in open_}
    if len(open_) == 1:
        return outcome[open_[0]]
    if verdicts == {"lose"}:
        return "lose", f"{ppl} leaves {' or '.join(open_)} open, and each loses ({cost})"
    could = "; ".join(f"{c}: {outcome[c][0]}" for c in open_)
    return "inconclusive", f"{ppl} does not settle the ±{m:g} % margin ({could}) ({cost})"


def decide(df: pd.DataFrame, baseline: columns.Baseline = None, *, latency: str = LATENCY, memory: str = MEMORY,
           threshold: float = 0.05, level: float = 0.95) -> Decision:
    """Apply the PRD rule to every configuration against the baseline configuration.

    Args:
        df: trials (prepared by ``stats.prepare`` when needed); compare completed trials by passing only those.
        baseline: see ``columns.baseline_mask`` (selector dict, mask function, run/trial id, or None: tagged or
            named baseline, else the first grid point). When it selects several configurations, the first (in
            trial order) is the baseline and the others are variants.
        latency: latency column (ms); memory: peak memory column (MB).
        threshold: the relative perplexity margin (0.05 = 5 %).
        level: the confidence level of the perplexity interval.
    """
    if "group" not in df.columns:
        df = stats.prepare(df)
    mask, how = columns.baseline_mask(df, baseline)
    if not mask.any():
        raise ValueError(f"the baseline ({how}) selects no trial")
    base_gid = int(df.loc[mask, "group"].iloc[0])
    metrics = ["ppl", latency, memory]
    for m in (latency, memory):
        if m not in df.columns:
            df = df.assign(**{m: float("nan")})
    grouped = stats.group_over_seeds(df, metrics)

    def values(row: pd.Series) -> dict:
        return {"ppl": float(row["ppl_mean"]), "lat": float(row[f"{latency}_mean"]),
                "mem": float(row[f"{memory}_mean"])}

    brow = grouped[grouped["group"] == base_gid].iloc[0]
    b = values(brow)
    nan = math.nan
    found = {e.group: e for e in verdict.effects(df, df["group"] == base_gid, level)} if "loss" in df.columns else {}
    rows = []
    for _, row in grouped.iterrows():
        if row["group"] == base_gid:
            continue
        v = values(row)
        e = found.get(int(row["group"]))
        e = e if e is not None and e.delta == e.delta else None
        outcome, reason = _judge(v, b, e, threshold)
        lo, hi = e.ci_pct if e is not None and e.ci_pct else (nan, nan)
        change = e.ppl_pct if e is not None else (100 * (v["ppl"] - b["ppl"]) / b["ppl"] if b["ppl"] else nan)
        rows.append({"variant": row["label"], "ppl": v["ppl"], "ppl_change_pct": change, "ci_lo_pct": lo,
                     "ci_hi_pct": hi, "latency_ms": v["lat"], "peak_mem_mb": v["mem"], "verdict": outcome,
                     "reason": reason})
    table = pd.DataFrame(rows, columns=["variant", "ppl", "ppl_change_pct", "ci_lo_pct", "ci_hi_pct", "latency_ms",
                                        "peak_mem_mb", "verdict", "reason"])
    base_label = str(brow["label"])
    winner = None
    wins = table[table["verdict"] == "win"].sort_values(["ppl", "latency_ms"], kind="stable")
    ties = table[table["verdict"] == "tie-win"].sort_values(["latency_ms", "ppl"], kind="stable")
    open_ = table.loc[table["verdict"] == "inconclusive", "variant"].astype(str).tolist()
    pending = (f" Inconclusive (the 95 % CI of the PPL change does not settle the ±{threshold:.0%} margin, so neither "
               f"a win nor a tie can be called): {', '.join(open_)}." if open_ else "")
    if len(wins):
        winner = str(wins["variant"].iloc[0])
        summary = f"Winner: **{winner}** — {wins['reason'].iloc[0]}.{pending}"
    elif len(ties):
        winner = str(ties["variant"].iloc[0])
        summary = f"Winner: **{winner}** (perplexity tie goes to the faster) — {ties['reason'].iloc[0]}.{pending}"
    elif not len(table):
        summary = f"No winner: the sweep has no variant besides the baseline ({base_label})."
    elif open_:
        summary = f"No winner established against the baseline ({base_label}, PPL {_fmt(b['ppl'])}).{pending}"
    else:
        summary = (f"No winner: no variant beats the baseline ({base_label}, PPL {_fmt(b['ppl'])}) by ≥ "
                   f"{threshold:.0%} at equal or lower latency and memory, and no perplexity tie is faster.")
    return Decision(winner=winner, baseline=base_label, how=how, summary=summary, table=table)
