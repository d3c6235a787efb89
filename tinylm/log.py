"""The master experiment log: ``python -m tinylm.log [--uri URI] [--results DIR] [--json out.json]``.

A report of the experiment log ("which sweeps ran, what won"): every sweep in the tracking store, oldest first,
with its hypothesis and description (``Experiment.hypothesis`` / ``description``, tagged on the sweep's parent
run), start / end time, git commit, device, trial status counts and its best trial; then the established
baselines: trials whose sweep marked them as the baseline (``Experiment.baseline``; ``is_baseline`` on the trial)
with their results. The log itself is ``tinylm.tracking.experiment_log``: the text here and ``--json`` (written by
``tinylm.tracking.export_log``) are two renderings of that one summary. Negative results stay in the log: nothing
is dropped.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import pandas as pd

from tinylm.layout import json_with_keys, overwrite_refusal, results_dir, unwritable_parent

# the results a baseline line shows, in this order (where the trial has them)
RESULT_COLS = ("final_val_loss", "final_val_ppl", "params_total", "tokens", "train_time_s", "tokens_per_s",
               "peak_mem_mb")


def _fmt(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def _when(t: Any) -> str:
    return "" if t is None or pd.isna(t) else pd.Timestamp(t).strftime("%Y-%m-%d %H:%M")


def _best(b: dict[str, Any] | None) -> str:
    if not b:
        return "best: (no finished trial)"
    cfg = " ".join(f"{k}={v}" for k, v in b["config"].items())
    ppl = b["metrics"].get("final_val_ppl")
    return (f"best: {b['trial_id']} {b['metric']} {b['value']:.4f}{f' ppl {ppl:.2f}' if ppl is not None else ''} "
            f"[{b['status']}] {cfg}")


def format_log(log: dict[str, Any]) -> str:
    """The text report of ``tinylm.tracking.experiment_log``: one block per sweep, then the baselines."""
    lines = []
    for s in log["sweeps"]:
        commit = (s.get("git_sha") or "")[:10] or "?"
        statuses = ", ".join(f"{k} {v}" for k, v in s["trial_status"].items())
        lines.append(f"{_when(s['start_time'])} -> {_when(s['end_time']) or 'running'}  {s['sweep']}  "
                     f"[{s['status']}]  {s['n_trials']} trials ({statuses or 'none'})  git {commit}  "
                     f"device {s['device'] or '?'}")
        lines += [f"    {key}: {s[key]}" for key in ("hypothesis", "description") if s.get(key)]
        lines.append(f"    {_best(s['best'])}")
    if not log["sweeps"]:
        lines.append("(no sweeps in the tracking store)")
    lines += ["", "Established baselines (trials tagged is_baseline=true):"]
    if not log["baselines"]:
        lines.append("    (none)")
    for b in log["baselines"]:
        m = b["metrics"]
        res = "  ".join(f"{c} {_fmt(float(m[c]))}" for c in RESULT_COLS if c in m and pd.notna(m[c]))
        lines.append(f"    {b['sweep']}  {b['trial_id']}  [{b['status']}]  {_when(b['start_time'])}  {res}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m tinylm.log", description=__doc__.split("\n")[0])
    p.add_argument("--uri", default=None, help="tracking URI (default $MLFLOW_TRACKING_URI or RESULTS/mlflow.db)")
    p.add_argument("--results", default=results_dir(), help="results folder (default $TINYLM_RESULTS or results)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="also export the log as JSON (a new file, or "
                                                                    "a JSON log this command wrote before)")
    p.add_argument("--force", action="store_true", help="let --json replace another existing file (never a "
                                                        "database or a run's metrics)")
    args = p.parse_args(argv)
    from tinylm.tracking import (
        TrackingError,
        check_tracking,
        experiment_log,
        export_log,
        read_store,
        require_store,
        resolve_uri,
    )

    uri = resolve_uri(args.uri, args.results)
    try:
        if args.json:
            _check_writable(args.json, args.force)
        require_store(uri)
        check_tracking(uri)
        log = read_store(uri, experiment_log)
    except (TrackingError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(format_log(log))
    if args.json:
        try:
            export_log(uri, args.json, log)
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
