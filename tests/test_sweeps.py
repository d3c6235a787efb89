"""Every sweep script declares a space whose every point builds a valid Config, at both scales."""

import glob
import importlib.util
import os

import pytest

from tinylm.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "sweeps", "*.py")))
GRID_SCRIPTS = [p for p in SCRIPTS if "EXPERIMENT = " in open(p).read()]  # baselines.py is a plain script


def load(path):
    spec = importlib.util.spec_from_file_location("sweep_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_seed_sweeps_exist():
    names = {os.path.basename(p)[:-3] for p in SCRIPTS}
    assert {"arch", "lr", "seq", "dynamics", "embed", "glu", "vocab", "optim", "schedule", "precision",
            "tokenizer", "data_scale", "width", "depth", "heads"} <= names


@pytest.mark.parametrize("path", GRID_SCRIPTS, ids=lambda p: os.path.basename(p))
def test_space_builds_valid_configs(path):
    from tinylm.tune import VARIANT, build_config, grid_space

    mod = load(path)
    exp = mod.EXPERIMENT
    assert exp.hypothesis and exp.description, "every experiment states its hypothesis"
    assert (mod.__doc__ or "").count("python sweeps/") >= 2, "the docstring gives the commands"
    for scale in ("smoke", "full"):
        base = exp.base(scale)
        assert base.scale == scale
        space = exp.space_at(scale)
        grid_space(base, space, seeds=2)  # raises on any invalid point
        points = [{}]
        for k, values in space.items():
            points = [p | ({k: v} if k != VARIANT else {VARIANT: v}) for p in points for v in values]
        cfgs = [build_config(base.to_dict() | p) for p in points]
        assert len({c.to_json() for c in cfgs}) == len(cfgs), "grid points are distinct configs"
        baseline = exp.baseline_at(scale)
        if baseline:
            hits = [c for c in cfgs if all(getattr(c, k) == v for k, v in baseline.items())]
            assert len(hits) == 1 or exp.name == "vocab", f"the baseline {baseline} is one grid point at {scale}"
        if scale == "smoke":
            assert all(c.train_tokens <= 500_000 for c in cfgs), "smoke trials take seconds, not hours"


def test_budget_sweeps_keep_total_params_fixed():
    from tinylm.budget import num_params
    from tinylm.tune import build_config

    for name, key, values in (("embed", "embed_share", (0.25, 0.35, 0.45)), ("glu", "glu_factor", (2.0, 2.66, 3.0, 4.0))):
        exp = load(os.path.join(ROOT, "sweeps", f"{name}.py")).EXPERIMENT
        for scale in ("smoke", "full"):
            base = exp.base(scale)
            for v in values:
                cfg = build_config(base.to_dict() | {key: v})
                assert abs(num_params(cfg) / base.target_params - 1) <= 0.01


def test_seed_head_grid_fails_before_scheduling():
    """The seed's 12 heads at hidden 320 is invalid: the error names the field and the allowed values."""
    from tinylm.tune import grid_space

    exp = load(os.path.join(ROOT, "sweeps", "heads.py")).EXPERIMENT
    with pytest.raises(ConfigError, match=r"n_embd=320 is not divisible by n_head=12.*allowed n_head: \[1, 2, 4, 5, 8, 10, 16, 20, 32, 40, 64\]"):
        grid_space(exp.base("full"), {"n_head": [5, 8, 12, 16]}, seeds=1)
