"""The PRD decision rule: does any variant beat the baseline?

A variant wins when its perplexity is at least 5 % below the baseline's at equal or lower latency AND equal or
lower peak memory. A perplexity tie (within 5 % either way) goes to the faster of the two: the variant wins the
tie only when it is strictly faster, and (our reading of the rule) it must not need more memory either. Values
are means over seeds. When several variants win, the lowest perplexity among clear winners is named, else the
fastest tie winner. A variant without a latency or memory measurement cannot win; the reason says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from tinylm.analysis import columns, stats

LATENCY = "latency_ms_b1_l128"
MEMORY = "peak_mem_mb"


@dataclass(eq=False)
class Decision:
    winner: str | None  # the winning variant's label, or None
    baseline: str  # the baseline's label
    how: str  # how the baseline was chosen
    summary: str  # one sentence for the report
    table: pd.DataFrame  # variant, ppl, ppl_change_pct, latency_ms, peak_mem_mb, verdict, reason


def _fmt(v: float, unit: str = "") -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}{unit}"


def _judge(v: dict, b: dict, threshold: float) -> tuple[str, str]:
    """(verdict, reason) for one variant: verdict is win | tie-win | lose."""
    if math.isnan(v["ppl"]) or math.isnan(b["ppl"]):
        return "lose", "no perplexity to compare"
    change = (v["ppl"] - b["ppl"]) / b["ppl"]
    gain = -change
    names = {"lat": "latency", "mem": "peak memory"}
    missing = [k for k in names if math.isnan(v[k]) or math.isnan(b[k])]
    if missing:
        return "lose", f"PPL {change:+.1%}; {' and '.join(names[k] for k in missing)} not measured, so the rule " \
                       "cannot be checked"
    lat_ok, mem_ok = v["lat"] <= b["lat"], v["mem"] <= b["mem"]
    cost = (f"latency {_fmt(v['lat'])} vs {_fmt(b['lat'])} ms, memory {_fmt(v['mem'])} vs {_fmt(b['mem'])} MB")
    if gain >= threshold - 1e-12:
        if lat_ok and mem_ok:
            return "win", f"PPL {change:+.1%} (≥ {threshold:.0%} better) at equal or lower {cost}"
        worse = " and ".join(n for ok, n in ((lat_ok, "slower"), (mem_ok, "more memory")) if not ok)
        return "lose", f"PPL {change:+.1%} is ≥ {threshold:.0%} better but {worse} ({cost})"
    if abs(change) < threshold:
        if v["lat"] < b["lat"] and mem_ok:
            return "tie-win", f"PPL tie ({change:+.1%}, within {threshold:.0%}) and faster ({cost})"
        why = "not faster" if not v["lat"] < b["lat"] else "more memory"
        return "lose", f"PPL tie ({change:+.1%}, within {threshold:.0%}) but {why} ({cost})"
    return "lose", f"PPL {change:+.1%} (worse than the baseline by ≥ {threshold:.0%})"


def decide(df: pd.DataFrame, baseline: columns.Baseline = None, *, latency: str = LATENCY, memory: str = MEMORY,
           threshold: float = 0.05) -> Decision:
    """Apply the PRD rule to every configuration against the baseline configuration.

    Args:
        df: trials (prepared by ``stats.prepare`` when needed); compare completed trials by passing only those.
        baseline: see ``columns.baseline_mask`` (selector dict, mask function, run/trial id, or None: tagged or
            named baseline, else the first grid point). When it selects several configurations, the first (in
            trial order) is the baseline and the others are variants.
        latency: latency column (ms); memory: peak memory column (MB).
        threshold: the relative perplexity margin (0.05 = 5 %).
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
    rows = []
    for _, row in grouped.iterrows():
        if row["group"] == base_gid:
            continue
        v = values(row)
        verdict, reason = _judge(v, b, threshold)
        rows.append({"variant": row["label"], "ppl": v["ppl"],
                     "ppl_change_pct": 100 * (v["ppl"] - b["ppl"]) / b["ppl"] if b["ppl"] else math.nan,
                     "latency_ms": v["lat"], "peak_mem_mb": v["mem"], "verdict": verdict, "reason": reason})
    table = pd.DataFrame(rows, columns=["variant", "ppl", "ppl_change_pct", "latency_ms", "peak_mem_mb", "verdict",
                                        "reason"])
    base_label = str(brow["label"])
    winner = None
    wins = table[table["verdict"] == "win"].sort_values(["ppl", "latency_ms"], kind="stable")
    ties = table[table["verdict"] == "tie-win"].sort_values(["latency_ms", "ppl"], kind="stable")
    if len(wins):
        winner = str(wins["variant"].iloc[0])
        summary = f"Winner: **{winner}** — {wins['reason'].iloc[0]}."
    elif len(ties):
        winner = str(ties["variant"].iloc[0])
        summary = f"Winner: **{winner}** (perplexity tie goes to the faster) — {ties['reason'].iloc[0]}."
    elif not len(table):
        summary = f"No winner: the sweep has no variant besides the baseline ({base_label})."
    else:
        summary = (f"No winner: no variant beats the baseline ({base_label}, PPL {_fmt(b['ppl'])}) by ≥ "
                   f"{threshold:.0%} at equal or lower latency and memory, and no perplexity tie is faster.")
    return Decision(winner=winner, baseline=base_label, how=how, summary=summary, table=table)
