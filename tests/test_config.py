"""tinylm.config: presets build, bad values fail fast naming the field and what is allowed, typed CLI overrides."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import pytest
import torch

from tinylm.budget import num_params
from tinylm.config import CHOICES, FIELDS, PRESETS, Config, ConfigError, add_config_args, config_from_args, field_help
from tinylm.model import GPT

PRESET_NAMES = ("debug", "small", "medium", "large", "xlarge", "budget-10m")
SIZE_FIELDS = {"scale", "n_embd", "n_layer", "d_ff", "block_size", "vocab_size", "batch_size", "train_tokens",
               "eval_every_tokens", "eval_tokens", "warmup_tokens", "num_documents", "eval_n", "ckpt_every_tokens",
               "target_params", "n_head"}


def test_preset_list_is_the_documented_one():
    assert set(PRESETS) == set(PRESET_NAMES)


# --- presets -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", ["full", "smoke"])
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_every_preset_builds_at_every_scale(name, scale):
    cfg = Config.from_name(name, scale=scale)
    assert cfg.scale == ("smoke" if name == "debug" else scale)  # debug is a smoke-scale preset
    assert cfg.name == name
    with torch.device("meta"):  # shapes only: xlarge is ~90M params
        model = GPT(cfg)
    assert model.num_params() == num_params(cfg)
    assert cfg.n_embd % cfg.n_head == 0 and cfg.ffn_hidden > 0
    if cfg.scale == "smoke":
        assert cfg.block_size <= 128 and cfg.train_tokens <= 300_000 and cfg.vocab_size <= 4096


@pytest.mark.parametrize("name", [n for n in PRESET_NAMES if n != "debug"])
def test_smoke_shrinks_sizes_only(name):
    full, smoke = Config.from_name(name), Config.from_name(name, scale="smoke")
    changed = {f for f in FIELDS if getattr(full, f) != getattr(smoke, f)}
    assert changed <= SIZE_FIELDS, f"smoke changed non-size fields {changed - SIZE_FIELDS}"
    assert smoke.n_embd < full.n_embd and smoke.n_layer <= full.n_layer
    assert num_params(smoke) < num_params(full) / 4
    assert smoke.at_scale("smoke") == smoke  # idempotent


def test_seed_architectures():
    dims = {n: (c.n_embd, c.n_layer, c.n_head, c.ffn_hidden) for n in ("small", "medium", "large", "xlarge")
            for c in [Config.from_name(n)]}
    assert dims == {"small": (256, 4, 4, 1024), "medium": (384, 6, 8, 1536), "large": (512, 8, 8, 2048),
                    "xlarge": (768, 12, 12, 3072)}


def test_budget_preset_meets_its_budget():
    cfg = Config.from_name("budget-10m")
    n = num_params(cfg)
    assert abs(n - 10_000_000) / 10_000_000 <= 0.01
    assert abs(cfg.vocab_size * cfg.n_embd / n - 0.35) <= 0.01
    assert (cfg.mlp, cfg.norm, cfg.pos, cfg.vocab_size) == ("swiglu", "rmsnorm", "rope", 16000)


def test_overrides_win_over_smoke_and_are_coerced():
    cfg = Config.from_name("medium", scale="smoke", n_layer="5", lr="2e-3")
    assert cfg.scale == "smoke" and cfg.n_layer == 5 and cfg.lr == 2e-3
    assert cfg.n_embd == Config.from_name("medium", scale="smoke").n_embd


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="preset='tiny'") as e:
        Config.from_name("tiny")
    assert all(n in str(e.value) for n in PRESET_NAMES)


# --- fail fast, naming the field and what is allowed ---------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: Config.from_name("debug", n_layers=3),
    lambda: Config.from_name("debug").replace(n_layers=3),
    lambda: Config.from_dict({"n_layers": 3}),
], ids=["from_name", "replace", "from_dict"])
def test_unknown_key_raises_naming_it_and_the_allowed_fields(make):
    with pytest.raises(ConfigError, match=r"unknown Config field\(s\) \['n_layers'\]") as e:
        make()
    assert "n_layer" in str(e.value) and "glu_factor" in str(e.value)  # the allowed fields are listed


@pytest.mark.parametrize("field,bad", [("norm", "batchnorm"), ("pos", "alibi"), ("mlp", "relu"),
                                       ("optimizer", "sgd"), ("schedule", "step"), ("precision", "fp8"),
                                       ("attention", "flash"), ("tokenizer", "word"), ("device", "tpu"),
                                       ("scale", "huge")])
def test_bad_choice_names_field_value_and_choices(field, bad):
    with pytest.raises(ConfigError) as e:
        Config(**{field: bad})
    msg = str(e.value)
    assert f"{field}={bad!r}" in msg
    assert all(choice in msg for choice in CHOICES[field]), msg


def test_n_embd_not_divisible_by_n_head():
    with pytest.raises(ConfigError, match=r"n_embd=100 is not divisible by n_head=8") as e:
        Config(n_embd=100, n_head=8)
    allowed = str(e.value).split("allowed n_head:")[1]
    assert all(str(h) in allowed for h in (4, 5, 10, 20, 25, 50))


def test_rope_needs_an_even_head_size():
    assert Config(n_embd=36, n_head=4, pos="learned").head_dim == 9  # fine without rotary embeddings
    with pytest.raises(ConfigError, match=r"pos='rope' needs an even head size; n_embd/n_head = 9"):
        Config(n_embd=36, n_head=4, pos="rope")


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_muon_refuses_zero_sharding(stage):
    with pytest.raises(ConfigError, match=rf"optimizer='muon'.*zero_stage={stage}.*zero_stage=0"):
        Config(optimizer="muon", zero_stage=stage)
    assert Config(optimizer="muon", zero_stage=0).optimizer == "muon"
    assert Config(optimizer="adamw", zero_stage=stage).zero_stage == stage


@pytest.mark.parametrize("kw,pattern", [
    (dict(n_layer=0), "n_layer=0 must be > 0"),
    (dict(batch_size=-1), "batch_size=-1 must be > 0"),
    (dict(target_params=-5), "target_params=-5 must be >= 0"),
    (dict(zero_stage=4), "zero_stage=4; choose one of 0, 1, 2, 3"),
    (dict(dropout=1.0), r"dropout=1.0 must be in \[0, 1\)"),
    (dict(val_fraction=0.6), "val_fraction=0.6"),
    (dict(data_scale=0.0), "data_scale=0.0 must be > 0"),
    (dict(glu_factor=0.0), "glu_factor=0.0 must be > 0"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(min_lr_ratio=1.5), "min_lr_ratio=1.5"),
    (dict(tokenizer="gpt2"), "vocab_size=50257"),
])
def test_out_of_range_values(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        Config(**kw)


def test_impossible_budget_raises_before_anything_is_built():
    with pytest.raises(ConfigError, match="no model with total_params=100,000"):
        Config(target_params=100_000, vocab_size=16_000, embed_share=0.35)


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.n_layer = 3  # type: ignore[misc]


# --- typed values from strings (CLI, Tune, JSON) ---------------------------------------------------------------------
def test_replace_coerces_strings_to_field_types():
    cfg = Config().replace(n_layer="3", lr="2e-3", tie_embeddings="false", train_tokens="10e6", bias="yes",
                           norm="rmsnorm")
    assert (cfg.n_layer, cfg.lr, cfg.tie_embeddings, cfg.train_tokens, cfg.bias, cfg.norm) == \
        (3, 2e-3, False, 10_000_000, True, "rmsnorm")
    assert type(cfg.n_layer) is int and type(cfg.lr) is float and type(cfg.train_tokens) is int


@pytest.mark.parametrize("field,bad,typ", [("n_layer", "abc", "int"), ("n_layer", "3.5", "int"),
                                           ("lr", "fast", "float"), ("tie_embeddings", "maybe", "bool")])
def test_bad_type_names_field_and_type(field, bad, typ):
    with pytest.raises(ConfigError, match=rf"{field}='{bad}' is not a valid {typ}"):
        Config().replace(**{field: bad})


def _parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_config_args(p)
    return p.parse_args(list(argv))


def test_cli_typed_overrides():
    cfg = config_from_args(_parse("--preset", "medium", "--n_layer", "3", "--lr", "2e-3", "--mlp", "swiglu",
                                  "--glu_factor", "2.66", "--tie_embeddings", "false", "--train_tokens", "5e6"))
    assert (cfg.name, cfg.n_layer, cfg.lr, cfg.mlp, cfg.glu_factor, cfg.tie_embeddings, cfg.train_tokens) == \
        ("medium", 3, 2e-3, "swiglu", 2.66, False, 5_000_000)
    medium = Config.from_name("medium")
    assert cfg.n_embd == medium.n_embd and cfg.d_ff == medium.d_ff  # fields not given keep the preset's values


def test_cli_default_preset_is_debug_and_every_field_is_an_option():
    args = _parse()
    assert config_from_args(args) == Config.from_name("debug")
    assert set(FIELDS) <= set(vars(args))


def test_cli_bad_choice_is_rejected_by_argparse(capsys):
    with pytest.raises(SystemExit):
        _parse("--norm", "batchnorm")
    assert "invalid choice: 'batchnorm'" in capsys.readouterr().err


def test_cli_bad_type_names_the_field():
    with pytest.raises(ConfigError, match="n_layer='abc' is not a valid int"):
        config_from_args(_parse("--n_layer", "abc"))


def test_train_cli_reports_config_errors_without_a_traceback():
    from tinylm.train.cli import main

    with pytest.raises(SystemExit, match="error: n_layer='abc' is not a valid int"):
        main(["--n_layer", "abc"])
    with pytest.raises(SystemExit, match=r"error: n_embd=90 is not divisible by n_head=4"):
        main(["--n_embd", "90"])


# --- serialisation and derived fields --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_json_round_trip(name):
    cfg = Config.from_name(name)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    assert cfg.to_dict() == dataclasses.asdict(cfg)


def test_derived_fields():
    cfg = Config(n_embd=384, n_head=8, d_ff=0, glu_factor=2.66, batch_size=16, block_size=256, grad_accum=2,
                 train_tokens=1_000_000)
    assert cfg.head_dim == 48
    assert cfg.ffn_hidden == 8 * math.ceil(2.66 * 384 / 8) == 1024  # rounded up to a multiple of 8
    assert Config(n_embd=384, glu_factor=4.0, d_ff=0).ffn_hidden == 1536  # exact multiples are not bumped
    assert Config(d_ff=1000).ffn_hidden == 1000  # an explicit d_ff wins
    assert cfg.tokens_per_step == 16 * 256 * 2
    assert cfg.warmup == 20_000 and Config(warmup_tokens=123).warmup == 123


def test_field_help_lists_every_field_with_its_type():
    text = field_help()
    assert len(text.splitlines()) == len(FIELDS)
    assert "n_layer: int = 6" in text and "lr: float = 0.001" in text and "norm: str = 'layernorm'" in text
