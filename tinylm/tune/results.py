"""A sweep's results: the ranked table from the tracking store, the summary a sweep prints, tokens spent."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from tinylm.layout import mask_uri
from tinylm.ranking import trial_loss

if TYPE_CHECKING:  # a sweep's settings and grid, handed in by tinylm.sweep (which calls this package)
    from tinylm.sweep.settings import Sweep
    from tinylm.sweep.space import Space

STATUS_DONE = ("completed", "diverged")  # statuses of trials that ran to their end (their own report says so)
STOPPED_EARLY = ("stopped_asha", "killed_rule")  # statuses of trials a scheduler ended before their last token
PLANNED = ("completed", *STOPPED_EARLY)  # the endings a sweep plans for; anything else makes it exit non-zero


SHOW = ("val_loss", "val_ppl", "tokens", "params_total", "latency_ms_b1_l128", "peak_mem_mb", "tokens_per_s")


def results_table(sweep: Sweep) -> pd.DataFrame:
    """All trials of the sweep from the tracking store, best first (``ranked``; one source of truth across resumes)."""
    from tinylm.tracking import load_runs

    return ranked(load_runs(sweep.uri(), sweep=sweep.name))


def ranked(table: pd.DataFrame) -> pd.DataFrame:
    """Rows best first by ``tinylm.ranking.trial_loss`` (final val loss, else the latest), ties in table order,
    trials without a loss last."""
    losses = np.array([trial_loss(row) for row in table.to_dict("records")], dtype=float)
    return table.iloc[np.argsort(losses, kind="stable")].reset_index(drop=True)


def print_results(sweep: Sweep, table: pd.DataFrame, space: Space) -> str:
    from tinylm.tracking import ui_url

    space = space
    axes = [k for k in space.axes if k in table.columns] + (["seed"] if sweep.seeds > 1 else [])
    axes += sorted({k for v in space.variants or [] for k in v} & set(table.columns))
    cols = ["trial_id", *dict.fromkeys(axes), *[c for c in SHOW if c in table.columns], "status"]
    out_csv = write_csv(sweep, table)
    text = table[cols].to_string(index=False, float_format=lambda x: f"{x:,.4g}")
    msg = (f"\n{text}\n\n{tokens_footer(table)}\n"
           f"results CSV   : {out_csv}\n"
           + (f"MLflow        : open {ui_url(sweep.uri())} (the tracking server; MLflow's model training view)\n"
              if sweep.uri().startswith(("http:", "https:")) else
              f"MLflow        : mlflow ui --backend-store-uri {mask_uri(sweep.uri())} --host 127.0.0.1, then open\n"
              f"                {ui_url(sweep.uri())} (MLflow's model training view)\n") +
           f"Optuna        : optuna-dashboard {mask_uri(sweep.storage())} --host 127.0.0.1\n"
           f"analysis      : python -m tinylm.analysis {sweep.name}")
    print(msg)
    return msg


def results_csv(sweep: Sweep) -> str:
    return os.path.join(sweep.root, sweep.name, "results.csv")


def write_csv(sweep: Sweep, table: pd.DataFrame) -> str:
    """``<results>/<sweep>/results.csv``: the table as the tracking store holds it (also after an interrupt, so
    it never shows an older state than MLflow)."""
    out_csv = results_csv(sweep)
    os.makedirs(os.path.dirname(out_csv), exist_ok=True)
    table.to_csv(out_csv, index=False)
    return out_csv


def unplanned(sweep: Sweep, table: pd.DataFrame) -> str | None:
    """One line when some trials did not end as planned (diverged, failed, ...): how many, and where to look;
    None when every trial completed or was stopped early by ASHA / the kill rule."""
    if "status" not in table or not len(table):
        return None
    bad = table.loc[~table["status"].isin(PLANNED), "status"].fillna("unknown")
    if not len(bad):
        return None
    counts = ", ".join(f"{n} {status}" for status, n in bad.value_counts().items())
    return (f"{len(bad)} of {len(table)} trials of sweep {sweep.name} did not end as planned ({counts}); see the "
            f"status and stop_reason columns of {results_csv(sweep)}")


def tokens_spent(table: pd.DataFrame) -> tuple[int, int]:
    """(tokens trained, cooldown-probe branches included; tokens the full grid would train: every trial to its
    train_tokens)."""
    spent = sum(int(pd.to_numeric(table[c], errors="coerce").fillna(0).sum())
                for c in ("tokens", "probe_tokens") if c in table)
    full = int(pd.to_numeric(table.get("train_tokens"), errors="coerce").fillna(0).sum()) \
        if "train_tokens" in table else 0
    return spent, full


def stopped_early(table: pd.DataFrame) -> int:
    """How many trials of a results table ASHA or the kill rule stopped."""
    return int(table["status"].isin(STOPPED_EARLY).sum()) if "status" in table else 0


def tokens_footer(table: pd.DataFrame) -> str:
    spent, full = tokens_spent(table)
    early = stopped_early(table)
    share = f" = {spent / full:.0%} of the full grid's {full:,}" if full else ""
    return f"tokens spent  : {spent:,}{share} ({early} of {len(table)} trials stopped early)"


__all__ = ["PLANNED", "STATUS_DONE", "STOPPED_EARLY", "print_results", "ranked", "results_csv", "results_table",
           "stopped_early", "tokens_footer", "tokens_spent", "unplanned", "write_csv"]
