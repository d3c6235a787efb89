"""Early stopping: the ASHA scheduler a sweep uses, its rungs, the wsd probes at those rungs, the PRD kill rule
(``tinylm.kill_rule``) as a Tune Stopper (``KillStopper``; one ``SharedKillRule`` per sweep, which the MLflow
callback reads across Tune's restores), and a replay of ASHA + the kill rule on recorded learning curves.

Under a decaying LR schedule a mid-run loss favours small LRs (a large LR pays off once it decays), so an early
comparison across an LR axis is biased (RESULTS.md, 2026-11-30). A ``schedule="wsd"`` sweep therefore gets a
cooldown probe at every ASHA rung (``probes_for``): the train loop branches off, cools the LR down, evaluates
and throws the branch away, and ``ProbeASHA`` judges the rung on that probe, the loss a finished run of that
length reaches. Evals between probes decide nothing. Measured (RESULTS.md, 2026-11-30): probes rank LRs better
late in a run, not early (the best LR of a short run is larger than a long run's), so early stopping across an
LR axis stays unsafe and a sweep that does it is warned (``early_stop_warnings``).

``replay`` feeds recorded curves through Ray's own ``ASHAScheduler`` and the sweep's ``KillStopper`` in any grid
order (time = tokens trained): what a setting would have spent and kept, without training anything.
bench/asha.py uses it to pick the defaults over many orders.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ray.tune import Stopper
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from tinylm.config import Config
from tinylm.kill_rule import KillRule
from tinylm.tune.results import STATUS_DONE

if TYPE_CHECKING:  # a sweep's settings and grid, handed in by tinylm.sweep (which calls this package)
    from tinylm.sweep.space import Space


def rung_tokens(max_t: int, grace: int, reduction_factor: float, brackets: int = 1) -> list[int]:
    """The token counts at which ASHA compares trials, below ``max_t`` (Ray's ``_Bracket`` rule: bracket ``s``
    has rungs ``grace * rf**(k + s)`` for k < log(max_t / grace) / log(rf) - s + 1)."""
    out: set[int] = set()
    for s in range(brackets):
        n = int(math.log(max_t / grace) / math.log(reduction_factor) - s + 1)
        out.update(int(grace * reduction_factor ** (k + s)) for k in range(n))
    return sorted(m for m in out if m < max_t)


def grace_tokens(sweep, base: Config) -> int:
    """The sweep's grace period in tokens (0 = an eighth of the run)."""
    return sweep.grace_tokens or max(1, base.train_tokens // 8)


def probes_for(sweep, base: Config) -> str:
    """The ``probes`` a wsd sweep with ASHA gets: its rungs that fall in the stable phase ("" otherwise)."""
    if base.schedule != "wsd" or not sweep.asha or base.probes:
        return base.probes
    rungs = rung_tokens(base.train_tokens, grace_tokens(sweep, base), sweep.reduction_factor, sweep.brackets)
    return ",".join(str(m) for m in rungs if base.warmup <= m <= base.stable_tokens)


# Config fields that move the LR schedule: a trial's loss at a rung depends on how far its schedule has decayed
SCHEDULE_AXES = ("lr", "muon_lr", "schedule", "warmup_tokens", "min_lr_ratio", "decay_frac")


def early_stop_warnings(sweep, base: Config, space: Space) -> list[str]:
    """What to tell the user before a sweep whose early stopping compares trials across an LR / schedule axis."""
    stops = sweep.asha or math.isfinite(sweep.kill_margin)
    axes = set(space.fields())
    moved = [k for k in SCHEDULE_AXES if k in axes]
    if not stops or not moved:
        return []
    how = ("rungs are judged on cooldown probes, which rank LRs better late in a run than early"
           if base.probe_tokens else f"under schedule={base.schedule!r} a mid-run loss favours small LRs")
    return [f"ASHA / the kill rule compare trials across {', '.join(moved)}: {how}; on bench/asha.py's lr x "
            "glu_factor grid early stopping at grace <= 1/8 kept the full grid's winner in 9-27 % of random grid "
            "orders (RESULTS.md, 2026-11-30). For a trustworthy LR answer use --no-asha (and no kill rule), or "
            "--grace-tokens >= train_tokens / 4"]


class ProbeASHA(ASHAScheduler):
    """ASHA for a sweep with cooldown probes: a rung judges a trial on its ``probe_loss`` (the loss a finished
    run of that length reaches), not on the mid-run ``val_loss``; the evals between probes decide nothing. Tune
    also hands a stopped trial's last result to ``on_trial_complete``, which records it at a rung: the same rule
    applies there."""

    def _judged(self, result: dict) -> dict | None:
        """The result as a rung should see it; None for a stable-phase eval (no probe, not the final result)."""
        if "probe_loss" in result:
            return {**result, self._metric: result["probe_loss"]}
        return result if "status" in result else None

    def on_trial_result(self, tune_controller, trial, result: dict) -> str:
        judged = self._judged(result)
        if judged is None:
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, judged)

    def on_trial_complete(self, tune_controller, trial, result: dict) -> None:
        judged = self._judged(result)
        if judged is None:  # stopped after a mid-run eval (the kill rule, Ctrl-C): nothing to record
            self.on_trial_remove(tune_controller, trial)
            return
        super().on_trial_complete(tune_controller, trial, judged)


