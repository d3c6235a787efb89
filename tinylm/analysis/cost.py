"""Accelerator-hours and dollars per trial and per sweep from a price table.

``DEFAULT_PRICES`` are approximate AWS on-demand list prices in USD per device-hour (A10G: g5, L4: g6, A100:
p4d.24xlarge / 8, H100: p5.48xlarge / 8; "cpu": a small general-purpose instance). They are not checked
against a live price list, they go stale, and spot or committed-use prices are much lower: pass your own table
(``--prices prices.json`` on the CLI, ``{"H100": 2.5, ...}``), whose entries override these.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from tinylm.analysis import columns

DEFAULT_PRICES: dict[str, float] = {"cpu": 0.05, "A10G": 1.01, "L4": 0.80, "A100": 4.10, "H100": 6.88}
# Columns that may carry the number of devices a trial held (the first present wins; default 1).
DEVICE_COUNT_COLUMNS = ("n_devices", "num_workers", "world_size")


def load_prices(path: str | Path | None = None, overrides: dict[str, float] | None = None) -> dict[str, float]:
    """``DEFAULT_PRICES`` updated by a JSON file ``{"device": usd_per_hour}`` (or that JSON object itself, e.g.
    ``--prices '{"H100": 2.5}'``) and then by ``overrides``. Every price must be a finite number >= 0 (ValueError
    naming the device: a negative one printed a negative cost)."""
    prices = dict(DEFAULT_PRICES)
    if path is not None:
        text = str(path) if str(path).lstrip().startswith("{") else Path(path).read_text()
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object of device name -> USD per hour, got {data!r:.200}")
        prices.update(_checked(data, str(path)))
    prices.update(_checked(overrides or {}, "overrides"))
    return prices


def _checked(prices: dict, where: str) -> dict[str, float]:
    """``prices`` as ``{str: float}``, each a finite number >= 0."""
    out = {}
    for device, usd in prices.items():
        ok = isinstance(usd, int | float) and not isinstance(usd, bool) and math.isfinite(usd) and usd >= 0
        if not ok:
            raise ValueError(f"{where}: the price of {device!r} is {usd!r}; prices are USD per device-hour, finite "
                             "numbers >= 0")
        out[str(device)] = float(usd)
    return out


def device_price(device: object, prices: dict[str, float]) -> tuple[str | None, float]:
    """The price-table entry for a device string: an exact (case-insensitive) key, else the longest key that
    appears in it as a whole word ("NVIDIA H100 80GB HBM3" -> H100; "L4" does not match "L40S")."""
    if device is None or (isinstance(device, float) and math.isnan(device)):
        return None, math.nan
    d = str(device).strip().lower()
    for key, price in prices.items():
        if key.lower() == d:
            return key, price
    for key in sorted(prices, key=lambda k: (-len(k), k)):
        if re.search(rf"(?<![a-z0-9]){re.escape(key.lower())}(?![a-z0-9])", d):
            return key, prices[key]
    return None, math.nan


def durations_s(df: pd.DataFrame) -> pd.Series:
    """Wall seconds per trial: end_time − start_time (the device is held for the whole trial, evals and
    checkpoints included), falling back to ``train_time_s``. Times may be datetimes or epoch numbers (ms when
    they look like ms, as MLflow stores them)."""
    out = pd.Series(np.nan, index=df.index, dtype=float)
    if "start_time" in df.columns and "end_time" in df.columns:
        start, end = df["start_time"], df["end_time"]
        if pd.api.types.is_datetime64_any_dtype(start) and pd.api.types.is_datetime64_any_dtype(end):
            out = (end - start).dt.total_seconds().astype(float)
        else:
            s = pd.to_numeric(start, errors="coerce")
            e = pd.to_numeric(end, errors="coerce")
            scale = 1e-3 if s.median() > 1e11 else 1.0  # epoch ms (MLflow) vs epoch s
            out = ((e - s) * scale).astype(float)
        out = out.where(out >= 0)
    if "train_time_s" in df.columns:
        out = out.fillna(pd.to_numeric(df["train_time_s"], errors="coerce"))
    return out


def trial_costs(df: pd.DataFrame, prices: dict[str, float] | None = None) -> pd.DataFrame:
    """Per trial (device from ``columns.hardware``): run_id, trial_id, device, price_key, usd_per_hour,
    n_devices, hours, device_hours, cost_usd.

    device_hours = wall hours × devices held; cost_usd = device_hours × price (NaN when the device is not in
    the table or the duration is unknown)."""
    prices = DEFAULT_PRICES if prices is None else prices
    devices = columns.hardware(df)
    matched = [device_price(d, prices) for d in devices]
    n_dev = pd.Series(1.0, index=df.index)
    for col in DEVICE_COUNT_COLUMNS:
        if col in df.columns:
            n_dev = pd.to_numeric(df[col], errors="coerce").fillna(1.0).clip(lower=1.0)
            break
    hours = durations_s(df) / 3600.0
    out = pd.DataFrame({
        "run_id": df["run_id"] if "run_id" in df.columns else pd.Series(df.index.astype(str), index=df.index),
        "trial_id": df["trial_id"] if "trial_id" in df.columns else None,
        "device": devices,
        "price_key": [k for k, _ in matched],
        "usd_per_hour": [p for _, p in matched],
        "n_devices": n_dev,
        "hours": hours,
    }, index=df.index)
    out["device_hours"] = out["hours"] * out["n_devices"]
    out["cost_usd"] = out["device_hours"] * out["usd_per_hour"]
    return out.reset_index(drop=True)


def sweep_cost(costs: pd.DataFrame) -> dict:
    """Totals over a ``trial_costs`` table: device_hours, cost_usd (over priced trials), n_trials, n_priced,
    and the device strings without a price (sorted)."""
    priced = costs["cost_usd"].notna()
    unpriced = sorted({str(d) for d in costs.loc[~priced & costs["device"].notna(), "device"]})
    return {"device_hours": float(costs["device_hours"].sum(min_count=1)) if len(costs) else 0.0,
            "cost_usd": float(costs.loc[priced, "cost_usd"].sum()), "n_trials": int(len(costs)),
            "n_priced": int(priced.sum()), "unpriced_devices": unpriced}
