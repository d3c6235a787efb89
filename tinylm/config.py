"""The single source of truth: one frozen, flat dataclass.

Every trial is ``Config(**base, **sampled)``; Ray Tune samples Config field names; MLflow params are
``asdict(cfg)``. This module imports nothing heavy so the CLI, Tune's driver and tests can load it cheaply.

Presets follow the seeds (``small`` / ``medium`` / ``large`` / ``xlarge``) plus ``debug`` (CPU, seconds) and
``budget-10m`` (10M params, V=16k, dims from the solver in ``tinylm.budget``). ``Config.at_scale("smoke")``
shrinks sizes and token counts only, so smoke and full runs share every code path.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import typing
from dataclasses import asdict, dataclass, field, fields, replace

# Allowed values of the string-selected variants. Kept here so the error messages and the CLI share them.
CHOICES: dict[str, tuple[str, ...]] = {
    "scale": ("smoke", "full"),
    "tokenizer": ("bpe", "char", "gpt2"),
    "norm": ("layernorm", "rmsnorm"),
    "pos": ("learned", "rope"),
    "mlp": ("gelu", "swiglu"),
    "optimizer": ("adamw", "lion", "muon"),
    "schedule": ("cosine", "linear", "constant"),
    "precision": ("fp32", "bf16", "fp16"),
    "attention": ("sdpa", "math"),
    "device": ("auto", "cpu", "cuda"),
}


class ConfigError(ValueError):
    """A bad field value or an impossible combination; the message names the field and what is allowed."""


@dataclass(frozen=True)
class Config:
    # --- experiment -------------------------------------------------------------------------------
    name: str = "tinylm"
    seed: int = 0
    scale: str = "full"  # smoke | full: only changes sizes and token counts (see at_scale)

    # --- data ---------------------------------------------------------------------------------------
    dataset: str = "wiki-offline"  # see tinylm.data.CORPORA; or "text:<path>" / "jsonl:<path>"
    num_documents: int = 0  # cap on documents read (0 = all)       (seed 000)
    max_tokens: int = 0  # cap on training tokens stored (0 = all)   (seed 000)
    data_scale: float = 1.0  # multiplier on the training data kept  (seed 001: 1x/2x/4x/8x)
    val_fraction: float = 0.05  # documents held out for validation (deterministic split by hash)
    tokenizer: str = "bpe"  # bpe (trained at vocab_size) | char | gpt2 (offline ranks)
    vocab_size: int = 8192

    # --- model (GPT-2 names) ------------------------------------------------------------------------
    # A parameter budget: when target_params > 0, n_embd / n_layer / n_head / d_ff are SOLVED (tinylm.budget) from
    # target_params, vocab_size, embed_share and glu_factor, so a sweep can grid embed_share or glu_factor at fixed N.
    target_params: int = 0
    embed_share: float = 0.35  # fraction of all params in the token embedding (PRD: 0.25 / 0.35 / 0.45)
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 384
    d_ff: int = 0  # MLP hidden size; 0 = derived: glu_factor * n_embd rounded up to a multiple of 8
    glu_factor: float = 4.0  # MLP expansion used when d_ff == 0 (gelu and swiglu alike)
    block_size: int = 256  # sequence length
    norm: str = "layernorm"
    pos: str = "learned"
    mlp: str = "gelu"
    tie_embeddings: bool = True
    bias: bool = False
    dropout: float = 0.0
    rope_theta: float = 10000.0
    activation_checkpointing: bool = False

    # --- optimisation -------------------------------------------------------------------------------
    optimizer: str = "adamw"
    lr: float = 1e-3  # peak LR (for muon: the LR of the AdamW groups: embeddings, head, norms)
    muon_lr: float = 0.02  # LR of Muon's matrix group
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    schedule: str = "cosine"
    warmup_tokens: int = 0  # 0 = 2% of train_tokens
    grad_clip: float = 1.0
    batch_size: int = 16  # micro-batch per worker, in sequences
    grad_accum: int = 1

    # --- run length (tokens, never epochs) ----------------------------------------------------------
    train_tokens: int = 50_000_000
    eval_every_tokens: int = 1_000_000
    eval_tokens: int = 262_144  # validation tokens per eval
    ckpt_every_tokens: int = 0  # 0 = checkpoint at each eval
    evals: str = ""  # comma-separated eval tasks run at the end ("" = none; "all" = the suite)
    eval_n: int = 200  # examples per eval task

    # --- execution ----------------------------------------------------------------------------------
    precision: str = "fp32"
    zero_stage: int = 0
    attention: str = "sdpa"
    compile: bool = False
    device: str = "auto"

    def __post_init__(self) -> None:
        for f in fields(self):  # Config(n_layer="4") from code gets the same typed check as the CLI
            value = getattr(self, f.name)
            if type(value) is not _TYPES[f.name]:
                object.__setattr__(self, f.name, coerce(f.name, value))
        if self.target_params > 0:
            from tinylm.budget import solve  # local import: budget imports config

            sol = solve(self.target_params, self.vocab_size, self.embed_share, self.glu_factor, mlp=self.mlp,
                        pos=self.pos, norm=self.norm, tie_embeddings=self.tie_embeddings, block_size=self.block_size)
            for k, v in sol.dims.items():
                object.__setattr__(self, k, v)  # derived fields of a frozen dataclass, as litgpt does
        for name, allowed in CHOICES.items():
            value = getattr(self, name)
            if value not in allowed:
                raise ConfigError(f"{name}={value!r} is not allowed; choose one of {', '.join(allowed)}")
        positive = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "batch_size", "grad_accum",
                    "train_tokens", "eval_every_tokens", "eval_tokens", "eval_n")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be > 0")
        nonneg = ("target_params", "num_documents", "max_tokens", "d_ff", "warmup_tokens", "ckpt_every_tokens", "seed")
        for name in nonneg:
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.n_embd % self.n_head:
            divisors = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0 and h <= 64]
            raise ConfigError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; "
                              f"n_head must divide n_embd (allowed n_head: {divisors})")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"pos='rope' needs an even head size; n_embd/n_head = {self.head_dim}")
        if self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero_stage={self.zero_stage}; choose one of 0, 1, 2, 3")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout={self.dropout} must be in [0, 1)")
        if not 0.0 < self.val_fraction < 0.5:
            raise ConfigError(f"val_fraction={self.val_fraction} must be in (0, 0.5)")
        if self.data_scale <= 0:
            raise ConfigError(f"data_scale={self.data_scale} must be > 0")
        if self.glu_factor <= 0:
            raise ConfigError(f"glu_factor={self.glu_factor} must be > 0 (PRD grid: 2.0, 2.66, 3.0, 4.0)")
        if self.lr <= 0 or self.muon_lr <= 0:
            raise ConfigError(f"lr={self.lr} and muon_lr={self.muon_lr} must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.optimizer == "muon" and self.zero_stage > 0:
            raise ConfigError(f"optimizer='muon' needs whole weight matrices; zero_stage={self.zero_stage} shards "
                              "them. Use zero_stage=0 with muon, or optimizer in (adamw, lion)")
        if self.tokenizer == "char" and self.vocab_size > 1_114_112:
            raise ConfigError("vocab_size too large for tokenizer='char'")
        if self.tokenizer == "gpt2" and self.vocab_size != 50257:
            raise ConfigError(f"tokenizer='gpt2' has a fixed vocabulary; set vocab_size=50257 "
                              f"(got {self.vocab_size})")

    # --- derived fields (properties so the dataclass stays flat and serialisable) -------------------
    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    @property
    def ffn_hidden(self) -> int:
        if self.d_ff:
            return self.d_ff
        return 8 * math.ceil(self.glu_factor * self.n_embd / 8 - 1e-9)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimiser step on ONE worker (multiply by world size for the global batch)."""
        return self.batch_size * self.block_size * self.grad_accum

    @property
    def warmup(self) -> int:
        return self.warmup_tokens or max(1, self.train_tokens // 50)

    # --- construction -------------------------------------------------------------------------------
    @classmethod
    def from_name(cls, name: str, **overrides: typing.Any) -> Config:
        """A preset by name with field overrides, e.g. ``Config.from_name("medium", lr=2e-3)``.

        ``scale="smoke"`` among the overrides shrinks the preset (see ``at_scale``) before the other
        overrides apply, so explicit values always win.
        """
        if name not in PRESETS:
            raise ConfigError(f"preset={name!r} is unknown; choose one of {', '.join(PRESETS)}")
        check_keys(overrides)
        scale = overrides.pop("scale", "full")
        cfg = cls(**PRESETS[name])
        if scale != "full":
            cfg = cfg.at_scale(scale)
        return cfg.replace(**overrides)

    def replace(self, **changes: typing.Any) -> Config:
        check_keys(changes)
        return replace(self, **{k: coerce(k, v) for k, v in changes.items()})

    def at_scale(self, scale: str) -> Config:
        """The same experiment at another scale. ``smoke`` divides width by 4 and depth by 2 (keeping the
        head count so the head-size ratio between presets holds), caps the sequence at 128 and the vocabulary
        at 2048, and shrinks every token budget so a trial takes seconds on a CPU. ``full`` is the identity
        on a full-scale config. No code path depends on the scale."""
        if scale not in CHOICES["scale"]:
            raise ConfigError(f"scale={scale!r}; choose one of {', '.join(CHOICES['scale'])}")
        if scale == "full" or self.scale == "smoke":
            return replace(self, scale=scale) if scale == "full" else self
        n_head = self.n_head
        n_embd = max(n_head * 8, (self.n_embd // 4) // n_head * n_head)
        vocab = self.vocab_size
        if self.tokenizer == "bpe":
            vocab = min(vocab, 4096 if self.target_params else 2048)
        return replace(
            self, scale="smoke", n_embd=n_embd, n_layer=max(1, self.n_layer // 2),
            d_ff=self.d_ff // 4 if self.d_ff else 0, block_size=min(self.block_size, 128),
            vocab_size=vocab,
            batch_size=min(self.batch_size, 8), train_tokens=min(self.train_tokens, 300_000),
            eval_every_tokens=min(self.eval_every_tokens, 50_000), eval_tokens=min(self.eval_tokens, 16_384),
            warmup_tokens=min(self.warmup_tokens, 10_000), num_documents=self.num_documents or 4000,
            eval_n=min(self.eval_n, 50), ckpt_every_tokens=min(self.ckpt_every_tokens, 100_000),
            # layers ~ V^2 / N at a fixed embedding share: shrink N by (V'/V)^2 to keep the full-scale shapes
            target_params=int(self.target_params * (vocab / self.vocab_size) ** 2),
        )

    def to_dict(self) -> dict[str, typing.Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, typing.Any]) -> Config:
        check_keys(d)
        return cls(**{k: coerce(k, v) for k, v in d.items()})


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(Config)}
_TYPES = typing.get_type_hints(Config)

# Architectural fields: changing one of these makes a checkpoint incompatible (resume refuses it).
ARCH_FIELDS = ("n_layer", "n_head", "n_embd", "d_ff", "glu_factor", "norm", "pos", "mlp", "tie_embeddings",
               "bias", "vocab_size", "tokenizer", "block_size", "rope_theta")


def check_keys(d: typing.Mapping[str, typing.Any]) -> None:
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown Config field(s) {unknown}; allowed fields: {', '.join(FIELDS)}")


def coerce(name: str, value: typing.Any) -> typing.Any:
    """Convert a CLI string or a Tune/JSON value to the field's type, with an error naming the field."""
    typ = _TYPES[name]
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if typ is int:
            if isinstance(value, str):
                f = float(value)  # accepts "10e6"
            else:
                f = float(value)
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if typ is float:
            return float(value)
        return str(value) if value is not None else value
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={value!r} is not a valid {typ.__name__}") from None


PRESETS: dict[str, typing.Any] = {
    # CPU, seconds: a real run on the offline corpus, small enough for tests and laptops.
    "debug": dict(name="debug", scale="smoke", n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=1024,
                  batch_size=8, train_tokens=60_000, eval_every_tokens=20_000, eval_tokens=8_192, lr=3e-3,
                  num_documents=2000, warmup_tokens=2_000, eval_n=20),
    # The seed architectures (seed 000 / PRD): d_model / layers / heads / d_ff.
    "small": dict(name="small", n_embd=256, n_layer=4, n_head=4, d_ff=1024),
    "medium": dict(name="medium", n_embd=384, n_layer=6, n_head=8, d_ff=1536),  # the baseline
    "large": dict(name="large", n_embd=512, n_layer=8, n_head=8, d_ff=2048),
    "xlarge": dict(name="xlarge", n_embd=768, n_layer=12, n_head=12, d_ff=3072),
    # 10M params at V=16k; dims from the solver (embed_share 35 %, SwiGLU 2.66x): the embed / glu sweeps' base.
    "budget-10m": dict(name="budget-10m", target_params=10_000_000, vocab_size=16_000, embed_share=0.35,
                       glu_factor=2.66, mlp="swiglu", norm="rmsnorm", pos="rope"),
}


# --- CLI -----------------------------------------------------------------------------------------------
def add_config_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--preset`` and a typed ``--<field>`` override for every Config field."""
    parser.add_argument("--preset", default="debug", help=f"one of {', '.join(PRESETS)}")
    group = parser.add_argument_group("Config overrides (any field)")
    for name, f in FIELDS.items():
        extra = {"choices": CHOICES[name]} if name in CHOICES else {}
        group.add_argument(f"--{name}", default=None, help=f"default {f.default!r}", **extra)


def config_from_args(args: argparse.Namespace) -> Config:
    overrides = {k: getattr(args, k) for k in FIELDS if getattr(args, k, None) is not None}
    return Config.from_name(args.preset, **overrides)


def field_help() -> str:
    return "\n".join(f"{f.name}: {_TYPES[f.name].__name__} = {f.default!r}" for f in fields(Config))


__all__ = ["ARCH_FIELDS", "CHOICES", "Config", "ConfigError", "PRESETS", "add_config_args", "check_keys",
           "coerce", "config_from_args", "field"]
