"""The one-at-a-time ablation table (tinylm.ablation), the speed sweep's space, and resume across toggles."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pandas as pd
import pytest

from tinylm import ablation
from tinylm.config import ARCH_FIELDS, Config, ConfigError

ROOT = Path(__file__).resolve().parent.parent
BASE = Config.from_name("debug")
TOGGLES = [{"precision": "bf16"}, {"grad_accum": 2, "batch_size": 4}, {"norm": "rmsnorm"}, {"mlp": "swiglu"}]


def trial(status="completed", **kw) -> dict:
    """A results-table row: the baseline's Config fields plus metrics, with ``kw`` overriding either."""
    row = BASE.to_dict() | {"peak_mem_mb": 100.0, "tokens_per_s": 1000.0, "final_val_loss": 4.0,
                            "train_time_s": 10.0, "status": status}
    return row | kw


def test_pct_change_against_the_baseline_row():
    df = pd.DataFrame([
        trial(),
        trial(precision="bf16", peak_mem_mb=50.0, tokens_per_s=1500.0, final_val_loss=4.04, train_time_s=8.0),
        trial(grad_accum=2, batch_size=4, peak_mem_mb=80.0, tokens_per_s=900.0),
        trial(norm="rmsnorm", final_val_loss=3.9),
        trial(lr=1.0, final_val_loss=0.0),  # another experiment's row: matches no toggle, must be ignored
    ])
    t = ablation.ablation_table(df, BASE, TOGGLES).set_index("toggle")
    assert list(t.index) == ["baseline", "precision=bf16", "grad_accum=2", "norm=rmsnorm", "mlp=swiglu"]
    assert t.loc["baseline", "peak_mem_mb_pct"] == 0.0
    assert t.loc["precision=bf16", "peak_mem_mb_pct"] == pytest.approx(-50.0)
    assert t.loc["precision=bf16", "tokens_per_s_pct"] == pytest.approx(50.0)
    assert t.loc["precision=bf16", "final_val_loss_pct"] == pytest.approx(1.0)
    assert t.loc["precision=bf16", "train_time_s_pct"] == pytest.approx(-20.0)
    assert t.loc["precision=bf16", "train_time_s_base"] == 10.0
    assert t.loc["grad_accum=2", "peak_mem_mb_pct"] == pytest.approx(-20.0)
    assert t.loc["grad_accum=2", "tokens_per_s_pct"] == pytest.approx(-10.0)
    assert t.loc["grad_accum=2", "changes"] == "grad_accum 1->2, batch_size 8->4"
    assert t.loc["norm=rmsnorm", "final_val_loss_pct"] == pytest.approx(-2.5)
    assert t.loc["mlp=swiglu", "n"] == 0 and math.isnan(t.loc["mlp=swiglu", "tokens_per_s_pct"])
    assert (t["n"].iloc[:4] == 1).all()


def test_seeds_are_averaged_and_fallback_columns_used():
    df = pd.DataFrame([trial(seed=0, final_val_loss=4.0), trial(seed=1, final_val_loss=4.2),
                       trial(precision="bf16", final_val_loss=None, val_loss=4.1, train_time_s=None, elapsed_s=5.0)])
    t = ablation.ablation_table(df, BASE, TOGGLES[:1]).set_index("toggle")
    assert t.loc["baseline", "n"] == 2 and t.loc["baseline", "final_val_loss"] == pytest.approx(4.1)
    assert t.loc["precision=bf16", "final_val_loss_pct"] == pytest.approx(0.0)
    assert t.loc["precision=bf16", "train_time_s_pct"] == pytest.approx(-50.0)


def test_labels_come_from_arch_fields():
    assert ablation.kind(["norm"]) == ablation.kind(["pos"]) == ablation.kind(["mlp"]) == "architecture"
    for f in ("compile", "precision", "activation_checkpointing", "grad_accum", "attention", "batch_size"):
        assert f not in ARCH_FIELDS and ablation.kind([f]) == "execution"
    t = ablation.ablation_table(pd.DataFrame([trial()]), BASE, TOGGLES).set_index("toggle")
    assert t["kind"].to_dict() == {"baseline": "baseline", "precision=bf16": "execution",
                                   "grad_accum=2": "execution", "norm=rmsnorm": "architecture",
                                   "mlp=swiglu": "architecture"}


