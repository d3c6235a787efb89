"""Column conventions over the trials DataFrame that ``tinylm.tracking.load_runs`` returns.

One row per trial: ``run_id, trial_id, status, ...``, every Config field by name, final metrics and tags. Every
other module of the analysis package reads columns through these helpers, so the fallbacks (final vs latest
val loss, tokens seen vs planned, logged FLOPs vs 6·N·D) live in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from tinylm.config import FIELDS
from tinylm.ranking import LOSS

# Config fields that never define a configuration: the seed is what we average over, the name is a label, and
# Config.device (auto | cpu | cuda) says where a trial ran, not what it computed.
NOT_CONFIG = ("seed", "name", "device")

Baseline = Mapping[str, Any] | Callable[[pd.DataFrame], pd.Series] | str | None


def sort_trials(df: pd.DataFrame) -> pd.DataFrame:
    """Stable order (trial id, then run id) so every table and figure is the same given the same data."""
    keys = [c for c in ("trial_id", "run_id") if c in df.columns]
    if not keys:
        return df.reset_index(drop=True)
    order = df[keys].astype(str).apply(tuple, axis=1).argsort(kind="stable")
    return df.iloc[np.asarray(order)].reset_index(drop=True)


def completed(df: pd.DataFrame) -> pd.DataFrame:
    """Trials that ran to their token budget (all rows when there is no status column)."""
    if "status" not in df.columns:
        return df
    return df[df["status"].astype(str) == "completed"]


def _first_numeric(df: pd.DataFrame, names: tuple[str, ...]) -> pd.Series:
    out = pd.Series(np.nan, index=df.index, dtype=float)
    for name in names:
        if name in df.columns:
            out = out.fillna(pd.to_numeric(df[name], errors="coerce"))
    return out


def loss(df: pd.DataFrame) -> pd.Series:
    """Final validation loss, falling back to the latest eval (``tinylm.ranking.LOSS``, the one rule)."""
    return _first_numeric(df, LOSS)


def ppl(df: pd.DataFrame) -> pd.Series:
    """Final validation perplexity, falling back to exp(loss)."""
    return _first_numeric(df, ("final_val_ppl",)).fillna(np.exp(loss(df)))


def params(df: pd.DataFrame, count: str = "total") -> pd.Series:
    """N: ``total`` (Hoffmann et al. count every parameter) or ``nonembed`` (Kaplan et al. drop embeddings)."""
    return _first_numeric(df, (f"params_{count}",))


def tokens(df: pd.DataFrame) -> pd.Series:
    """D: tokens seen, falling back to the planned ``train_tokens``."""
    return _first_numeric(df, ("tokens", "train_tokens"))


def embed_share(df: pd.DataFrame) -> pd.Series:
    """The measured embedding share of the parameters. ``load_runs`` names it ``metric.embed_share`` because
    Config.embed_share (the solver's target) owns the plain name; the target is the fallback."""
    return _first_numeric(df, ("metric.embed_share", "embed_share"))


def flops(df: pd.DataFrame) -> pd.Series:
    """C: logged training FLOPs, falling back to 6·N·D (Kaplan et al. 2020, eq. 2.1)."""
    return _first_numeric(df, ("train_flops",)).fillna(6.0 * params(df) * tokens(df))


def hardware(df: pd.DataFrame) -> pd.Series:
    """The device a trial ran on: the provenance tag (``tag.device`` in ``load_runs``, since ``device`` is a
    Config field there), falling back to the ``device`` column."""
    out = pd.Series(None, index=df.index, dtype=object)
    for name in ("tag.device", "device"):
        if name in df.columns:
            col = df[name].astype(object).where(df[name].notna(), None)
            out = out.where(out.notna() & (out.astype(str) != ""), col)
    return out


def config_columns(df: pd.DataFrame) -> list[str]:
    """Config fields present as columns, except ``NOT_CONFIG`` (in Config field order)."""
    return [f for f in FIELDS if f in df.columns and f not in NOT_CONFIG]


def _nunique(s: pd.Series) -> int:
    return s.astype(str).nunique(dropna=False)


SOLVED = ("n_embd", "n_layer", "n_head", "d_ff")  # outputs of the budget solver when target_params > 0


def varying_columns(df: pd.DataFrame) -> list[str]:
    """Config fields that take more than one value in ``df`` (the sweep's axes), in Config field order. In a
    budget sweep (``target_params`` > 0 on every row) the solved dims follow from the other fields: they are
    results of the intervention, not axes, so they are left out."""
    solved = "target_params" in df.columns and bool((pd.to_numeric(df["target_params"], errors="coerce") > 0).all())
    return [c for c in config_columns(df) if _nunique(df[c]) > 1 and not (solved and c in SOLVED)]


def fmt_value(v: Any) -> str:
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return "nan"
        return f"{v:g}"
    return str(v)


def labels(df: pd.DataFrame, axes: list[str] | None = None) -> pd.Series:
    """A readable label per row from the varying config fields, e.g. ``glu_factor=2.66, mlp=swiglu``."""
    axes = varying_columns(df) if axes is None else axes
    if not axes:
        return pd.Series("all", index=df.index)
    return df[axes].apply(lambda r: ", ".join(f"{k}={fmt_value(r[k])}" for k in axes), axis=1)


def match(df: pd.DataFrame, selector: Mapping[str, Any]) -> pd.Series:
    """Rows whose columns equal every ``key=value`` of ``selector`` (values compared numerically when both
    sides are numbers, else as strings, so ``{"glu_factor": "2.66"}`` from the CLI matches 2.66)."""
    mask = pd.Series(True, index=df.index)
    for key, want in selector.items():
        if key not in df.columns:
            raise KeyError(f"baseline selector column {key!r} is not in the trials table; columns with config: "
                           f"{', '.join(config_columns(df))}")
        col = df[key]
        num = pd.to_numeric(col, errors="coerce")
        try:
            w = float(want)
        except (TypeError, ValueError):
            w = None
        if w is not None and num.notna().any() and not isinstance(want, bool):
            mask &= np.isclose(num.astype(float), w, rtol=1e-9, atol=0.0, equal_nan=True)
        else:
            mask &= col.astype(str).str.lower() == str(want).lower()
    return mask


def baseline_mask(df: pd.DataFrame, baseline: Baseline = None) -> tuple[pd.Series, str]:
    """Which rows are the baseline, and how they were chosen.

    Args:
        df: trials, in the order of ``sort_trials``.
        baseline: a ``{column: value}`` selector, a function ``df -> bool mask``, a run id / trial id, or None:
            the trials tagged ``baseline`` (a truthy ``baseline`` column) or named ``baseline`` (Config ``name`` or
            trial id containing it), else the first grid point (the config of the first trial, all its seeds).
    """
    if callable(baseline):
        return baseline(df).astype(bool), "selected by function"
    if isinstance(baseline, Mapping):
        mask = match(df, baseline)
        if not mask.any():
            raise ValueError(f"no trial matches baseline {dict(baseline)}")
        return mask, "selected by " + ", ".join(f"{k}={fmt_value(v)}" for k, v in baseline.items())
    if isinstance(baseline, str):
        for col in ("run_id", "trial_id"):
            if col in df.columns and (df[col].astype(str) == baseline).any():
                return _same_config(df, (df[col].astype(str) == baseline).to_numpy().argmax()), f"{col}={baseline}"
        raise ValueError(f"no trial has run_id or trial_id {baseline!r}")
    if "baseline" in df.columns:
        tagged = df["baseline"].astype(str).str.lower().isin(("1", "true", "yes"))
        if tagged.any():
            return tagged, "tagged baseline"
    for col in ("name", "trial_id"):
        if col in df.columns:
            named = df[col].astype(str).str.lower().str.contains("baseline")
            if named.any():
                return _same_config(df, named.to_numpy().argmax()), f"{col} contains 'baseline'"
    return _same_config(df, 0), "first grid point (no trial tagged or named baseline)"


def _same_config(df: pd.DataFrame, pos: int) -> pd.Series:
    axes = varying_columns(df)
    if not axes:
        return pd.Series(True, index=df.index)
    row = df.iloc[pos]
    return match(df, {k: row[k] for k in axes})
