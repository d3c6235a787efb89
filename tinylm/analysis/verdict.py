"""The verdict: effect sizes with confidence intervals, significance, the seed noise floor and the minimum
detectable effect, written as sentences from the numbers.

Every comparison is a variant against the baseline in **perplexity**, as a relative change: per seed the
difference of val losses Δ = L_variant − L_baseline (nats), so PPL_variant / PPL_baseline − 1 = exp(Δ) − 1.
The test (``stats.difference``): with three or more configurations on shared seeds, a two-way (variant × seed)
least-squares fit whose residual pools the seed noise of every configuration (same-seed runs share the data order,
so the seed effect is removed as pairing does, with (k−1)(n−1) d.o.f. instead of n−1); with two configurations a
paired t-test on Δ; without shared seeds Welch's t-test. The interval is a t interval on Δ mapped through
exp(·) − 1. Every sentence names the test and its d.o.f.

- multiplicity: the p-values of one sweep's comparisons are Holm-adjusted; "significant" means adjusted p < α;
- noise floor: the pooled seed-to-seed standard deviation of val loss within configurations (as % PPL);
- minimum detectable effect (MDE): the smallest true Δ the comparison's own test (two-sided, α = 0.05, its d.o.f.
  and standard error) detects with 80 % power, from the exact noncentral t distribution (the textbook
  (t_{1−α/2} + t_{0.8}) · se is optimistic at few d.o.f.);
- equivalence (the PRD's hypotheses say "matches within 5 %"): the 95 % CI inside (−5 %, +5 %) is a match; the CI
  beyond the margin (and significant after Holm) is a clear difference; otherwise inconclusive at this many seeds.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps
from scipy.optimize import brentq

from tinylm.analysis import stats

ALPHA = 0.05
POWER = 0.8


def pct(delta_loss: float) -> float:
    """Δ val loss (nats) -> relative perplexity change in percent."""
    return 100.0 * math.expm1(delta_loss)


@dataclass
class Effect:
    variant: str
    baseline: str
    n_pairs: int
    n_variant: int
    n_baseline: int
    test: str  # "two-way t" | "paired t" | "Welch t" | "none"
    delta: float  # mean Δ loss (nats), variant − baseline
    ci: tuple[float, float] | None  # on Δ loss
    pvalue: float  # raw two-sided p
    sd_diff: float  # s.d. of a same-seed difference (observed when paired, implied by the pooled fit; else NaN)
    dof: float = math.nan  # the test's degrees of freedom
    se: float = math.nan  # standard error of delta (nats)
    p_holm: float = math.nan  # Holm-adjusted over the sweep's comparisons (``effects``); the raw p when alone
    group: int | None = None  # the variant's configuration id
    plateau: int = 0  # runs of either side that end above the bigram reference (tinylm.regime): still on the plateau

    @property
    def mde(self) -> float:
        """The smallest true Δ loss (nats) this comparison's test detects with 80 % power at α = 0.05."""
        return mde_se(self.se, self.dof)

    @property
    def significant(self) -> bool:
        """Significant at α after Holm's correction over the sweep's comparisons."""
        p = self.p_holm if self.p_holm == self.p_holm else self.pvalue
        return bool(p < ALPHA)

    @property
    def ppl_pct(self) -> float:
        return pct(self.delta)

    @property
    def ci_pct(self) -> tuple[float, float] | None:
        return None if self.ci is None else (pct(self.ci[0]), pct(self.ci[1]))

    def sentence(self, equivalence_pct: float = 5.0) -> str:
        s = f"{self.variant} vs {self.baseline}: {self.ppl_pct:+.1f} % PPL"
        if self.ci_pct is not None:
            lo, hi = self.ci_pct
            n = f"{self.n_pairs} seeds" if self.test != "Welch t" else f"{self.n_variant}+{self.n_baseline} trials"
            s += (f" (95 % CI {lo:+.1f} to {hi:+.1f} %, {self.test} over {n}, {self.dof:.3g} d.o.f., "
                  f"p = {format_p(self.pvalue)}, Holm-adjusted p = {format_p(self.p_holm)})")
        else:
            s += f" (one trial per side: no interval, no test; {self.n_variant}/{self.n_baseline} trials)"
        return s + f": {self.reading(equivalence_pct)}"

    def reading(self, equivalence_pct: float = 5.0) -> str:
        out = self._reading(equivalence_pct)
        if self.plateau:
            out += (f"; measures plateau escape, not the question: {self.plateau} of the runs compared end above the "
                    "bigram reference")
        return out

    def _reading(self, equivalence_pct: float) -> str:
        if self.ci_pct is None:
            return "untested"
        lo, hi = self.ci_pct
        sig = self.significant
        side = "worse" if self.delta > 0 else "better"
        if -equivalence_pct < lo and hi < equivalence_pct:
            base = f"equivalent within ±{equivalence_pct:g} % (CI inside the margin)"
            return base + (f"; significantly {side} (Holm p < {ALPHA}), by less than the margin" if sig else "")
        beyond = lo >= equivalence_pct or hi <= -equivalence_pct
        if beyond and sig:
            return f"{side} by more than {equivalence_pct:g} % (CI beyond the margin)"
        if beyond:
            return (f"CI beyond the margin but not significant after Holm's correction (adjusted p = "
                    f"{format_p(self.p_holm)}): inconclusive")
        if sig:
            return (f"significantly {side} (Holm p < {ALPHA}); whether by more than {equivalence_pct:g} % is "
                    "unresolved")
        if self.pvalue < ALPHA:
            return (f"p < {ALPHA} alone but not after Holm's correction (adjusted p = {format_p(self.p_holm)}), and "
                    f"the CI does not exclude ±{equivalence_pct:g} %: inconclusive")
        return f"no significant difference, and the CI does not exclude ±{equivalence_pct:g} %: inconclusive"


