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


def _protocol_tables(alpha=0.12, lr_exp=-0.3, seeds=2, noise=0.002, seed=0):
    """A ladder run on one protocol: tuning runs (one seed, LR grid x {1/2, 1, 2} around each size's optimum
    lr* = 3e-3 (N / 1e5)^lr_exp, so every optimum is interior) and seed runs at the tuned LR."""
    rng = np.random.default_rng(seed)
    tuning, seed_runs = [], []
    for n in np.geomspace(3e4, 3.5e5, 5):
        best = 3e-3 * (n / 1e5) ** lr_exp
        base = dict(N=n, N_nonembed=0.7 * n, D=20 * n, C=120 * n * n, status="completed", n_embd=32, n_layer=2)
        for m in (0.5, 1.0, 2.0):
            tuning.append(base | {"lr": best * m, "seed": 100,
                                  "loss": 12 * n ** -alpha * (1 + 0.02 * np.log(m) ** 2)})
        for s in range(seeds):
            seed_runs.append(base | {"lr": best, "seed": s, "loss": 12 * n ** -alpha * np.exp(rng.normal(0, noise))})
    return pd.DataFrame(seed_runs), pd.DataFrame(tuning)


def test_ladder_points_join_the_seed_means_with_the_tuning_grid():
    seeds, tuning = _protocol_tables(seeds=3)
    pts = ladder.ladder_points(seeds, tuning)
    assert len(pts) == 5 and (pts["n_seeds"] == 3).all() and (pts["edge"] == "").all()
    assert all(len(g) == 3 for g in pts["lr_grid"]) and (pts["loss_sd"] > 0).all()
    assert np.allclose(pts["N_nonembed"], 0.7 * pts["N"])
    first = seeds[seeds["N"] == seeds["N"].min()]["loss"].mean()
    assert pts.loc[0, "loss"] == pytest.approx(first)  # the seed mean, not the tuning run
    untuned = ladder.ladder_points(seeds, tuning[tuning["N"] > tuning["N"].min()])
    assert untuned.loc[0, "edge"] == "untuned"


def test_the_lr_exponent_is_recovered_and_edges_are_left_out():
    seeds, tuning = _protocol_tables(lr_exp=-0.3)
    fit = ladder.lr_exponent(ladder.ladder_points(seeds, tuning))
    assert fit["b"] == pytest.approx(-0.3, abs=1e-6) and fit["n"] == 5 and fit["rule"] == pytest.approx(-1 / 3)
    edged = ladder.ladder_points(seeds, tuning).assign(edge=["high", "high", "high", "", ""])
    assert ladder.lr_exponent(edged) is None  # 2 interior optima are not a fit


def test_the_lr_exponent_reads_the_optimum_measured_not_the_lr_the_seeds_kept():
    """Where the tie rule kept the grid's centre for the seeds, the exponent still fits the lowest-loss LR of the
    tuning runs, and an edge flag names both LRs."""
    seeds, tuning = _protocol_tables(lr_exp=-0.3)
    small = seeds["N"] < 8e4  # the two smallest sizes' seeds ran at half their optimum (a tie kept that LR)
    kept = seeds.assign(lr=np.where(small, seeds["lr"] / 2, seeds["lr"]))
    pts = ladder.ladder_points(kept, tuning)
    assert ladder.lr_exponent(pts)["b"] == pytest.approx(-0.3, abs=1e-6)
    assert ladder.lr_exponent(pts.drop(columns="tuned_lr"))["b"] > -0.2  # what the seeds' LRs would say
    top = tuning["N"] == tuning["N"].max()
    edged = tuning.assign(loss=np.where(top & (tuning["lr"] > tuning.loc[top, "lr"].median()), 1.0, tuning["loss"]))
    flags = ladder.ladder_flags(ladder.ladder_points(seeds, edged), None)
    assert any("high edge" in f and "the seeds ran at" in f for f in flags)


