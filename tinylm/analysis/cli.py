"""``python -m tinylm.analysis <sweep>``: build a sweep's report from the tracking store and log it.

Loads the trials (and val-loss curves) through ``tinylm.tracking``, writes the report into ``<out>/<sweep>/``,
logs every file there as an artifact (under ``report/``) of the sweep's MLflow parent run (only where the store
owns that run's artifact folder: a copy of a results folder never writes into the original's), and prints the
path and the wall time. ``--all`` does every sweep in the store.

    python -m tinylm.analysis glu --baseline glu_factor=4.0 --prices prices.json
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from tinylm.analysis.columns import match
from tinylm.analysis.cost import load_prices
from tinylm.analysis.report import report_sweep
from tinylm.config import FIELDS, ConfigError, coerce
from tinylm.layout import resolve_uri, results_dir, unwritable_parent


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


def check_baseline(df, baseline: dict[str, Any], sweep: str) -> None:
    """``--baseline`` must name columns of the sweep's trials and match at least one trial (``columns.match``:
    numbers to 1e-9, other values as case-insensitive strings, as the report selects the baseline)."""
    missing = [k for k in baseline if k not in df.columns]
    if missing:
        raise ValueError(f"--baseline {', '.join(missing)}: not a column of {sweep}'s trials; name Config fields "
                         f"such as {', '.join(k for k in FIELDS if k in df.columns and df[k].nunique() > 1) or 'seed'}")
    mask = match(df, baseline)
    if not mask.any():
        values = "; ".join(f"{k}: {', '.join(map(str, sorted(df[k].dropna().unique().tolist())))}" for k in baseline)
        given = " ".join(f"{k}={v}" for k, v in baseline.items())
        raise ValueError(f"--baseline {given} matches no trial of {sweep}; the values there are {values}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tinylm.analysis", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", nargs="?", help="sweep name (tag tinylm.sweep), sweep key or experiment name")
    p.add_argument("--uri", default=None, help="tracking URI (default: $MLFLOW_TRACKING_URI, else "
                                               "sqlite:///<abs ./results>/mlflow.db)")
    p.add_argument("--out", default=os.path.join(results_dir(), "analysis"),
                   help="reports go to <out>/<sweep>/ (default $TINYLM_RESULTS or results, /analysis)")
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
    uri = resolve_uri(args.uri)  # else $MLFLOW_TRACKING_URI, else the sqlite store in $TINYLM_RESULTS or ./results
    if args.n_boot < 0:
        raise SystemExit(f"error: --n-boot={args.n_boot} must be >= 0")
    try:
        prices = load_prices(args.prices)
    except (OSError, ValueError) as e:
        raise SystemExit(f"error: --prices {args.prices}: {type(e).__name__}: {e}") from None
    existing = unwritable_parent(args.out)
    if existing:
        raise SystemExit(f"error: --out {args.out} cannot be created: {existing} is not a writable folder")
    baseline = parse_baseline(args.baseline)
    from tinylm import tracking
    from tinylm.tracking import read_store, require_store

    try:
        require_store(uri)
        sweeps = read_store(uri, tracking.list_sweeps)
        names = list(dict.fromkeys(sweeps["sweep"])) if args.all else [args.sweep]
        if baseline and not args.all:  # a baseline that matches no trial is a typo, not "no baseline"
            check_baseline(read_store(uri, tracking.load_runs, args.sweep), baseline, args.sweep)
    except tracking.TrackingError as e:
        raise SystemExit(f"error: {e}") from None
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
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

