"""Pareto fronts: the non-dominated trials when both axes are minimised (val loss vs latency, memory, params).

A point dominates another when it is no worse on both axes and strictly better on one. So of two points with
the same cost the one with the higher loss is dominated (a tie on one axis is broken by the other), and points
identical on both axes do not dominate each other: they are all on the front or all off it. Rows with NaN on
either axis are left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tinylm.analysis import columns

# x axes of the standard fronts: name -> (column, axis label)
FRONTS: dict[str, tuple[str, str]] = {
    "latency": ("latency_ms_b1_l128", "latency, batch 1, 128 tokens (ms)"),
    "memory": ("peak_mem_mb", "peak memory (MB)"),
    "params": ("params_total", "parameters"),
}


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where (x, y) is non-dominated, minimising both; False for NaN rows. O(n log n)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    mask = np.zeros(len(x), dtype=bool)
    idx = np.flatnonzero(ok)
    if not len(idx):
        return mask
    # Sweep by x ascending (ties by y ascending): a point is on the front iff its y is below every y seen at a
    # strictly smaller x, and it is the lowest y at its own x (equal points share the verdict).
    order = idx[np.lexsort((y[idx], x[idx]))]
    best_before = np.inf  # lowest y over strictly smaller x
    i = 0
    while i < len(order):
        j = i
        while j < len(order) and x[order[j]] == x[order[i]]:
            j += 1
        group = order[i:j]
        y_min = y[group[0]]
        if y_min < best_before:
            mask[group[y[group] == y_min]] = True
        best_before = min(best_before, y_min)
        i = j
    return mask


def pareto_front(df: pd.DataFrame, x: str, y: str | None = None) -> pd.DataFrame:
    """The rows of ``df`` on the front of ``x`` against ``y`` (default: the val loss), sorted by ``x``.

    Args:
        df: trials (or a table grouped over seeds).
        x: the cost column (e.g. ``latency_ms_b1_l128``); missing column -> empty front.
        y: the quality column to minimise; None uses the final val loss (falling back to the latest).
    """
    if x not in df.columns:
        return df.iloc[:0]
    yv = columns.loss(df) if y is None else pd.to_numeric(df[y], errors="coerce")
    xv = pd.to_numeric(df[x], errors="coerce")
    front = df[pareto_mask(xv.to_numpy(), yv.to_numpy())]
    key = pd.DataFrame({"x": xv[front.index], "y": yv[front.index]})
    return front.loc[key.sort_values(["x", "y"], kind="stable").index]


def pareto_fronts(df: pd.DataFrame, y: str | None = None) -> dict[str, pd.DataFrame]:
    """The standard fronts (``FRONTS``) whose cost column exists and has at least one value."""
    out = {}
    for name, (col, _) in FRONTS.items():
        if col in df.columns and pd.to_numeric(df[col], errors="coerce").notna().any():
            out[name] = pareto_front(df, col, y)
    return out
