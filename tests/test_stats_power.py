"""The verdict's statistics on simulated sweeps with a known effect: the two-way (variant × seed) interval covers
the true difference at its nominal rate, Holm's correction holds the family-wise error, the exact noncentral-t MDE
has the power it claims; the PRD rule calls a tie only on an interval inside the margin; the isoFLOP minimum is
reported only when bracketed, with a delta-method interval that covers.

Simulations run thousands of sweeps at once through the arrays the report's code uses (``stats.two_way_fit``,
``stats.t_test``, ``stats.holm``, ``fits.parabola_minimum``), so each test takes seconds."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tinylm.analysis import fits, stats, verdict
from tinylm.analysis.decision import decide
from tinylm.analysis.stats import prepare

K, SEEDS, SIMS = 4, 3, 20_000  # 4 configurations (baseline first) x 3 seeds, as the main job's GLU sweep
GROUP = np.repeat(np.arange(K), SEEDS)
SEED = np.tile(np.arange(SEEDS), K)


def sweeps(effects: np.ndarray, noise: float, seed_sd: float, rng: np.random.Generator,
           groups: np.ndarray = GROUP, seeds: np.ndarray = SEED, sims: int = SIMS) -> np.ndarray:
    """(trials, sims) val losses: 5 + effect[config] + a per-seed offset shared by every config + noise."""
    offsets = rng.normal(0, seed_sd, (seeds.max() + 1, sims))
    return 5.0 + np.asarray(effects)[groups][:, None] + offsets[seeds] + rng.normal(0, noise, (len(groups), sims))


def two_way_tests(y: np.ndarray, groups: np.ndarray = GROUP, seeds: np.ndarray = SEED, k: int = K,
                  level: float = 0.95) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(delta, lo, hi, p), each (k-1, sims), of every config against config 0, and the d.o.f."""
    fit = stats.two_way_fit(groups, seeds, y)
    est = [fit.contrast(0, g) for g in range(1, k)]
    m, se = np.array([e[0] for e in est]), np.array([e[1] for e in est])
    lo, hi, _, p = stats.t_test(m, se, fit.dof, level)
    return m, lo, hi, p, fit.dof


def test_two_way_interval_covers_the_true_difference_at_its_nominal_rate():
    rng = np.random.default_rng(0)
    truth = np.array([0.0, 0.02, -0.03, 0.05])
    _, lo, hi, _, dof = two_way_tests(sweeps(truth, noise=0.05, seed_sd=0.08, rng=rng))
    assert dof == (K - 1) * (SEEDS - 1)  # 6, where each paired test has 2
    cover = ((lo <= truth[1:, None]) & (truth[1:, None] <= hi)).mean(axis=1)
    assert np.all((cover >= 0.93) & (cover <= 0.97)), cover
    # an unbalanced sweep (a run missing) still covers: the least-squares contrast uses what there is
    keep = np.ones(K * SEEDS, bool)
    keep[K * SEEDS - 1] = False  # the last config lost its seed 2
    truth_y = sweeps(truth, noise=0.05, seed_sd=0.08, rng=rng)[keep]
    _, lo, hi, _, dof = two_way_tests(truth_y, GROUP[keep], SEED[keep])
    assert dof == 5
    cover = ((lo <= truth[1:, None]) & (truth[1:, None] <= hi)).mean(axis=1)
    assert np.all((cover >= 0.93) & (cover <= 0.97)), cover


def test_the_report_path_uses_the_same_two_way_numbers():
    rng = np.random.default_rng(3)
    y = sweeps([0.0, 0.02, -0.03, 0.05], noise=0.05, seed_sd=0.08, rng=rng, sims=1)[:, 0]
    df = prepare(pd.DataFrame({"glu_factor": np.repeat([4.0, 2.0, 2.66, 3.0], SEEDS), "seed": SEED,
                               "final_val_loss": y}))
    found = verdict.effects(df, df["glu_factor"] == 4.0)
    m, lo, hi, p, dof = two_way_tests(y[:, None])
    for i, e in enumerate(found):
        assert e.test == "two-way t" and e.dof == dof == 6 and e.n_pairs == SEEDS
        assert e.delta == pytest.approx(m[i, 0], abs=1e-12)
        assert e.ci == pytest.approx((lo[i, 0], hi[i, 0]), abs=1e-12)
        assert e.pvalue == pytest.approx(p[i, 0], rel=1e-9)
    assert [e.p_holm for e in found] == pytest.approx(stats.holm(p[:, 0]).tolist())
    # two configurations: the two-way fit is the paired t-test, and the verdict says "paired t"
    two = df[df["glu_factor"].isin([4.0, 2.0])]
    e = verdict.effects(two, two["glu_factor"] == 4.0)[0]
    d = y[SEEDS:2 * SEEDS] - y[:SEEDS]
    assert e.test == "paired t" and e.dof == SEEDS - 1
    assert e.se == pytest.approx(d.std(ddof=1) / math.sqrt(SEEDS))


