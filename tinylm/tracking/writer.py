"""The tracking writer: ``Tracker`` logs what a sweep and its trials record.

One parent run per sweep (found again by the tag ``tinylm.sweep_key``, so a resumed sweep reuses it) and one
nested child run per trial (found again by ``tinylm.trial_id`` + ``mlflow.parentRunId``, so a restarted trial
never gets a duplicate). Every call names its run id: no fluent active-run state.
"""

from __future__ import annotations

import json
import math
import posixpath
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from tinylm.layout import jsonable, mask_uri
from tinylm.tracking.schema import (
    EXPERIMENT_KIND,
    INHERITED,
    STATUS,
    TAG_EXPERIMENT_KIND,
    TAG_GIT_COMMIT,
    TAG_NOTE,
    TAG_PARENT,
    TAG_RESTARTS,
    TAG_RUN_NAME,
    TAG_STATUS,
    TAG_STOP_REASON,
    TAG_SWEEP,
    TAG_SWEEP_KEY,
    TAG_TRIAL_ID,
    parent_run_name,
)
from tinylm.tracking.store import connect, quoted, search_runs, sqlite_path


def _key(name: Any) -> str:
    """A valid MLflow param/metric name: alphanumerics, ``_ - . /`` and spaces, no path tricks."""
    k = re.sub(r"[^\w.\-/ ]", "_", str(name))[:MAX_ENTITY_KEY_LENGTH] or "_"
    if posixpath.normpath(k) != k or k.startswith("."):
        k = "_" + k.replace("/", "_")
    return k


def _text(value: Any, limit: int) -> str:
    """A param/tag value: dicts/lists as sorted JSON (stable across restarts), URIs masked, safely truncated."""
    s = value if isinstance(value, str) else str(value)
    if isinstance(value, (dict, list, tuple)):
        try:
            s = json.dumps(value, sort_keys=True, default=str)
        except TypeError:  # keys of mixed types
            s = json.dumps(value, default=str)
    s = mask_uri(s)
    return s if len(s) <= limit else s[: limit - 14] + "...[truncated]"


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


