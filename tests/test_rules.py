"""The PRD kill rule on synthetic curves."""

from tinylm.rules import KillRule


def feed(rule, trial, curve, baseline=False):
    return [rule.update(trial, t, p, is_baseline=baseline) for t, p in curve]


def test_kills_after_window_of_consistently_worse_ppl():
    rule = KillRule(margin=0.5, window=1_000_000)
    feed(rule, "base", [(t, 100 - t / 1e5) for t in range(0, 5_000_001, 250_000)], baseline=True)
    # 0.6 ppl worse from 1M tokens on: killed once 1M consecutive bad tokens have passed (at 2M)
    out = feed(rule, "bad", [(t, 100 - t / 1e5 + (0.6 if t >= 1_000_000 else 0.0)) for t in range(0, 3_000_001, 250_000)])
    first = next(i for i, r in enumerate(out) if r)
    assert first * 250_000 == 2_000_000
    assert "killed by rule" in rule.reasons["bad"] and "1,000,000 tokens" in rule.reasons["bad"]


def test_streak_resets_when_trial_recovers_and_margin_is_inclusive():
    rule = KillRule(margin=0.5, window=500)
    feed(rule, "b", [(0, 10.0), (1000, 10.0), (2000, 10.0), (3000, 10.0)], baseline=True)
    assert rule.update("x", 0, 10.5) is None       # exactly the margin starts a streak (>= 0.5)
    assert rule.update("x", 400, 10.2) is None     # recovered: streak reset
    assert rule.update("x", 600, 10.6) is None     # new streak starts at 600
    assert rule.update("x", 1000, 10.6) is None    # 400 < window
    assert rule.update("x", 1100, 10.6) is not None  # 500 >= window


def test_no_judgement_beyond_the_baseline_or_without_one():
    rule = KillRule(margin=0.5, window=100)
    assert rule.update("x", 1000, 1e9) is None      # no baseline yet
    feed(rule, "b", [(0, 5.0), (1000, 4.0)], baseline=True)
    assert rule.update("x", 5000, 1e9) is None      # beyond the baseline's last eval: never extrapolate
    assert rule.baseline_at(500) == 4.5             # linear interpolation between evals
    assert rule.update("x", 1000, 4.4) is None and rule.reasons == {}
