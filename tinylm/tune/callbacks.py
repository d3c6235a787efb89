"""Tune callbacks: one MLflow child run per trial, and the status a finished trial gets (the kill rule's reasons,
read from the sweep's ``tinylm.tune.stopping.SharedKillRule``)."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from ray import tune

from tinylm.config import member_config, member_seeds
from tinylm.kill_rule import KillRule
from tinylm.layout import MEMBERS, VARIANT, member_id
from tinylm.tune.console import bar, say
from tinylm.tune.grid import build_config, is_baseline
from tinylm.tune.results import STATUS_DONE

if TYPE_CHECKING:  # a sweep's settings and grid, handed in by tinylm.sweep (which calls this package)
    from tinylm.sweep.settings import Sweep

TUNE_KEYS = ("training_iteration", "time_this_iter_s", "timestamp", "pid", "iterations_since_restore",
             "time_since_restore", "time_total_s")  # Tune's bookkeeping, not metrics


class TrackingCallback(tune.Callback):
    """One MLflow child run per trial, nested under the sweep's parent; keyed by trial id (no duplicates)."""

    def __init__(self, sweep: Sweep, rule: KillRule, parent_run_id: str, phase: str = "grid"):
        self.sweep, self.rule, self.parent, self.phase = sweep, rule, parent_run_id, phase
        self._tracker, self._runs, self._nodes = None, {}, {}

    def __getstate__(self):  # Tune pickles callbacks with the experiment state; the client is rebuilt
        return {**self.__dict__, "_tracker": None, "_runs": {}}

    @property
    def tracker(self):
        if self._tracker is None:
            from tinylm.tracking import Tracker

            self._tracker = Tracker(self.sweep.uri(), experiment=self.sweep.name,
                                    artifact_root=os.path.join(self.sweep.root, "mlartifacts"))
        return self._tracker

    def _member_runs(self, trial) -> list[tuple[int | None, str]]:
        """(seed, run id) of every run the trial writes: one (None, run) for a one-model trial; one per member of a
        batched trial, each its own child run (trial id ``member_id(trial, seed)``, params = the member's solo
        Config), so results.csv, Optuna and the analysis see K runs, as from K trials."""
        if trial.trial_id not in self._runs:
            cfg = build_config(trial.config)
            tags = {"tinylm.sweep": self.sweep.name, "ray_trial_id": trial.trial_id, "tinylm.phase": self.phase,
                    "is_baseline": str(is_baseline(cfg, self.sweep.baseline)).lower()}
            if cfg.seeds_per_trial == 1:
                self._runs[trial.trial_id] = [(None, self.tracker.trial_run(self.parent, trial.trial_id,
                                                                            cfg.to_dict(), tags=tags))]
            else:
                self._runs[trial.trial_id] = [
                    (seed, self.tracker.trial_run(self.parent, member_id(trial.trial_id, seed),
                                                  member_config(cfg, k).to_dict(),
                                                  tags={**tags, "tinylm.seeds_per_trial": str(cfg.seeds_per_trial)}))
                    for k, seed in enumerate(member_seeds(cfg))]
        return self._runs[trial.trial_id]

    def on_trial_start(self, iteration, trials, trial, **info):
        self._member_runs(trial)
        say(f"[{self.sweep.name}] {trial.trial_id} {self.axes(trial)} | started")

    def axes(self, trial) -> str:
        cfg = trial.config
        keys = [k for k in self.sweep.axes if k in cfg] + [k for k in (cfg.get(VARIANT) or {})]
        vals = {**cfg, **(cfg.get(VARIANT) or {})}
        members = int(cfg.get("seeds_per_trial") or 1)
        if members > 1 and "seed" in keys:  # a batched trial: its members' seeds
            vals["seed"] = f"{vals['seed']}-{vals['seed'] + members - 1}"
        return " ".join(f"{k}={vals[k]:.4g}" if isinstance(vals[k], float) else f"{k}={vals[k]}"
                        for k in dict.fromkeys(keys))  # a tuned lr reads 0.01314, not 17 digits

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._note_node(trial, result.get("ray_node_id"))
        runs = self._member_runs(trial)
        for (_, run_id), metrics in zip(runs, per_member(result, len(runs)), strict=True):
            numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                       and k not in TUNE_KEYS}
            self.tracker.log_metrics(run_id, numeric, step=int(metrics.get("tokens", 0)))
        if "val_loss" in result and "status" not in result:
            tokens, total = int(result["tokens"]), int(trial.config.get("train_tokens") or 0)
            probe = f" probe {result['probe_loss']:.4f}" if "probe_loss" in result else ""
            say(f"[{self.sweep.name}] {trial.trial_id} {self.axes(trial)} | tokens {tokens:,}/{total:,} "
                f"{bar(tokens / max(1, total))} | val_loss {result['val_loss']:.4f} ppl {result['val_ppl']:.1f}"
                f"{probe} | {result.get('tokens_per_s', 0):,.0f} tok/s mfu {100 * result.get('mfu', 0):.1f}% | running")

    def _note_node(self, trial, node: str | None) -> None:
        """Tag ``tinylm.nodes``: the Ray nodes a trial ran on, in order (a trial restored on another node after
        its node died reads ``<first>,<second>``)."""
        if not node:
            return
        nodes = self._nodes.setdefault(trial.trial_id, [])
        if not nodes or nodes[-1] != node:
            nodes.append(node)
            for _, run_id in self._member_runs(trial):
                self.tracker.set_tags(run_id, {"tinylm.nodes": ",".join(nodes)})

    def on_trial_complete(self, iteration, trials, trial, **info):
        last = trial.last_result or {}
        status, reason = trial_status(trial.trial_id, last, self.rule, asha=self.sweep.asha)
        strings = {k: str(v) for k, v in last.items() if k in ("git_sha", "git_dirty", "git_diff_sha", "hostname",
                   "device", "tokenizer_hash", "data_fingerprint", "data_source", "world_size", "torch")}
        cfg = build_config(trial.config)
        runs = self._member_runs(trial)
        ended = "status" in last  # the trial's final report: its members' own endings are in it
        for k, ((seed, run_id), metrics) in enumerate(zip(runs, per_member(last, len(runs)), strict=True)):
            # a member that completed or diverged says so; one stopped with its trial (ASHA, the kill rule) or
            # still running when the trial ended otherwise gets the trial's status
            own = metrics.get("status")
            m_status, m_reason = (own, str(metrics.get("stop_reason", ""))) if seed is not None and ended and own in (
                "completed", "diverged") else (status, reason)
            self.tracker.set_tags(run_id, strings)
            self.tracker.log_dict(run_id, (cfg if seed is None else member_config(cfg, k)).to_dict(), "config.json")
            if last.get("ds_config"):
                self.tracker.log_dict(run_id, json.loads(last["ds_config"]), "ds_config.json")
            # the last result's metrics were logged by on_trial_result (Tune passes every result through it first):
            # finish_run only writes them as final_metrics.json, with the status
            final = {key: v for key, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                     and key not in TUNE_KEYS}
            self.tracker.finish_run(run_id, m_status, m_reason, final, log_metrics=False)
        members = f" ({last.get('members_live', 0)} of {cfg.seeds_per_trial} seeds live)" if cfg.seeds_per_trial > 1 \
            else ""
        say(f"[{self.sweep.name}] {trial.trial_id} {self.axes(trial)} | tokens {int(last.get('tokens', 0)):,} | "
            f"val_loss {last.get('val_loss', float('nan')):.4f}{members} | {status} {reason}".rstrip())

    def on_trial_error(self, iteration, trials, trial, **info):
        err = ""
        if getattr(trial, "error_file", None) and os.path.exists(trial.error_file):
            with open(trial.error_file) as f:
                err = f.read()[-2000:]
        for _, run_id in self._member_runs(trial):
            self.tracker.finish_run(run_id, "failed", err or "trial raised an error")


