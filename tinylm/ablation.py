"""One-at-a-time ablations: a baseline row plus one row per toggle, reported as before/after % change.

The design (seed "LLM training experiments & optimizations"): every row is the baseline with ONE change (plus the
changes that keep the comparison fair, e.g. ``batch_size`` halved when ``grad_accum`` doubles so tokens per step
match). ``variants`` builds the grid (``space``: a ``Space`` of variants); ``ablation_table`` turns the sweep's
results table (one row per trial, Config fields as columns) into the before/after table; ``to_markdown`` /
``write`` render it.

A toggle is "architecture" when it changes a field in ``tinylm.config.ARCH_FIELDS`` (the same list the resume
check uses: such a change makes a checkpoint incompatible) and "execution" otherwise (same function computed,
another way of computing it: precision, compile, attention kernel, checkpointing, accumulation).

Pure pandas: no ray / mlflow / torch.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from tinylm.config import ARCH_FIELDS, FIELDS, Config, check_keys
from tinylm.markdown_table import md_table
from tinylm.ranking import LOSS
from tinylm.sweep.space import Space

# metric column -> (table header, fallback columns): the seed's four before/after numbers
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "peak_mem_mb": ("peak memory (MB)", ()),
    "tokens_per_s": ("tokens/s", ()),
    "final_val_loss": ("final val loss", LOSS[1:]),  # tinylm.ranking: the final eval, else the latest
    "train_time_s": ("train time (s)", ("elapsed_s",)),
}


def kind(changes: Iterable[str]) -> str:
    """"architecture" if any changed field is in ``ARCH_FIELDS`` (a checkpoint could not resume across it),
    else "execution"."""
    return "architecture" if any(k in ARCH_FIELDS for k in changes) else "execution"


def label(toggle: Mapping[str, Any]) -> str:
    """A toggle's name: its first field, ``field=value`` (the other fields compensate, e.g. batch_size)."""
    if not toggle:
        return "baseline"
    k, v = next(iter(toggle.items()))
    return f"{k}={v}"


def variants(baseline: Mapping[str, Any], toggles: Iterable[Mapping[str, Any]]) -> list[dict]:
    """The variants of the grid: ``baseline`` first, then ``baseline | toggle`` for each toggle.

    Args:
        baseline: Config fields every row starts from (at least every field a toggle changes).
        toggles: each a dict of Config fields; its first key is the toggle, the rest compensate.

    Raises:
        ValueError: a toggle changes nothing or two toggles are the same row.
    """
    rows, seen = [dict(baseline)], {label({})}
    for t in toggles:
        check_keys(t)
        row = {**baseline, **t}
        if row == rows[0]:
            raise ValueError(f"toggle {dict(t)} leaves the baseline unchanged")
        if label(t) in seen:
            raise ValueError(f"two toggles are named {label(t)!r}; give each its own first field=value")
        seen.add(label(t))
        rows.append(row)
    return rows


def space(baseline: Mapping[str, Any], toggles: Iterable[Mapping[str, Any]]) -> Space:
    """A sweep space that runs ``variants(baseline, toggles)`` as one grid."""
    return Space(variants=variants(baseline, toggles))


def toggles_of(space: Space) -> list[dict]:
    """The toggles of a ``space(baseline, toggles)``: each later row minus what equals the first (baseline) row."""
    rows = Space.of(space).variants
    return [{k: v for k, v in row.items() if k not in rows[0] or rows[0][k] != v} for row in rows[1:]]


def _metric(df: pd.DataFrame, name: str) -> pd.Series:
    out = pd.Series(math.nan, index=df.index, dtype=float)
    for col in (name, *METRICS.get(name, ("", ()))[1]):
        if col in df.columns:
            out = out.fillna(pd.to_numeric(df[col], errors="coerce"))
    return out


def _matches(df: pd.DataFrame, values: Mapping[str, Any]) -> pd.Series:
    mask = pd.Series(True, index=df.index)
    for k, v in values.items():
        mask &= df[k].astype(object).map(lambda x, v=v: _eq(x, v))
    return mask


def _eq(x: Any, v: Any) -> bool:
    if x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA:
        return False
    return bool(x == v) or str(x) == str(v)


def pct(after: float, before: float) -> float:
    """% change of ``after`` against ``before`` (NaN when either is missing or ``before`` is 0)."""
    if before is None or after is None or not (math.isfinite(before) and math.isfinite(after)) or before == 0:
        return math.nan
    return 100.0 * (after - before) / before