def test_a_degenerate_irreducible_loss_is_flagged():
    seeds, tuning = _protocol_tables()
    pts = ladder.ladder_points(seeds, tuning)
    held = {"with_E": {"params": {"E": -0.2}}}
    assert "not positive" in ladder.degenerate_e(held, pts)
    held["with_E"]["params"]["E"] = 0.99 * pts["loss"].min()
    assert "within 2 %" in ladder.degenerate_e(held, pts)
    held["with_E"]["params"]["E"] = 0.5 * pts["loss"].min()
    assert ladder.degenerate_e(held, pts) is None and ladder.degenerate_e(None, pts) is None
    text = ladder.ladder_markdown(pts, ladder.heldout(pts), "laptop", [], held_nonembed=ladder.heldout(
        pts.assign(N=pts["N_nonembed"]), with_e=False), lr_exp=ladder.lr_exponent(pts))
    assert "On non-embedding parameters: α = 0.1" in text and "lr* ∝ N^-0.300" in text and "s.d. over seeds" in text


# --- the ladder's family and its hooks (tinylm.sweep.ladder), which sweeps/ladder.py and sweeps/isoflop.py declare ---
def test_the_family_s_grids_are_spaces_of_shapes():
    from tinylm.budget import num_params
    from tinylm.config import Config, laptop_lr
    from tinylm.sweep import Space
    from tinylm.sweep import ladder as family

    for scale, shapes in family.SHAPES.items():
        space = family.sizes(scale)
        assert isinstance(space, Space) and space.points() == space.variants == [
            dict(n_embd=d, n_layer=n, n_head=h, d_ff=4 * d) for d, n, h in shapes]
    base = Config.from_name("medium", scale="laptop", **family.FAMILY["laptop"])
    iso = family.isoflop_space("laptop", base).points()
    assert len(iso) == 4 * len(family.BUDGETS["laptop"])
    for i, c in enumerate(family.BUDGETS["laptop"]):  # each budget: 4 sizes, smallest first, D = C / (6 N)
        cfgs = [base.replace(**p) for p in iso[4 * i: 4 * i + 4]]
        ns = [num_params(x) for x in cfgs]
        assert ns == sorted(ns) and all(abs(6 * n * x.train_tokens / c - 1) < 0.05 for n, x in zip(ns, cfgs))
        assert all(x.lr == laptop_lr(n) for n, x in zip(ns, cfgs))  # the size rule, unrounded


def test_the_after_hooks_take_a_space_and_read_the_largest_point_s_epochs(monkeypatch):
    from types import SimpleNamespace

    from tinylm.config import Config
    from tinylm.sweep import Space, plan
    from tinylm.sweep import ladder as family

    calls = []
    monkeypatch.setattr(ladder, "report", lambda *a: calls.append(("ladder", a)))
    monkeypatch.setattr(ladder, "isoflop_report", lambda *a: calls.append(("isoflop", a)))
    monkeypatch.setattr(plan, "corpus_tokens", lambda cfg: (1_000_000.0, True))
    sweep = SimpleNamespace(uri=lambda: "sqlite:///x.db", name="ladder", root="/r")
    base = Config.from_name("medium", scale="laptop")
    space = Space(variants=[dict(n_embd=32, n_layer=1, n_head=2, d_ff=128, train_tokens=3_000_000),
                            dict(n_embd=64, n_layer=2, n_head=4, d_ff=256, train_tokens=2_000_000)])
    family.report(None, sweep=sweep, base=base, space=space)
    family.isoflop_report(None, sweep=sweep, base=base, space=space)
    (kind, args), (kind2, args2) = calls
    assert kind == "ladder" and args == ("sqlite:///x.db", "ladder", "/r/analysis/ladder", "laptop", 2.0)  # d x L
    assert kind2 == "isoflop" and args2[-1] == 3.0  # the longest run
    monkeypatch.setattr(plan, "corpus_tokens", lambda cfg: (np.nan, False))
    family.report(None, sweep=sweep, base=base, space=space)
    assert np.isnan(calls[-1][1][-1])


def test_the_family_module_needs_no_ray():
    import subprocess
    import sys

    code = "import sys; sys.modules['ray'] = None; import tinylm.sweep.ladder; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
