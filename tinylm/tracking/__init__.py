"""Experiment tracking: the only package of tinylm that imports mlflow.

One parent run per sweep (found again by the tag ``tinylm.sweep_key``, so a resumed sweep reuses it) and one
nested child run per trial (found again by ``tinylm.trial_id`` + ``mlflow.parentRunId``, so a restarted trial
never gets a duplicate). Everything goes through ``MlflowClient`` with explicit run ids: no fluent active-run
state, which is what a long-lived Tune driver needs (Ray's MLflowLoggerCallback duplicates runs on restart:
ray#48664, ray#19978). Readers (``load_runs``, ``load_curves``, ``list_sweeps``, ``experiment_log``,
``export_log``) return plain DataFrames / dicts / JSON for ``tinylm.analysis`` and ``tinylm.log``.

Store: ``default_uri(results_dir)`` = ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs results_dir>/mlflow.db``
with artifacts in ``<results_dir>/mlartifacts`` (set per experiment, never relative to the cwd). An explicit URI
(``http://host:5000``, ``postgresql://...``) always wins. Credentials in URIs are masked in every message, tag
and param (``mask_uri``).

Where things live (callers import the names in ``__all__`` from here; writer and readers build on schema and
store, which import neither each other nor this package):

- ``schema``: what a run carries: the tag names (``TAG_*``), ``PROVENANCE`` / ``INHERITED`` tags, the ``STATUS``
  map (tinylm status -> MLflow status), the experiment-kind tag of the model training view, ``parent_run_name``
  (no absolute results path in the UI). No mlflow import.
- ``store``: reaching a store, the only module that calls mlflow's client for a search: ``TrackingError``,
  ``check_tracking`` / ``check_storage`` (fail fast within ``REACH_TIMEOUT_S``, bounded by ``within``, with a
  hint; the Optuna storage too), ``require_store`` / ``read_store`` (the read-only commands),
  ``connect``, ``sqlite_path``, ``search_experiments`` / ``search_runs`` (every page), ``quoted`` (safe filter
  values) and ``ui_url`` (the model training view).
- ``writer``: ``Tracker``, what a sweep and its trials log (parent/child runs, params, metrics, tags, artifacts).
- ``readers``: ``list_sweeps``, ``load_runs``, ``load_curves``; ``experiment_log``, the one per-sweep summary (best
  trial by ``tinylm.ranking``, the baselines) that ``python -m tinylm.log`` prints and ``export_log`` writes as JSON.
- ``tinylm.layout`` (re-exported): ``default_uri``, ``resolve_uri``, ``mask_uri``; ``jsonable`` (NaN -> null, URIs
  masked) is used for every JSON the package writes, and by ``tinylm.train``'s metrics.json.
"""

from __future__ import annotations

from tinylm.layout import default_uri, mask_uri, resolve_uri
from tinylm.tracking.readers import experiment_log, export_log, foreign_artifacts, list_sweeps, load_curves, load_runs
from tinylm.tracking.schema import INHERITED, PROVENANCE, STATUS, parent_run_name
from tinylm.tracking.store import (
    REACH_TIMEOUT_S,
    TrackingError,
    check_storage,
    check_tracking,
    read_store,
    require_store,
    ui_url,
    within,
)
from tinylm.tracking.writer import Tracker

__all__ = ["INHERITED", "PROVENANCE", "REACH_TIMEOUT_S", "STATUS", "Tracker", "TrackingError", "check_storage",
           "check_tracking", "default_uri", "experiment_log", "export_log", "foreign_artifacts", "list_sweeps",
           "load_curves", "load_runs", "mask_uri", "parent_run_name", "read_store", "require_store", "resolve_uri",
           "ui_url", "within"]