def ablation_table(df: pd.DataFrame, base: Mapping[str, Any] | Config, toggles: Iterable[Mapping[str, Any]],
                   metrics: Iterable[str] = tuple(METRICS)) -> pd.DataFrame:
    """The before/after table: one row per toggle (baseline first), means over seeds.

    Args:
        df: the sweep's results, one row per trial with Config fields and metric columns (``load_runs`` /
            ``tune.results_table``; hand-made rows work the same).
        base: the baseline's Config (or dict of fields). A row belongs to a toggle when every Config field the
            table holds (but ``seed`` and ``name``) equals ``base | toggle``, so other experiments' rows are ignored.
        toggles: as given to ``variants``.
        metrics: metric columns; ``final_val_loss`` falls back to ``val_loss``, ``train_time_s`` to
            ``elapsed_s``.

    Returns:
        Columns ``toggle, kind, changes, n, status``, then per metric ``<m>`` (this row's mean),
        ``<m>_base`` (the baseline's) and ``<m>_pct`` (% change vs the baseline). Toggles with no trial
        appear with ``n = 0`` and NaN.
    """
    base = base.to_dict() if isinstance(base, Config) else dict(base)
    toggles = [dict(t) for t in toggles]
    keys = list(dict.fromkeys(k for t in toggles for k in t))
    unknown = [k for k in keys if k not in FIELDS]
    if unknown:
        raise KeyError(f"toggles change {unknown}, which are not Config fields")
    missing = [k for k in keys if k not in df.columns]
    if missing:
        raise KeyError(f"the results table has no column(s) {missing}; it needs the Config fields of every trial")
    # every Config field the table holds must match (seeds are averaged; the name is a label)
    ref = {k: base[k] for k in FIELDS if k in df.columns and k in base and k not in ("seed", "name")}
    metrics = list(metrics)
    rows = []
    for t in [{}, *toggles]:
        sel = df[_matches(df, {**ref, **t})]
        row = {"toggle": label(t), "kind": "baseline" if not t else kind(t),
               "changes": ", ".join(f"{k} {base.get(k)}->{v}" for k, v in t.items()), "n": len(sel),
               "status": ",".join(sorted(set(map(str, sel["status"])))) if "status" in sel else ""}
        for m in metrics:
            row[m] = float(_metric(sel, m).mean()) if len(sel) else math.nan
        rows.append(row)
    out = pd.DataFrame(rows)
    for m in metrics:
        out[f"{m}_base"] = out.loc[0, m]
        out[f"{m}_pct"] = [pct(a, out.loc[0, m]) for a in out[m]]
    ordered = ["toggle", "kind", "changes", "n", "status"] + [c for m in metrics for c in (m, f"{m}_base", f"{m}_pct")]
    return out[ordered]


def _num(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "n/a"
    return f"{v:,.4g}" if abs(v) < 1e4 else f"{v:,.0f}"


def to_markdown(table: pd.DataFrame, metrics: Iterable[str] | None = None) -> str:
    """A markdown table: each metric cell is ``after (+x.x %)``; the baseline row holds the "before" values."""
    metrics = [m for m in (metrics or METRICS) if m in table.columns]
    head = ["toggle", "kind", *(METRICS[m][0] if m in METRICS else m for m in metrics), "status"]
    rows = []
    for _, r in table.iterrows():
        cells = [f"`{r['toggle']}`" + (f" ({r['changes']})" if "," in str(r["changes"]) else ""), r["kind"]]
        for m in metrics:
            p = r.get(f"{m}_pct", math.nan)
            cells.append(_num(r[m]) + ("" if r["kind"] == "baseline" or not math.isfinite(p) else f" ({p:+.1f} %)"))
        cells.append(str(r.get("status", "")) or "no trial")
        rows.append(cells)
    return md_table(rows, head, right=range(2, 2 + len(metrics))) + "\n"


def write(table: pd.DataFrame, out_dir: str, stem: str = "ablation", title: str = "") -> dict[str, str]:
    """Write ``<stem>.csv`` and ``<stem>.md`` under ``out_dir``; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {"csv": os.path.join(out_dir, f"{stem}.csv"), "md": os.path.join(out_dir, f"{stem}.md")}
    table.to_csv(paths["csv"], index=False)
    with open(paths["md"], "w") as f:
        f.write((f"# {title}\n\n" if title else "") + to_markdown(table))
    return paths


__all__ = ["METRICS", "ablation_table", "kind", "label", "pct", "space", "to_markdown", "toggles_of",
           "variants", "write"]
