"""tinylm.train through the real ``train()`` on the debug preset and the offline corpus: every model variant and
optimizer learns, resume continues the same loss curve, architecture changes are refused on resume, the NaN
guard stops a diverging run, DeepSpeed ZeRO stages and precisions, a 2-process run, and the CLI commands.

train() runs in this process (a one-process gloo group that every call reuses; see conftest.inprocess_dist);
the CLI and the 2-process run are subprocesses. A debug run of 20k tokens takes ~3 s here once data is cached.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tinylm import engine
from tinylm.checkpoint import load_pretrained
from tinylm.config import Config, ConfigError
from tinylm.engine import complete_tags, ds_config
from tinylm.machine import free_port

pytestmark = pytest.mark.usefixtures("one_thread", "inprocess_dist")

LN_V = math.log(1024)  # the debug preset's vocabulary: the loss of a uniform prediction


def debug(**kw) -> Config:
    """The debug preset (d=64, L=2, V=1024, T=64, batch 8 = 512 tokens/step), shortened."""
    return Config.from_name("debug", **{"train_tokens": 20_480, "eval_every_tokens": 5_120, "eval_tokens": 2_048,
                                        **kw})


def run(cfg: Config, out: Path, **kw) -> tuple[dict, list[dict]]:
    """train() and the metrics it reported at each eval (the last report is the final one)."""
    from tinylm.train import train

    reports: list[dict] = []
    final = train(cfg, str(out), report=lambda m, _ckpt: reports.append(dict(m)), **kw)
    return final, reports


def curve(reports: list[dict]) -> list[tuple[int, float, float]]:
    return [(r["tokens"], r["train_loss"], r["val_loss"]) for r in reports if "status" not in r]


# --- every variant learns ------------------------------------------------------------------------------------------
# Three runs cover every option at least once: gelu/swiglu, layernorm/rmsnorm, learned/rope, tied/untied,
# adamw/lion/muon (Lion at a 3x lower LR, as its paper advises).
VARIANTS = {
    "gelu-layernorm-learned-tied-adamw": dict(),
    "swiglu-rmsnorm-rope-untied-lion": dict(mlp="swiglu", norm="rmsnorm", pos="rope", tie_embeddings=False,
                                            optimizer="lion", lr=1e-3),
    "swiglu-layernorm-rope-tied-muon": dict(mlp="swiglu", pos="rope", optimizer="muon", glu_factor=2.66),
}


@pytest.mark.parametrize("name", VARIANTS)
def test_variant_trains(name, tmp_path):
    cfg = debug(**VARIANTS[name])
    final, reports = run(cfg, tmp_path)
    assert final["status"] == "completed" and final["stop_reason"] == ""
    assert final["tokens"] == cfg.train_tokens and final["step"] == 40
    points = curve(reports) + [(final["tokens"], final["train_loss"], final["val_loss"])]
    assert [p[0] for p in points] == [5120, 10240, 15360, 20480]
    train_losses, val_losses = [p[1] for p in points], [p[2] for p in points]
    assert train_losses[0] > train_losses[-1] + 0.2, train_losses
    assert val_losses[0] > val_losses[-1] and val_losses[-1] < LN_V - 0.4, val_losses
    # what a finished run leaves: metrics.json, run_info.json, the last 2 checkpoints, a loadable model
    with open(tmp_path / "metrics.json") as f:
        on_disk = json.load(f)
    assert on_disk["status"] == "completed" and on_disk["final_val_loss"] == final["final_val_loss"]
    assert on_disk["params_total"] == final["params_total"]
    with open(tmp_path / "run_info.json") as f:
        info = json.load(f)
    assert info["config"] == cfg.to_dict() and json.loads(info["info"]["ds_config"]) == ds_config(cfg)
    assert complete_tags(str(tmp_path / "ckpt")) == ["step00000030", "step00000040"]
    model, loaded_cfg, tok = load_pretrained(str(tmp_path / "model"))
    assert loaded_cfg == cfg and model.num_params() == final["params_total"] and tok is not None
    assert final["mfu"] > 0 and final["tokens_per_s"] > 0 and final["flops_per_token"] > 6 * final["params_nonembed"]


# --- resume ------------------------------------------------------------------------------------------------------------
class _Interrupt(Exception):
    pass


@pytest.mark.numerics
def test_resume_continues_the_same_loss_curve(tmp_path):
    """Run A: 10k tokens in one go. Run B: interrupted right after its checkpoint at 5k tokens, then a second
    train() with the same Config on the same out_dir. Model, optimizer and data-RNG state are restored, so the
    curves agree exactly at every eval."""
    cfg = debug(train_tokens=10_240, eval_every_tokens=2_560)
    final_a, reports_a = run(cfg, tmp_path / "a")

    reports_b: list[dict] = []

    def stop_at_half(m, ckpt):
        reports_b.append(dict(m))
        if m["tokens"] >= cfg.train_tokens // 2:
            assert ckpt is not None and os.path.isdir(ckpt)  # the checkpoint was written before the report
            raise _Interrupt

    from tinylm.train import train

    with pytest.raises(_Interrupt):
        train(cfg, str(tmp_path / "b"), report=stop_at_half)
    assert [r["tokens"] for r in reports_b] == [2560, 5120]
    final_b, reports_b2 = run(cfg, tmp_path / "b")  # same cfg, same out_dir: resumes from ckpt/
    assert [p[0] for p in curve(reports_b2)] == [7680]  # it did not start over
    assert final_b["status"] == "completed" and final_b["tokens"] == final_a["tokens"] == 10_240
    a = curve(reports_a) + [(final_a["tokens"], final_a["train_loss"], final_a["val_loss"])]
    b = curve(reports_b) + curve(reports_b2) + [(final_b["tokens"], final_b["train_loss"], final_b["val_loss"])]
    assert [p[0] for p in a] == [p[0] for p in b] == [2560, 5120, 7680, 10240]
    # the same float32 ops on the same CPU in both runs, so equal up to last-bit noise on any kernel family (the
    # family changes both runs alike); a state not restored (RNG, optimizer moments, LR step) moves them by >1e-3
    for (tok, ta, va), (_, tb, vb) in zip(a, b):
        assert ta == pytest.approx(tb, rel=1e-6, abs=1e-6), f"train loss differs at {tok} tokens"
        assert va == pytest.approx(vb, rel=1e-6, abs=1e-6), f"val loss differs at {tok} tokens"
    assert final_b["train_time_s"] > 0 and final_b["train_flops"] == final_a["train_flops"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, inprocess_dist) -> tuple[Config, Path]:
    cfg = debug(train_tokens=4_096, eval_every_tokens=2_048)
    out = tmp_path_factory.mktemp("finished")
    from tinylm.train import train

    assert train(cfg, str(out))["status"] == "completed"
    return cfg, out


@pytest.mark.parametrize("change", [
    dict(norm="rmsnorm"),  # same tensor names and shapes as bias-free LayerNorm: only the config check sees it
    dict(rope_theta=500.0, pos="learned"),
    dict(n_layer=3),  # shape changes: refused from the checkpoint marker before DeepSpeed loads any weight
    dict(n_embd=96, n_head=4),
], ids=["norm", "rope_theta", "n_layer", "n_embd"])
def test_resume_refuses_an_architecture_change(finished_run, change, tmp_path):
    cfg, done = finished_run
    out = tmp_path / "run"
    shutil.copytree(done, out)
    from tinylm.train import train

    changed = sorted(k for k in change if change[k] != getattr(cfg, k))
    try:
        result = train(cfg.replace(train_tokens=8_192, **change), str(out))
    except ConfigError as e:
        msg = str(e)
        assert "cannot resume" in msg and all(k in msg for k in changed), msg
        assert "precision" in msg  # says what MAY change
    else:
        raise AssertionError(f"resumed across {changed}: {result['status']}, {result['tokens']} tokens")


# --- divergence guard ------------------------------------------------------------------------------------------------
def test_huge_lr_diverges_with_a_reason(tmp_path):
    final, _ = run(debug(lr=1e6, train_tokens=5_120), tmp_path)
    assert final["status"] == "diverged"
    assert re.fullmatch(r"non-finite train loss \((nan|inf)\) at step \d+", final["stop_reason"]), final["stop_reason"]
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["status"] == "diverged"
    assert not (tmp_path / "model").exists()  # a diverged model is not exported


def test_nan_train_loss_stops_at_that_step(tmp_path, monkeypatch):
    import tinylm.train as tr

    real, calls = tr.train_step, []

    def nan_on_third(run_, batches):
        calls.append(1)
        loss = real(run_, batches)
        return float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(tr, "train_step", nan_on_third)
    final, reports = run(debug(train_tokens=5_120, eval_every_tokens=1_024), tmp_path)
    assert final["status"] == "diverged" and final["stop_reason"] == "non-finite train loss (nan) at step 3"
    assert len(calls) == 3 and final["step"] == 2  # the last metrics are the eval at step 2


def test_nan_val_loss_stops_the_run(tmp_path, monkeypatch):
    import tinylm.train as tr

    monkeypatch.setattr(tr, "evaluate", lambda run_: float("nan"))
    final, _ = run(debug(train_tokens=5_120, eval_every_tokens=1_024), tmp_path)
    assert final["status"] == "diverged" and final["stop_reason"] == "non-finite val loss at step 2"


# --- evaluation split across ranks -------------------------------------------------------------------------------------
@pytest.mark.parametrize("n,world", [(1, 1), (4, 1), (4, 2), (5, 2), (1, 2), (10, 3)])
def test_eval_share_covers_every_val_batch_once(n, world):
    from tinylm.train import eval_share

    shares = [list(eval_share(n, rank, world)) for rank in range(world)]
    assert sorted(i for share in shares for i in share) == list(range(n))  # every batch, exactly once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_evaluate_splits_the_val_batches_across_ranks():
    """evaluate() as rank 0 and rank 1 of 2 (no process group here, so no reduction: each returns its share's loss
    sum / n) runs the model on disjoint shares of the 1-rank batches, which add up to the 1-rank mean; at 1 rank
    the result is exactly the mean of the batch losses (as before the split)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from tinylm.train import evaluate

    class Engine:  # the loss of a batch is a function of its tokens; batches and losses are recorded
        def __init__(self):
            self.seen, self.losses = [], []

        def __call__(self, x, y):
            loss = x.double().mean() / 1000 + y.double().std() / 1000
            self.seen.append(x.flatten().tolist())
            self.losses.append(loss.item())
            return None, loss

        def eval(self):
            pass

        def train(self):
            pass

    cfg = debug(eval_tokens=5 * 512)  # 5 batches of 8 x 64 tokens: the ranks get 3 and 2
    data = SimpleNamespace(val=np.arange(10_000, dtype=np.uint16) % 997)
    runs = {(rank, world): SimpleNamespace(cfg=cfg, engine=Engine(), data=data, device=torch.device("cpu"),
                                           rank=rank, world=world) for rank, world in ((0, 1), (0, 2), (1, 2))}
    loss = {key: evaluate(r) for key, r in runs.items()}
    one, first, second = (runs[key].engine for key in ((0, 1), (0, 2), (1, 2)))
    assert (len(one.seen), len(first.seen), len(second.seen)) == (5, 3, 2)
    assert sorted(first.seen + second.seen) == sorted(one.seen) and len(set(map(tuple, one.seen))) == 5
    assert loss[0, 1] == float(np.mean(one.losses))
    assert loss[0, 2] + loss[1, 2] == pytest.approx(loss[0, 1], rel=1e-12)


