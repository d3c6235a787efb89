"""The PRD kill rule, as a pure state machine (tinylm.tune wraps it in a Tune Stopper).

Stop a trial when its dev perplexity is at least ``margin`` worse than the baseline trial's at the same token
count for ``window`` consecutive tokens. The baseline's perplexity at a token count is interpolated linearly
between its evals; a trial ahead of the baseline is never judged on extrapolation.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class KillRule:
    margin: float = 0.5  # perplexity points (PRD)
    window: int = 1_000_000  # tokens (PRD); sweeps scale it down at smoke scale
    baseline: list[tuple[int, float]] = field(default_factory=list)  # (tokens, ppl), sorted
    _streak_start: dict[str, int] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

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
        if ppl - ref >= self.margin:
            start = self._streak_start.setdefault(trial_id, tokens)
            if tokens - start >= self.window:
                self.reasons[trial_id] = (
                    f"killed by rule: dev ppl {ppl:.2f} >= baseline {ref:.2f} + {self.margin} for "
                    f"{tokens - start:,} tokens (window {self.window:,}) at {tokens:,} tokens")
                return self.reasons[trial_id]
        else:
            self._streak_start.pop(trial_id, None)
        return None