def test_holm_adjustment_by_hand_and_nan():
    assert stats.holm(np.array([0.01, 0.04, 0.03])).tolist() == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm(np.array([0.5, 0.01])).tolist() == pytest.approx([0.5, 0.02])
    out = stats.holm(np.array([0.02, np.nan, 0.01]))
    assert out[[0, 2]].tolist() == pytest.approx([0.02, 0.02]) and math.isnan(out[1])  # NaN: not in the family


def test_holm_keeps_the_family_error_rate_where_raw_p_does_not():
    rng = np.random.default_rng(1)
    _, _, _, p, _ = two_way_tests(sweeps(np.zeros(K), noise=0.05, seed_sd=0.08, rng=rng))  # no true effect
    raw = (p < 0.05).any(axis=0).mean()
    adjusted = (stats.holm(p) < 0.05).any(axis=0).mean()
    assert raw > 0.09  # three comparisons at 5 % each: the family errs ~2.5x as often
    assert adjusted <= 0.05, adjusted
    assert (p < 0.05).mean(axis=1) == pytest.approx([0.05] * (K - 1), abs=0.006)  # each test alone is exact


@pytest.mark.parametrize("k, n", [(2, 3), (4, 3), (3, 5)])
def test_exact_mde_has_80_percent_power(k, n):
    """Two configurations: the paired t (n-1 d.o.f.); more: the two-way fit ((k-1)(n-1) d.o.f.)."""
    rng = np.random.default_rng(2)
    groups, seeds = np.repeat(np.arange(k), n), np.tile(np.arange(n), k)
    noise = 0.05
    dof = (k - 1) * (n - 1)
    md = verdict.mde(math.sqrt(2) * noise, n, dof=dof)  # a same-seed difference has s.d. sqrt(2)·noise
    y = sweeps(np.r_[0.0, md, np.zeros(k - 2)], noise, 0.08, rng, groups, seeds, sims=40_000)
    _, _, _, p, got_dof = two_way_tests(y, groups, seeds, k)
    assert got_dof == dof
    power = (p[0] < 0.05).mean()
    assert power == pytest.approx(0.80, abs=0.01)
    # the textbook (t.975 + t.80)·se is optimistic: at its value the test has visibly less power
    textbook = (sps.t.ppf(0.975, dof) + sps.t.ppf(0.8, dof)) * noise * math.sqrt(2 / n)
    assert textbook < md
    if dof <= 2:
        y = sweeps(np.r_[0.0, textbook, np.zeros(k - 2)], noise, 0.08, rng, groups, seeds, sims=40_000)
        assert (two_way_tests(y, groups, seeds, k)[3][0] < 0.05).mean() < 0.78


def test_pooling_over_variants_shrinks_the_mde():
    sd_diff = 0.1
    paired, pooled = verdict.mde(sd_diff, 3), verdict.mde(sd_diff, 3, dof=6)
    assert pooled < 0.65 * paired  # 4 configs x 3 seeds: 6 d.o.f. instead of 2
    assert verdict.noncentrality(2) == pytest.approx(5.653, abs=1e-3)  # scipy's noncentral t, two tails