# --- DeepSpeed --------------------------------------------------------------------------------------------------------
def test_ds_config_is_derived_from_the_config():
    cfg = debug(batch_size=4, grad_accum=3, grad_clip=0.5, zero_stage=2, precision="bf16")
    conf = ds_config(cfg, world_size=2)
    assert conf["train_micro_batch_size_per_gpu"] == 4 and conf["gradient_accumulation_steps"] == 3
    assert conf["train_batch_size"] == 4 * 3 * 2 and conf["gradient_clipping"] == 0.5
    assert conf["zero_optimization"] == {"stage": 2} and conf["bf16"] == {"enabled": True}
    assert conf["zero_allow_untested_optimizer"] is True and "scheduler" not in conf  # LR schedule is ours
    plain = ds_config(debug())
    assert "bf16" not in plain and "fp16" not in plain and plain["zero_optimization"] == {"stage": 0}
    assert ds_config(debug(precision="fp16"))["fp16"]["enabled"] is True
    # a batched trial at bf16 / ZeRO 1/2 accumulates its micro-batches itself: one DeepSpeed micro-batch per step
    handoff = ds_config(debug(batch_size=4, grad_accum=3, zero_stage=1, seeds_per_trial=2), world_size=2)
    assert handoff["gradient_accumulation_steps"] == 1 and handoff["train_micro_batch_size_per_gpu"] == 12
    assert handoff["train_batch_size"] == 4 * 3 * 2 and handoff["gradient_clipping"] == 0.0
    batched = ds_config(debug(batch_size=4, grad_accum=3, seeds_per_trial=2))  # fp32 ZeRO 0: clipped on p.grad
    assert batched["gradient_accumulation_steps"] == 3 and batched["train_micro_batch_size_per_gpu"] == 4


