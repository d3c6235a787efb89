"""tinylm.analysis: the fitter recovers known laws, Pareto / decision / statistics / cost on hand-checked data,
and the report end to end from a real sqlite MLflow store written through tinylm.tracking."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from tinylm.analysis.cli import main as cli_main
from tinylm.analysis.cli import parse_baseline
from tinylm.analysis.cost import device_price, load_prices, sweep_cost, trial_costs
from tinylm.analysis.decision import decide
from tinylm.analysis.fits import (
    NotEnoughPoints,
    PowerLawFit,
    compute_optimal,
    fit_chinchilla,
    fit_power_law,
    isoflop_exponents,
    isoflop_minima,
)
from tinylm.analysis.pareto import pareto_front, pareto_mask
from tinylm.analysis.report import build_report
from tinylm.analysis.scaling import scaling_fits
from tinylm.analysis.stats import compare, group_over_seeds, prepare
from tinylm.config import Config

# Epoch AI's replication of Chinchilla's approach 3 (Besiroglu et al. 2024, arXiv:2404.10102, eq. 4).
EPOCH = {"E": 1.82, "A": 482.01, "B": 2085.43, "alpha": 0.3478, "beta": 0.3658}


def law(n, d, p=EPOCH):
    return p["E"] + p["A"] * np.asarray(n, float) ** -p["alpha"] + p["B"] * np.asarray(d, float) ** -p["beta"]


def trials(rows: list[dict], preset: str = "debug") -> pd.DataFrame:
    """A trials table as load_runs returns it: Config fields by name plus the given metrics/overrides."""
    out = []
    for i, r in enumerate(rows):
        cfg = {k: v for k, v in r.items() if k in Config.__dataclass_fields__}
        row = Config.from_name(preset, **cfg).to_dict()
        row.update({"run_id": f"r{i:03d}", "trial_id": f"t_{i:05d}", "status": "completed"})
        row.update({k: v for k, v in r.items() if k not in cfg})
        out.append(row)
    return pd.DataFrame(out)


# --- fits -------------------------------------------------------------------------------------------------------
def test_chinchilla_fit_recovers_epoch_law_with_bootstrap_ci():
    rng = np.random.default_rng(0)
    n = 10 ** rng.uniform(6, 9, 60)
    d = 10 ** rng.uniform(8, 11, 60)
    y = law(n, d) * np.exp(rng.normal(0, 0.002, 60))  # 0.2 % multiplicative noise
    t0 = time.perf_counter()
    fit = fit_chinchilla(n, d, y, n_boot=50, seed=0)
    elapsed = time.perf_counter() - t0
    for k, true in EPOCH.items():
        assert fit.params[k] == pytest.approx(true, rel=0.05), k
        lo, hi = fit.ci[k]
        assert lo <= true <= hi, f"{k}: {true} outside [{lo}, {hi}]"
    assert fit.boot.shape == (50, 5) and fit.n_points == 60 and fit.n_boot_failed == 0
    assert np.allclose(fit.predict(n, d), law(n, d, fit.params))
    print(f"\nL(N,D) fit + 50 bootstraps: {elapsed:.1f} s; " + ", ".join(
        f"{k}={fit.params[k]:.4g} [{fit.ci[k][0]:.4g}, {fit.ci[k][1]:.4g}]" for k in EPOCH))


def test_single_variable_fit_recovers_law_and_is_deterministic():
    true = {"E": 1.69, "A": 406.4, "alpha": 0.34}  # Hoffmann et al.'s N term
    rng = np.random.default_rng(1)
    n = np.geomspace(1e6, 1e9, 12)
    y = (true["E"] + true["A"] * n ** -true["alpha"]) * np.exp(rng.normal(0, 0.002, n.size))
    fit = fit_power_law(n, y, name="N", n_boot=50, seed=0)
    for k, v in true.items():
        assert fit.params[k] == pytest.approx(v, rel=0.05), k
        assert fit.ci[k][0] <= v <= fit.ci[k][1], k
    assert fit.form == "L(N)" and fit.formula().startswith("L(N) = 1.6")
    again = fit_power_law(n, y, name="N", n_boot=50, seed=0)
    assert again.params == fit.params and again.ci == fit.ci


def test_too_few_points_raise_a_specific_error():
    n = np.repeat([1e6, 1e7, 1e8], 5)  # 15 points, 3 distinct N
    with pytest.raises(NotEnoughPoints, match=r"L\(N\) needs at least 4 distinct N; got 3"):
        fit_power_law(n, 2 + 100 * n ** -0.3, n_boot=0)
    with pytest.raises(NotEnoughPoints, match="at least 6 points"):
        fit_chinchilla([1e6, 1e7, 1e8, 1e9, 1e10], [1e8, 1e9, 1e10, 1e8, 1e9], [3, 2.9, 2.8, 2.7, 2.6], n_boot=0)
    nn, dd = np.meshgrid([1e6, 1e7, 1e8, 1e9], [1e9, 1e10])
    with pytest.raises(NotEnoughPoints, match="3 distinct D; got 2"):
        fit_chinchilla(nn.ravel(), dd.ravel(), law(nn.ravel(), dd.ravel()), n_boot=0)
    # NaN and non-positive values do not count as points
    with pytest.raises(NotEnoughPoints, match="got 3"):
        fit_power_law([1e6, 1e7, 1e8, np.nan], [3.0, 2.8, 2.6, 2.5], n_boot=0)
    assert issubclass(NotEnoughPoints, ValueError)


def test_compute_optimal_allocation_is_the_isoflop_minimum():
    fit = PowerLawFit("L(N,D)", ("N", "D"), dict(EPOCH))
    c = 1e21
    o = compute_optimal(fit, c)
    assert 6 * o["N_opt"] * o["D_opt"] == pytest.approx(c)
    assert o["tokens_per_param"] == pytest.approx(o["D_opt"] / o["N_opt"])
    ns = np.geomspace(o["N_opt"] / 10, o["N_opt"] * 10, 20001)
    brute = ns[np.argmin(law(ns, c / (6 * ns)))]
    assert o["N_opt"] == pytest.approx(brute, rel=1e-3)
    assert o["loss"] == pytest.approx(law(o["N_opt"], o["D_opt"]))
    # N_opt ∝ C^(β/(α+β))
    o2 = compute_optimal(fit, 100 * c)
    a = EPOCH["beta"] / (EPOCH["alpha"] + EPOCH["beta"])
    assert math.log(o2["N_opt"] / o["N_opt"]) / math.log(100) == pytest.approx(a)


def test_isoflop_minima_find_the_parabola_argmin():
    cs, rows = [1e18, 1e19, 1e20], []
    for c in cs:
        n = np.geomspace(1e7, 1e10, 9) * (c / 1e19) ** 0.5
        rows += [(c * (1 + 0.01 * i), ni, law(ni, c / (6 * ni))) for i, ni in enumerate(n)]
    c, n, y = map(np.array, zip(*rows, strict=True))
    minima = isoflop_minima(c, n, y)
    assert len(minima) == 3 and all(m["bracketed"] for m in minima)
    fit = PowerLawFit("L(N,D)", ("N", "D"), EPOCH)
    for m, cb in zip(minima, cs, strict=True):
        assert m["N_opt"] == pytest.approx(compute_optimal(fit, m["C"])["N_opt"], rel=0.25)
        assert m["C"] == pytest.approx(cb, rel=0.05)
    exps = isoflop_exponents(minima)
    assert exps["a"] == pytest.approx(EPOCH["beta"] / (EPOCH["alpha"] + EPOCH["beta"]), abs=0.05)
    assert exps["a"] + exps["b"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(NotEnoughPoints, match="isoFLOP"):
        isoflop_minima([1e18, 2e18, 4e18, 8e18], [1e6, 2e6, 4e6, 8e6], [3, 2.9, 2.8, 2.7])  # C ∝ N: no budget


def test_scaling_fits_choose_points_and_explain_refusals():
    rows = []
    for n_embd in (32, 64, 96, 128, 192):
        for seed in (0, 1):
            n = 1e5 * n_embd
            rows.append({"n_embd": n_embd, "seed": seed, "params_total": n, "params_nonembed": 0.6 * n,
                         "tokens": 3e5, "final_val_loss": 2 + 300 * n ** -0.3 + 0.001 * seed})
    fitted = scaling_fits(trials(rows), n_boot=0)
    assert fitted["L(N)"].n_points == 5 and fitted["L(N)"].params["alpha"] == pytest.approx(0.3, rel=0.05)
    assert fitted["L(N_nonembed)"].n_points == 5
    assert isinstance(fitted["L(D)"], NotEnoughPoints) and "distinct D; got 1" in str(fitted["L(D)"])
    assert isinstance(fitted["L(N,D)"], NotEnoughPoints)
    assert fitted["L(C)"].n_points == 5  # C = 6ND with one D: every point is on the compute frontier


# --- Pareto -----------------------------------------------------------------------------------------------------
def test_pareto_front_hand_checked():
    pts = {  # name: (latency, loss)
        "a": (1.0, 3.0),  # cheapest: on the front
        "b": (2.0, 2.0),  # on the front
        "c": (2.0, 2.5),  # same latency as b, worse loss: dominated (a tie broken by the other axis)
        "d": (3.0, 2.0),  # same loss as b, slower: dominated
        "e": (4.0, 1.0),  # best loss: on the front
        "e2": (4.0, 1.0),  # identical to e: neither dominates the other, both on the front
        "f": (5.0, 3.0), "f2": (5.0, 3.0),  # a duplicate pair, dominated by a, b and e: both off
        "g": (np.nan, 0.5),  # no latency: left out
        "h": (0.5, np.nan),  # no loss: left out
    }
    x, y = np.array(list(pts.values())).T
    mask = pareto_mask(x, y)
    assert [k for k, m in zip(pts, mask, strict=True) if m] == ["a", "b", "e", "e2"]
    df = pd.DataFrame({"name": list(pts), "latency_ms_b1_l128": x, "final_val_loss": y}).iloc[::-1]
    front = pareto_front(df, "latency_ms_b1_l128")
    assert front["name"].tolist() == ["a", "b", "e2", "e"]  # sorted by cost, then loss; stable otherwise
    assert pareto_front(df, "peak_mem_mb").empty
    assert not pareto_mask([np.nan], [np.nan]).any()


# --- statistics -------------------------------------------------------------------------------------------------
def _seeded(values: dict[float, list[float]], metric: str = "final_val_loss", seeds=None) -> pd.DataFrame:
    rows = []
    for glu, vals in values.items():
        for i, v in enumerate(vals):
            rows.append({"glu_factor": glu, "seed": (seeds or {}).get(glu, range(len(vals)))[i], metric: v})
    return trials(rows)


def test_group_over_seeds_mean_and_std():
    df = prepare(_seeded({4.0: [3.0, 3.2, 3.4], 2.0: [2.0, 2.5]}))
    g = group_over_seeds(df, ["final_val_loss", "loss"])
    assert g["label"].tolist() == ["glu_factor=4", "glu_factor=2"]  # order of first appearance
    assert g["n"].tolist() == [3, 2] and g["seeds"].tolist() == ["0,1,2", "0,1"]
    assert g["final_val_loss_mean"].tolist() == pytest.approx([3.2, 2.25])
    assert g["final_val_loss_std"].tolist() == pytest.approx([np.std([3.0, 3.2, 3.4], ddof=1),
                                                               np.std([2.0, 2.5], ddof=1)])
    assert g["loss_mean"].tolist() == pytest.approx([3.2, 2.25])
    single = group_over_seeds(prepare(_seeded({4.0: [3.0]})), ["loss"])
    assert math.isnan(single["loss_std"].iloc[0])


def test_t_tests_equal_scipy():
    a, b = [3.0, 3.2, 3.5, 3.1], [2.9, 3.0, 3.3, 3.05]
    df = prepare(_seeded({4.0: a, 2.0: b}))
    r = compare(df, "loss", df["glu_factor"] == 4.0, df["glu_factor"] == 2.0)
    ref = sps.ttest_rel(b, a)
    assert r["test"] == "paired t" and r["n_pairs"] == 4 and r["dof"] == 3
    assert r["statistic"] == pytest.approx(ref.statistic, rel=1e-12) and r["pvalue"] == pytest.approx(ref.pvalue,
                                                                                                      rel=1e-12)
    assert r["diff"] == pytest.approx(np.mean(b) - np.mean(a))
    # disjoint seeds: unpaired, Welch
    df = prepare(_seeded({4.0: a, 2.0: b[:3]}, seeds={4.0: [0, 1, 2, 3], 2.0: [10, 11, 12]}))
    r = compare(df, "loss", df["glu_factor"] == 4.0, df["glu_factor"] == 2.0)
    ref = sps.ttest_ind(b[:3], a, equal_var=False)
    assert r["test"] == "Welch t" and r["statistic"] == pytest.approx(ref.statistic, rel=1e-12)
    assert r["pvalue"] == pytest.approx(ref.pvalue, rel=1e-12)


def test_correlations():
    from tinylm.analysis.stats import hparam_correlations, task_correlations

    rows = [{"glu_factor": g, "seed": 0, "final_val_loss": 3 - 0.1 * g, "eval_a_acc": 0.1 * g,
             "eval_b_acc": 0.5 - 0.01 * g, "eval_b_acc_norm": 0.2 + 0.01 * g} for g in (1.0, 2.0, 3.0, 4.0)]
    df = prepare(trials(rows))
    hp = hparam_correlations(df)
    assert hp.set_index(["hparam", "metric"]).loc[("glu_factor", "loss"), "rho"] == pytest.approx(-1.0)
    tc = task_correlations(df)
    assert list(tc.columns) == ["eval_a_acc", "eval_b_acc_norm"] and tc.iloc[0, 1] == pytest.approx(1.0)


# --- the PRD decision rule ----------------------------------------------------------------------------------------
def _variants(spec: dict[float, tuple[float, float, float]]) -> pd.DataFrame:
    """glu_factor -> (ppl, latency ms, peak MB), two seeds each with ±1 % PPL around the given mean."""
    rows = []
    for glu, (p, lat, mem) in spec.items():
        for seed, jitter in ((0, 0.99), (1, 1.01)):
            rows.append({"glu_factor": glu, "seed": seed, "final_val_ppl": p * jitter,
                         "final_val_loss": math.log(p * jitter), "latency_ms_b1_l128": lat, "peak_mem_mb": mem})
    return trials(rows)


def test_decision_clear_winner():
    df = _variants({4.0: (20.0, 10.0, 100.0), 2.66: (18.0, 10.0, 90.0), 2.0: (15.0, 12.0, 80.0),
                    3.0: (18.5, 9.0, 100.0)})
    d = decide(df)  # no tag: the first grid point (glu_factor=4) is the baseline
    assert d.baseline == "glu_factor=4" and "first grid point" in d.how
    v = d.table.set_index("variant")
    assert v.loc["glu_factor=2.66", "verdict"] == "win" and v.loc["glu_factor=2.66", "ppl_change_pct"] == \
        pytest.approx(-10.0)
    assert v.loc["glu_factor=2", "verdict"] == "lose" and "slower" in v.loc["glu_factor=2", "reason"]
    assert v.loc["glu_factor=3", "verdict"] == "win"
    assert d.winner == "glu_factor=2.66"  # of two clear winners, the lower perplexity


def test_decision_tie_goes_to_the_faster():
    df = _variants({4.0: (20.0, 10.0, 100.0), 2.66: (20.5, 8.0, 100.0), 3.0: (19.5, 11.0, 95.0)})
    d = decide(df, baseline={"glu_factor": 4.0})
    v = d.table.set_index("variant")
    assert v.loc["glu_factor=2.66", "verdict"] == "tie-win" and "faster" in v.loc["glu_factor=2.66", "reason"]
    assert v.loc["glu_factor=3", "verdict"] == "lose" and "not faster" in v.loc["glu_factor=3", "reason"]
    assert d.winner == "glu_factor=2.66" and "tie" in d.summary


def test_decision_no_winner_with_reasons():
    df = _variants({4.0: (20.0, 10.0, 100.0), 2.66: (25.0, 8.0, 80.0), 3.0: (17.0, 10.0, 120.0),
                    2.0: (20.2, 10.0, 100.0)})
    df.loc[df["glu_factor"] == 2.0, "latency_ms_b1_l128"] = np.nan
    df["baseline"] = df["glu_factor"] == 4.0  # tagged baseline
    d = decide(df)
    assert d.winner is None and d.summary.startswith("No winner") and d.how == "tagged baseline"
    v = d.table.set_index("variant")
    assert "worse" in v.loc["glu_factor=2.66", "reason"]
    assert "more memory" in v.loc["glu_factor=3", "reason"]
    assert "latency not measured" in v.loc["glu_factor=2", "reason"]


# --- cost -------------------------------------------------------------------------------------------------------
def test_cost_math(tmp_path):
    prices = load_prices()
    assert device_price("NVIDIA H100 80GB HBM3", prices) == ("H100", 6.88)
    assert device_price("NVIDIA L4", prices) == ("L4", 0.80)
    assert device_price("NVIDIA L40S", prices)[0] is None  # L4 is not L40S
    assert device_price("cpu", prices) == ("cpu", 0.05)
    t0 = pd.Timestamp("2025-01-01T00:00:00Z")
    df = pd.DataFrame({
        "run_id": ["a", "b", "c", "d"],
        "tag.device": ["NVIDIA A100-SXM4-40GB", "NVIDIA H100 80GB HBM3", None, "TPU v5e"],
        "device": ["cuda", "cuda", "cpu", "auto"],  # Config.device: only a fallback
        "start_time": [t0, t0, t0, t0],
        "end_time": [t0 + pd.Timedelta(hours=2), t0 + pd.Timedelta(minutes=30), pd.NaT, t0 + pd.Timedelta(hours=1)],
        "train_time_s": [100.0, 100.0, 7200.0, 100.0],
        "num_workers": [2, 1, 1, 1],
    })
    c = trial_costs(df, prices)
    assert c["price_key"].iloc[:3].tolist() == ["A100", "H100", "cpu"] and pd.isna(c["price_key"].iloc[3])
    assert c["device_hours"].tolist() == pytest.approx([4.0, 0.5, 2.0, 1.0])  # end−start, else train_time_s
    assert c["cost_usd"].iloc[:3].tolist() == pytest.approx([4 * 4.10, 0.5 * 6.88, 2 * 0.05])
    tot = sweep_cost(c)
    assert tot["cost_usd"] == pytest.approx(16.4 + 3.44 + 0.1) and tot["device_hours"] == pytest.approx(7.5)
    assert tot["n_priced"] == 3 and tot["unpriced_devices"] == ["TPU v5e"]
    (tmp_path / "p.json").write_text(json.dumps({"H100": 2.5, "TPU v5e": 1.2}))
    mine = load_prices(tmp_path / "p.json")
    assert mine["H100"] == 2.5 and mine["A100"] == 4.10
    assert trial_costs(df, mine)["cost_usd"].iloc[3] == pytest.approx(1.2)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="device name -> USD per hour"):
        load_prices(tmp_path / "bad.json")


# --- the report -------------------------------------------------------------------------------------------------
SECTIONS = ("## Setup", "## Best configuration", "## Results (mean ± std over seeds)", "## Scaling laws",
            "## Pareto fronts", "## Decision (PRD rule)", "## Cost", "## Correlations", "## Figures",
            "## Discussion")


def test_report_on_a_scaling_grid(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for n_layer in (1, 2, 3, 4, 6):
        for train_tokens in (1_000_000, 3_000_000, 10_000_000):
            n = 2e5 * n_layer
            rows.append({"n_layer": n_layer, "train_tokens": train_tokens, "seed": 0, "params_total": n,
                         "params_nonembed": n - 1e5, "tokens": train_tokens,
                         "final_val_loss": float(law(n, train_tokens) * np.exp(rng.normal(0, 0.002))),
                         "latency_ms_b1_l128": 1.0 + n_layer, "peak_mem_mb": 50.0 * n_layer,
                         "train_time_s": 60.0, "tag.device": "cpu"})
    path = build_report(trials(rows), tmp_path, "grid", n_boot=10)
    text = path.read_text()
    for s in SECTIONS:
        assert s in text, s
    assert "**L(N,D)** (15 points)" in text and "Compute-optimal allocation" in text
    assert "**L(N)** (5 points)" in text
    files = {p.name for p in tmp_path.iterdir()}
    assert {"fig_scaling.png", "fig_pareto_latency.png", "fig_pareto_memory.png", "fig_pareto_params.png"} <= files
    assert not files & {"fig_glu.png", "fig_context.png", "fig_curves.png", "fig_benchmarks.png"}
    assert "- **L(D)**: not enough points: L(D) needs at least 4 distinct D; got 3" in text


def _store(uri: str) -> tuple[str, list[str]]:
    """A glu sweep in a real sqlite store: 3 configs × 2 seeds completed, one stopped by ASHA, one failed."""
    from tinylm.tracking import Tracker

    tr = Tracker(uri, "tinylm")
    parent = tr.start_sweep("glu-k1", {"space": {"glu_factor": [2.0, 2.66, 4.0]}},
                            {"tinylm.sweep": "glu", "git_sha": "abc1234", "device": "NVIDIA A10G",
                             "hostname": "box"},
                            description="GLU expansion at equal params", hypothesis="2.66x matches 4x")
    base_ppl = {4.0: 30.0, 2.66: 29.5, 2.0: 33.0}
    latency = {4.0: 5.0, 2.66: 4.5, 2.0: 4.0}
    ids = []
    i = 0
    for glu in (4.0, 2.66, 2.0):
        for seed in (0, 1):
            cfg = Config.from_name("debug", glu_factor=glu, seed=seed).to_dict()
            rid = tr.trial_run(parent, f"t_{i:05d}", cfg)
            ppl = base_ppl[glu] * (1 + 0.01 * seed + 0.002 * seed * glu)
            for tok in (20_000, 40_000, 60_000):
                tr.log_metrics(rid, {"val_loss": math.log(ppl) + 60_000 / tok - 1}, step=tok)
            tr.finish_run(rid, "completed", final_metrics={
                "final_val_loss": math.log(ppl), "final_val_ppl": ppl, "tokens": 60_000,
                "params_total": 100_000 + 10_000 * glu, "params_nonembed": 60_000 + 10_000 * glu,
                "embed_share": 0.4 - 0.02 * glu, "latency_ms_b1_l128": latency[glu], "peak_mem_mb": 100 + glu,
                "train_time_s": 30.0, "eval_score": 0.3, "eval_hellaswag_acc": 0.25 + 0.01 * seed + 0.01 * glu,
                "eval_arc_easy_acc": 0.3 + 0.02 * glu})
            ids.append(rid)
            i += 1
    stopped = tr.trial_run(parent, "t_00006", Config.from_name("debug", glu_factor=3.0).to_dict())
    tr.log_metrics(stopped, {"val_loss": 4.0}, step=20_000)
    tr.finish_run(stopped, "stopped_asha", stop_reason="asha")
    failed = tr.trial_run(parent, "t_00007", Config.from_name("debug", glu_factor=3.0, seed=1).to_dict())
    tr.finish_run(failed, "failed", stop_reason="OOM")
    tr.finish_run(parent, "completed")
    return parent, ids


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_report_end_to_end_from_sqlite_store(tmp_path, capsys):
    from mlflow import MlflowClient

    from tinylm.tracking import Tracker

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent, _ = _store(uri)
    out = tmp_path / "reports"
    assert cli_main(["glu", "--uri", uri, "--out", str(out), "--n-boot", "20", "--baseline", "glu_factor=4"]) == 0
    printed = capsys.readouterr().out
    report = out / "glu" / "REPORT.md"
    assert str(report) in printed and printed.rstrip().endswith("s)")
    text = report.read_text()
    for s in SECTIONS:
        assert s in text, s
    assert "**Hypothesis:** 2.66x matches 4x" in text and "GLU expansion at equal params" in text
    assert "**Trials:** 8 (completed: 6, stopped_asha: 1, failed: 1)" in text and "abc1234" in text
    assert "**Devices:** NVIDIA A10G" in text
    assert "not enough points: L(N) needs at least 4 distinct N; got 3" in text
    assert "Baseline: **glu_factor=4** (selected by glu_factor=4)." in text
    # block_size 64 (debug): no model can be timed alone at 128 tokens, and the rule says so instead of reading
    # the in-sweep numbers (tinylm.footprint)
    assert "latency and model memory not measured" in text and "footprints.csv" in text
    assert "paired t" in text or "two-way t" in text  # the verdict names its test
    assert "A10G" in text and "$" in text
    files = {p.name for p in (out / "glu").iterdir()}
    assert {"REPORT.md", "results_summary.csv", "table_main.csv", "fig_glu.png", "fig_embed_share.png",
            "fig_curves.png", "fig_benchmarks.png", "fig_pareto_latency.png", "fig_pareto_memory.png",
            "fig_pareto_params.png"} <= files
    assert "fig_context.png" not in files and "fig_scaling.png" in files  # N varies (3 values): points, no fit
    summary = pd.read_csv(out / "glu" / "results_summary.csv")
    assert len(summary) == 8 and summary["cost_usd"].notna().sum() == 8
    main = pd.read_csv(out / "glu" / "table_main.csv")
    assert main["label"].tolist() == ["glu_factor=4", "glu_factor=2.66", "glu_factor=2"] and set(main["n"]) == {2}
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert {f"report/{f}" for f in files} == logged
    # the report is a function of the data: a rebuild gives the same markdown and tables
    first = {f: (out / "glu" / f).read_bytes() for f in ("REPORT.md", "table_main.csv", "results_summary.csv")}
    Tracker(uri, "tinylm").start_sweep("empty-1", {}, {"tinylm.sweep": "empty"})  # a sweep with no trials yet
    assert cli_main(["--all", "--uri", uri, "--out", str(out), "--n-boot", "20", "--baseline", "glu_factor=4",
                     "--no-log"]) == 0
    assert first == {f: (out / "glu" / f).read_bytes() for f in first}
    assert "skipped empty: sweep 'empty' has no trials" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no sweep 'nope'"):
        cli_main(["nope", "--uri", uri, "--out", str(out)])


def test_cli_baseline_parsing():
    assert parse_baseline(["glu_factor=2.66", "mlp=swiglu", "tie_embeddings=false", "tag=x=y"]) == \
        {"glu_factor": 2.66, "mlp": "swiglu", "tie_embeddings": False, "tag": "x=y"}
    assert parse_baseline(None) is None
    with pytest.raises(SystemExit, match="key=value"):
        parse_baseline(["glu_factor"])
    with pytest.raises(SystemExit, match="n_layer"):
        parse_baseline(["n_layer=two"])


def test_analysis_imports_neither_mlflow_nor_ray():
    code = ("import sys, tinylm.analysis, tinylm.analysis.cli; "
            "bad = [m for m in ('mlflow', 'ray', 'torch') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_implausible_exponent_is_flagged():
    """A non-monotone set of points (the biggest model undertrained) must not read as a confident law."""
    from tinylm.analysis import fits

    n = np.array([2.4e5, 5.4e5, 1.07e6, 3.07e6])
    loss = np.array([6.198, 6.011, 5.799, 6.083])  # the arch smoke sweep: 3.07M params is worse than 1.07M
    fit = fits.fit_power_law(n, loss, name="N", n_boot=10)
    good = fits.fit_power_law(n, 1.69 + 406.4 / n ** 0.34, name="N", n_boot=10)
    assert good.warnings() == []
    assert fit.params["alpha"] > 2 and fit.warnings() and "do not extrapolate" in fit.warnings()[0]



def test_report_sections_for_recall_per_length_and_moe_routing():
    """Runs that carry recall-per-length or routing metrics get their own tables, per configuration over seeds;
    runs without them get none."""
    from tinylm.analysis.report import block_sections

    rows = [{"mixer": m, "seed": s, "final_val_loss": 4.0, "tokens_per_s": 1000.0 * (s + 1),
             "eval_recall_acc_L8": a + 0.01 * s, "eval_recall_acc_L64": a / 4}
            for m, a in (("attention", 0.9), ("mamba", 0.5)) for s in (0, 1)]
    sections = dict(block_sections(trials(rows)))
    assert list(sections) == ["Recall per context length"]
    table = sections["Recall per context length"]
    assert "| configuration | seeds | L8 | L64 | train tok/s |" in table
    assert "| mixer=attention | 2 | 0.905 ± 0.0071 | 0.225 ± 0 | 1,500 |" in table  # attention's L8 over its 2 seeds; mean throughput
    moe = [{"n_experts": 4, "top_k": 2, "seed": s, "final_val_loss": 4.0, "moe_max_over_mean": 1.5,
            "moe_load_cv": 0.2} for s in (0, 1)]
    assert [t for t, _ in block_sections(trials(moe))] == ["MoE routing balance"]
    assert block_sections(trials([{"seed": 0, "final_val_loss": 4.0}])) == []
