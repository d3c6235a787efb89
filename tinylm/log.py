"""The master experiment log: ``python -m tinylm.log [--uri URI] [--results DIR] [--json out.json]``.

Every sweep in the tracking store, oldest first, with its hypothesis and description (``Experiment.hypothesis`` /
``description``, tagged on the sweep's parent run), start / end time, git commit, device, trial status counts and
its best trial; then the established baselines: trials whose sweep marked them as the baseline
(``Experiment.baseline``; ``is_baseline`` on the trial) with their results. ``--json`` writes the same as
``tinylm.tracking.export_log`` plus a ``baselines`` list. Negative results stay in the log: nothing is dropped.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import pandas as pd

from tinylm.config import FIELDS
from tinylm.layout import json_with_keys, overwrite_refusal, results_dir, unwritable_parent
from tinylm.ranking import best_trial, plain, trial_loss, varied

RESULT_COLS = ("final_val_loss", "final_val_ppl", "params_total", "tokens", "train_time_s", "tokens_per_s",
               "peak_mem_mb")


def _device(trials: pd.DataFrame) -> str:
    col = "tag.device" if "tag.device" in trials.columns else "device"
    if col not in trials.columns:
        return ""
    return ", ".join(sorted({str(v) for v in trials[col].dropna() if str(v) not in ("", "auto", "cpu", "cuda")}))


def _is_baseline(runs: pd.DataFrame) -> pd.Series:
    """Trials tagged ``is_baseline=true`` (the tune callback's tag; the worker also reports it as a metric)."""
    mask = pd.Series(False, index=runs.index)
    for col in ("tag.is_baseline", "is_baseline"):
        if col in runs.columns:
            mask |= runs[col].astype(str).str.lower().isin(("1", "1.0", "true"))
    return mask


def master_log(uri: str) -> dict[str, Any]:
    """``{"sweeps": [...], "baselines": DataFrame}``: one dict per sweep (the sweep row of ``list_sweeps`` plus
    ``device``, ``trial_status``, ``varied`` and ``best``: the best trial as ``tinylm.ranking`` defines it)."""
    from tinylm.tracking import list_sweeps, load_runs

    sweeps = list_sweeps(uri)
    runs = load_runs(uri, all_sweeps=True) if len(sweeps) else pd.DataFrame()
    out = []
    for row in sweeps.itertuples(index=False):
        s = row._asdict()
        trials = runs[runs["parent_run_id"] == row.run_id] if len(runs) else runs
        s["device"] = _device(trials) if len(trials) else ""
        s["trial_status"] = trials["status"].value_counts().to_dict() if len(trials) else {}
        rows = trials.to_dict("records") if len(trials) else []
        s["varied"] = varied(rows)
        s["best"] = None
        i = best_trial(rows)
        if i is not None:
            b = trials.iloc[i]
            s["best"] = {"trial_id": b["trial_id"], "run_id": b["run_id"], "status": b["status"],
                         "final_val_loss": trial_loss(rows[i]),
                         **{c: float(b[c]) for c in RESULT_COLS[1:] if c in b and pd.notna(b[c])},
                         "config": {k: plain(b[k]) for k in s["varied"]}}
        out.append(s)
    base = runs[_is_baseline(runs)] if len(runs) else runs
    return {"sweeps": out, "baselines": base}


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _when(t: Any) -> str:
    return "" if t is None or pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%d %H:%M")


def format_log(log: dict[str, Any]) -> str:
    lines = []
    for s in log["sweeps"]:
        commit = (s.get("git_sha") or "")[:10] or "?"
        statuses = ", ".join(f"{k} {v}" for k, v in s["trial_status"].items())
        lines.append(f"{_when(s['start_time'])} -> {_when(s['end_time']) or 'running'}  {s['sweep']}  "
                     f"[{s['status']}]  {s['n_trials']} trials ({statuses or 'none'})  git {commit}  "
                     f"device {s['device'] or '?'}")
        for key in ("hypothesis", "description"):
            if s.get(key):
                lines.append(f"    {key}: {s[key]}")
        b = s["best"]
        if b:
            cfg = " ".join(f"{k}={v}" for k, v in b["config"].items())
            ppl = f" ppl {b['final_val_ppl']:.2f}" if "final_val_ppl" in b else ""
            lines.append(f"    best: {b['trial_id']} val_loss {b['final_val_loss']:.4f}{ppl} [{b['status']}] {cfg}")
        else:
            lines.append("    best: (no finished trial)")
    if not log["sweeps"]:
        lines.append("(no sweeps in the tracking store)")
    lines += ["", "Established baselines (trials tagged is_baseline=true):"]
    base = log["baselines"]
    if len(base) == 0:
        lines.append("    (none)")
    for _, r in base.iterrows():
        res = "  ".join(f"{c} {_fmt(float(r[c]))}" for c in RESULT_COLS if c in r and pd.notna(r[c]))
        lines.append(f"    {r['sweep']}  {r['trial_id']}  [{r['status']}]  {_when(r['start_time'])}  {res}")
    return "\n".join(lines)


def baselines_json(base: pd.DataFrame) -> list[dict]:
    cols = ["sweep", "trial_id", "run_id", "status", "start_time", *RESULT_COLS]
    rows = []
    for _, r in base.iterrows():
        d = {c: plain(r[c]) for c in cols if c in r and not (pd.api.types.is_scalar(r[c]) and pd.isna(r[c]))}
        d["start_time"] = pd.Timestamp(r["start_time"]).isoformat() if pd.notna(r.get("start_time")) else None
        d["config"] = {k: plain(r[k]) for k in FIELDS if k in r and pd.notna(r[k])}
        rows.append(d)
    return rows


def write_json(uri: str, path: str, log: dict[str, Any]) -> None:
    """``tracking.export_log`` plus ``baselines`` and the trials' device where the parent run has none."""
    from tinylm.tracking import experiment_log, export_log

    data = experiment_log(uri)
    devices = {s["run_id"]: s["device"] for s in log["sweeps"]}
    for s in data["sweeps"]:
        s["device"] = s.get("device") or devices.get(s["run_id"]) or None
    data["baselines"] = baselines_json(log["baselines"])
    export_log(uri, path, data)  # written once


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m tinylm.log", description=__doc__.split("\n")[0])
    p.add_argument("--uri", default=None, help="tracking URI (default $MLFLOW_TRACKING_URI or RESULTS/mlflow.db)")
    p.add_argument("--results", default=results_dir(), help="results folder (default $TINYLM_RESULTS or results)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also export the log as JSON (a new file, or "
                                                                    "a JSON log this command wrote before)")
    p.add_argument("--force", action="store_true", help="let --json replace another existing file (never a "
                                                        "database or a run's metrics)")
    args = p.parse_args(argv)
    from tinylm.tracking import TrackingError, check_tracking, read_store, require_store, resolve_uri

    uri = resolve_uri(args.uri, args.results)
    try:
        if args.json:
            _check_writable(args.json, args.force)
        require_store(uri)
        check_tracking(uri)
        log = read_store(uri, master_log)
    except (TrackingError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(format_log(log))
    if args.json:
        try:
            write_json(uri, args.json, log)
        except OSError as e:
            raise SystemExit(f"error: cannot write --json {args.json} ({type(e).__name__}: {e})") from None
        print(f"\nJSON log: {args.json}")
    return log


def _check_writable(path: str, force: bool) -> None:
    """Before the store is read: --json names a new file, a JSON log written here before, or (``force``) another
    file, never the tracking database itself or a run's metrics (``layout.overwrite_refusal``)."""
    refusal = overwrite_refusal(path, "--json", force, ours=_is_json_log)
    if refusal:
        raise ValueError(refusal)
    existing = unwritable_parent(os.path.dirname(os.path.abspath(path)))  # the folder export_log would create
    if existing:
        raise ValueError(f"--json {path}: {existing} is not writable (not a writable folder)")


def _is_json_log(path: str) -> bool:
    """A file this command wrote: a JSON object with the log's own keys."""
    return json_with_keys(path, {"generated_at", "tracking_uri", "sweeps"})


if __name__ == "__main__":
    main()