def test_init_distributed_reuses_the_group(inprocess_dist):
    assert engine.init_distributed() == engine.init_distributed() == (0, 1)


REUSED_PROCESS = """
import torch
from tinylm import engine

traced = []

def backend(gm, example_inputs):  # counts the graphs dynamo hands to a backend; runs them as traced
    traced.append(1)
    return gm.forward

for trial in range(12):  # a Tune actor's trials, one after another in one process: each its own depth (a variant)
    engine.fresh_process(trial)
    model = torch.compile(torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(trial + 1)]), backend=backend)
    model(torch.randn(4, 8))  # a train step's forward
    with torch.no_grad():
        model(torch.randn(4, 8))  # an eval's: another graph (grad mode is guarded)
print("TRACED", len(traced))
"""


def test_a_reused_process_compiles_every_trials_model(child_env):
    """A reused process (Tune's actor reuse) compiles each trial's model: a model of another structure (a variant's
    depth) and each grad mode (train, eval) is a recompile of the same ``forward``, so without ``fresh_process``'s
    reset a worker hits torch's recompile limit (8) by its third variant and runs ``forward`` eager for every later
    trial, silently (seen in a compiled GLU sweep: 'hit config.recompile_limit (8)', 'GLOBAL_STATE changed:
    grad_mode'). Reset, every trial gets its train and eval graphs: 24."""
    p = subprocess.run([sys.executable, "-c", REUSED_PROCESS], capture_output=True, text=True, timeout=300,
                       env=child_env)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "TRACED 24" in p.stdout, p.stdout[-500:] + p.stderr[-1500:]


