"""The ladder's analysis on synthetic data: best LR per size, the held-out prediction and its interval, isoFLOP
minima with intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tinylm.analysis import ladder


def sizes_table(alpha=0.12, noise=0.003, seed=0, best_mult=1.0, n_sizes=5):
    """Trials of a ladder: loss = 12 N^-alpha, worse away from each size's best LR (best_mult x the centre)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.geomspace(3e4, 3.5e5, n_sizes):
        for m in (0.5, 1.0, 2.0):
            pen = 1 + 0.02 * np.log(m / best_mult) ** 2
            rows.append({"N": n, "D": 20 * n, "C": 120 * n * n, "lr": 3e-3 * m, "status": "completed",
                         "loss": 12 * n ** -alpha * pen * np.exp(rng.normal(0, noise)), "n_embd": 32, "n_layer": 2})
    return pd.DataFrame(rows)


def test_best_lr_per_size_and_edge_flag():
    pts = ladder.best_per_size(sizes_table())
    assert len(pts) == 5 and (pts["lr"] == 3e-3).all() and (pts["edge"] == "").all()
    edge = ladder.best_per_size(sizes_table(best_mult=4.0))
    assert (edge["edge"] == "high").all()
    assert any("high edge" in f for f in ladder.ladder_flags(edge, None))


def test_heldout_prediction_recovers_a_power_law_and_its_interval_covers():
    pts = ladder.best_per_size(sizes_table(noise=0.002))
    h = ladder.heldout(pts)
    assert h["fit"]["alpha"] == pytest.approx(0.12, abs=0.02)
    lo, hi = h["fit"]["alpha_ci"]
    assert lo < 0.12 < hi
    assert abs(h["error_pct"]) < 1.0 and h["covered"] and h["n_fit"] == 4 and not h["flags"]


def test_heldout_prediction_interval_coverage_is_near_nominal():
    rng = np.random.default_rng(0)
    n = np.geomspace(3e4, 3.5e5, 5)
    hits = 0
    for _ in range(300):
        pts = pd.DataFrame({"N": n, "loss": 12 * n ** -0.12 * np.exp(rng.normal(0, 0.01, 5))})
        hits += ladder.heldout(pts, with_e=False)["covered"]
    assert 0.90 <= hits / 300 <= 0.99


def test_heldout_flags_non_monotone_points_and_needs_four_sizes():
    t = sizes_table()
    pts = ladder.best_per_size(t)
    pts.loc[1, "loss"] = pts.loc[0, "loss"] + 0.1  # a rise with N
    assert any("non-monotone" in f for f in ladder.heldout(pts)["flags"])
    with pytest.raises(ladder.fits.NotEnoughPoints):
        ladder.heldout(ladder.best_per_size(sizes_table(n_sizes=3)))


def test_isoflop_minima_with_intervals():
    rng = np.random.default_rng(0)
    rows = []
    for c in (4e11, 1.2e12, 3.6e12):
        for n in np.geomspace(np.sqrt(c / 120) / 2.5, np.sqrt(c / 120) * 2.5, 4):
            d = c / (6 * n)
            rows.append({"N": n, "D": d, "C": c, "loss": 1.8 + 400 * n ** -0.34 + 2000 * d ** -0.37
                         + rng.normal(0, 0.002)})
    minima, exps = ladder.isoflop_table(pd.DataFrame(rows))
    assert len(minima) == 3 and all(r["bracketed"] and r["N_opt_ci"][0] < r["N_opt"] < r["N_opt_ci"][1]
                                    for r in minima)
    # Chinchilla-like law: N_opt ~ C^(beta/(alpha+beta)) = C^0.52
    assert exps["a"] == pytest.approx(0.37 / (0.34 + 0.37), abs=0.08)


def test_local_exponents_only_for_one_point_per_size():
    bent = pd.DataFrame({"N": [3e4, 6e4, 1.2e5, 2.4e5], "loss": [4.0, 3.9, 3.0, 2.95], "edge": "",
                         "tokens_per_param": 20.0})
    assert any("local exponents" in f for f in ladder.ladder_flags(bent, None))
    # isoFLOP points: several budgets per size, so neighbouring rows are not a ladder: no slope diagnostic
    iso = pd.concat([bent, bent.assign(loss=bent["loss"] - 0.5)], ignore_index=True)
    assert not any("local exponents" in f for f in ladder.ladder_flags(iso, None))
