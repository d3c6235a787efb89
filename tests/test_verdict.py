"""The verdict (effects with CIs, noise floor, MDE, equivalence reading), the validity diagnostics and the report's
top sections, on synthetic tables with a known effect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from tinylm.analysis import validity, verdict
from tinylm.analysis.report import build_report
from tinylm.analysis.stats import prepare
from tinylm.config import Config


def glu_trials(effects: dict[float, float], seeds: int, noise: float, seed_effect: float = 0.0, rng_seed: int = 0,
               scale: str = "laptop") -> pd.DataFrame:
    """A GLU-like sweep: val loss = 5.0 + effect[glu] + a shared per-seed offset + independent noise (nats)."""
    rng = np.random.default_rng(rng_seed)
    offsets = rng.normal(0, seed_effect, seeds)
    rows = []
    for g, eff in effects.items():
        for s in range(seeds):
            cfg = Config.from_name("debug", glu_factor=g, seed=s, scale=scale).to_dict()
            loss = 5.0 + eff + offsets[s] + rng.normal(0, noise)
            rows.append(cfg | {"run_id": f"r{g}-{s}", "trial_id": f"t_{len(rows):05d}", "status": "completed",
                               "final_val_loss": loss, "params_total": 140_000.0, "tokens": 700_000.0,
                               "latency_ms_b1_l128": 1.0, "peak_mem_mb": 10.0})
    return pd.DataFrame(rows)


def test_paired_effect_recovers_a_known_effect_and_its_interval():
    # 4x is the baseline; 2.66x is 0.02 nats worse (+2.02 % PPL); large shared seed offsets cancel in the pairing
    df = prepare(glu_trials({4.0: 0.0, 2.66: 0.02}, seeds=8, noise=0.002, seed_effect=0.05))
    base = df["glu_factor"] == 4.0
    e = verdict.effect(df, df["glu_factor"] == 2.66, base, "2.66", "4.0")
    assert e.test == "paired t" and e.n_pairs == 8
    assert e.ppl_pct == pytest.approx(100 * math.expm1(0.02), abs=0.3)
    lo, hi = e.ci_pct
    assert hi - lo < 1.0  # pairing removed the 0.05-nat seed offsets (unpaired, the CI would be ~10x wider)
    assert e.pvalue < 1e-4
    assert "significantly worse" in e.reading(5.0) or "equivalent within ±5 %" in e.reading(5.0)
    assert "equivalent within ±5 %" in e.reading(5.0)  # +2 % with a CI inside ±5 %


def test_paired_interval_covers_the_true_effect_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    hits = 0
    for _ in range(400):
        off = rng.normal(0, 0.05, 3)
        df = pd.DataFrame({"loss": np.r_[5 + off + rng.normal(0, 0.01, 3), 5.02 + off + rng.normal(0, 0.01, 3)],
                           "seed": [0, 1, 2, 0, 1, 2], "v": [0, 0, 0, 1, 1, 1]})
        e = verdict.effect(df, df["v"] == 1, df["v"] == 0, "v", "b")
        hits += e.ci[0] <= 0.02 <= e.ci[1]
    assert 0.92 <= hits / 400 <= 0.98


def test_verdict_text_names_the_effect_interval_test_and_prd_rule():
    df = prepare(glu_trials({4.0: 0.0, 2.0: 0.10, 2.66: 0.0}, seeds=3, noise=0.003))
    v = verdict.build(df, df["glu_factor"] == 4.0, "No winner: ...", equivalence_pct=5.0)
    text = v.headline()
    # three configurations on shared seeds: the two-way fit pools the residual, (3-1)(3-1) = 4 d.o.f.
    assert "two-way t over 3 seeds, 4 d.o.f." in text and "95 % CI" in text and "PRD rule: No winner" in text
    assert "Holm-adjusted p" in text and "exact noncentral t" in text
    by = {e.variant: e for e in v.effects}
    two = by["glu_factor=2"]
    assert two.ppl_pct == pytest.approx(100 * math.expm1(0.10), abs=2.0)
    assert "worse by more than 5 %" in two.reading(5.0)  # +10.5 % with a tight CI: beyond the margin
    assert v.noise_sd == pytest.approx(0.003, rel=0.8) and v.mde == v.mde and v.mde > 0
    assert "Minimum detectable effect" in text and "Seed noise floor" in text


def test_one_seed_gives_no_test_and_says_so():
    df = prepare(glu_trials({4.0: 0.0, 2.66: 0.02}, seeds=1, noise=0.0))
    v = verdict.build(df, df["glu_factor"] == 4.0, "No winner")
    assert v.effects[0].ci is None and "no interval" in v.headline() and "unknown" in v.headline()


def test_mde_shrinks_with_seeds():
    assert verdict.mde(0.01, 2) > verdict.mde(0.01, 3) > verdict.mde(0.01, 10) > 0
    assert math.isnan(verdict.mde(0.01, 1))


def test_equivalence_margin_from_the_hypothesis():
    assert verdict.equivalence_margin("2.66x matches 4x within 5 % perplexity") == 5.0
    assert verdict.equivalence_margin("bf16 matches fp32's loss within 1 %") == 1.0
    assert verdict.equivalence_margin("no margin stated") == 5.0


def test_end_slopes_flag_a_still_falling_run():
    df = pd.DataFrame({"run_id": ["flat", "fall"], "label": ["a", "b"]})
    tok = np.array([1e5, 2e5, 4e5, 8e5])
    curves = pd.concat([pd.DataFrame({"run_id": "flat", "tokens": tok, "value": 4.0 - 0.001 * np.log(tok)}),
                        pd.DataFrame({"run_id": "fall", "tokens": tok, "value": 9.0 - 0.2 * np.log(tok)})])
    s = validity.end_slopes(curves, df).set_index("run_id")
    assert s.loc["fall", "drop_per_doubling"] == pytest.approx(0.2 * math.log(2), rel=1e-6)
    assert s.loc["flat", "drop_per_doubling"] < validity.UNDERTRAINED_NATS < s.loc["fall", "drop_per_doubling"]


def test_an_end_slope_under_a_decaying_lr_says_it_includes_the_annealing():
    """Over a cosine run's last third the LR falls, and the loss falls faster than more tokens would make it (GLU
    replica: 0.32-0.35 nats per doubling within the run, 0.18-0.20 from runs of twice the tokens): the flag says so,
    with the LR's fall computed from the run's own schedule; a constant-LR run keeps the plain reading."""
    tok = np.array([1e5, 2e5, 4e5, 8e5])
    schedule = dict(train_tokens=800_000, warmup_tokens=1_000, min_lr_ratio=0.1, decay_frac=0.2)
    df = pd.DataFrame([{"run_id": "cos", "label": "a", "schedule": "cosine", **schedule},
                       {"run_id": "const", "label": "b", "schedule": "constant", **schedule},
                       {"run_id": "unknown", "label": "c"}])
    curves = pd.concat([pd.DataFrame({"run_id": r, "tokens": tok, "value": 9.0 - 0.2 * np.log(tok)})
                        for r in df["run_id"]])
    s = validity.end_slopes(curves, df).set_index("run_id")
    progress = (400_000 - 1_000) / (800_000 - 1_000)  # the tail is the last two evals: 4e5 and 8e5 tokens
    assert s.loc["cos", "lr_fall"] == pytest.approx(0.1 / (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress))))
    assert s.loc["const", "lr_fall"] == 1.0 and math.isnan(s.loc["unknown", "lr_fall"])
    done = df.assign(D=16e6, N=8e5)  # 20 tokens per parameter: nothing undertrained by design
    flags = validity.diagnostics(df, done, s.reset_index(), 0.02)
    annealed = [f for f in flags if f.startswith("loss still falling at the end: 1 of 3 run(s)")]
    assert len(annealed) == 1 and "LR decayed to 0.18 of its value" in annealed[0]
    assert "over-states what more tokens give" in annealed[0]
    assert any(f.startswith("undertrained at the end: 2 of 3 run(s) would still lose 0.139-0.139") for f in flags)


def test_lr_at_the_edge_of_its_grid_is_flagged():
    inside = pd.DataFrame([{"lr": lr, "loss": 3.0 + abs(math.log10(lr / 3e-3)), "group": i, "seed": 0}
                           for i, lr in enumerate((1e-3, 3e-3, 1e-2))])
    assert validity.lr_edges(inside) == []  # best LR 3e-3 is inside the grid
    edge = pd.DataFrame([{"lr": lr, "loss": 3.0 - lr, "group": i, "seed": 0}
                         for i, lr in enumerate((1e-3, 3e-3, 1e-2))])
    flags = validity.lr_edges(edge)
    assert len(flags) == 1 and "highest of the grid" in flags[0]


def test_non_monotone_points_are_refused():
    assert validity.check_fit(np.array([1e4, 2e4, 4e4]), np.array([4.0, 3.8, 3.6])) == []
    bad = validity.check_fit(np.array([1e4, 2e4, 4e4]), np.array([4.0, 4.1, 3.6]))
    assert len(bad) == 1 and "non-monotone" in bad[0]


def test_report_opens_with_verdict_and_diagnostics_and_has_no_placeholder(tmp_path):
    df = glu_trials({4.0: 0.0, 2.0: 0.10, 2.66: 0.01, 3.0: 0.005}, seeds=3, noise=0.003, scale="smoke")
    path = build_report(df, tmp_path, "glu", baseline={"glu_factor": 4.0}, n_boot=0,
                        meta={"hypothesis": "SwiGLU 2.66x matches 4x within 5 % perplexity"})
    text = path.read_text()
    assert "To be written" not in text
    heads = [line for line in text.splitlines() if line.startswith("## ")]
    assert heads[:3] == ["## Verdict", "## What this run can claim", "## Validity diagnostics"]
    assert "SMOKE scale" in text and "two-way t over 3 seeds, 6 d.o.f." in text and "Minimum detectable effect" in text
    assert "## Discussion (generated from the numbers above)" in text
    eff = pd.read_csv(tmp_path / "effects.csv")
    row = eff[eff["variant"] == "glu_factor=2"].iloc[0]
    assert row["ppl_change_pct"] == pytest.approx(100 * math.expm1(0.10), abs=2.0)


def test_report_refuses_a_law_through_non_monotone_points(tmp_path):
    rows = []
    for i, (n_layer, loss) in enumerate(((1, 4.0), (2, 3.7), (3, 3.9), (4, 3.5), (6, 3.4))):
        cfg = Config.from_name("debug", n_layer=n_layer).to_dict()
        rows.append(cfg | {"run_id": f"r{i}", "trial_id": f"t_{i:05d}", "status": "completed",
                           "final_val_loss": loss, "params_total": 1e5 * n_layer, "tokens": 2e6})
    text = build_report(pd.DataFrame(rows), tmp_path, "arch", n_boot=0).read_text()
    top = text.split("## Setup")[0]
    assert "L(N) refused: non-monotone" in top


def test_a_comparison_of_runs_above_the_bigram_says_it_measures_plateau_escape():
    """Runs carry the count references (tinylm.regime): a comparison whose runs end above the bigram says so in
    its reading and the verdict states the references; runs below it read as past the plateau."""
    raw = glu_trials({4.0: 0.0, 2.66: 0.01}, seeds=3, noise=0.003)  # losses ~5.0
    on_plateau = prepare(raw.assign(ref_unigram_loss=6.29, ref_bigram_loss=4.28))
    v = verdict.build(on_plateau, on_plateau["glu_factor"] == 4.0, "rule", equivalence_pct=5.0)
    assert v.effects[0].plateau == 6 and "measures plateau escape" in v.effects[0].reading(5.0)
    assert "6 of 6 runs end above the bigram reference (unigram 6.290, bigram 4.280 nats" in v.headline()
    past = prepare(raw.assign(ref_unigram_loss=6.29, ref_bigram_loss=5.5))
    v = verdict.build(past, past["glu_factor"] == 4.0, "rule", equivalence_pct=5.0)
    assert v.effects[0].plateau == 0 and "plateau" not in v.effects[0].reading(5.0)
    assert "every run ends below the bigram reference" in v.headline()
    mixed = prepare(raw.assign(ref_bigram_loss=[5.5] * 3 + [4.0] + [5.5] * 2))  # one 2.66 run above its bigram
    v = verdict.build(mixed, mixed["glu_factor"] == 4.0, "rule", equivalence_pct=5.0)
    assert v.effects[0].plateau == 1 and "1 of 6 runs" in v.headline()
    # references that differ between runs (a context axis) are given as their range, not one median
    assert "bigram 4.000-5.500 nats, each run against its own, from its val windows" in v.headline()
    old = prepare(raw)  # runs from before the references existed: no claim either way
    assert verdict.build(old, old["glu_factor"] == 4.0, "rule").regime == ""
