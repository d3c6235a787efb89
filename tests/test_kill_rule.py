"""The PRD kill rule on synthetic curves (absolute points as the PRD wrote it, and the relative default)."""

import math

import pytest

from tinylm.kill_rule import DEFAULT_MARGIN, KillRule, loss_margin, relative_margin


def feed(rule, trial, curve, baseline=False):
    return [rule.update(trial, t, p, is_baseline=baseline) for t, p in curve]


def test_kills_after_window_of_consistently_worse_ppl():
    rule = KillRule(margin=0.5, window=1_000_000, relative=False)
    feed(rule, "base", [(t, 100 - t / 1e5) for t in range(0, 5_000_001, 250_000)], baseline=True)
    # 0.6 ppl worse from 1M tokens on: killed once 1M consecutive bad tokens have passed (at 2M)
    out = feed(rule, "bad", [(t, 100 - t / 1e5 + (0.6 if t >= 1_000_000 else 0.0)) for t in range(0, 3_000_001, 250_000)])
    first = next(i for i, r in enumerate(out) if r)
    assert first * 250_000 == 2_000_000
    assert "killed by rule" in rule.reasons["bad"] and "1,000,000 tokens" in rule.reasons["bad"]


def test_streak_resets_when_trial_recovers_and_margin_is_inclusive():
    rule = KillRule(margin=0.5, window=500, relative=False)
    feed(rule, "b", [(0, 10.0), (1000, 10.0), (2000, 10.0), (3000, 10.0)], baseline=True)
    assert rule.update("x", 0, 10.5) is None       # exactly the margin starts a streak (>= 0.5)
    assert rule.update("x", 400, 10.2) is None     # recovered: streak reset
    assert rule.update("x", 600, 10.6) is None     # new streak starts at 600
    assert rule.update("x", 1000, 10.6) is None    # 400 < window
    assert rule.update("x", 1100, 10.6) is not None  # 500 >= window


def test_no_judgement_beyond_the_baseline_or_without_one():
    rule = KillRule(margin=0.5, window=100, relative=False)
    assert rule.update("x", 1000, 1e9) is None      # no baseline yet
    feed(rule, "b", [(0, 5.0), (1000, 4.0)], baseline=True)
    assert rule.update("x", 5000, 1e9) is None      # beyond the baseline's last eval: never extrapolate
    assert rule.baseline_at(500) == 4.5             # linear interpolation between evals
    assert rule.update("x", 1000, 4.4) is None and rule.reasons == {}


@pytest.mark.parametrize("ref", [25.0, 500.0])
def test_relative_margin_means_the_same_at_every_perplexity(ref):
    """2 % worse is killed and 1 % worse survives whether the baseline sits at ppl 25 or 500; the PRD's absolute
    0.5 points would kill the 1 %-worse trial at ppl 500 (5 points worse) and spare nothing meaningful."""
    rule = KillRule(window=100)  # the default: relative, 2 %
    assert rule.relative and rule.margin == pytest.approx(0.02)
    feed(rule, "b", [(0, ref), (1000, ref)], baseline=True)
    assert feed(rule, "ok", [(0, ref * 1.01), (500, ref * 1.01), (1000, ref * 1.01)])[-1] is None
    assert feed(rule, "bad", [(0, ref * 1.021), (500, ref * 1.021)])[-1] is not None
    assert "2 %" in rule.reasons["bad"]
    absolute = KillRule(margin=0.5, window=100, relative=False)
    feed(absolute, "b", [(0, ref), (1000, ref)], baseline=True)
    killed = feed(absolute, "ok", [(0, ref * 1.01), (500, ref * 1.01)])[-1] is not None
    assert killed == (ref * 0.01 >= 0.5)  # the absolute rule changes meaning with the perplexity


def test_margin_conversions():
    assert relative_margin(0.5, 25.0) == pytest.approx(DEFAULT_MARGIN) == pytest.approx(0.02)
    assert loss_margin(0.02) == pytest.approx(math.log(1.02))
    with pytest.raises(ValueError):
        relative_margin(0.5, 0.0)