def format_p(p: float) -> str:
    """A p-value as the report prints it (``n/a`` for NaN)."""
    if p != p:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def effect(df: pd.DataFrame, variant_mask: pd.Series, base_mask: pd.Series, variant: str, baseline: str,
           level: float = 0.95, pooled: stats.TwoWay | None = None, group: int | None = None) -> Effect:
    """The variant's effect on val loss against the baseline (see the module docstring); ``pooled`` is the
    sweep's ``stats.two_way`` fit (None: paired or Welch)."""
    d = stats.difference(df, "loss", base_mask, variant_mask, level, pooled)  # b − a = variant − baseline
    p = d["pvalue"]
    if d["test"] != "none" and p != p:  # no spread: every difference identical, no t statistic
        p = 0.0 if d["delta"] != 0 else 1.0
    return Effect(variant, baseline, d["n_pairs"], d["n_b"], d["n_a"], d["test"], d["delta"], d["ci"], p,
                  d["sd_diff"], d["dof"], d["se"], p, group)


def effects(df: pd.DataFrame, base_mask: pd.Series, level: float = 0.95) -> list[Effect]:
    """Every other configuration against the baseline's, in trial order, tested with the sweep's two-way fit where
    it applies, the p-values Holm-adjusted over these comparisons. ``df`` is prepared (``stats.prepare``)."""
    base_groups = set(df.loc[base_mask, "group"])
    base_label = str(df.loc[base_mask, "label"].iloc[0]) if base_mask.any() else "baseline"
    pooled = stats.two_way(df, "loss")
    out = [effect(df, df["group"] == gid, base_mask, str(g["label"].iloc[0]), base_label, level, pooled, int(gid))
           for gid, g in df.groupby("group", sort=True) if gid not in base_groups]
    if out:
        for e, q in zip(out, stats.holm(np.array([e.pvalue for e in out])), strict=True):
            e.p_holm = float(q)
    above = above_bigram(df)
    for e in out:
        e.plateau = int((above & (base_mask | (df["group"] == e.group))).sum())
    return out


def above_bigram(df: pd.DataFrame) -> pd.Series:
    """Runs whose val loss ends at or above their bigram reference (False where either is unknown)."""
    if "ref_bigram_loss" not in df:
        return pd.Series(False, index=df.index)
    ref = pd.to_numeric(df["ref_bigram_loss"], errors="coerce")
    return (pd.to_numeric(df["loss"], errors="coerce") >= ref) & ref.notna()


def _span(values: pd.Series) -> str:
    lo, hi = values.min(), values.max()
    return f"{lo:.3f}" if hi - lo < 5e-4 else f"{lo:.3f}-{hi:.3f}"