class Tracker:
    """Writes one experiment of a tracking store; every call names its run id explicitly.

    Args:
        uri: tracking URI (see ``default_uri``).
        experiment: MLflow experiment name; created if missing (a deleted one of that name is restored).
        artifact_root: where run artifacts go for a new experiment; default for sqlite stores is
            ``<db dir>/mlartifacts``, otherwise the server's / MLflow's default. A local folder is ignored for an
            MLflow server (``http(s)://``): the server stores artifacts where it was told to (S3 on a cluster),
            and a folder of the machine that created the experiment would hold every later client's artifacts
            on that machine's disk only.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        self.uri, self.experiment = uri, experiment
        self.client = connect(uri)
        server = uri.startswith(("http:", "https:", "databricks"))
        if server and artifact_root and "://" not in artifact_root:
            artifact_root = None
        if artifact_root is None and uri.startswith("sqlite:") and sqlite_path(uri) is not None:
            artifact_root = str(sqlite_path(uri).resolve().parent / "mlartifacts")
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if artifact_root is None and not server:
                # a direct DB store would put artifacts in ./mlruns relative to *this* process's cwd
                warnings.warn(f"no artifact_root for new experiment {experiment!r} in {mask_uri(uri)}: MLflow "
                              "puts its artifacts in ./mlruns under the current directory; pass artifact_root "
                              "(a shared path or s3://...) or log through an MLflow server", stacklevel=2)
            if artifact_root:
                local = "://" not in artifact_root
                root = str(Path(artifact_root).expanduser().resolve()) if local else artifact_root.rstrip("/")
                location = root + "/" + re.sub(r"[^\w.-]", "_", experiment)
            try:
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location, tags={TAG_EXPERIMENT_KIND: EXPERIMENT_KIND})
            except MlflowException:  # created meanwhile by another process
                exp = self.client.get_experiment_by_name(experiment)
                self.experiment_id = exp.experiment_id
        else:
            self.experiment_id = exp.experiment_id
            if exp.lifecycle_stage == "deleted":
                warnings.warn(f"MLflow experiment {experiment!r} was deleted; restoring it", stacklevel=2)
                self.client.restore_experiment(self.experiment_id)
        if exp is not None and TAG_EXPERIMENT_KIND not in exp.tags:  # made before tinylm tagged; a kind set by
            self.client.set_experiment_tag(self.experiment_id, TAG_EXPERIMENT_KIND, EXPERIMENT_KIND)  # hand stays

    # --- runs ---------------------------------------------------------------------------------------------
    def start_sweep(self, sweep_key: str, params: dict, tags: dict, description: str = "", hypothesis: str = "",
                    sweep: str | None = None) -> str:
        """The parent run of a sweep: reused (status back to RUNNING) if one with this sweep_key exists.

        Args:
            sweep_key: stable key of the sweep invocation-series (a resumed sweep passes the same key).
            params: logged once (e.g. the base Config and the search space); changed values become tags.
            tags: provenance (git_sha, git_dirty, device, hostname, ...); ``tinylm.sweep`` names the sweep.
            description: shown as the run description in the MLflow UI.
            hypothesis: what the sweep tests (tag ``hypothesis``).
            sweep: the sweep's readable name; default ``tags["tinylm.sweep"]`` or the experiment name.
        """
        tags = dict(tags or {})
        name = sweep or tags.get(TAG_SWEEP) or self.experiment
        run_name = str(tags.pop(TAG_RUN_NAME, "") or parent_run_name(sweep_key))
        all_tags = {**tags, TAG_SWEEP: name, TAG_SWEEP_KEY: sweep_key, TAG_STATUS: "running", TAG_STOP_REASON: "",
                    TAG_RUN_NAME: run_name}  # also renames a reused parent named by an older tinylm
        if hypothesis:
            all_tags["hypothesis"] = hypothesis
        if description:
            all_tags[TAG_NOTE] = description
        if tags.get("git_sha"):
            all_tags[TAG_GIT_COMMIT] = tags["git_sha"]
        found = [r for r in search_runs(self.client, [self.experiment_id],
                                    f"tags.`{TAG_SWEEP_KEY}` = '{quoted(sweep_key, 'sweep_key')}'")
                 if TAG_PARENT not in r.data.tags]
        return self._get_or_create(found, run_name, all_tags, params)

    def trial_run(self, parent_run_id: str, trial_id: str, cfg: dict, tags: dict | None = None) -> str:
        """The child run of one trial, found again by (parent, trial_id); params = cfg, logged once."""
        parent = self.client.get_run(parent_run_id)
        ptags = parent.data.tags
        tags = dict(tags or {})
        run_name = str(tags.pop(TAG_RUN_NAME, "") or f"{ptags.get(TAG_SWEEP, self.experiment)}-{trial_id}")
        all_tags = {**{k: ptags[k] for k in INHERITED if k in ptags}, **tags, TAG_PARENT: parent_run_id,
                    TAG_TRIAL_ID: trial_id, TAG_STATUS: "running", TAG_STOP_REASON: ""}
        filt = (f"tags.`{TAG_TRIAL_ID}` = '{quoted(trial_id, 'trial_id')}' and "
                f"tags.`{TAG_PARENT}` = '{quoted(parent_run_id, 'parent_run_id')}'")
        found = search_runs(self.client, [parent.info.experiment_id], filt)
        return self._get_or_create(found, run_name, all_tags, cfg, parent.info.experiment_id)

    def _get_or_create(self, found: list[Run], run_name: str, tags: dict, params: dict,
                       experiment_id: str | None = None) -> str:
        if found:
            run = min(found, key=lambda r: r.info.start_time)
            run_id = run.info.run_id
            self.client.update_run(run_id, "RUNNING")  # NB: MLflow keeps the old end_time
            restarts = int(run.data.tags.get(TAG_RESTARTS, "0")) + 1
            self.set_tags(run_id, {**tags, TAG_RESTARTS: restarts})
            existing = run.data.params
        else:
            tags = {k: _text(v, MAX_TAG_VAL_LENGTH) for k, v in tags.items()}
            run = self.client.create_run(experiment_id or self.experiment_id, tags=tags, run_name=run_name)
            run_id, existing = run.info.run_id, {}
        self._log_params(run_id, params or {}, existing)
        return run_id

    def _log_params(self, run_id: str, params: dict, existing: dict[str, str]) -> None:
        new, changed = [], {}
        for k, v in params.items():
            key, value = _key(k), _text(v, MAX_PARAM_VAL_LENGTH)
            if key not in existing:
                new.append(Param(key, value))
            elif existing[key] != value:  # MLflow params are immutable: keep the first, record the change
                changed[f"tinylm.param_changed.{key}"] = value
        for chunk in _chunks(new, 100):
            self.client.log_batch(run_id, params=chunk, synchronous=True)
        if changed:
            warnings.warn(f"run {run_id}: params already logged with other values, kept the first and "
                          f"recorded the new ones as tags: {sorted(changed)}", stacklevel=3)
            self.set_tags(run_id, changed)

    def log_metrics(self, run_id: str, metrics: dict[str, Any], step: int) -> None:
        """Log numbers at ``step`` (= tokens seen); NaN/inf and non-numeric values are dropped."""
        ts, batch = int(time.time() * 1000), []
        for k, v in metrics.items():
            if v is None or isinstance(v, (str, bytes)):
                continue
            try:
                f = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(f):
                batch.append(Metric(_key(k), f, ts, int(step)))
        for chunk in _chunks(batch, 1000):
            self.client.log_batch(run_id, metrics=chunk, synchronous=True)

    def set_tags(self, run_id: str, tags: dict) -> None:
        items = [RunTag(str(k), _text(v, MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for chunk in _chunks(items, 100):
            self.client.log_batch(run_id, tags=chunk, synchronous=True)

    def log_dict(self, run_id: str, obj: dict, artifact_file: str) -> None:
        """A JSON artifact (resolved config, DeepSpeed config, final metrics); NaN -> null, URIs masked."""
        self.client.log_text(run_id, json.dumps(jsonable(obj), indent=2, sort_keys=True), artifact_file)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def finish_run(self, run_id: str, status: str, stop_reason: str = "", final_metrics: dict | None = None,
                   step: int | None = None, log_metrics: bool = True) -> None:
        """End a run. ``status`` in tinylm terms (see ``STATUS``) -> tag ``tinylm.status`` + MLflow status.

        ``final_metrics`` are written as the artifact ``final_metrics.json`` (with ``status`` and ``stop_reason``)
        and, unless ``log_metrics`` is False (the caller logged them already), as metrics at ``step`` (default
        their ``tokens`` entry or 0).
        """
        if status not in STATUS:
            raise ValueError(f"status={status!r}; choose one of {', '.join(STATUS)}")
        if final_metrics:
            if log_metrics:
                at = step if step is not None else final_metrics.get("tokens", 0)
                self.log_metrics(run_id, final_metrics, step=int(at or 0))
            self.log_dict(run_id, final_metrics | {"status": status, "stop_reason": stop_reason},
                          "final_metrics.json")
        self.set_tags(run_id, {TAG_STATUS: status, TAG_STOP_REASON: stop_reason})
        self.client.set_terminated(run_id, STATUS[status])

    def child_runs(self, parent_run_id: str) -> list[Run]:
        filt = f"tags.`{TAG_PARENT}` = '{quoted(parent_run_id, 'parent_run_id')}'"
        exp = self.client.get_run(parent_run_id).info.experiment_id
        return sorted(search_runs(self.client, [exp], filt), key=lambda r: r.info.start_time)

    def trial_statuses(self, parent_run_id: str) -> dict[str, str]:
        """trial id -> tinylm status of every child of a sweep's parent run ("running" until a trial ended). The
        members of a batched trial (tag ``ray_trial_id`` = the Tune trial, their own trial ids ``<trial>.seed<s>``)
        also give their Tune trial one status: running while any member runs, else interrupted if any was, else
        the first member's."""
        out: dict[str, str] = {}
        unfinished = {"running": 0, "interrupted": 1}
        for r in self.child_runs(parent_run_id):
            tid, status = r.data.tags.get(TAG_TRIAL_ID, ""), r.data.tags.get(TAG_STATUS, "running")
            out[tid] = status
            tune_id = r.data.tags.get("ray_trial_id", tid)
            if tune_id != tid and unfinished.get(status, 2) < unfinished.get(out.get(tune_id, ""), 3):
                out[tune_id] = status
        return out

    def close_open_children(self, parent_run_id: str, status: str, stop_reason: str) -> int:
        """End every child of the parent that is still running (a sweep that stopped before they ended), so no
        run stays RUNNING after the driver is gone. Returns how many."""
        open_runs = [r for r in self.child_runs(parent_run_id) if r.data.tags.get(TAG_STATUS, "running") == "running"]
        for r in open_runs:
            self.finish_run(r.info.run_id, status, stop_reason)
        return len(open_runs)
