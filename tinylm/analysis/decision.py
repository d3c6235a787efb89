"""The PRD decision rule: does any variant beat the baseline?

A variant wins when its perplexity is at least 5 % below the baseline's at equal or lower latency AND equal or
lower memory. A perplexity tie (within 5 % either way) goes to the faster of the two: the variant wins the
tie only when it is strictly faster, and (our reading of the rule) it must not need more memory either.

Latency and memory are the configuration's footprint measured after the sweep, alone (``footprints``, from
``tinylm.footprint``): latency at batch 1 and 128 tokens, the median of N forwards (on CPU the CPU time of one
thread), and the model's memory (weights, KV cache and activations of that forward). A difference within the
measured spread (the larger interquartile range of the two latencies; the range of the repeated memory
measurements) counts as equal: neither a loss nor "faster". The numbers logged during the sweep were read while
other trials shared the machine (the same configuration read 2.7–5.1 ms and 734–1,188 MB across seeds; on CPU
the process's resident set), so they are kept in the tables, labelled as such, but decide nothing; ``decide``
falls back to their seed means (with no spread) only when it is given no footprints.

Perplexity is judged on the verdict's 95 % confidence interval of the change (``verdict.effects``: two-way, paired
or Welch t, Holm-adjusted p), never on a point estimate: "better" needs the interval at or below −5 %, "tie" needs
it inside ±5 %, "worse" at or above +5 % (a side beyond the margin also needs Holm-adjusted p < 0.05). When the
interval leaves more than one of these open and they lead to different outcomes, the variant is
``inconclusive``; when every open one loses (say, slower and more memory), it loses. When several variants win,
the lowest perplexity among clear winners is named, else the fastest tie winner. A variant without a latency or
memory measurement cannot win; the reason says so.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from tinylm.analysis import columns, stats, verdict
from tinylm.config import ARCH_FIELDS, FIELDS, Config, ConfigError

LATENCY = "latency_ms_b1_l128"  # in-sweep columns: the fallback without footprints
MEMORY = "peak_mem_mb"
# the footprint measured alone (tinylm.footprint.measure): the value and the spread within which two are equal
ALONE = {"lat": ("latency_ms_b1_l128_alone", "latency_ms_b1_l128_iqr"),
         "mem": ("model_mem_mb_b1_l128", "model_mem_mb_b1_l128_spread")}


@dataclass(eq=False)
class Decision:
    winner: str | None  # the winning variant's label, or None
    baseline: str  # the baseline's label
    how: str  # how the baseline was chosen
    summary: str  # one sentence for the report
    table: pd.DataFrame  # variant, ppl, ppl_change_pct, ci_lo_pct, ci_hi_pct, latency_ms, peak_mem_mb, latency_tol_ms,
    # memory_tol_mb, basis ("alone": footprints, "in-sweep": seed means of the logged columns), verdict, reason


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


FORWARD_FIELDS = (*ARCH_FIELDS, "attention")  # what a float32 eval forward depends on (dims solved from a budget)


def config_key(cfg: Config) -> str:
    """The fields a footprint depends on, hashed: configurations that differ only in training (LR, tokens, seed)
    share one measurement, so the rule sees them as equal rather than as two draws of timing noise."""
    d = {k: getattr(cfg, k) for k in FORWARD_FIELDS}
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def footprints(df: pd.DataFrame, measure=None, cache: str | Path | None = None, **kw) -> pd.DataFrame:
    """Each configuration's footprint, measured alone after the sweep from the Config its trials carry (once per
    distinct model: ``config_key``).

    Args:
        df: trials with their Config columns (``tinylm.tracking.load_runs``; prepared here when needed).
        measure: ``(list of Config, **kw) -> list of dict``; default ``tinylm.footprint.measure_many`` (imported
            here: the analysis package loads no torch until it measures), which times them in turn, in rounds.
        cache: a CSV of earlier footprints (the report's ``footprints.csv``): a configuration found there (by
            ``config_key``) is not measured again, so a rebuilt report shows the same numbers; the file is
            (re)written with every row. Delete it to measure again (say, on another machine).
        kw: passed to ``measure`` (device, repeats, rounds, ...).

    Returns:
        One row per configuration: ``label``, ``config_key``, the measured keys, and ``footprint_error`` ("" when
        measured; else why the Config could not be rebuilt, with no values: the rule then says it is not measured).
    """
    if measure is None:
        from tinylm.footprint import measure_many as measure
    if "group" not in df.columns:
        df = stats.prepare(df)
    known: dict[str, dict] = {}
    if cache is not None and Path(cache).is_file():
        old = pd.read_csv(cache, keep_default_na=False, na_values=[""])
        if {"config_key", "footprint_error"} <= set(old.columns):
            known = {r["config_key"]: r for r in old.to_dict("records") if pd.isna(r["footprint_error"])}
    rows, todo = [], {}  # todo: config_key -> (rows of that model, its Config) to measure
    for _, g in df.groupby("group", sort=True):
        first = g.iloc[0]
        fields = {k: first[k].item() if hasattr(first[k], "item") else first[k]  # numpy scalars -> Python
                  for k in FIELDS if k in g.columns and not pd.isna(first[k])}
        row: dict = {"label": first["label"], "config_key": "", "footprint_error": ""}
        rows.append(row)
        missing = [k for k in ARCH_FIELDS if k not in fields]
        if missing:  # a default would stand in for them: the wrong model
            row["footprint_error"] = f"the trials carry no full Config (missing {', '.join(missing)})"
            continue
        try:
            cfg = Config.from_dict(fields)
        except (ConfigError, TypeError, ValueError) as e:
            row["footprint_error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
            continue
        row["config_key"] = config_key(cfg)
        got = known.get(row["config_key"])
        if got:
            row |= {k: v for k, v in got.items() if k not in row}
        else:
            todo.setdefault(row["config_key"], ([], cfg))[0].append(row)
    if todo:
        try:
            for (same, _), got in zip(todo.values(), measure([c for _, c in todo.values()], **kw), strict=True):
                for row in same:
                    row |= got
        except (RuntimeError, ValueError) as e:  # torch (out of memory): no footprints, said in every row
            for same, _ in todo.values():
                for row in same:
                    row["footprint_error"] = f"{type(e).__name__}: {str(e).strip()[:200]}"
    out = pd.DataFrame(rows)
    if cache is not None:
        out.to_csv(cache, index=False)
    return out


def _tol(x: float) -> float:
    return 0.0 if x is None or math.isnan(x) else x


def _judge(v: dict, b: dict, e: verdict.Effect | None, threshold: float, alone: bool) -> tuple[str, str]:
    """(verdict, reason) for one variant: verdict is win | tie-win | lose | inconclusive."""
    if e is None and (math.isnan(v["ppl"]) or math.isnan(b["ppl"])):
        return "lose", "no perplexity to compare"
    m = 100 * threshold
    if e is not None and e.ci_pct is not None:
        ppl = f"PPL {e.ppl_pct:+.1f} % (95 % CI {e.ci_pct[0]:+.1f} to {e.ci_pct[1]:+.1f} %)"
    else:
        change = e.ppl_pct if e is not None else 100 * (v["ppl"] - b["ppl"]) / b["ppl"]
        ppl = f"PPL {change:+.1f} % (no interval: too few trials to test)"
    names = {"lat": "latency", "mem": "model memory" if alone else "peak memory"}
    missing = [k for k in names if math.isnan(v[k]) or math.isnan(b[k])]
    if missing:
        return "lose", f"{ppl}; {' and '.join(names[k] for k in missing)} not measured, so the rule cannot be checked"
    lat_tol, mem_tol = max(_tol(v["lat_tol"]), _tol(b["lat_tol"])), max(_tol(v["mem_tol"]), _tol(b["mem_tol"]))
    # within the measured spread counts as equal: not a loss, and not "faster" either
    lat_ok, mem_ok = v["lat"] <= b["lat"] + lat_tol, v["mem"] <= b["mem"] + mem_tol
    faster = v["lat"] < b["lat"] - lat_tol
    if alone:
        cost = (f"latency alone {_fmt(v['lat'])} vs {_fmt(b['lat'])} ms (equal within ±{lat_tol:.2g} ms, the larger "
                f"IQR), model memory {_fmt(v['mem'])} vs {_fmt(b['mem'])} MB"
                + (f" (equal within ±{mem_tol:.2g} MB)" if mem_tol else ""))
    else:
        cost = (f"latency {_fmt(v['lat'])} vs {_fmt(b['lat'])} ms, memory {_fmt(v['mem'])} vs {_fmt(b['mem'])} MB, "
                "seed means measured during the sweep")
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


def decide(df: pd.DataFrame, baseline: columns.Baseline = None, *, footprints: pd.DataFrame | None = None,
           latency: str = LATENCY, memory: str = MEMORY, threshold: float = 0.05, level: float = 0.95) -> Decision:
    """Apply the PRD rule to every configuration against the baseline configuration.

    Args:
        df: trials (prepared by ``stats.prepare`` when needed); compare completed trials by passing only those.
        baseline: see ``columns.baseline_mask`` (selector dict, mask function, run/trial id, or None: tagged or
            named baseline, else the first grid point). When it selects several configurations, the first (in
            trial order) is the baseline and the others are variants.
        footprints: the configurations' footprints measured alone (``footprints(df)``), matched by ``label``:
            latency and memory come from its ``ALONE`` columns, and differences within their spread are equal.
            None: the seed means of the in-sweep ``latency`` / ``memory`` columns, with no spread.
        latency: in-sweep latency column (ms); memory: in-sweep peak memory column (MB); used without footprints.
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
    nan = math.nan
    alone = footprints is not None
    fp = footprints.drop_duplicates("label").set_index("label") if alone else None

    def values(row: pd.Series) -> dict:
        out = {"ppl": float(row["ppl_mean"])}
        for k, (col, spread) in ALONE.items():
            if alone:
                has = row["label"] in fp.index
                out[k] = float(fp.at[row["label"], col]) if has and col in fp.columns else nan
                out[f"{k}_tol"] = float(fp.at[row["label"], spread]) if has and spread in fp.columns else nan
            else:
                out[k], out[f"{k}_tol"] = float(row[f"{latency if k == 'lat' else memory}_mean"]), 0.0
        return out

    brow = grouped[grouped["group"] == base_gid].iloc[0]
    b = values(brow)
    found = {e.group: e for e in verdict.effects(df, df["group"] == base_gid, level)} if "loss" in df.columns else {}
    rows = []
    for _, row in grouped.iterrows():
        if row["group"] == base_gid:
            continue
        v = values(row)
        e = found.get(int(row["group"]))
        e = e if e is not None and e.delta == e.delta else None
        outcome, reason = _judge(v, b, e, threshold, alone)
        lo, hi = e.ci_pct if e is not None and e.ci_pct else (nan, nan)
        change = e.ppl_pct if e is not None else (100 * (v["ppl"] - b["ppl"]) / b["ppl"] if b["ppl"] else nan)
        rows.append({"variant": row["label"], "ppl": v["ppl"], "ppl_change_pct": change, "ci_lo_pct": lo,
                     "ci_hi_pct": hi, "latency_ms": v["lat"], "peak_mem_mb": v["mem"],
                     "latency_tol_ms": max(_tol(v["lat_tol"]), _tol(b["lat_tol"])),
                     "memory_tol_mb": max(_tol(v["mem_tol"]), _tol(b["mem_tol"])),
                     "basis": "alone" if alone else "in-sweep", "verdict": outcome, "reason": reason})
    table = pd.DataFrame(rows, columns=["variant", "ppl", "ppl_change_pct", "ci_lo_pct", "ci_hi_pct", "latency_ms",
                                        "peak_mem_mb", "latency_tol_ms", "memory_tol_mb", "basis", "verdict",
                                        "reason"])
    base_label = str(brow["label"])
    winner = None
    wins = table[table["verdict"] == "win"].sort_values(["ppl", "latency_ms"], kind="stable")
    ties = table[table["verdict"] == "tie-win"].sort_values(["latency_ms", "ppl"], kind="stable")
    open_ = table.loc[table["verdict"] == "inconclusive", "variant"].astype(str).tolist()
    pending = (f" Inconclusive (the 95 % CI of the PPL change does not settle the ±{threshold:.0%} margin, so neither "
               f"a win nor a tie can be called): {', '.join(open_)}." if open_ else "")
    costs = ("latency (alone, median of repeated forwards) and model memory, equal within their measured spread"
             if alone else "latency and memory (measured during the sweep)")
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
                   f"{threshold:.0%} at equal or lower {costs}, and no perplexity tie is faster.")
    return Decision(winner=winner, baseline=base_label, how=how, summary=summary, table=table)