@pytest.fixture(scope="module")
def zero0_fp32(tmp_path_factory, inprocess_dist) -> dict:
    from tinylm.train import train

    return train(debug(train_tokens=2_048, eval_every_tokens=1_024), str(tmp_path_factory.mktemp("z0")))


@pytest.mark.slow
@pytest.mark.parametrize("stage,precision", [
    (0, "bf16"), (1, "fp32"), (2, "fp32"), (1, "bf16"), (2, "bf16"),
])
def test_zero_stage_and_precision(stage, precision, zero0_fp32, tmp_path):
    """ZeRO 1/2 shard optimizer state and gradients, which on one rank changes nothing numerically: fp32 runs
    match stage 0 exactly; bf16 runs are close."""
    final, _ = run(debug(train_tokens=2_048, eval_every_tokens=1_024, zero_stage=stage, precision=precision),
                   tmp_path)
    assert final["status"] == "completed" and final["tokens"] == 2_048
    tol = 1e-5 if precision == "fp32" else 0.05
    assert final["final_val_loss"] == pytest.approx(zero0_fp32["final_val_loss"], abs=tol)
    model, _, _ = load_pretrained(str(tmp_path / "model"))
    assert model.num_params() == final["params_total"]


TWO_RANKS = """
import json, sys
from tinylm.config import Config
from tinylm.train import train
cfg = Config.from_name("debug", train_tokens=8192, eval_every_tokens=4096, eval_tokens=2048)
m = train(cfg, sys.argv[1])
print("RESULT " + json.dumps({k: m[k] for k in ("status", "tokens", "step", "final_val_loss")}))
"""


