"""Experiment tracking: the only module of tinylm that imports mlflow.

One parent run per sweep (found again by the tag ``tinylm.sweep_key``, so a resumed sweep reuses it) and one
nested child run per trial (found again by ``tinylm.trial_id`` + ``mlflow.parentRunId``, so a restarted trial
never gets a duplicate). Everything goes through ``MlflowClient`` with explicit run ids: no fluent active-run
state, which is what a long-lived Tune driver needs (Ray's MLflowLoggerCallback duplicates runs on restart:
ray#48664, ray#19978). Readers (``load_runs``, ``load_curves``, ``list_sweeps``, ``export_log``) return plain
DataFrames / JSON for ``tinylm.analysis``.

Store: ``default_uri(results_dir)`` = ``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<abs results_dir>/mlflow.db``
with artifacts in ``<results_dir>/mlartifacts`` (set per experiment, never relative to the cwd). An explicit URI
(``http://host:5000``, ``postgresql://...``) always wins. Credentials in URIs are masked in every message, tag
and param (``mask_uri``).
"""

from __future__ import annotations

import json
import math
import os
import posixpath
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, Run, RunTag, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH

from tinylm import ranking
from tinylm.config import FIELDS, ConfigError, coerce
from tinylm.layout import default_uri, mask_uri, parse_key, resolve_uri  # noqa: F401 - re-exported

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
_FIELD_TYPES = {name: type(f.default) for name, f in FIELDS.items()}


class TrackingError(RuntimeError):
    """The tracking store is unreachable or a lookup matched nothing; the message says what to do."""


# --- URIs and credentials -----------------------------------------------------------------------------------
# mask_uri, default_uri and resolve_uri live in tinylm.layout (imported above, re-exported here)


