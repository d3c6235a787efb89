"""tinylm.tune.stopping: ASHA's rungs, the wsd probes placed on them, ProbeASHA judging rungs on probes, and the
replay of Ray's own ASHAScheduler + the kill rule on recorded curves (what bench/asha.py prints)."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler  # noqa: E402

from tinylm.config import Config  # noqa: E402
from tinylm.kill_rule import KillRule  # noqa: E402
from tinylm.sweep import Sweep  # noqa: E402
from tinylm.tune.stopping import (  # noqa: E402
    KillStopper,
    ProbeASHA,
    SharedKillRule,
    early_stop_warnings,
    grid_sequence,
    make_scheduler,
    probes_for,
    replay,
    rung_tokens,
)


@pytest.mark.parametrize("max_t,grace,rf,brackets", [(65_536, 4_096, 2, 1), (65_536, 8_192, 4, 1),
                                                     (60_000, 5_000, 3, 1), (65_536, 4_096, 4, 2)])
def test_rungs_are_the_ones_ray_compares_at(max_t, grace, rf, brackets):
    sched = ASHAScheduler(time_attr="tokens", metric="val_loss", mode="min", max_t=max_t, grace_period=grace,
                          reduction_factor=rf, brackets=brackets)
    ray_rungs = {m for b in sched._brackets for m, _ in b._rungs if m < max_t}
    assert rung_tokens(max_t, grace, rf, brackets) == sorted(ray_rungs)


def wsd(**kw) -> Config:
    return Config.from_name("debug", schedule="wsd", train_tokens=65_536, warmup_tokens=2_048, **kw)


def test_a_wsd_sweep_with_asha_probes_its_rungs_in_the_stable_phase():
    # rungs 4096, 8192, 16384, 32768; the stable phase ends at 0.8 * 65536 = 52429
    assert probes_for(Sweep(name="s", grace_tokens=4_096, reduction_factor=2), wsd()) == "4096,8192,16384,32768"
    # rungs 8192 and 32768 with rf 4; with decay_frac 0.6 the stable phase ends at 26214: 32768 is not probed
    assert probes_for(Sweep(name="s", grace_tokens=8_192, reduction_factor=4), wsd(decay_frac=0.6)) == "8192"
    assert probes_for(Sweep(name="s", asha=False), wsd()) == ""
    assert probes_for(Sweep(name="s"), Config.from_name("debug")) == ""  # cosine: no probes
    assert probes_for(Sweep(name="s"), wsd(probes="20000")) == "20000"  # the user's own probes stay


def test_make_scheduler_picks_probe_asha_only_for_probed_trials():
    assert isinstance(make_scheduler(Sweep(name="s", asha=False), wsd()), FIFOScheduler)
    assert type(make_scheduler(Sweep(name="s"), Config.from_name("debug"))) is ASHAScheduler
    assert isinstance(make_scheduler(Sweep(name="s"), wsd(probes="16384")), ProbeASHA)


class T:
    def __init__(self, trial_id):
        self.trial_id = trial_id


def test_probe_asha_judges_a_rung_on_the_probe_and_nothing_else():
    sched = ProbeASHA(time_attr="tokens", metric="val_loss", mode="min", max_t=100, grace_period=10,
                      reduction_factor=2)
    a, b = T("a"), T("b")
    for t in (a, b):
        sched.on_trial_add(None, t)
    # an eval between probes decides nothing, however bad
    assert sched.on_trial_result(None, a, {"tokens": 5, "val_loss": 9.0}) == TrialScheduler.CONTINUE
    # at the rung, "a" has the better mid-run loss but the worse probe: the probe decides
    assert sched.on_trial_result(None, a, {"tokens": 10, "val_loss": 5.0, "probe_loss": 4.0}) == "CONTINUE"
    assert sched.on_trial_result(None, b, {"tokens": 10, "val_loss": 4.0, "probe_loss": 4.5}) == "STOP"
    # Tune hands a stopped trial's last result to on_trial_complete: a mid-run eval is not recorded at a rung, a
    # probe is recorded as the probe: the rung holds 4.0, 4.5, 4.3 (median 4.3) and a probe of 4.28 goes on; had
    # c's 1.0 and d's mid-run 9.0 been recorded, the median of 1.0, 4.0, 4.5, 9.0 (4.25) would have stopped it
    c, d, e = T("c"), T("d"), T("e")
    for t in (c, d, e):
        sched.on_trial_add(None, t)
    sched.on_trial_complete(None, c, {"tokens": 12, "val_loss": 1.0})  # killed mid-run: would set the cutoff at 1
    sched.on_trial_complete(None, d, {"tokens": 10, "val_loss": 9.0, "probe_loss": 4.3})
    assert sched.on_trial_result(None, e, {"tokens": 10, "val_loss": 3.0, "probe_loss": 4.28}) == "CONTINUE"
    plain = ASHAScheduler(time_attr="tokens", metric="val_loss", mode="min", max_t=100, grace_period=10,
                          reduction_factor=2)
    for t in (a, b):
        plain.on_trial_add(None, t)
    assert plain.on_trial_result(None, a, {"tokens": 10, "val_loss": 5.0, "probe_loss": 4.0}) == "CONTINUE"
    assert plain.on_trial_result(None, b, {"tokens": 10, "val_loss": 4.0, "probe_loss": 4.5}) == "CONTINUE"


def curve(*losses: float, final: float, step: int = 10) -> list[dict]:
    out = [{"tokens": step * (i + 1), "val_loss": v} for i, v in enumerate(losses)]
    return out + [{"tokens": step * (len(losses) + 1), "val_loss": final, "status": "completed"}]


def test_replay_runs_ray_asha_on_recorded_curves():
    """4 trials of 40 tokens, one at a time, ASHA rf 2 with rungs at 10 and 20: the first trial always goes on
    (nothing to compare with), a later one goes on only when it is in the top half of those already at the rung."""
    runs = {"a": curve(5.0, 4.0, 3.0, final=2.0), "b": curve(6.0, 5.0, 4.0, final=3.0),
            "c": curve(4.5, 4.2, 3.5, final=2.5), "d": curve(4.0, 3.5, 3.0, final=1.5)}
    sched = ASHAScheduler(time_attr="tokens", metric="val_loss", mode="min", max_t=40, grace_period=10,
                          reduction_factor=2)
    got = replay(runs, ["a", "b", "c", "d"], sched, concurrent=1)
    # b is worse than a at 10 -> stopped; c beats a at 10, then loses to a at 20 (4.2 > 4.0) -> stopped; d leads
    assert got.stopped == {"b": 10, "c": 20}
    assert got.completed == ["a", "d"]
    assert got.tokens == 40 + 10 + 20 + 40
    # the order matters: best first; c ties the median of {d, a} at 10 (4.5) and goes on (Ray stops only below it)
    got = replay(runs, ["d", "a", "c", "b"], ASHAScheduler(time_attr="tokens", metric="val_loss", mode="min",
                                                          max_t=40, grace_period=10, reduction_factor=2),
                 concurrent=1)
    assert got.completed == ["d"] and got.stopped == {"a": 10, "c": 20, "b": 10}
    assert got.tokens == 40 + 10 + 20 + 10


def test_replay_applies_the_kill_rule():
    runs = {"base": [{**r, "is_baseline": True} for r in curve(5.0, 4.0, 3.0, final=2.0)],
            "worse": curve(5.5, 4.5, 3.5, final=2.5)}
    for rs in runs.values():
        for r in rs:
            r["val_ppl"] = 2.718281828 ** r["val_loss"]
    got = replay(runs, ["base", "worse"], FIFOScheduler(), KillStopper(KillRule(window=10)), concurrent=1)
    assert got.stopped == {"worse": 20}  # worse at 10 and still worse 10 tokens later
    assert got.tokens == 40 + 20


def test_grid_sequence_is_the_order_tune_creates_trials_in():
    from ray import tune

    space = {"glu_factor": tune.grid_search([4.0, 2.0]), "lr": tune.grid_search([3e-3, 1e-2, 1e-3]), "x": 1}
    assert grid_sequence(space) == [{"glu_factor": g, "lr": lr} for lr in (3e-3, 1e-2, 1e-3) for g in (4.0, 2.0)]


def test_the_kill_rule_compares_probes_when_trials_carry_them():
    rule = KillRule(window=0)
    stop = KillStopper(rule, probing=True)
    base = {"tokens": 10, "val_loss": 5.0, "val_ppl": 148.4, "probe_loss": 4.0, "is_baseline": True}
    assert not stop("base", base)
    # mid-run, far worse than the baseline's probe: not judged (no probe in this result)
    assert not stop("t", {"tokens": 10, "val_loss": 6.0, "val_ppl": 403.4})
    # its probe is worse than the baseline's by more than the margin: killed
    assert stop("t", {"tokens": 10, "val_loss": 4.5, "val_ppl": 90.0, "probe_loss": 4.1})
    assert "killed by rule" in rule.reasons["t"]
    # the same results without probing: judged on val_ppl, where "u" is better than the baseline
    assert not KillStopper(KillRule(window=0, baseline=[(10, 148.4)]))("u", {"tokens": 10, "val_ppl": 90.0})


def test_a_restored_sweep_has_one_kill_rule_for_the_stopper_and_the_callback(monkeypatch):
    """Tune pickles the stopper and the MLflow callback separately; unpickled, both hold the same rule (the
    callback reads the stopper's kill reasons), in a fresh driver process too."""
    import pickle

    from tinylm.tune import stopping

    rule = SharedKillRule("/r/glu", window=10)
    rule.reasons["t"] = "killed by rule"
    stopper, callback_rule = pickle.dumps(KillStopper(rule, probing=True)), pickle.dumps(rule)
    assert pickle.loads(stopper).rule is pickle.loads(callback_rule) is rule  # this process: the live rule
    monkeypatch.setattr(stopping, "_RULES", {})  # a new driver process restoring the sweep
    restored = pickle.loads(stopper)
    assert restored.rule is pickle.loads(callback_rule) and restored.rule is not rule and restored.probing
    assert restored.rule.reasons == {"t": "killed by rule"} and restored.rule.window == 10


def test_early_stopping_across_an_lr_axis_is_announced():
    from tinylm.sweep import Space

    cosine = Config.from_name("debug")
    (msg,) = early_stop_warnings(Sweep(name="s"), cosine, Space(lr=[1e-3, 3e-3], glu_factor=[2.0, 4.0]))
    assert "across lr" in msg and "schedule='cosine'" in msg and "--no-asha" in msg
    assert early_stop_warnings(Sweep(name="s"), cosine, Space(variants=[{"lr": 1e-3}, {"lr": 2e-3}]))
    (msg,) = early_stop_warnings(Sweep(name="s"), wsd(probes="8192"), Space(lr=[1e-3, 3e-3]))
    assert "cooldown probes" in msg
    assert early_stop_warnings(Sweep(name="s"), cosine, Space(glu_factor=[2.0, 4.0])) == []  # no LR axis
    assert early_stop_warnings(Sweep(name="s", asha=False, kill_margin=float("inf")), cosine, Space(lr=[1e-3])) == []