def test_variants_and_markdown(tmp_path):
    base = {"precision": "fp32", "grad_accum": 1, "batch_size": 8, "norm": "layernorm", "mlp": "gelu"}
    space = ablation.space(base, TOGGLES)
    rows = space.variants
    assert rows[0] == base and rows[2] == base | {"grad_accum": 2, "batch_size": 4} and len(rows) == 5
    assert ablation.toggles_of(space) == TOGGLES
    with pytest.raises(ValueError, match="unchanged"):
        ablation.variants(base, [{"precision": "fp32"}])
    with pytest.raises(ValueError, match="two toggles"):
        ablation.variants(base, [{"norm": "rmsnorm"}, {"norm": "rmsnorm", "mlp": "swiglu"}])
    with pytest.raises(ConfigError):
        ablation.variants(base, [{"nrom": "rmsnorm"}])
    df = pd.DataFrame([trial(), trial(precision="bf16", tokens_per_s=1500.0)])
    paths = ablation.write(ablation.ablation_table(df, BASE, TOGGLES[:2]), str(tmp_path), "t", title="T")
    md = Path(paths["md"]).read_text()
    assert "| `precision=bf16` | execution |" in md and "1,500 (+50.0 %)" in md and "no trial" in md
    assert "\n|---|---|---:|---:|---:|---:|---|\n" in md  # the four metrics right-aligned
    assert pd.read_csv(paths["csv"])["tokens_per_s_pct"].iloc[1] == pytest.approx(50.0)


def test_ablation_rows_reach_the_trials_configs():
    """An ablation row's changes reach each trial's Config through tinylm.tune's grid."""
    tune = pytest.importorskip("tinylm.tune")
    from tinylm.layout import VARIANT  # the key of the variants axis in Tune's param space

    cfg = Config.from_name("debug")
    grid = tune.grid_space(cfg, ablation.space({"n_layer": 2}, [{"n_layer": 3}]), seeds=1)
    fixed = {k: v for k, v in grid.items() if not (isinstance(v, dict) and "grid_search" in v)}
    assert [tune.build_config(fixed | {VARIANT: r}).n_layer for r in grid[VARIANT]["grid_search"]] == [2, 3]


def test_speed_sweep_space_builds_valid_configs():
    spec = importlib.util.spec_from_file_location("speed_sweep", ROOT / "sweeps" / "speed.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    exp = mod.EXPERIMENT
    from tinylm.sweep.experiment import defaults, sweep_of

    sweep = sweep_of(exp, defaults(exp), "smoke")  # every row to the end, alone (fair timings)
    assert not sweep.asha and sweep.kill_margin == math.inf and sweep.max_concurrent == 1
    for scale in ("smoke", "full"):
        base = exp.base(scale)
        rows = exp.space_at(scale).variants
        cfgs = [base.replace(**r) for r in rows]  # every row is a valid Config
        assert cfgs[0] == base  # row 0 is the baseline itself
        toggles = ablation.toggles_of(exp.space_at(scale))
        kinds = {ablation.label(t): ablation.kind(t) for t in toggles}
        assert kinds["norm=rmsnorm"] == kinds["pos=rope"] == kinds["mlp=swiglu"] == "architecture"
        assert kinds["compile=True"] == kinds["attention=math"] == kinds["grad_accum=2"] == "execution"
        ga = cfgs[1 + [ablation.label(t) for t in toggles].index("grad_accum=2")]
        assert ga.tokens_per_step == base.tokens_per_step  # accumulation keeps tokens per step
        assert all(len([k for k in r if r[k] != rows[0].get(k)]) <= 2 for r in rows)  # one toggle per row


# --- resume across toggles: execution may change, architecture may not --------------------------------------


def _cfg(**kw) -> Config:
    return Config.from_name("debug", **{"train_tokens": 4096, "eval_every_tokens": 2048, "eval_tokens": 1024, **kw})


@pytest.mark.slow
@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_resume_execution_toggle_allowed_architecture_refused(tmp_path):
    from tinylm.train import train

    out = str(tmp_path / "run")
    first = train(_cfg(), out)
    assert first["status"] == "completed" and first["tokens"] == 4096
    # execution toggles: the math attention kernel and activation checkpointing continue the same run
    more = train(_cfg(train_tokens=8192, attention="math", activation_checkpointing=True), out)
    assert more["status"] == "completed" and more["tokens"] == 8192
    assert more["train_time_s"] > first["train_time_s"]  # elapsed time carried over from the checkpoint
    # an architecture toggle with the same tensor shapes (RMSNorm vs bias-free LayerNorm): refused by name
    with pytest.raises(ConfigError, match=r"cannot resume.*'norm': \('layernorm', 'rmsnorm'\)"):
        train(_cfg(train_tokens=12288, norm="rmsnorm"), out)


@pytest.mark.slow
@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_resume_refuses_shape_changing_architecture_toggle(tmp_path):
    from tinylm.train import train

    out = str(tmp_path / "run")
    train(_cfg(), out)
    with pytest.raises(ConfigError, match="cannot resume"):
        train(_cfg(train_tokens=8192, mlp="swiglu"), out)
