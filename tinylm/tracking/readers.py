"""Reading a tracking store back for ``tinylm.analysis`` and ``tinylm.log``: plain DataFrames and the experiment log.

``list_sweeps`` (one row per parent run), ``load_runs`` (one row per trial, typed Config columns), ``load_curves``
(a metric's history, long format), ``experiment_log`` (every sweep with its best trial by ``tinylm.ranking``, and
the baselines: the one summary ``python -m tinylm.log`` prints) and ``export_log`` (that log as JSON).
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from tinylm import ranking
from tinylm.config import FIELDS, ConfigError, coerce
from tinylm.layout import jsonable, mask_uri
from tinylm.tracking import schema
from tinylm.tracking.store import Run, TrackingError, connect, search_experiments, search_runs, sqlite_path

_FIELD_TYPES = {name: type(f.default) for name, f in FIELDS.items()}


def _scan(uri: str, experiment: str | None = None) -> tuple[dict[str, str], dict[str, Run], list[Run]]:
    """(experiment id -> name, parent runs by id, child runs) across the active experiments."""
    client = connect(uri)
    exps = search_experiments(client)
    if experiment is not None:
        if experiment not in exps.values():
            raise TrackingError(f"no experiment {experiment!r} in {mask_uri(uri)}; "
                                f"available experiments: {', '.join(sorted(exps.values())) or '(none)'}")
        exps = {i: n for i, n in exps.items() if n == experiment}
    runs = search_runs(client, list(exps))
    parents = {r.info.run_id: r for r in runs
               if schema.TAG_SWEEP_KEY in r.data.tags and schema.TAG_PARENT not in r.data.tags}
    children = [r for r in runs if schema.TAG_TRIAL_ID in r.data.tags]
    return exps, parents, children


def _time(ms: int | None) -> pd.Timestamp | None:
    return pd.Timestamp(ms, unit="ms", tz="UTC") if ms else None


def _status(run: Run) -> str:
    return run.data.tags.get(schema.TAG_STATUS) or run.info.status.lower()


def _sweeps_frame(exps: dict[str, str], parents: dict[str, Run], children: list[Run]) -> pd.DataFrame:
    counts: dict[str, int] = {}
    for c in children:
        counts[c.data.tags.get(schema.TAG_PARENT, "")] = counts.get(c.data.tags.get(schema.TAG_PARENT, ""), 0) + 1
    rows = [{"sweep": p.data.tags.get(schema.TAG_SWEEP, exps[p.info.experiment_id]),
             "sweep_key": p.data.tags[schema.TAG_SWEEP_KEY], "experiment": exps[p.info.experiment_id], "run_id": rid,
             "status": _status(p), "start_time": _time(p.info.start_time),
             "end_time": _time(p.info.end_time) if p.info.status != "RUNNING" else None,
             "hypothesis": p.data.tags.get("hypothesis", ""), "description": p.data.tags.get(schema.TAG_NOTE, ""),
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
    Config field (typed via ``coerce``), every metric (latest value), the schema.PROVENANCE tags (git_dirty as bool).
    A metric or tag whose name is a Config field (e.g. tag ``device``) gets a ``metric.`` / ``tag.`` prefix;
    params that are not Config fields appear as ``param.<name>`` strings.
    """
    exps, parents, children = _scan(uri, experiment)
    sweeps = _sweeps_frame(exps, parents, children)

    def names(run: Run) -> set[str]:
        parent = parents.get(run.data.tags.get(schema.TAG_PARENT, ""))
        t = {**(parent.data.tags if parent else {}), **run.data.tags}
        return {t.get(schema.TAG_SWEEP, ""), t.get(schema.TAG_SWEEP_KEY, ""), exps[run.info.experiment_id]} - {""}

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
        pt = parents[t[schema.TAG_PARENT]].data.tags if t.get(schema.TAG_PARENT) in parents else {}
        row: dict[str, Any] = {
            "run_id": info.run_id, "parent_run_id": t.get(schema.TAG_PARENT), "experiment": exps[info.experiment_id],
            "sweep": t.get(schema.TAG_SWEEP) or pt.get(schema.TAG_SWEEP) or exps[info.experiment_id],
            "sweep_key": t.get(schema.TAG_SWEEP_KEY) or pt.get(schema.TAG_SWEEP_KEY),
            "trial_id": t[schema.TAG_TRIAL_ID],
            "run_name": info.run_name, "status": _status(run), "mlflow_status": info.status,
            "stop_reason": t.get(schema.TAG_STOP_REASON, ""), "phase": t.get("tinylm.phase", "grid"),
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
        for tag in schema.PROVENANCE:
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
    client, rows = connect(uri), []
    for order, rid in enumerate(run_ids):
        rows += [(order, rid, m.step, m.value, m.timestamp) for m in client.get_metric_history(rid, metric)]
    df = pd.DataFrame(rows, columns=["order", "run_id", "tokens", "value", "timestamp"])
    df = df.sort_values(["order", "tokens", "timestamp"]).drop_duplicates(["run_id", "tokens"], keep="last")
    return df.drop(columns=["order", "timestamp"]).astype({"tokens": "int64", "value": "float64"}) \
        .reset_index(drop=True)


def foreign_artifacts(uri: str, run_id: str) -> str | None:
    """``run_id``'s artifact folder when it lies outside its sqlite store's own folder, else None. A copied
    results folder still points at the original's ``mlartifacts``: a reader of the copy must not write there.
    Any other store (a server, a database) owns wherever its runs point."""
    db = sqlite_path(uri) if uri.startswith("sqlite:") else None
    if db is None:
        return None
    location = urllib.parse.urlparse(connect(uri).get_run(run_id).info.artifact_uri)
    if location.scheme not in ("", "file"):
        return None
    folder = Path(urllib.parse.unquote(location.path)).resolve()
    return None if folder.is_relative_to(db.resolve().parent) else str(folder)


def _config(run: Run, fields: Iterable[str]) -> dict[str, Any]:
    """``fields`` of a trial's Config, typed (``coerce``); a field it did not log, or logged unreadably, is left out."""
    out = {}
    for k in fields:
        try:
            out[k] = coerce(k, run.data.params[k])
        except (KeyError, ConfigError):
            continue
    return out


def _trial(run: Run, config_fields: Iterable[str]) -> dict[str, Any]:
    """A trial as the experiment log shows it: ids, status, start time, ``config_fields`` of its Config and every
    metric (latest value)."""
    start = _time(run.info.start_time)
    return {"run_id": run.info.run_id, "trial_id": run.data.tags.get(schema.TAG_TRIAL_ID), "status": _status(run),
            "start_time": start.isoformat() if start is not None else None,
            "config": _config(run, config_fields), "metrics": dict(run.data.metrics)}


def _is_baseline(run: Run) -> bool:
    """Marked the sweep's baseline: the tune callback's tag ``is_baseline``, or the metric the worker reports."""
    return (run.data.tags.get("is_baseline", "").lower() in ("1", "1.0", "true")
            or run.data.metrics.get("is_baseline") == 1)


def _devices(parent: Run, trials: list[Run]) -> str | None:
    """What a sweep ran on: its trials' ``device`` tags (set by the trials themselves), else the parent's."""
    found = sorted({c.data.tags["device"] for c in trials if c.data.tags.get("device")})
    return ", ".join(found) or parent.data.tags.get("device") or None


def experiment_log(uri: str) -> dict[str, Any]:
    """The experiment log ("which sweeps ran, what won"), as ``python -m tinylm.log`` prints it and ``export_log``
    writes it: ``generated_at``, ``tracking_uri`` (masked), then

    - ``sweeps``, oldest first: sweep, sweep_key, experiment, run_id, status, hypothesis, description, start/end
      time (ISO, UTC; end None while running), git_sha, git_dirty, device (``_devices``), hostname, n_trials,
      trial_status (status -> count), varied (the Config fields that vary across its trials) and best: the best
      trial by ``tinylm.ranking`` (lowest final val loss, else latest val loss) with ``metric`` / ``value``, the
      varied fields as its config and every metric; None without a trial that has a loss.
    - ``baselines``: every trial marked as its sweep's baseline (``Experiment.baseline``), oldest first, with its
      sweep, its whole Config and every metric.
    """
    exps, parents, children = _scan(uri)
    by_parent: dict[str, list[Run]] = {}
    for c in children:
        by_parent.setdefault(c.data.tags.get(schema.TAG_PARENT, ""), []).append(c)
    sweeps = []
    for row in _sweeps_frame(exps, parents, children).itertuples():
        parent, trials = parents[row.run_id], by_parent.get(row.run_id, [])
        statuses: dict[str, int] = {}
        for c in trials:
            statuses[_status(c)] = statuses.get(_status(c), 0) + 1
        varied = ranking.varied(c.data.params for c in trials)
        best, i = None, ranking.best_trial([c.data.metrics for c in trials])
        if i is not None:
            m = ranking.loss_metric(trials[i].data.metrics)
            best = {**_trial(trials[i], varied), "metric": m, "value": trials[i].data.metrics[m]}
        sweeps.append({
            "sweep": row.sweep, "sweep_key": row.sweep_key, "experiment": row.experiment, "run_id": row.run_id,
            "status": row.status, "hypothesis": row.hypothesis, "description": row.description,
            "start_time": row.start_time.isoformat() if row.start_time is not None else None,
            "end_time": row.end_time.isoformat() if row.end_time is not None and not pd.isna(row.end_time)
            else None,
            "git_sha": row.git_sha, "git_dirty": parent.data.tags.get("git_dirty"),
            "device": _devices(parent, trials), "hostname": parent.data.tags.get("hostname"),
            "n_trials": row.n_trials, "trial_status": statuses, "varied": varied, "best": best})
    baselines = []
    for c in sorted((c for c in children if _is_baseline(c)), key=lambda c: c.info.start_time or 0):
        parent = parents.get(c.data.tags.get(schema.TAG_PARENT, ""))
        sweep = (c.data.tags.get(schema.TAG_SWEEP) or (parent.data.tags.get(schema.TAG_SWEEP) if parent else None)
                 or exps[c.info.experiment_id])
        baselines.append({"sweep": sweep, **_trial(c, FIELDS)})
    return {"generated_at": pd.Timestamp.now(tz="UTC").isoformat(), "tracking_uri": mask_uri(uri),
            "sweeps": sweeps, "baselines": baselines}


def export_log(uri: str, path: str, log: dict[str, Any] | None = None) -> None:
    """Write ``log`` (default: ``experiment_log(uri)``) as strict JSON to ``path``, creating its folder; atomically,
    so a failed write (a full disk) leaves a file that was there intact."""
    log = experiment_log(uri) if log is None else log
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(f"{path}.tmp-{os.getpid()}")
    try:
        tmp.write_text(json.dumps(jsonable(log), indent=2) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
