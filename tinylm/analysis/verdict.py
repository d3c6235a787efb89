"""The verdict: effect sizes with confidence intervals, significance, the seed noise floor and the minimum
detectable effect, written as sentences from the numbers.

Every comparison is a variant against the baseline in **perplexity**, as a relative change: per seed the
difference of val losses Δ = L_variant − L_baseline (nats), so PPL_variant / PPL_baseline − 1 = exp(Δ) − 1.
With ≥ 2 shared seeds the test is a paired t-test on Δ (seed s of both trained on the same data order and init
seed), the interval a t interval on mean Δ mapped through exp(·) − 1; otherwise Welch's t-test on the losses.

- noise floor: the pooled seed-to-seed standard deviation of val loss within configurations (as % PPL);
- minimum detectable effect (MDE): the smallest true mean Δ a paired t-test at α = 0.05 detects with 80 % power
  given the observed s.d. of the paired differences (pooled over variants) and n pairs:
  (t_{1−α/2, n−1} + t_{0.8, n−1}) · sd_Δ / √n;
- equivalence (the PRD's hypotheses say "matches within 5 %"): the 95 % CI inside (−5 %, +5 %) is a match; the CI
  outside is a clear difference; otherwise inconclusive at this number of seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as sps

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
    test: str  # "paired t" | "Welch t" | "none"
    delta: float  # mean Δ loss (nats), variant − baseline
    ci: tuple[float, float] | None  # on Δ loss
    pvalue: float
    sd_diff: float  # s.d. of the paired differences (NaN when unpaired)

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
            n = f"{self.n_pairs} seeds" if self.test == "paired t" else f"{self.n_variant}+{self.n_baseline} trials"
            s += f" (95 % CI {lo:+.1f} to {hi:+.1f} %, {self.test} over {n}, p = {format_p(self.pvalue)})"
        else:
            s += f" (one trial per side: no interval, no test; {self.n_variant}/{self.n_baseline} trials)"
        return s + f": {self.reading(equivalence_pct)}"

    def reading(self, equivalence_pct: float = 5.0) -> str:
        if self.ci_pct is None:
            return "untested"
        lo, hi = self.ci_pct
        sig = self.pvalue < ALPHA
        side = "worse" if self.delta > 0 else "better"
        if -equivalence_pct < lo and hi < equivalence_pct:
            base = f"equivalent within ±{equivalence_pct:g} % (CI inside the margin)"
            return base + (f"; significantly {side}, by less than the margin" if sig else "")
        if lo >= equivalence_pct or hi <= -equivalence_pct:
            return f"{side} by more than {equivalence_pct:g} % (CI beyond the margin)"
        if sig:
            return f"significantly {side} (p < {ALPHA}); whether by more than {equivalence_pct:g} % is unresolved"
        return f"no significant difference, and the CI does not exclude ±{equivalence_pct:g} %: inconclusive"


def format_p(p: float) -> str:
    """A p-value as the report prints it (``n/a`` for NaN)."""
    if p != p:
        return "n/a"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def effect(df: pd.DataFrame, variant_mask: pd.Series, base_mask: pd.Series, variant: str, baseline: str,
           level: float = 0.95) -> Effect:
    """The variant's effect on val loss against the baseline (see the module docstring)."""
    d = stats.difference(df, "loss", base_mask, variant_mask, level)  # b − a = variant − baseline
    p = d["pvalue"]
    if d["test"] == "paired t" and not d["sd_diff"] > 0:  # identical differences: no spread, no t statistic
        p = 0.0 if d["delta"] != 0 else 1.0
    return Effect(variant, baseline, d["n_pairs"], d["n_b"], d["n_a"], d["test"], d["delta"], d["ci"], p,
                  d["sd_diff"])


def noise_floor(df: pd.DataFrame) -> tuple[float, int]:
    """(pooled within-configuration s.d. of val loss over seeds in nats, degrees of freedom); NaN with no repeats."""
    ss, dof = 0.0, 0
    for _, g in df.groupby("group"):
        v = pd.to_numeric(g["loss"], errors="coerce").dropna()
        if len(v) >= 2:
            ss += float(((v - v.mean()) ** 2).sum())
            dof += len(v) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def mde(sd_diff: float, n_pairs: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable mean Δ loss (nats) of a two-sided paired t-test with ``n_pairs`` pairs."""
    if n_pairs < 2 or not sd_diff == sd_diff:
        return math.nan
    k = n_pairs - 1
    return (float(sps.t.ppf(1 - alpha / 2, k)) + float(sps.t.ppf(power, k))) * sd_diff / math.sqrt(n_pairs)


@dataclass
class Verdict:
    effects: list[Effect]
    noise_sd: float  # nats
    noise_dof: int
    sd_diff: float  # pooled s.d. of paired differences (nats)
    mde: float  # nats
    n_pairs: int
    decision: str  # the PRD rule's sentence
    equivalence_pct: float = 5.0
    lines: list[str] = field(default_factory=list)

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
            parts.append(f"Minimum detectable effect (α = {ALPHA}, power {POWER:.0%}, {self.n_pairs} paired seeds): "
                         f"{pct(self.mde):.2f} % PPL; smaller true effects would usually go unseen.")
        parts.append(f"PRD rule: {self.decision}")
        return " ".join(parts)


def build(df: pd.DataFrame, base_mask: pd.Series, decision_summary: str, equivalence_pct: float = 5.0,
          noise: tuple[float, int] | None = None) -> Verdict:
    """Effects of every configuration against the baseline's, in trial order. ``df`` is prepared (stats.prepare)
    and holds the trials that count (completed ones); ``noise`` is ``noise_floor(df)`` when already computed."""
    base_groups = set(df.loc[base_mask, "group"])
    base_label = str(df.loc[base_mask, "label"].iloc[0]) if base_mask.any() else "baseline"
    effects = []
    for gid, g in df.groupby("group", sort=True):
        if gid in base_groups:
            continue
        effects.append(effect(df, df["group"] == gid, base_mask, str(g["label"].iloc[0]), base_label))
    sd, dof = noise_floor(df) if noise is None else noise
    paired = [e for e in effects if e.test == "paired t" and e.sd_diff == e.sd_diff]
    if paired:
        # pooled s.d. of the paired differences over variants (each with n-1 d.o.f.)
        num = sum((e.n_pairs - 1) * e.sd_diff ** 2 for e in paired)
        den = sum(e.n_pairs - 1 for e in paired)
        sd_diff = math.sqrt(num / den)
        n_pairs = min(e.n_pairs for e in paired)
    else:
        sd_diff, n_pairs = (math.sqrt(2) * sd if sd == sd else math.nan), 0
    md = mde(sd_diff, n_pairs) if n_pairs else math.nan
    return Verdict(effects, sd, dof, sd_diff, md, n_pairs, decision_summary, equivalence_pct)


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
        rows.append({"variant": e.variant, "baseline": e.baseline, "test": e.test, "n_pairs": e.n_pairs,
                     "n_variant": e.n_variant, "n_baseline": e.n_baseline, "delta_loss": e.delta,
                     "ppl_change_pct": e.ppl_pct, "ci_lo_pct": lo, "ci_hi_pct": hi, "pvalue": e.pvalue,
                     "sd_diff": e.sd_diff})
    return pd.DataFrame(rows)


__all__ = ["Effect", "Verdict", "build", "effect", "equivalence_margin", "format_p", "mde", "noise_floor",
           "paired_table", "pct"]