def regime(df: pd.DataFrame) -> str:
    """One sentence: the unigram and bigram references (tinylm.regime) against the runs' final losses, and what it
    means for the comparison when runs have not beaten the bigram. Empty when the runs carry no references."""
    if "ref_bigram_loss" not in df or pd.to_numeric(df["ref_bigram_loss"], errors="coerce").isna().all():
        return ""
    bi = pd.to_numeric(df["ref_bigram_loss"], errors="coerce").dropna()
    uni = pd.to_numeric(df.get("ref_unigram_loss"), errors="coerce").dropna() if "ref_unigram_loss" in df else bi[:0]
    loss = pd.to_numeric(df["loss"], errors="coerce").dropna()
    refs = (f"unigram {_span(uni)}, bigram {_span(bi)} nats" if len(uni) else f"bigram {_span(bi)} nats")
    where = (", each run against its own, from its val windows (they depend on the context)"  # e.g. a context axis
             if bi.max() - bi.min() >= 5e-4 else " on the same val windows")
    ends = f"runs end at {loss.min():.3f}-{loss.max():.3f} nats" if len(loss) else "no run has a final loss"
    n_above, n = int(above_bigram(df).sum()), int(df["ref_bigram_loss"].notna().sum())
    if not n_above:
        return (f"Regime: every run ends below the bigram reference ({refs}{where}; {ends}): past "
                "the n-gram plateau.")
    return (f"Regime: {n_above} of {n} runs end above the bigram reference ({refs}{where}; {ends}). "
            "Those runs are still leaving their early plateau: differences between them measure when each run "
            "escapes it (plateau escape), not the question asked. More training tokens per parameter move them past "
            "it (on the laptop GLU replica 20 tokens per parameter did; a smaller batch alone did not: RESULTS.md).")


def noise_floor(df: pd.DataFrame) -> tuple[float, int]:
    """(pooled within-configuration s.d. of val loss over seeds in nats, degrees of freedom); NaN with no repeats."""
    ss, dof = 0.0, 0
    for _, g in df.groupby("group"):
        v = pd.to_numeric(g["loss"], errors="coerce").dropna()
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