def per_member(result: dict, n: int = 1) -> list[dict]:
    """A result as each of a trial's ``n`` runs sees it: the result itself for a one-model trial (or a result that
    carries no members, e.g. an error's); for a batched trial (``MEMBERS`` in it) each member's own metrics (its
    seed, status, losses), with the trial's bookkeeping."""
    if MEMBERS not in result:
        return [result] * n
    shared = {k: v for k, v in result.items() if k in TUNE_KEYS or k in ("is_baseline", "ray_node_id")}
    return [{**shared, **m} for m in json.loads(result[MEMBERS])]


def trial_status(trial_id: str, last: dict, rule: KillRule, asha: bool = True) -> tuple[str, str]:
    """completed / diverged (the run said so), killed_rule (the PRD rule fired), else stopped by ASHA."""
    if last.get("status") in STATUS_DONE:
        return last["status"], str(last.get("stop_reason", ""))
    if trial_id in rule.reasons:
        return "killed_rule", rule.reasons[trial_id]
    if not asha:
        return "failed", f"ended at {int(last.get('tokens', 0)):,} tokens without a final result"
    return "stopped_asha", f"stopped early by ASHA at {int(last.get('tokens', 0)):,} tokens"


__all__ = ["TrackingCallback", "per_member", "trial_status"]
