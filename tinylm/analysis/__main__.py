"""``python -m tinylm.analysis <sweep>``: build a sweep's report from the tracking store and log it.

Loads the trials (and val-loss curves) through ``tinylm.tracking``, writes the report into ``<out>/<sweep>/``,
logs every file there as an artifact (under ``report/``) of the sweep's MLflow parent run, and prints the path
and the wall time. ``--all`` does every sweep in the store.

    python -m tinylm.analysis glu --baseline glu_factor=4.0 --prices prices.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from tinylm.analysis.cost import load_prices
from tinylm.analysis.report import build_report
from tinylm.config import FIELDS, ConfigError, coerce


def default_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else the sqlite store in ./results (absolute, so it does not depend on cwd)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or "sqlite:///" + str(Path("results").resolve() / "mlflow.db")


def parse_baseline(items: list[str] | None) -> dict[str, Any] | None:
    """``["glu_factor=4.0", "mlp=gelu"]`` -> ``{"glu_factor": 4.0, "mlp": "gelu"}`` (Config fields typed)."""
    if not items:
        return None
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--baseline expects key=value, got {item!r}")
        try:
            out[key] = coerce(key, value) if key in FIELDS else value
        except ConfigError as e:
            raise SystemExit(f"--baseline {item}: {e}") from None
    return out


def report_sweep(uri: str, sweep: str, out: Path, baseline: dict | None, prices: dict, n_boot: int,
                 log: bool = True) -> Path:
    """Build one sweep's report and log its files to the sweep's parent run; returns REPORT.md's path."""
    from tinylm import tracking  # the only mlflow module; imported here so the package stays light

    df = tracking.load_runs(uri, sweep=sweep)
    sweeps = tracking.list_sweeps(uri)
    parents = sweeps[(sweeps["sweep"] == sweep) | (sweeps["sweep_key"] == sweep) | (sweeps["experiment"] == sweep)]
    meta = parents.iloc[-1].to_dict() if len(parents) else {}
    curves = tracking.load_curves(uri, df["run_id"].tolist(), metric="val_loss") if len(df) else None
    path = build_report(df, out / sweep, sweep, curves=curves, baseline=baseline, prices=prices, meta=meta,
                        n_boot=n_boot)
    if log and meta:
        tracker = tracking.Tracker(uri, meta["experiment"])
        for f in sorted(path.parent.iterdir()):
            if f.is_file():
                tracker.log_artifact(meta["run_id"], str(f), "report")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinylm.analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", nargs="?", help="sweep name (tag tinylm.sweep), sweep key or experiment name")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                               "sqlite:///<abs ./results>/mlflow.db)")
    p.add_argument("--out", default="results/analysis", help="reports go to <out>/<sweep>/")
    p.add_argument("--all", action="store_true", help="report every sweep in the store")
    p.add_argument("--prices", default=None, help="JSON {device: USD per hour} overriding the default "
                                                  "on-demand list prices")
    p.add_argument("--baseline", nargs="+", metavar="KEY=VALUE", help="the PRD baseline's config, e.g. "
                                                                      "glu_factor=4.0 (default: tagged or named "
                                                                      "baseline, else the first grid point)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples per fitted law")
    p.add_argument("--no-log", action="store_true", help="do not log the report to the parent run")
    args = p.parse_args(argv)
    if not args.sweep and not args.all:
        p.error("name a sweep or pass --all")
    uri = args.uri or default_uri()
    prices = load_prices(args.prices)
    baseline = parse_baseline(args.baseline)
    from tinylm import tracking

    try:
        names = list(dict.fromkeys(tracking.list_sweeps(uri)["sweep"])) if args.all else [args.sweep]
    except tracking.TrackingError as e:
        raise SystemExit(str(e)) from None
    for name in names:
        t0 = time.perf_counter()
        try:
            path = report_sweep(uri, name, Path(args.out), baseline, prices, args.n_boot, log=not args.no_log)
        except tracking.TrackingError as e:
            raise SystemExit(str(e)) from None
        except ValueError as e:  # a sweep with no trials yet
            if not args.all:
                raise SystemExit(f"{name}: {e}") from None
            print(f"skipped {name}: {e}")
            continue
        print(f"{path}  ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