# --- the PRD rule: ties and wins only on what the interval supports ---------------------------------------------------
def _prd_trials(ppl_change: dict[float, float], noise: float, lat: dict[float, float], mem: dict[float, float],
                seeds: int = 3, rng_seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(rng_seed)
    offsets = rng.normal(0, 0.05, seeds)
    rows = []
    for g, change in ppl_change.items():
        for s in range(seeds):
            eps = rng.normal(0, noise) if g != 4.0 else 0.0
            rows.append({"glu_factor": g, "seed": s, "final_val_loss": 5 + math.log1p(change) + offsets[s] + eps,
                         "latency_ms_b1_l128": lat[g], "peak_mem_mb": mem[g]})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("noise, change, lat, mem, expect", [
    (0.001, 0.02, 8.0, 100.0, "tie-win"),  # CI inside ±5 % and faster
    (0.001, 0.02, 12.0, 100.0, "lose"),  # a tie but slower
    (0.10, 0.02, 8.0, 100.0, "inconclusive"),  # the point is inside ±5 % but the CI straddles the margin
    (0.10, -0.06, 10.0, 100.0, "inconclusive"),  # the point is a 6 % win, the CI also allows a tie (not faster)
    (0.10, 0.02, 12.0, 120.0, "lose"),  # whatever the PPL: slower and more memory
    (0.001, -0.10, 10.0, 100.0, "win"),  # CI beyond −5 % at equal cost
    (0.001, 0.10, 8.0, 90.0, "lose"),  # CI beyond +5 %
])
def test_prd_rule_decides_on_the_interval_not_the_point(noise, change, lat, mem, expect):
    df = _prd_trials({4.0: 0.0, 2.0: change}, noise, {4.0: 10.0, 2.0: lat}, {4.0: 100.0, 2.0: mem})
    d = decide(df, baseline={"glu_factor": 4.0})
    row = d.table.iloc[0]
    assert row["verdict"] == expect, row["reason"]
    assert "95 % CI" in row["reason"] and row["ci_lo_pct"] < row["ppl_change_pct"] < row["ci_hi_pct"]
    if expect == "inconclusive":
        assert d.winner is None and "Inconclusive" in d.summary and "glu_factor=2" in d.summary


def test_prd_rule_with_one_seed_never_calls_a_tie():
    df = _prd_trials({4.0: 0.0, 2.0: 0.01}, 0.0, {4.0: 10.0, 2.0: 8.0}, {4.0: 100.0, 2.0: 100.0}, seeds=1)
    row = decide(df).table.iloc[0]
    assert row["verdict"] == "inconclusive" and "no interval" in row["reason"]


def test_reading_decides_significance_on_the_holm_adjusted_p():
    e = verdict.Effect("v", "b", 3, 3, 3, "two-way t", 0.02, (0.001, 0.039), 0.03, 0.05, 6, 0.008, 0.09)
    assert "significantly" not in e.reading(5.0) and "equivalent" in e.reading(5.0)
    wide = verdict.Effect("v", "b", 3, 3, 3, "two-way t", 0.1, (0.01, 0.19), 0.03, 0.05, 6, 0.04, 0.09)
    assert "not after Holm's correction" in wide.reading(5.0) and "inconclusive" in wide.reading(5.0)
    e.p_holm = 0.01
    assert "significantly worse (Holm p < 0.05)" in e.reading(5.0)
    beyond = verdict.Effect("v", "b", 3, 3, 3, "two-way t", 0.1, (0.06, 0.14), 0.02, 0.05, 6, 0.02, 0.06)
    assert "inconclusive" in beyond.reading(5.0)  # CI beyond +5 % but not significant after Holm
    beyond.p_holm = 0.02
    assert "worse by more than 5 %" in beyond.reading(5.0)


# --- isoFLOP: N_opt only when bracketed, a delta-method interval that covers --------------------------------------
@pytest.mark.parametrize("n", [4, 5, 6])
def test_isoflop_delta_method_interval_covers(n):
    rng = np.random.default_rng(n)
    x = np.linspace(-1.2, 1.2, n)  # log N around the budget's centre: a 10x span of sizes
    x0 = rng.uniform(-0.6, 0.6, SIMS)  # the true argmin, inside the sampled sizes
    for noise in (0.01, 0.05):
        y = 3.0 + 0.1 * (x[:, None] - x0) ** 2 + rng.normal(0, noise, (n, SIMS))
        f = fits.parabola_minimum(x, y)
        shown = f["bracketed"] & np.isfinite(f["lo"])  # the budgets the table gives an interval
        assert shown.mean() > 0.9
        cover = ((f["lo"] <= x0) & (x0 <= f["hi"]))[shown].mean()
        assert 0.90 <= cover <= 0.98, (n, noise, cover)


def test_unbracketed_budget_reads_na_and_is_left_out_of_the_exponents():
    rng = np.random.default_rng(0)

    def budget(c, centre, sizes=5):
        n = np.geomspace(1e5, 1e6, sizes) * (c / 1e15) ** 0.5
        return [(c, ni, 3.0 + 0.1 * math.log(ni / centre) ** 2 + rng.normal(0, 1e-4)) for ni in n]

    rows = budget(1e15, 3e5) + budget(1e16, 1e6) + budget(1e17, 3e6) + budget(1e18, 1e9)  # last: minimum far above
    rows += [(1e19, n, 3.0 - 0.1 * math.log(n / 3e7) ** 2) for n in np.geomspace(1e7, 1e8, 4)]  # opens downward
    c, n, y = map(np.array, zip(*rows, strict=True))
    minima = fits.isoflop_minima(c, n, y)
    assert [m["bracketed"] for m in minima] == [True, True, True, False, False]
    out, down = minima[3], minima[4]
    assert math.isnan(out["N_opt"]) and out["N_opt_ci"] is None and "not bracketed" in out["reason"]
    assert math.isnan(down["N_opt"]) and "opens downward" in down["reason"]
    for m, centre in zip(minima[:3], (3e5, 1e6, 3e6), strict=True):
        assert m["N_opt"] == pytest.approx(centre, rel=0.02) and m["N_opt_ci"][0] < m["N_opt"] < m["N_opt_ci"][1]
    exps = fits.isoflop_exponents(minima)
    assert exps["n_budgets"] == 3 and exps["n_excluded"] == 2
    assert exps["a"] == pytest.approx(math.log(10) / math.log(100), abs=0.02)  # centres x3.3 per x10 of C
    with pytest.raises(fits.NotEnoughPoints, match="bracketed"):
        fits.isoflop_exponents(minima[2:])
    three = fits.isoflop_minima(c[1:4], n[1:4], y[1:4])  # three sizes: a minimum, but no d.o.f. for an interval
    assert three[0]["N_opt_ci"] is None