@pytest.mark.slow
def test_two_process_run(tmp_path, child_env):
    """Two ranks (gloo), the env:// rendezvous torchrun / Ray Train would set up: both finish; the global batch is
    2 x 512 tokens per step; rank 0 writes metrics.json, run_info.json and the model."""
    port = str(free_port())
    procs = [subprocess.Popen([sys.executable, "-c", TWO_RANKS, str(tmp_path)], cwd=tmp_path,
                              env={**child_env, "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=420)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    results = []
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
        results.append(json.loads(re.search(r"^RESULT (.*)$", out, re.M)[1]))
    assert all(r["status"] == "completed" and r["tokens"] == 8192 and r["step"] == 8 for r in results)
    assert results[0]["final_val_loss"] == pytest.approx(results[1]["final_val_loss"], abs=1e-6)  # same weights
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f)["status"] == "completed"
    with open(tmp_path / "run_info.json") as f:
        info = json.load(f)["info"]
    assert info["world_size"] == "2" and json.loads(info["ds_config"])["train_batch_size"] == 16
    assert (tmp_path / "model" / "model.safetensors").exists()


# --- the CLI -----------------------------------------------------------------------------------------------------------
def _cli(args: list[str], env: dict, timeout: int = 420) -> tuple[subprocess.CompletedProcess, float]:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tinylm.train", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return proc, wall


@pytest.mark.slow
def test_sanity_overfit_cli(tmp_path, child_env):
    proc, _ = _cli(["--preset", "debug", "--sanity", "overfit", "--out", str(tmp_path)], child_env)
    m = re.search(r"overfit ([\d,]+) tokens: loss ([\d.]+) -> ([\d.]+) in (\d+) steps \(PASS", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert m[1] == "1,024" and float(m[2]) > 5 and float(m[3]) < 0.1


@pytest.mark.slow
def test_sanity_lr_range_cli(tmp_path, child_env):
    proc, _ = _cli(["--preset", "debug", "--sanity", "lr_range", "--out", str(tmp_path)], child_env)
    m = re.search(r"suggested lr \(steepest descent\): ([\d.e+-]+); min-loss lr / 10: ([\d.e+-]+)", proc.stdout)
    assert m, proc.stdout[-2000:]
    assert 1e-6 <= float(m[1]) <= 1.0 and 1e-7 <= float(m[2]) <= 0.1
    with open(tmp_path / "lr_range.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["lr", "loss"] and len(rows) > 20
    lrs = [float(r[0]) for r in rows[1:]]
    assert lrs == sorted(lrs) and lrs[0] == pytest.approx(1e-6)  # an exponential sweep upwards
    assert (tmp_path / "lr_range.png").stat().st_size > 1000


@pytest.mark.slow
def test_debug_preset_cli_completes(tmp_path, child_env):
    """`python -m tinylm.train --preset debug` end to end (60k tokens); prints a JSON summary."""
    proc, wall = _cli(["--preset", "debug", "--out", str(tmp_path)], child_env)
    summary = json.loads(re.search(r"^\{\n.*?^\}$", proc.stdout, re.M | re.S)[0])
    assert summary["status"] == "completed" and summary["tokens"] == 60_416  # 118 steps of 512 tokens
    # it learned the token frequencies: at the unigram count model's loss on the same val windows (~6.0, ln V is
    # 6.93). 60k tokens end on the early plateau, where seeds land at 5.92-6.00: a fixed "ln V - 1" (5.93) held for
    # one init draw only
    assert summary["final_val_loss"] < min(LN_V - 0.5, summary["ref_unigram_loss"] + 0.1)
    assert summary["ref_bigram_loss"] < summary["ref_unigram_loss"] and summary["params_total"] > 0
    assert re.search(r"^wall time [\d.]+ s; model and metrics in ", proc.stdout, re.M)
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "model" / "config.json").exists()
    print(f"debug preset CLI wall time: {wall:.1f} s")


# --- WSD cooldown probes ------------------------------------------------------------------------------------------
def test_probes_leave_the_run_exactly_as_without_them(tmp_path):
    """A probe trains and evaluates a throw-away cooldown branch, then restores the engine: the run's own curve
    (train and val loss at every eval, the final loss) is identical to the same run without probes, and the probe
    reports what the branch reached plus the tokens it cost."""
    cfg = debug(train_tokens=10_240, eval_every_tokens=2_560, schedule="wsd", decay_frac=0.25)
    plain, plain_reports = run(cfg, tmp_path / "plain")
    probed, probed_reports = run(cfg.replace(probes="2560,5120"), tmp_path / "probed")
    assert curve(plain_reports) == curve(probed_reports)
    assert probed["final_val_loss"] == plain["final_val_loss"]
    got = {r["tokens"]: r for r in probed_reports if "status" not in r}
    assert set(k for k, r in got.items() if "probe_loss" in r) == {2560, 5120}
    # a branch of tokens * 0.25 / 0.75, in whole 512-token steps: 1024 after 2560 tokens, 2048 after 5120
    assert got[2560]["probe_tokens"] == 1024 and got[5120]["probe_tokens"] == 1024 + 2048
    assert probed["probe_tokens"] == 3072 and probed["probe_time_s"] > 0
    # cooling the LR down lowers the loss below the stable-phase loss at the same point
    assert got[5120]["probe_loss"] < got[5120]["val_loss"]
    assert not os.path.exists(tmp_path / "probed" / "probe" / "branch")  # the scratch state is removed


def test_a_probe_is_a_complete_shorter_run(tmp_path):
    """The probe at t tokens of a wsd run is the run of t / (1 - decay_frac) tokens with the same schedule: its
    loss equals that run's final val loss (same batches up to t, then the branch's own batches, so close, not
    equal)."""
    long = debug(train_tokens=15_360, eval_every_tokens=2_560, schedule="wsd", decay_frac=0.25, warmup_tokens=1_024)
    _, reports = run(long.replace(probes="7680"), tmp_path / "long")
    at = next(r for r in reports if "probe_loss" in r)
    assert at["tokens"] == 7_680 and at["probe_tokens"] == 2_560  # 7680 + 2560 = the short run's 10240
    short, _ = run(long.replace(train_tokens=10_240), tmp_path / "short")
    # measured: probe 6.0525, short run 6.0562, stable-phase loss at the probe 6.1000
    assert at["probe_loss"] == pytest.approx(short["final_val_loss"], abs=0.01)
    assert abs(at["probe_loss"] - short["final_val_loss"]) < abs(at["val_loss"] - short["final_val_loss"]) / 4


@pytest.mark.parametrize("kw,needle", [
    (dict(probes="5000"), "needs schedule='wsd'"),
    (dict(schedule="wsd", probes="19000"), "outside the stable phase"),
    (dict(schedule="wsd", probes="5k"), "comma-separated token counts"),
    (dict(schedule="wsd", decay_frac=1.0), "decay_frac=1.0 must be in (0, 1)"),
])
def test_bad_probes_are_refused_before_any_compute(kw, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        debug(**kw)
