"""The PRD kill rule, as a pure state machine (``tinylm.tune.stopping.KillStopper`` wraps it in a Tune Stopper).

Stop a trial when its dev perplexity is at least ``margin`` worse than the baseline trial's at the same token
count for ``window`` consecutive tokens. The baseline's perplexity at a token count is interpolated linearly
between its evals; a trial ahead of the baseline is never judged on extrapolation.

The margin is RELATIVE by default: worse means ``ppl >= baseline_ppl * (1 + margin)``, i.e. a val-loss gap of at
least ``log(1 + margin)`` nats. The PRD states an absolute 0.5 perplexity points; that only has a meaning next to
the perplexity it was written for: at the PRD's expected ~25 it is 2 % (``DEFAULT_MARGIN``), while at the
perplexities in the hundreds of a small or early model it would mean "any worse at all" and kill nearly every
variant. A relative margin keeps the rule's meaning at every scale and at every point of a run
(``relative_margin(0.5, 25.0)`` converts a PRD-style margin). ``relative=False`` restores absolute points.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

PRD_MARGIN_POINTS = 0.5  # the PRD's margin, in perplexity points ...
PRD_REFERENCE_PPL = 25.0  # ... at the perplexity we assume it was written for (a 10M model's dev ppl)
DEFAULT_MARGIN = PRD_MARGIN_POINTS / PRD_REFERENCE_PPL  # 0.02: 2 % worse perplexity = 0.0198 nats of loss


def relative_margin(points: float, reference_ppl: float) -> float:
    """An absolute perplexity margin expressed relative to the perplexity it was meant for."""
    if reference_ppl <= 0:
        raise ValueError(f"reference_ppl={reference_ppl} must be > 0")
    return points / reference_ppl


def loss_margin(margin: float) -> float:
    """The val-loss gap (nats) equivalent to a relative perplexity margin: log(1 + margin)."""
    return math.log1p(margin)


@dataclass
class KillRule:
    margin: float = DEFAULT_MARGIN  # relative to the baseline's ppl (0.02 = 2 %); absolute points if not relative
    window: int = 1_000_000  # tokens (PRD); sweeps scale it down below full scale
    baseline: list[tuple[int, float]] = field(default_factory=list)  # (tokens, ppl), sorted
    _streak_start: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)
    relative: bool = True

    def threshold(self, ref: float) -> float:
        """The perplexity at or above which a trial counts as worse than a baseline at ``ref``."""
        return ref * (1 + self.margin) if self.relative else ref + self.margin

    def describe_margin(self) -> str:
        return (f"{100 * self.margin:.3g} % (= {loss_margin(self.margin):.4f} nats of loss)" if self.relative
                else f"{self.margin} ppl points")

    def baseline_at(self, tokens: int) -> float | None:
        if not self.baseline or tokens > self.baseline[-1][0] or tokens < self.baseline[0][0]:
            return None
        xs = [t for t, _ in self.baseline]
        i = bisect.bisect_left(xs, tokens)
        if xs[i] == tokens:
            return self.baseline[i][1]
        (t0, p0), (t1, p1) = self.baseline[i - 1], self.baseline[i]
        return p0 + (p1 - p0) * (tokens - t0) / (t1 - t0)

    def update(self, trial_id: str, tokens: int, ppl: float, is_baseline: bool = False) -> str | None:
        """Feed one eval; returns the stop reason when the trial must be killed, else None."""
        if is_baseline:
            if not self.baseline or tokens > self.baseline[-1][0]:
                self.baseline.append((tokens, ppl))
            return None
        if trial_id in self.reasons:  # already killed: the verdict stands
            return self.reasons[trial_id]
        ref = self.baseline_at(tokens)
        if ref is None:
            return None
        if ppl >= self.threshold(ref) - 1e-12 * abs(ref):
            start = self._streak_start.setdefault(trial_id, tokens)
            if tokens - start >= self.window:
                self.reasons[trial_id] = (
                    f"killed by rule: dev ppl {ppl:.2f} >= baseline {ref:.2f} + {self.describe_margin()} for "
                    f"{tokens - start:,} tokens (window {self.window:,}) at {tokens:,} tokens")
                return self.reasons[trial_id]
        else:
            self._streak_start.pop(trial_id, None)
        return None
