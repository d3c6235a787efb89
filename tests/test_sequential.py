"""Seeds until the answer is clear (``tinylm.analysis.sequential``): the alpha spending schedule, one look's
decisions, and the error rates of the whole procedure on synthetic sweeps with a known effect."""

import math

import numpy as np
import pytest

from tinylm.analysis import sequential as seq

SD = 0.018  # nats: the seed s.d. of the GLU replica's runs at 20 tokens per parameter (RESULTS.md)


def test_alpha_is_spent_once_over_the_schedule_and_mostly_late():
    for first, last in ((3, 10), (2, 6), (3, 3)):
        levels = [seq.look_alpha(n, first, last) for n in range(first, last + 1)]
        assert sum(levels) == pytest.approx(0.05, rel=1e-12) and all(a > 0 for a in levels)
        assert levels == sorted(levels), "O'Brien-Fleming-type: the early looks spend little"
    assert seq.look_alpha(3, 3, 10) < 0.001 and seq.spent(1.0) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="outside the schedule 3..10"):
        seq.look_alpha(11, 3, 10)


def _sweeps(effects_pct: list[float], n: int, sims: int, rng: np.random.Generator):
    """``sims`` synthetic sweeps: a baseline and len(effects_pct) variants on n shared seeds, val loss = variant
    effect + seed effect (shared by the variants, as the data order is) + noise of s.d. SD."""
    groups = ["base"] + [f"v{i}" for i in range(len(effects_pct))]
    shift = [0.0] + [math.log1p(e / 100) for e in effects_pct]
    g = np.repeat(groups, n)
    s = np.tile(np.arange(n), len(groups))
    seed_effect = rng.normal(0, 0.05, (n, sims))
    y = np.stack([4.0 + shift[i] + seed_effect[j] for i in range(len(groups)) for j in range(n)])
    return g, s, y + rng.normal(0, SD, y.shape)


def _any_look(effects_pct: list[float], reading: str, which: str, first: int = 3, last: int = 10,
              sims: int = 4000, seed: int = 0) -> float:
    """Share of synthetic sweeps in which comparison ``which`` reads ``reading`` at ANY look of the schedule."""
    rng = np.random.default_rng(seed)
    g, s, y = _sweeps(effects_pct, last, sims, rng)
    hit = np.zeros(sims, bool)
    for n in range(first, last + 1):
        keep = s < n
        look = seq.decide(y[keep], g[keep], s[keep], "base", seq.look_alpha(n, first, last))
        hit |= (look[look["group"] == which]["reading"] == reading).to_numpy()
    return hit.mean()


def test_no_false_difference_above_alpha_over_all_looks():
    """Three null variants, eight looks: 'different' anywhere in the family at most 5 % of the time (a fixed
    alpha = 0.05 at every look would be several times that)."""
    rng = np.random.default_rng(1)
    g, s, y = _sweeps([0.0, 0.0, 0.0], 10, 4000, rng)
    hit = np.zeros(4000, bool)
    naive = np.zeros(4000, bool)
    for n in range(3, 11):
        keep = s < n
        look = seq.decide(y[keep], g[keep], s[keep], "base", seq.look_alpha(n, 3, 10))
        hit |= (look["reading"] == "different").to_numpy().reshape(3, -1).any(axis=0)
        fixed = seq.decide(y[keep], g[keep], s[keep], "base", 0.05)
        naive |= (fixed["p_holm"] < 0.05).to_numpy().reshape(3, -1).any(axis=0)
    assert hit.mean() <= 0.05 + 0.01  # 4000 sims: a binomial s.e. of 0.0034
    assert naive.mean() > 1.5 * 0.05, "peeking at a fixed alpha inflates the error: the test can see it"


def test_no_false_equivalence_above_alpha_at_the_margin():
    """A true +5 % (the margin itself) is called 'equivalent' at some look at most 5 % of the time."""
    assert _any_look([5.0, 0.0, 0.0], "equivalent", "v0") <= 0.05 + 0.01


def test_real_effects_are_found_and_small_ones_called_equivalent():
    """Power, for the record: a +4 % effect is found different, and a +0 % one equivalent, in most sweeps by 10
    seeds at the GLU replica's noise."""
    assert _any_look([4.0, 0.0, 0.0], "different", "v0", sims=1000) > 0.8
    assert _any_look([4.0, 0.0, 0.0], "equivalent", "v1", sims=1000) > 0.8


def test_one_look_reads_like_the_report():
    rng = np.random.default_rng(2)
    g, s, y = _sweeps([10.0, 0.0], 6, 1, rng)
    look = seq.decide(y[:, 0], g, s, "base", 0.05)
    assert list(look["group"]) == ["v0", "v1"] and list(look["reading"]) == ["different", "equivalent"]
    assert look.loc[0, "delta_pct"] == pytest.approx(10.0, abs=3) and look.loc[0, "dof"] == (3 - 1) * (6 - 1)
    text = seq.describe(look, 6, 3, 10, 0.05, 5.0)
    assert "v0: +" in text and "different" in text and "95.0 % CI" in text and not seq.conclusive(look.iloc[:0])
    assert seq.conclusive(look)
