"""Which trial is best: one definition for the master log (its text and its JSON), ``compare`` and the analysis.

A trial's loss is its final eval (``final_val_loss``), else its latest eval (``val_loss``): a trial stopped
before its last eval still ranks on what it reached. The best trial of a sweep has the lowest such loss (the
first one on ties); the fields that "vary" in a sweep are the Config fields whose values differ across its trials.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from tinylm.config import FIELDS

LOSS = ("final_val_loss", "val_loss")  # a trial's loss: the first of these that is a finite number


def _number(v: Any) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):  # None, pd.NA, a string that is no number
        return math.nan
    return x


def loss_metric(metrics: Mapping[str, Any]) -> str | None:
    """The name of the metric that gives this trial's loss (see ``LOSS``); None when it has none."""
    return next((k for k in LOSS if math.isfinite(_number(metrics.get(k)))), None)


def trial_loss(metrics: Mapping[str, Any]) -> float:
    """A trial's loss from its metrics (a dict, an MLflow run's metrics or a results-table row); NaN if none."""
    key = loss_metric(metrics)
    return _number(metrics[key]) if key else math.nan


def best_trial(trials: Sequence[Mapping[str, Any]]) -> int | None:
    """Index of the trial with the lowest ``trial_loss`` (the first on ties); None when no trial has a loss."""
    losses = [trial_loss(t) for t in trials]
    scored = [i for i, x in enumerate(losses) if math.isfinite(x)]
    return min(scored, key=lambda i: losses[i]) if scored else None


def plain(v: Any) -> Any:
    """A results-table cell as a plain Python value (numpy scalars -> int / float / bool / str), as Optuna, Tune,
    Config and JSON want it."""
    return v.item() if hasattr(v, "item") else v


def varied(configs: Iterable[Mapping[str, Any]], exclude: Iterable[str] = ("name",)) -> list[str]:
    """Config fields (in Config order; ``exclude``d ones, by default the ``name`` label, left out) whose values
    differ across the trials, compared as text (MLflow params are text); a trial without the field counts as one
    more value."""
    configs, exclude = list(configs), set(exclude)
    return [k for k in FIELDS if k not in exclude and len({str(c.get(k)) for c in configs}) > 1]


__all__ = ["LOSS", "best_trial", "loss_metric", "plain", "trial_loss", "varied"]
