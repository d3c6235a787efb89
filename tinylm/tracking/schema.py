"""What tinylm's runs carry in an MLflow store: tag names, statuses, parent run names, JSON-safe values.

Standard library and ``tinylm.layout`` only (no mlflow): the writer sets these tags, the readers select and
type rows by them, so their names live here once.
"""

from __future__ import annotations

import re

from tinylm.layout import parse_key

TAG_SWEEP, TAG_SWEEP_KEY, TAG_TRIAL_ID = "tinylm.sweep", "tinylm.sweep_key", "tinylm.trial_id"
TAG_STATUS, TAG_STOP_REASON, TAG_RESTARTS = "tinylm.status", "tinylm.stop_reason", "tinylm.restarts"
TAG_PARENT, TAG_RUN_NAME, TAG_NOTE = "mlflow.parentRunId", "mlflow.runName", "mlflow.note.content"
TAG_GIT_COMMIT = "mlflow.source.git.commit"  # the UI shows it in the run header
# MLflow 3's UI opens an untagged experiment as GenAI (traces, prompts); this experiment tag opens it as model
# training (runs, metrics) in the 3.x UIs that read it. Name and value from MLflow 3.17's UI (its
# ``ExperimentKind`` enum). 3.17's own UI reads the view from a per-browser switch instead: see ``ui_url``.
TAG_EXPERIMENT_KIND, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"
# Provenance tags (set by the caller under these names); children inherit them from the parent.
PROVENANCE = ("git_sha", "git_dirty", "tokenizer_hash", "data_fingerprint", "device", "hostname", "hypothesis")
INHERITED = (TAG_SWEEP, TAG_SWEEP_KEY, TAG_GIT_COMMIT, *PROVENANCE)
# tinylm status -> MLflow run status. Early stops are legitimate results, so FINISHED.
STATUS = {"completed": "FINISHED", "stopped_asha": "FINISHED", "killed_rule": "FINISHED",
          "failed": "FAILED", "diverged": "FAILED", "interrupted": "KILLED"}


def parent_run_name(sweep_key: str) -> str:
    """A sweep's parent run name as the MLflow UI lists it: its key without the absolute results path the key
    carries to stay unique (``glu@/home/me/results`` -> ``glu``, ``single:/home/me/results/runs/a`` ->
    ``single:a``). The full key stays in the tag ``tinylm.sweep_key``."""
    parsed = parse_key(sweep_key)
    if parsed is None:
        return sweep_key
    kind, name, path = parsed
    return name if kind == "sweep" else "single:" + re.split(r"[\\/]", path.rstrip("/\\"))[-1]