def make_scheduler(sweep, base: Config, metric: str | None = None, mode: str | None = None) -> TrialScheduler:
    """FIFO without ASHA; else ASHA over tokens (``ProbeASHA`` when the trials carry probes)."""
    if not sweep.asha:
        return FIFOScheduler()
    cls = ProbeASHA if base.probe_tokens else ASHAScheduler
    return cls(time_attr="tokens", metric=metric, mode=mode, max_t=base.train_tokens,
               reduction_factor=sweep.reduction_factor, grace_period=grace_tokens(sweep, base),
               brackets=sweep.brackets)


# --- the kill rule as a Tune Stopper -----------------------------------------------------------------------------
_RULES: dict[str, KillRule] = {}


def shared_rule(key: str, state: dict) -> KillRule:
    """Unpickle to ONE rule per sweep: Tune restores the stopper and the callbacks separately, and the
    callback must see the stopper's kill reasons."""
    if key not in _RULES:
        rule = KillRule()
        rule.__dict__.update(state)
        rule.key = key
        _RULES[key] = rule
    return _RULES[key]


class SharedKillRule(KillRule):
    """The sweep's one kill rule (``key``: the sweep), pickled by reference to ``shared_rule``."""

    def __init__(self, key: str, **kwargs):
        super().__init__(**kwargs)
        self.key = key
        _RULES[key] = self

    def __reduce__(self):
        return shared_rule, (self.key, {k: v for k, v in self.__dict__.items() if k != "key"})


class KillStopper(Stopper):
    """The kill rule as a Tune Stopper. ``probing``: the trials carry wsd cooldown probes, and only a probe (the
    loss a finished run of that length reaches) is compared with the baseline's probe at the same tokens."""

    def __init__(self, rule: KillRule, probing: bool = False):
        self.rule, self.probing = rule, probing

    def __call__(self, trial_id: str, result: dict) -> bool:
        if "val_ppl" not in result or result.get("status") in STATUS_DONE:
            return False
        if self.probing:
            if "probe_loss" not in result:
                return False
            ppl = math.exp(min(float(result["probe_loss"]), 50.0))
        else:
            ppl = float(result["val_ppl"])
        return self.rule.update(trial_id, int(result["tokens"]), ppl, bool(result.get("is_baseline"))) is not None

    def stop_all(self) -> bool:
        return False


# --- replay on recorded curves -----------------------------------------------------------------------------------
@dataclass
class Replayed:
    tokens: int  # tokens trained by the replayed sweep (probe branches included)
    stopped: dict[str, int] = field(default_factory=dict)  # trial -> tokens it had when stopped
    completed: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Trial:  # all a scheduler reads of a trial
    trial_id: str


def replay(results: dict[str, list[dict]], order: Sequence[str], scheduler: TrialScheduler, stopper=None,
           concurrent: int = 2) -> Replayed:
    """Run recorded trials through ``scheduler`` (and ``stopper``, a Tune Stopper such as the kill rule's) as a
    sweep would: ``concurrent`` at a time in ``order``, a result arriving when its trial has trained its tokens
    (``tokens`` + ``probe_tokens``) since it started. ``results[trial]``: the trial's results in token order as it
    reported them (the last one is its final result, with a ``status``). Stopped trials free their slot at once.
    Calls follow Tune's controller: the stopper before the scheduler, ``on_trial_complete`` with the last result
    of every trial that ends (stopped or finished).
    """
    events: list[tuple[float, int, str, int]] = []  # (time, tie-break, trial, index of the result)
    seq = itertools.count()
    queue, out = list(order), Replayed(tokens=0)
    cost: dict[str, int] = {}

    def start(trial: str, now: float) -> None:
        scheduler.on_trial_add(None, _Trial(trial))
        for i, r in enumerate(results[trial]):
            heapq.heappush(events, (now + r["tokens"] + r.get("probe_tokens", 0), next(seq), trial, i))

    for _ in range(concurrent):
        if queue:
            start(queue.pop(0), 0.0)
    done: set[str] = set()
    while events:
        now, _, trial, i = heapq.heappop(events)
        if trial in done:
            continue
        r = results[trial][i]
        cost[trial] = int(r["tokens"] + r.get("probe_tokens", 0))
        if "status" in r:  # the final result
            out.completed.append(trial)
        else:  # Tune's order: the stopper first; the scheduler sees only results the stopper let through
            if not (stopper is not None and stopper(trial, r)) and \
                    scheduler.on_trial_result(None, _Trial(trial), r) != TrialScheduler.STOP:
                continue
            out.stopped[trial] = int(r["tokens"])
        scheduler.on_trial_complete(None, _Trial(trial), r)  # as Tune does for every trial that ends running
        done.add(trial)
        if queue:
            start(queue.pop(0), now)
    out.tokens = sum(cost.values())
    return out


def grid_sequence(param_space: dict) -> list[dict]:
    """The grid points of a Tune ``param_space`` in the order Tune creates its trials (the first grid key varies
    fastest): ``{axis: value}`` for each point."""
    from ray.tune.search.variant_generator import generate_variants

    return [{path[-1]: v for path, v in resolved.items()} for resolved, _ in generate_variants(param_space)]