@functools.lru_cache(maxsize=256)
def noncentrality(dof: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The noncentrality λ at which a two-sided t-test on ``dof`` d.o.f. at level ``alpha`` rejects with probability
    ``power`` (both tails counted): the MDE is λ times the estimate's standard error."""
    crit = float(sps.t.ppf(1 - alpha / 2, dof))

    def gap(lam: float) -> float:
        lower = float(sps.nct.sf(crit, dof, -lam))  # P(T < −crit) by symmetry; NaN-prone where it is ~0
        return float(sps.nct.sf(crit, dof, lam)) + (lower if lower == lower else 0.0) - power

    hi = 2 * (crit + float(sps.norm.ppf(power))) + 1  # above the normal approximation: gap(hi) > 0
    while gap(hi) < 0:
        hi *= 2
    return float(brentq(gap, 0.0, hi, xtol=1e-10))


def mde_se(se: float, dof: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable Δ (nats) of a two-sided t-test whose estimate has standard error ``se`` on ``dof``."""
    if not (se == se and dof == dof and dof > 0):
        return math.nan
    return noncentrality(float(dof), alpha, power) * se


def mde(sd_diff: float, n_pairs: int, alpha: float = ALPHA, power: float = POWER, dof: float | None = None) -> float:
    """Minimum detectable mean Δ loss (nats) over ``n_pairs`` seeds when a same-seed difference has s.d.
    ``sd_diff``: the paired t-test (``dof`` = n − 1) or the two-way fit (``dof`` its residual d.o.f.)."""
    if n_pairs < 2 or not sd_diff == sd_diff:
        return math.nan
    return mde_se(sd_diff / math.sqrt(n_pairs), n_pairs - 1 if dof is None else dof, alpha, power)


@dataclass
class Verdict:
    effects: list[Effect]
    noise_sd: float  # nats
    noise_dof: int
    sd_diff: float  # s.d. of a same-seed difference behind the MDE (nats)
    mde: float  # nats: the largest MDE over the tested comparisons (all equal on a balanced two-way design)
    n_pairs: int
    decision: str  # the PRD rule's sentence
    equivalence_pct: float = 5.0
    lines: list[str] = field(default_factory=list)
    test: str = "none"  # the test behind the MDE
    dof: float = math.nan  # its d.o.f.
    mde_holm: float = math.nan  # nats: the MDE at Holm's strictest step (α / comparisons)
    regime: str = ""  # the runs against the unigram / bigram references (``regime``)

    def headline(self) -> str:
        """One paragraph: every effect, then the noise floor and the MDE, then the PRD rule."""
        parts = [e.sentence(self.equivalence_pct) + "." for e in self.effects]
        if self.noise_sd == self.noise_sd:
            parts.append(f"Seed noise floor: ±{pct(self.noise_sd):.2f} % PPL (s.d. of val loss over seeds "
                         f"{self.noise_sd:.4f} nats, {self.noise_dof} d.o.f.).")
        else:
            parts.append("Seed noise floor: unknown (one seed per configuration): no effect here can be called "
                         "significant; rerun with --seeds 2 or more.")
        if self.mde == self.mde:
            k = sum(e.ci is not None for e in self.effects)
            holm = (f"; at Holm's strictest step over {k} comparisons (α/{k}) it is {pct(self.mde_holm):.2f} %"
                    if k > 1 and self.mde_holm == self.mde_holm else "")
            parts.append(f"Minimum detectable effect (two-sided α = {ALPHA}, power {POWER:.0%}, exact noncentral t; "
                         f"{self.test} on {self.dof:.3g} d.o.f. over {self.n_pairs} seeds): {pct(self.mde):.2f} % "
                         f"PPL per comparison{holm}; smaller true effects would usually go unseen.")
        parts.append(f"PRD rule: {self.decision}")
        if self.regime:
            parts.append(self.regime)
        return " ".join(parts)


def build(df: pd.DataFrame, base_mask: pd.Series, decision_summary: str, equivalence_pct: float = 5.0,
          noise: tuple[float, int] | None = None) -> Verdict:
    """Effects of every configuration against the baseline's (``effects``), the noise floor and the MDE of the
    least powerful tested comparison. ``df`` is prepared (stats.prepare) and holds the trials that count (completed
    ones); ``noise`` is ``noise_floor(df)`` when already computed."""
    found = effects(df, base_mask)
    sd, dof = noise_floor(df) if noise is None else noise
    tested = [e for e in found if e.ci is not None and e.mde == e.mde]
    if tested:
        worst = max(tested, key=lambda e: e.mde)
        k = len(tested)
        return Verdict(found, sd, dof, worst.sd_diff, worst.mde, worst.n_pairs, decision_summary, equivalence_pct,
                       test=worst.test, dof=worst.dof, mde_holm=mde_se(worst.se, worst.dof, ALPHA / k),
                       regime=regime(df))
    sd_diff = math.sqrt(2) * sd if sd == sd else math.nan
    return Verdict(found, sd, dof, sd_diff, math.nan, 0, decision_summary, equivalence_pct, regime=regime(df))


def equivalence_margin(hypothesis: str, default: float = 5.0) -> float:
    """The margin a hypothesis states ("... within 5 % ..."), else ``default``."""
    import re

    m = re.search(r"within\s+(\d+(?:\.\d+)?)\s*%", hypothesis or "")
    return float(m.group(1)) if m else default


def paired_table(effects: list[Effect]) -> pd.DataFrame:
    """The effects as a table (for the report and effects.csv)."""
    rows = []
    for e in effects:
        lo, hi = e.ci_pct if e.ci_pct else (np.nan, np.nan)
        rows.append({"variant": e.variant, "baseline": e.baseline, "test": e.test, "dof": e.dof,
                     "n_pairs": e.n_pairs, "n_variant": e.n_variant, "n_baseline": e.n_baseline, "delta_loss": e.delta,
                     "ppl_change_pct": e.ppl_pct, "ci_lo_pct": lo, "ci_hi_pct": hi, "pvalue": e.pvalue,
                     "p_holm": e.p_holm, "mde_pct": pct(e.mde) if e.mde == e.mde else np.nan,
                     "sd_diff": e.sd_diff})
    return pd.DataFrame(rows)


__all__ = ["Effect", "Verdict", "build", "effect", "effects", "equivalence_margin", "format_p", "mde", "mde_se",
           "noise_floor", "noncentrality", "paired_table", "pct"]