def _driver_uri(uri: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; the stack ships psycopg2-binary, so name it."""
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://"):]
    if uri.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            uri = "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


def _client(uri: str) -> MlflowClient:
    return MlflowClient(tracking_uri=_driver_uri(uri))


def _sqlite_path(uri: str) -> Path | None:
    rest = uri.split("?", 1)[0][len("sqlite://"):]
    if rest in ("", "/:memory:"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest)


def check_tracking(uri: str, timeout_s: float = 10) -> None:
    """Fail fast, before any compute, when the store cannot be written.

    http(s): ``GET /health`` then one experiments search (catches auth errors); sqlite: the directory exists
    or can be made and is writable; postgresql/mysql/mssql: a connection with ``select 1``. Raises
    ``TrackingError`` with the URI masked and a hint how to fix it.
    """
    scheme = uri.split(":", 1)[0].lower()
    where = mask_uri(uri)
    try:
        if scheme in ("http", "https"):
            _check_http(uri, timeout_s)
        elif scheme == "sqlite":
            _check_sqlite(uri)
        elif scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "mssql"):
            _check_db(uri, timeout_s)
        else:
            _client(uri).search_experiments(max_results=1)
    except TrackingError:
        raise
    except Exception as e:  # any failure means "not usable"; `from None` keeps secrets out of tracebacks
        if scheme in ("http", "https"):
            port = re.search(r":(\d+)(?:/|$)", uri.split("@")[-1])
            hint = ("start it with `mlflow server --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 "
                    f"--port {port.group(1) if port else 5000}`, or unset MLFLOW_TRACKING_URI to use the local "
                    "sqlite store")
        elif scheme == "sqlite":
            hint = "choose a writable --results-dir, or set MLFLOW_TRACKING_URI to a tracking server"
        elif scheme.split("+")[0] in ("postgresql", "postgres", "mysql", "mssql"):
            hint = "start the database and check host, port and credentials, or unset MLFLOW_TRACKING_URI"
        else:
            hint = "check the URI (use sqlite:///<path> or http://host:port), or unset MLFLOW_TRACKING_URI"
        raise TrackingError(f"MLflow tracking server at {where} is not reachable: "
                            f"{type(e).__name__}: {mask_uri(e)[:500]}; {hint}") from None


def _check_http(uri: str, timeout_s: float) -> None:
    import requests  # an mlflow dependency

    deadline = time.monotonic() + timeout_s
    auth, headers = None, {}
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    base = uri.rstrip("/")
    r = requests.get(f"{base}/health", timeout=max(0.5, deadline - time.monotonic()), auth=auth, headers=headers)
    r.raise_for_status()
    r = requests.post(f"{base}/api/2.0/mlflow/experiments/search", json={"max_results": 1}, auth=auth,
                      headers=headers, timeout=max(0.5, deadline - time.monotonic()))
    if r.status_code in (401, 403):
        raise TrackingError(f"MLflow tracking server at {mask_uri(uri)} refused the credentials (HTTP "
                            f"{r.status_code}); set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
                            "MLFLOW_TRACKING_TOKEN")
    r.raise_for_status()


def _check_sqlite(uri: str) -> None:
    path = _sqlite_path(uri)
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tinylm-write-check-"):
        pass
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is read-only")


def _check_db(uri: str, timeout_s: float) -> None:
    import sqlalchemy  # an mlflow dependency

    args = {"connect_timeout": max(1, int(timeout_s))} if uri.startswith("postgres") else {}
    engine = sqlalchemy.create_engine(_driver_uri(uri), connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    finally:
        engine.dispose()


# --- values -------------------------------------------------------------------------------------------------
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


def _jsonable(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> null (a diverged loss), unknown objects -> str, URIs masked."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return _jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return mask_uri(obj)


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string, ViewType.ACTIVE_ONLY, 1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def _quoted(value: str, what: str) -> str:
    if "'" in value or "\\" in value:
        raise ValueError(f"{what}={value!r} may not contain quotes or backslashes")
    return value


def ui_url(uri: str, experiment_id: str | None = None) -> str:
    """The MLflow UI page of an experiment in the model training view (runs, metrics, charts).

    MLflow 3.17's UI picks its view from the sidebar's GenAI / Model training switch (remembered per browser,
    default GenAI), not from the experiment's ``mlflow.experimentKind`` tag (read only by earlier 3.x UIs); the
    ``workflowType=machine_learning`` query sets that switch. ``uri``: an ``http(s)://`` tracking server serves
    the UI itself; for a database store, ``mlflow ui``'s default address is meant.
    """
    base = mask_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"{base}/#/{page}?workflowType=machine_learning"


def parent_run_name(sweep_key: str) -> str:
    """A sweep's parent run name as the MLflow UI lists it: its key without the absolute results path the key
    carries to stay unique (``glu@/home/me/results`` -> ``glu``, ``single:/home/me/results/runs/a`` ->
    ``single:a``). The full key stays in the tag ``tinylm.sweep_key``."""
    parsed = parse_key(sweep_key)
    if parsed is None:
        return sweep_key
    kind, name, path = parsed
    return name if kind == "sweep" else "single:" + re.split(r"[\\/]", path.rstrip("/\\"))[-1]


class Tracker:
    """Writes one experiment of a tracking store; every call names its run id explicitly.

    Args:
        uri: tracking URI (see ``default_uri``).
        experiment: MLflow experiment name; created if missing (a deleted one of that name is restored).
        artifact_root: where run artifacts go for a new experiment; default for sqlite stores is
            ``<db dir>/mlartifacts``, otherwise the server's / MLflow's default.
    """

    def __init__(self, uri: str, experiment: str, artifact_root: str | None = None):
        self.uri, self.experiment = uri, experiment
        self.client = _client(uri)
        if artifact_root is None and uri.startswith("sqlite:") and _sqlite_path(uri) is not None:
            artifact_root = str(_sqlite_path(uri).resolve().parent / "mlartifacts")
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = None
            if artifact_root is None and not uri.startswith(("http:", "https:", "databricks")):
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
        found = [r for r in _search(self.client, [self.experiment_id],
                                    f"tags.`{TAG_SWEEP_KEY}` = '{_quoted(sweep_key, 'sweep_key')}'")
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
        filt = (f"tags.`{TAG_TRIAL_ID}` = '{_quoted(trial_id, 'trial_id')}' and "
                f"tags.`{TAG_PARENT}` = '{_quoted(parent_run_id, 'parent_run_id')}'")
        found = _search(self.client, [parent.info.experiment_id], filt)
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
        self.client.log_text(run_id, json.dumps(_jsonable(obj), indent=2, sort_keys=True), artifact_file)

    def log_artifact(self, run_id: str, path: str, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def finish_run(self, run_id: str, status: str, stop_reason: str = "", final_metrics: dict | None = None,
                   step: int | None = None) -> None:
        """End a run. ``status`` in tinylm terms (see ``STATUS``) -> tag ``tinylm.status`` + MLflow status.

        ``final_metrics`` are logged as metrics (at ``step``, default their ``tokens`` entry or 0) and as the
        artifact ``final_metrics.json``.
        """
        if status not in STATUS:
            raise ValueError(f"status={status!r}; choose one of {', '.join(STATUS)}")
        if final_metrics:
            at = step if step is not None else final_metrics.get("tokens", 0)
            self.log_metrics(run_id, final_metrics, step=int(at or 0))
            self.log_dict(run_id, final_metrics, "final_metrics.json")
        self.set_tags(run_id, {TAG_STATUS: status, TAG_STOP_REASON: stop_reason})
        self.client.set_terminated(run_id, STATUS[status])

    def child_runs(self, parent_run_id: str) -> list[Run]:
        filt = f"tags.`{TAG_PARENT}` = '{_quoted(parent_run_id, 'parent_run_id')}'"
        exp = self.client.get_run(parent_run_id).info.experiment_id
        return sorted(_search(self.client, [exp], filt), key=lambda r: r.info.start_time)


# --- reading back -------------------------------------------------------------------------------------------
def _scan(uri: str, experiment: str | None = None) -> tuple[dict[str, str], dict[str, Run], list[Run]]:
    """(experiment id -> name, parent runs by id, child runs) across the active experiments."""
    client = _client(uri)
    exps, token = {}, None
    while True:
        page = client.search_experiments(ViewType.ACTIVE_ONLY, 1000, page_token=token)
        exps.update({e.experiment_id: e.name for e in page})
        if not (token := page.token):
            break
    if experiment is not None:
        if experiment not in exps.values():
            raise TrackingError(f"no experiment {experiment!r} in {mask_uri(uri)}; "
                                f"available experiments: {', '.join(sorted(exps.values())) or '(none)'}")
        exps = {i: n for i, n in exps.items() if n == experiment}
    runs = _search(client, list(exps))
    parents = {r.info.run_id: r for r in runs if TAG_SWEEP_KEY in r.data.tags and TAG_PARENT not in r.data.tags}
    children = [r for r in runs if TAG_TRIAL_ID in r.data.tags]
    return exps, parents, children


def _time(ms: int | None) -> pd.Timestamp | None:
    return pd.Timestamp(ms, unit="ms", tz="UTC") if ms else None


def _status(run: Run) -> str:
    return run.data.tags.get(TAG_STATUS) or run.info.status.lower()


def _sweeps_frame(exps: dict[str, str], parents: dict[str, Run], children: list[Run]) -> pd.DataFrame:
    counts: dict[str, int] = {}
    for c in children:
        counts[c.data.tags.get(TAG_PARENT, "")] = counts.get(c.data.tags.get(TAG_PARENT, ""), 0) + 1
    rows = [{"sweep": p.data.tags.get(TAG_SWEEP, exps[p.info.experiment_id]),
             "sweep_key": p.data.tags[TAG_SWEEP_KEY], "experiment": exps[p.info.experiment_id], "run_id": rid,
             "status": _status(p), "start_time": _time(p.info.start_time),
             "end_time": _time(p.info.end_time) if p.info.status != "RUNNING" else None,
             "hypothesis": p.data.tags.get("hypothesis", ""), "description": p.data.tags.get(TAG_NOTE, ""),
             "n_trials": counts.get(rid, 0), "git_sha": p.data.tags.get("git_sha", "")}
            for rid, p in parents.items()]
    cols = ["sweep", "sweep_key", "experiment", "run_id", "status", "start_time", "end_time", "hypothesis",
            "description", "n_trials", "git_sha"]
    return pd.DataFrame(rows, columns=cols).sort_values("start_time", kind="stable").reset_index(drop=True)


def list_sweeps(uri: str) -> pd.DataFrame:
    """One row per parent run: sweep, sweep_key, experiment, run_id, status, start/end time, hypothesis,
    description, n_trials, git_sha; oldest first."""
    return _sweeps_frame(*_scan(uri))


def _available(sweeps: pd.DataFrame) -> str:
    if sweeps.empty:
        return "(none)"
    return "; ".join(f"{r.sweep} (key {r.sweep_key}, experiment {r.experiment}, {r.n_trials} trials, "
                     f"started {r.start_time:%Y-%m-%d %H:%M})" for r in sweeps.itertuples())


def load_runs(uri: str, sweep: str | None = None, experiment: str | None = None,
              all_sweeps: bool = False) -> pd.DataFrame:
    """One row per trial (child run) with typed Config columns, latest metrics and provenance tags.

    Args:
        uri: tracking URI.
        sweep: matches the tag ``tinylm.sweep``, the ``tinylm.sweep_key`` or the experiment name.
        experiment: restrict to one experiment (all its sweeps unless ``sweep`` is given).
        all_sweeps: every trial in the store. With none of the three, the most recently started sweep.

    Columns: run_id, parent_run_id, experiment, sweep, sweep_key, trial_id, run_name, status (tinylm terms,
    "running" while open), mlflow_status, stop_reason, start_time, end_time (UTC; None while running), every
    Config field (typed via ``coerce``), every metric (latest value), the PROVENANCE tags (git_dirty as bool).
    A metric or tag whose name is a Config field (e.g. tag ``device``) gets a ``metric.`` / ``tag.`` prefix;
    params that are not Config fields appear as ``param.<name>`` strings.
    """
    exps, parents, children = _scan(uri, experiment)
    sweeps = _sweeps_frame(exps, parents, children)

    def names(run: Run) -> set[str]:
        parent = parents.get(run.data.tags.get(TAG_PARENT, ""))
        t = {**(parent.data.tags if parent else {}), **run.data.tags}
        return {t.get(TAG_SWEEP, ""), t.get(TAG_SWEEP_KEY, ""), exps[run.info.experiment_id]} - {""}

    if sweep is None and not (all_sweeps or experiment):
        if sweeps.empty:
            raise TrackingError(f"no sweeps in {mask_uri(uri)}; available sweeps: (none)")
        sweep = sweeps.iloc[-1]["sweep"]
    if sweep is not None:
        known = set(sweeps.sweep) | set(sweeps.sweep_key) | set(sweeps.experiment)
        selected = [c for c in children if sweep in names(c)]
        if not selected and sweep not in known:
            raise TrackingError(f"no sweep {sweep!r} in {mask_uri(uri)}"
                                f"{f' (experiment {experiment!r})' if experiment else ''}; "
                                f"available sweeps: {_available(sweeps)}")
    else:
        selected = children

    reserved = set(FIELDS)
    rows = []
    for run in selected:
        t, info = run.data.tags, run.info
        pt = parents[t[TAG_PARENT]].data.tags if t.get(TAG_PARENT) in parents else {}
        row: dict[str, Any] = {
            "run_id": info.run_id, "parent_run_id": t.get(TAG_PARENT), "experiment": exps[info.experiment_id],
            "sweep": t.get(TAG_SWEEP) or pt.get(TAG_SWEEP) or exps[info.experiment_id],
            "sweep_key": t.get(TAG_SWEEP_KEY) or pt.get(TAG_SWEEP_KEY), "trial_id": t[TAG_TRIAL_ID],
            "run_name": info.run_name, "status": _status(run), "mlflow_status": info.status,
            "stop_reason": t.get(TAG_STOP_REASON, ""), "phase": t.get("tinylm.phase", "grid"),
            "start_time": _time(info.start_time),
            "end_time": _time(info.end_time) if info.status != "RUNNING" else None}
        for name in FIELDS:
            raw = run.data.params.get(name)
            try:
                row[name] = coerce(name, raw) if raw is not None else None
            except ConfigError:
                row[name] = None
        row.update({f"param.{k}": v for k, v in run.data.params.items() if k not in FIELDS})
        row.update({(f"metric.{k}" if k in reserved else k): v for k, v in run.data.metrics.items()})
        for tag in PROVENANCE:
            value = t.get(tag, pt.get(tag))
            if tag == "git_dirty" and value is not None:
                value = value.lower() in ("1", "true", "yes")
            row[f"tag.{tag}" if tag in reserved else tag] = value
        rows.append(row)

    df = pd.DataFrame(rows)
    if df.empty:
        return pd.DataFrame(columns=["run_id", "parent_run_id", "experiment", "sweep", "trial_id", "status",
                                     *FIELDS])
    for name, typ in _FIELD_TYPES.items():
        missing = df[name].isna().any()
        dtype = {int: "Int64" if missing else "int64", float: "float64", bool: "boolean" if missing else "bool"}
        if typ in dtype:  # str fields keep pandas' inferred string dtype
            df[name] = df[name].astype(dtype[typ])
    if "git_dirty" in df:
        df["git_dirty"] = df["git_dirty"].astype("boolean" if df["git_dirty"].isna().any() else "bool")
    for col in ("start_time", "end_time"):
        df[col] = pd.to_datetime(df[col], utc=True)
    return df.sort_values("start_time", kind="stable").reset_index(drop=True)


def load_curves(uri: str, run_ids: Iterable[str], metric: str = "val_loss") -> pd.DataFrame:
    """Long format ``run_id, tokens, value`` (tokens = the MLflow step), in the order of ``run_ids``.

    A restarted trial re-logs the steps after its last checkpoint; the latest value per step wins.
    """
    client, rows = _client(uri), []
    for order, rid in enumerate(run_ids):
        rows += [(order, rid, m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, metric)]
    df = pd.DataFrame(rows, columns=["order", "run_id", "tokens", "value", "timestamp"])
    df = df.sort_values(["order", "tokens", "timestamp"]).drop_duplicates(["run_id", "tokens"], keep="last")
    return df.drop(columns=["order", "timestamp"]).astype({"tokens": "int64", "value": "float64"}) \
        .reset_index(drop=True)


def export_log(uri: str, path: str) -> None:
    """Write the experiment log as JSON: every sweep with hypothesis, description, times, git commit, device,
    trial status counts and the best trial (``tinylm.ranking``: lowest final val loss, else latest val loss) with
    the Config fields that vary across the sweep."""
    exps, parents, children = _scan(uri)
    by_parent: dict[str, list[Run]] = {}
    for c in children:
        by_parent.setdefault(c.data.tags.get(TAG_PARENT, ""), []).append(c)
    sweeps = []
    for row in _sweeps_frame(exps, parents, children).itertuples():
        p, trials = parents[row.run_id].data.tags, by_parent.get(row.run_id, [])
        statuses: dict[str, int] = {}
        for c in trials:
            statuses[_status(c)] = statuses.get(_status(c), 0) + 1
        varied = ranking.varied(c.data.params for c in trials)
        best, i = None, ranking.best_trial([c.data.metrics for c in trials])
        if i is not None:
            b = trials[i]
            m = ranking.loss_metric(b.data.metrics)
            best = {"run_id": b.info.run_id, "trial_id": b.data.tags.get(TAG_TRIAL_ID), "metric": m,
                    "value": b.data.metrics[m], "status": _status(b),
                    "config": {k: coerce(k, b.data.params[k]) for k in varied if k in b.data.params},
                    "metrics": b.data.metrics}
        sweeps.append({
            "sweep": row.sweep, "sweep_key": row.sweep_key, "experiment": row.experiment, "run_id": row.run_id,
            "status": row.status, "hypothesis": row.hypothesis, "description": row.description,
            "start_time": row.start_time.isoformat() if row.start_time is not None else None,
            "end_time": row.end_time.isoformat() if row.end_time is not None and not pd.isna(row.end_time)
            else None,
            "git_sha": row.git_sha, "git_dirty": p.get("git_dirty"), "device": p.get("device"),
            "hostname": p.get("hostname"), "n_trials": row.n_trials, "trial_status": statuses,
            "varied": varied, "best": best})
    log = {"generated_at": pd.Timestamp.now(tz="UTC").isoformat(), "tracking_uri": mask_uri(uri),
           "sweeps": sweeps}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_jsonable(log), indent=2) + "\n")


__all__ = ["INHERITED", "PROVENANCE", "STATUS", "Tracker", "TrackingError", "check_tracking", "default_uri",
           "export_log", "list_sweeps", "load_curves", "load_runs", "mask_uri", "resolve_uri"]
