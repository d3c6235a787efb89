"""One training run with an MLflow record: ``train`` inside a parent run (the experiment "single-runs", one
parent per output folder) and a child run that gets the metrics as they come, the provenance and the final
status. What ``python -m tinylm.train --track`` and ``tinylm.run_experiment(cfg, track=True)`` both run."""

from __future__ import annotations

import os

from tinylm.config import Config


def train_tracked(cfg: Config, out: str, results_dir: str, force: bool = False) -> dict:
    """``tinylm.train.train(cfg, out)`` logged to ``$MLFLOW_TRACKING_URI`` or the sqlite store in ``results_dir``;
    the tracking store is checked before any compute. A run that fails or is interrupted is closed as such (never
    left RUNNING) and the exception goes on. Returns ``train``'s final metrics."""
    from tinylm.layout import single_key
    from tinylm.tracking import Tracker, check_tracking, default_uri
    from tinylm.train import train

    uri = default_uri(os.path.abspath(results_dir))
    check_tracking(uri)  # before any compute, within the one timeout of every entry point
    tracker = Tracker(uri, experiment="single-runs")
    parent = tracker.start_sweep(single_key(out), params={}, tags={"tinylm.sweep": "single-runs"})
    run_id = tracker.trial_run(parent, os.path.basename(out), cfg.to_dict())

    def numbers(m: dict) -> dict:
        return {k: v for k, v in m.items() if isinstance(v, (int, float))}

    try:
        final = train(cfg, out, report=lambda m, _ckpt: tracker.log_metrics(run_id, numbers(m),
                                                                             step=int(m.get("tokens", 0))),
                      force=force)
    except BaseException as e:
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        tracker.finish_run(run_id, status, repr(e)[:500])
        tracker.finish_run(parent, status)
        raise
    tracker.set_tags(run_id, final["info"])
    tracker.finish_run(run_id, final["status"], final["stop_reason"], numbers(final))
    tracker.finish_run(parent, "completed")
    return final
