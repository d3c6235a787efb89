"""The single source of truth: one frozen, flat dataclass.

Every trial is ``Config(**base, **sampled)``; Ray Tune samples Config field names; MLflow params are
``asdict(cfg)``. This module imports nothing heavy so the CLI, Tune's driver and tests can load it cheaply.

Presets follow the seeds (``small`` / ``medium`` / ``large`` / ``xlarge``) plus ``debug`` (CPU, seconds) and
``budget-10m`` (10M params, V=16k, dims from the solver in ``tinylm.budget``). ``Config.at_scale("laptop")`` makes a
scaled-down replica of a full-scale experiment by documented rules (``LAPTOP_RULES``); ``at_scale("smoke")`` shrinks
sizes and token counts only (mechanics). All scales share every code path.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import numbers
import typing
from dataclasses import asdict, dataclass, field, fields, replace

from tinylm.budget import num_params, solve  # budget imports nothing of config: no cycle
from tinylm.errors import ConfigError  # defined below everything; tinylm.config.ConfigError is the same class

# Allowed values of the string-selected variants. Kept here so the error messages and the CLI share them.
# The eval suite's task names, in its order (tinylm.evals.suite.TASKS holds the tasks themselves): Config
# validates ``evals`` against them before any data or model exists, without torch
TASK_NAMES = ("lambada", "hellaswag", "piqa", "siqa", "squad", "arithmetic", "completion", "association", "qa",
              "recall")


def parse_tasks(tasks: typing.Sequence[str] | str) -> list[str]:
    """``"all"`` -> every task; ``"lambada, piqa"`` or a list -> those, in order, without duplicates.

    Raises:
        ValueError: an empty list or an unknown name (the message lists the allowed names).
    """
    if isinstance(tasks, str):
        if tasks.strip() == "all":
            return list(TASK_NAMES)
        tasks = tasks.split(",")
    if isinstance(tasks, (bytes, bytearray)) or not isinstance(tasks, typing.Sequence):
        raise ValueError(f"tasks={tasks!r}: expected 'all', a comma-separated string or a list of task names")
    names = [str(t).strip() for t in tasks]
    if not any(names):
        raise ValueError(f"no eval task named; choose from {', '.join(TASK_NAMES)}, or 'all'")
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown}; choose from {', '.join(TASK_NAMES)}, or 'all'")
    return list(dict.fromkeys(names))


class _Choices(typing.Mapping):
    """Field -> allowed values: the fixed ones, and the block registry's (``mlp``, ``mixer``: every lookup reads
    it, so a block registered at run time, tinylm.blocks.registry.register, is a valid value)."""

    def __init__(self, fixed: dict[str, tuple[str, ...]]):
        self._fixed = fixed

    def __getitem__(self, key: str) -> tuple[str, ...]:
        from tinylm.blocks.registry import config_choices  # torch-free

        return self._fixed[key] if key in self._fixed else config_choices()[key]

    def __iter__(self):
        return iter([*self._fixed, "mlp", "mixer"])

    def __len__(self) -> int:
        return len(self._fixed) + 2


CHOICES: typing.Mapping[str, tuple[str, ...]] = _Choices({
    "scale": ("smoke", "laptop", "full"),
    "tokenizer": ("bpe", "char", "gpt2"),
    "norm": ("layernorm", "rmsnorm"),
    "pos": ("learned", "rope"),
    "budget_params": ("total", "active"),
    "optimizer": ("adamw", "lion", "muon"),
    "schedule": ("cosine", "linear", "constant", "wsd"),
    "precision": ("fp32", "bf16", "fp16"),
    "attention": ("sdpa", "math"),
    "device": ("auto", "cpu", "cuda"),
})


@dataclass(frozen=True)
class Config:
    # --- experiment -------------------------------------------------------------------------------
    name: str = "tinylm"
    seed: int = 0
    scale: str = "full"  # smoke | laptop | full: only changes sizes, token counts and size-dependent hparams (at_scale)

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
    # token mixer: attention | mamba (a selective state-space block, tinylm.blocks.ssm) | hybrid (mamba, with
    # attention at every attn_every-th layer: layers attn_every-1, 2*attn_every-1, ...)
    mixer: str = "attention"
    attn_every: int = 0
    d_state: int = 16  # mamba: state size per channel
    d_conv: int = 4  # mamba: causal depthwise conv width
    ssm_expand: int = 2  # mamba: inner width = ssm_expand * n_embd
    # mixture of experts (tinylm.blocks.moe): n_experts > 0 replaces every MLP by n_experts experts of d_ff each
    # (gelu or swiglu as `mlp`), top_k routed per token; capacity_factor 0 = dropless
    n_experts: int = 0
    top_k: int = 1
    capacity_factor: float = 0.0
    moe_aux_weight: float = 0.01  # load-balancing loss weight (Switch Transformer, arXiv:2101.03961)
    moe_z_weight: float = 0.001  # router z-loss weight (ST-MoE, arXiv:2202.08906)
    budget_params: str = "total"  # what target_params counts for an MoE: total or active (per-token) parameters

    # --- optimisation -------------------------------------------------------------------------------
    optimizer: str = "adamw"
    lr: float = 1e-3  # peak LR (for muon: the LR of the AdamW groups: embeddings, head, norms)
    muon_lr: float = 0.02  # LR of Muon's matrix group
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    schedule: str = "cosine"  # wsd = warmup, stable, then linear decay over the last decay_frac of the run
    warmup_tokens: int = 0  # 0 = 2% of train_tokens
    decay_frac: float = 0.2  # wsd only: share of train_tokens spent decaying to min_lr_ratio (Hägele et al. 2024)
    probes: str = ""  # wsd only: comma-separated token counts where a throw-away cooldown branch measures the loss
    # a WSD run of that length would reach (``probe_loss``; what ASHA and the kill rule compare across LRs)
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
    # K seeds of this config trained as one batched model (tinylm.ensemble): members seed .. seed + K - 1, each
    # its own row, MLflow run and Optuna value downstream; 1 = one model per trial
    seeds_per_trial: int = 1

    def __post_init__(self) -> None:
        for f in fields(self):  # Config(n_layer="4") from code gets the same typed check as the CLI
            value = getattr(self, f.name)
            if type(value) is not _TYPES[f.name] or type(value) is float:  # floats: NaN / inf are refused too
                object.__setattr__(self, f.name, coerce(f.name, value))
        if self.target_params > 0:
            sol = solve(self.target_params, self.vocab_size, self.embed_share, self.glu_factor, mlp=self.mlp,
                        pos=self.pos, norm=self.norm, tie_embeddings=self.tie_embeddings, block_size=self.block_size,
                        blocks=self.blocks_shape(), budget=self.budget_params,
                        **({"head_dims": LAPTOP_HEAD_DIMS} if self.scale == "laptop" else {}))
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
        if not 0.0 < self.decay_frac < 1.0:
            raise ConfigError(f"decay_frac={self.decay_frac} must be in (0, 1) (the share of the run spent decaying)")
        _ = self.probe_tokens  # parses and checks probes
        for name, ok, allowed in (  # (field, valid?, what is allowed)
                ("beta1", 0.0 <= self.beta1 < 1.0, "in [0, 1)"),
                ("beta2", 0.0 <= self.beta2 < 1.0, "in [0, 1)"),
                ("weight_decay", self.weight_decay >= 0, ">= 0"),
                ("grad_clip", self.grad_clip >= 0, ">= 0 (0 = no clipping)"),
                ("rope_theta", self.rope_theta > 0, "> 0"),
                ("embed_share", 0.0 < self.embed_share < 1.0, "in (0, 1) (PRD: 0.25, 0.35, 0.45)"),
                ("seed", self.seed < 2**63, "< 2**63 (torch.manual_seed's range)")):
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)} must be {allowed}")
        if not self.name.strip() or "/" in self.name or self.name in (".", ".."):
            raise ConfigError(f"name={self.name!r} must be a non-empty folder name without '/' (it names the run "
                              "folder)")
        kind, sep, path = self.dataset.partition(":")
        if not self.dataset.strip() or (sep and kind in ("text", "jsonl") and not path.strip()):
            raise ConfigError(f"dataset={self.dataset!r} names no corpus; use a corpus name (tinylm.data.CORPORA), "
                              "text:<file|dir|glob> or jsonl:<file|glob>")
        if self.tokens_per_step > self.train_tokens:
            raise ConfigError(f"one optimiser step is batch_size*block_size*grad_accum = {self.batch_size}*"
                              f"{self.block_size}*{self.grad_accum} = {self.tokens_per_step:,} tokens, more than "
                              f"train_tokens={self.train_tokens:,}; lower block_size or batch_size, or raise "
                              "train_tokens")
        if self.evals not in ("", "all"):
            try:
                parse_tasks(self.evals)
            except ValueError as e:
                raise ConfigError(f"evals={self.evals!r}: {e}") from None
        for name, ok, allowed in (
                ("attn_every", self.mixer != "hybrid" or self.attn_every >= 2 and self.attn_every <= self.n_layer,
                 f">= 2 and <= n_layer={self.n_layer} with mixer='hybrid' (attention at every attn_every-th layer)"),
                ("attn_every", self.mixer == "hybrid" or self.attn_every == 0, "0 unless mixer='hybrid'"),
                ("d_state", self.d_state >= 1, ">= 1"), ("d_conv", self.d_conv >= 1, ">= 1"),
                ("ssm_expand", self.ssm_expand >= 1, ">= 1"),
                ("n_experts", self.n_experts >= 0, ">= 0 (0 = a dense MLP)"),
                ("top_k", 1 <= self.top_k <= max(1, self.n_experts), f"in [1, n_experts={self.n_experts}]"),
                ("capacity_factor", self.capacity_factor >= 0, ">= 0 (0 = dropless)"),
                ("moe_aux_weight", self.moe_aux_weight >= 0, ">= 0"), ("moe_z_weight", self.moe_z_weight >= 0, ">= 0"),
                ("budget_params", self.budget_params == "total" or self.n_experts > 0,
                 "'total' for a dense model (active = total)")):
            if not ok:
                raise ConfigError(f"{name}={getattr(self, name)!r} must be {allowed}")
        if not 1 <= self.seeds_per_trial <= MAX_MEMBERS:
            raise ConfigError(f"seeds_per_trial={self.seeds_per_trial} must be in [1, {MAX_MEMBERS}]")
        if self.seeds_per_trial > 1:
            for name, ok, allowed in ensemble_limits(self):
                if not ok:
                    raise ConfigError(f"seeds_per_trial={self.seeds_per_trial} needs {name} {allowed} (got "
                                      f"{getattr(self, name)!r}); use seeds_per_trial=1 for this run")
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

    def blocks_shape(self) -> dict:
        """The fields beyond dims that shape a block's parameters (the budget solver's ``blocks``)."""
        return dict(mixer=self.mixer, attn_every=self.attn_every, d_state=self.d_state, d_conv=self.d_conv,
                    ssm_expand=self.ssm_expand, n_experts=self.n_experts, top_k=self.top_k)

    @property
    def tokens_per_step(self) -> int:
        """Tokens per optimiser step on ONE worker (multiply by world size for the global batch)."""
        return self.batch_size * self.block_size * self.grad_accum

    @property
    def warmup(self) -> int:
        return self.warmup_tokens or max(1, self.train_tokens // 50)

    @property
    def stable_tokens(self) -> int:
        """wsd: tokens trained before the decay starts (warmup included)."""
        return round(self.train_tokens * (1.0 - self.decay_frac))

    @property
    def probe_tokens(self) -> tuple[int, ...]:
        """``probes`` parsed and checked: ascending token counts inside the stable phase of a wsd schedule."""
        if not self.probes.strip():
            return ()
        try:
            out = tuple(sorted({int(p) for p in self.probes.split(",") if p.strip()}))
        except ValueError:
            raise ConfigError(f"probes={self.probes!r} must be comma-separated token counts, e.g. '15000,60000'") \
                from None
        if self.schedule != "wsd":
            raise ConfigError(f"probes={self.probes!r} needs schedule='wsd' (a cooldown branch is only a shorter run "
                              f"of a warmup-stable-decay schedule); got schedule={self.schedule!r}")
        bad = [p for p in out if not self.warmup <= p <= self.stable_tokens]
        if bad:
            raise ConfigError(f"probes={self.probes!r}: {bad} outside the stable phase; each probe must be in "
                              f"[warmup, train_tokens*(1-decay_frac)] = [{self.warmup:,}, {self.stable_tokens:,}]")
        return out

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
        changes = {k: coerce(k, v) for k, v in changes.items()}
        new = replace(self, **changes)
        # With a parameter budget the dims are the solver's: a dim asked for explicitly is refused, not replaced
        # in silence (a value equal to the solver's passes, so cfg.replace(**cfg.to_dict()) still works).
        ignored = {k: v for k, v in changes.items() if k in SOLVED_DIMS and v != getattr(new, k)}
        if new.target_params > 0 and ignored:
            asked = ", ".join(f"{k}={v}" for k, v in ignored.items())
            solved = ", ".join(f"{k}={getattr(new, k)}" for k in SOLVED_DIMS)
            raise ConfigError(f"{asked}: with target_params={new.target_params:,} the dims are solved from "
                              f"target_params, vocab_size, embed_share and glu_factor (here {solved}); set "
                              "target_params=0 to choose dims yourself, or change the solver's inputs")
        return new

    def at_scale(self, scale: str) -> Config:
        """The same experiment at another scale. No code path depends on the scale.

        - ``full``: the identity on a full-scale config.
        - ``laptop``: a scaled-down *replica* (see ``_laptop`` and ``LAPTOP_RULES``): it keeps the experiment's
          dimensionless quantities (embedding share, GLU factor, tied/untied, tokens per parameter) and scales
          the hyperparameters with size by documented rules, so its answers mean something (minutes on 2 cores).
        - ``smoke``: mechanics only (tests, CI): it divides width by 4 and depth by 2 (keeping the head count),
          caps the sequence at 128 and the vocabulary at 2048, and shrinks every token budget so a trial takes
          seconds. Its models are undertrained (< 1 token per parameter) with head size 8: **a smoke run can
          claim nothing about the hypothesis**.
        A config that is already small (the ``debug`` preset, ``scale="smoke"``) is returned unchanged."""
        if scale not in CHOICES["scale"]:
            raise ConfigError(f"scale={scale!r}; choose one of {', '.join(CHOICES['scale'])}")
        if scale == "full" or self.scale != "full":  # a small preset (debug) has no full experiment to replicate
            return replace(self, scale=scale) if scale == "full" else self
        if scale == "laptop":
            return self._laptop()
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

    def _laptop(self) -> Config:
        """The laptop replica of this full-scale config; every rule is listed (with its reason) in LAPTOP_RULES."""
        tpp = self.train_tokens / num_params(self)  # the full experiment's tokens per parameter (kept)
        common = dict(scale="laptop", block_size=min(self.block_size, LAPTOP["block_size"]), num_documents=0,
                      batch_size=LAPTOP["batch_size"], grad_accum=1, beta2=LAPTOP["beta2"],
                      eval_tokens=min(self.eval_tokens, LAPTOP["eval_tokens"]), eval_n=min(self.eval_n, 50),
                      ckpt_every_tokens=0)
        if self.target_params:  # a parameter budget: the solver re-derives the shapes at the laptop budget
            small = replace(self, vocab_size=LAPTOP["budget_vocab"], target_params=LAPTOP["budget_params"],
                            n_layer=1, n_head=1, n_embd=LAPTOP["min_width"], d_ff=0, **common)
        else:
            d = max(LAPTOP["min_width"], 16 * round(self.n_embd / 4 / 16))
            small = replace(self, vocab_size=max(256, self.vocab_size // 8) if self.tokenizer == "bpe" else
                            self.vocab_size, n_embd=d, n_head=max(1, d // LAPTOP["head_size"]),
                            n_layer=max(2, self.n_layer // 2),
                            d_ff=8 * math.ceil(self.d_ff * d / self.n_embd / 8) if self.d_ff else 0, **common)
        return small.with_tokens_per_param(tpp)

    def with_tokens_per_param(self, tpp: float, warmup_per_param: float = 1.0) -> Config:
        """This config trained on ``tpp`` tokens per (total) parameter, with the laptop rules that depend on N
        (warmup = ``warmup_per_param`` x N tokens, capped at 1/4 of the run; LR = laptop_lr(N); 8 evals per run)
        re-applied. Used by at_scale and the sweeps."""
        n = num_params(self)
        step = self.tokens_per_step
        tokens = max(step, step * round(tpp * n / step))
        return replace(self, train_tokens=tokens, eval_every_tokens=max(step, step * round(tokens / 8 / step)),
                       warmup_tokens=min(round(warmup_per_param * n), tokens // 4), lr=laptop_lr(n))

    def effective(self) -> dict[str, typing.Any]:
        """What a run actually uses: the derived values resolved (d_ff, warmup) and what this run ignores left out
        (the budget solver's inputs, whose effect is in the dims; muon_lr without muon; decay_frac outside wsd;
        min_lr_ratio under a constant schedule; rope_theta without RoPE; the name). Two Configs with equal
        ``effective()`` train the same model the same way, so a sweep axis whose values all agree here is inert."""
        unused = {"name", "glu_factor", "target_params", "embed_share"}
        unused |= set() if self.optimizer == "muon" else {"muon_lr"}
        unused |= set() if self.schedule == "wsd" else {"decay_frac"}
        unused |= {"min_lr_ratio"} if self.schedule == "constant" else set()
        unused |= set() if self.pos == "rope" else {"rope_theta"}
        d = asdict(self) | {"d_ff": self.ffn_hidden, "warmup_tokens": self.warmup}
        return {k: v for k, v in d.items() if k not in unused}

    def to_dict(self) -> dict[str, typing.Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, typing.Any]) -> Config:
        check_keys(d)
        return cls(**{k: coerce(k, v) for k, v in d.items()})


# --- the laptop scale: every number below is a rule with its reason (printed by --dry-run, cited in reports) ----
LAPTOP: dict[str, typing.Any] = dict(
    budget_vocab=1536, budget_params=143_242, min_width=32, head_size=16, block_size=128, batch_size=16,
    beta2=0.99, eval_tokens=16_384, lr_anchor=3e-3, lr_anchor_params=189_000, lr_exponent=-1 / 3)
LAPTOP_HEAD_DIMS = (64, 32, 48, 96, 128, 80, 40, 56, 36, 28, 24, 20, 16)  # the solver's head sizes, none < 16
LAPTOP_RULES: tuple[tuple[str, str], ...] = (
    ("tokens per parameter = the full experiment's, or the experiment's own floor where that is needed to leave "
     "the n-gram plateau (glu: 20)",
     "the ratio sets how far from convergence a model is; a replica that changes it answers another question "
     "(PRD GLU/embed: 50M tokens at 10M params = 5; scaling sweeps set >= 20 themselves). But a replica must also "
     "keep the regime: at 143k params and 5 tokens per parameter no batch or LR ended below the count bigram "
     "model (best 4.467 vs 4.275 nats), so the seeds measured when each run left its plateau; at 20 every run "
     "of the GLU replica ends below it (RESULTS.md, 2026-12-03). The report prints both references"),
    ("parameter budgets (glu, embed): V = 1536, N = 143,242 (= 1.02 * 32 * 1536 / 0.35), dims from the solver, "
     "head size >= 16",
     "at V=1536 and 35 % embedding this N gives d=32 (2 heads of 16) and the only small budget found (solver probe "
     "over V 1024-2048, d 32-80) that keeps every PRD GLU factor distinct and within 6 %: 2.0/2.66/3.0/4.0 -> "
     "2.00/2.50/3.00/3.75 at 9/8/7/6 layers. Share, GLU factor and tying are kept; the aspect d/L (3.5-5) is "
     "deeper than full scale's (~20): a stated caveat. At 5 tok/param a trial reads 0.72M tokens = 0.46 epochs of "
     "wiki-offline (1.55M train tokens at V=1536). The embed sweep uses N = 245,760 (d = 40/56/72 at 25/35/45 %)"),
    ("fixed shapes (seed presets): V/8, width/4 (multiple of 16), depth/2 (>= 2), head size 16, d_ff keeps its ratio",
     "V/8 with d/4 and L/2 keeps the embedding share of every seed preset (emb/blocks ~ V/(d L)) and the "
     "presets' d/L = 32 stays inside the seeds' range (d/L 64 at full); head size 16 is the smallest sane one"),
    ("LR = 3e-3 * (N / 189k)^(-1/3)",
     "exponent from Porian et al. 2024's fit LR ~ N^(-1/3) (5M-901M params); anchor measured here: 3e-3 was "
     "the best of {1e-3, 3e-3, 1e-2} at 45k, 86k and 189k params (micro ladder, sotu BPE-512, batch 2048 "
     "tokens; RESULTS.md). "
     "Porian's own constant extrapolated 25x below its range gives ~0.04, which we do not trust; the ladder sweep "
     "re-tunes LR per size around this rule and flags a best LR at the grid edge. Measured by sweeps/ladder.py "
     "(2026-11-30, sotu BPE-384, 20 tok/param): best LR 2.8e-3 / 2.2e-3 / 3.7e-3 / 6.1e-3 / >=4.9e-3 at 29k / 59k "
     "/ 104k / 181k / 349k params vs the rule's 5.6e-3 / 4.4e-3 / 3.7e-3 / 3.0e-3 / 2.4e-3: within 2x everywhere, "
     "but the optimum does not fall with N in this range, so the -1/3 exponent is not confirmed below 0.35M"),
    ("batch = 16 x 128 = 2048 tokens",
     "the batch at which the LR anchor was measured; Porian's batch rule gives 1.8k-7.8k tokens over 45k-400k "
     "params, and a small batch costs nothing in tokens (more steps at the same compute)"),
    ("beta2 = 0.99", "Porian et al.: AdamW beta2 = 0.99 for batches under ~524k tokens (0.95 above)"),
    ("warmup = N tokens (1 token per parameter), capped at 1/4 of the run",
     "Porian et al.: warm up ~1 token per parameter; at 5 tok/param that is 20 % of the run"),
    ("8 evals per run, 16k validation tokens, the whole corpus (no document cap)",
     "the end-of-run loss slope (undertraining diagnostic) needs several evals; the corpus bounds unique text"),
)


def laptop_lr(n_params: float) -> float:
    """The laptop (and smoke) peak LR for a model of ``n_params`` total parameters (see LAPTOP_RULES)."""
    return float(LAPTOP["lr_anchor"] * (n_params / LAPTOP["lr_anchor_params"]) ** LAPTOP["lr_exponent"])


FIELDS: dict[str, dataclasses.Field] = {f.name: f for f in fields(Config)}
_TYPES = typing.get_type_hints(Config)

MAX_MEMBERS = 64  # seeds_per_trial: members of one batched model


def ensemble_limits(cfg: Config) -> tuple[tuple[str, bool, str], ...]:
    """(field, allowed?, what is allowed) for seeds_per_trial > 1. Members are clipped per member before the
    optimizer step: on ``p.grad`` at fp32 ZeRO 0, on gradients taken outside DeepSpeed and handed to it at bf16 or
    ZeRO 1/2 (``ensemble_handoff``). fp16's dynamic loss scale would have to scale those too; ZeRO 3 partitions the
    weights the vmapped forward reads whole. An MoE keeps routing state on its modules, which a vmapped forward
    cannot; cooldown probes branch the whole engine; activation checkpointing is not vmappable."""
    return (("precision", cfg.precision in ("fp32", "bf16"), "in ('fp32', 'bf16') (fp16's loss scale would have to "
             "scale each member's gradients before its clip)"),
            ("zero_stage", cfg.zero_stage in (0, 1, 2), "in (0, 1, 2) (ZeRO 3 partitions the weights every member's "
             "vmapped forward reads whole)"),
            ("n_experts", cfg.n_experts == 0, "= 0 (an MoE keeps routing state on its modules)"),
            ("probes", not cfg.probes.strip(), "empty (a cooldown probe branches every member at once)"),
            ("activation_checkpointing", not cfg.activation_checkpointing, "= False (not vmappable)"))


def ensemble_handoff(cfg: Config) -> bool:
    """Whether a batched trial takes its members' gradients itself and hands them to DeepSpeed (bf16, ZeRO 1/2):
    there DeepSpeed moves each gradient into its flat (partitioned, fp32 master) buffers as backward produces it,
    so no whole member gradient is ever in ``p.grad`` for the per-member clip. The loop then takes the gradients
    with ``torch.autograd.grad`` (accumulated in fp32 over the micro-batches), clips and quarantines each member,
    and runs DeepSpeed's backward on a surrogate whose gradient is exactly the clipped one, once per optimizer
    step. At fp32 ZeRO 0 the members are clipped on ``p.grad`` directly."""
    return cfg.seeds_per_trial > 1 and (cfg.precision != "fp32" or cfg.zero_stage > 0)


def member_seeds(cfg: Config) -> list[int]:
    """The seeds of a trial's members (``seeds_per_trial``): ``cfg.seed`` .. ``cfg.seed + seeds_per_trial - 1``."""
    return [cfg.seed + k for k in range(cfg.seeds_per_trial)]


def member_config(cfg: Config, k: int) -> Config:
    """Member ``k`` of a batched trial as the solo run it equals: its own seed, one seed per trial. What its
    results row, its model and its MLflow run record."""
    return cfg.replace(seed=cfg.seed + k, seeds_per_trial=1)


# Fields the budget solver derives when target_params > 0 (tinylm.budget.solve).
SOLVED_DIMS = ("n_embd", "n_layer", "n_head", "d_ff")

# Architectural fields: changing one of these makes a checkpoint incompatible (resume refuses it).
ARCH_FIELDS = ("n_layer", "n_head", "n_embd", "d_ff", "glu_factor", "norm", "pos", "mlp", "tie_embeddings",
               "bias", "vocab_size", "tokenizer", "block_size", "rope_theta", "mixer", "attn_every", "d_state",
               "d_conv", "ssm_expand", "n_experts", "top_k")


def check_keys(d: typing.Mapping[str, typing.Any]) -> None:
    unknown = sorted(set(d) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown Config field(s) {unknown}; allowed fields: {', '.join(FIELDS)}")


def coerce(name: str, value: typing.Any) -> typing.Any:
    """Convert a CLI string or a Tune/JSON value to the field's type, with an error naming the field.

    Refused: a bool for a number (``n_layer=True`` is Python's 1, never what was meant), a number other than 0/1
    for a bool, NaN or infinity anywhere, a fractional value for an int, None or a container for a string."""
    typ = _TYPES[name]
    article = {int: "an int", float: "a float", str: "a string"}
    if isinstance(value, bool) and typ is not bool:
        raise ConfigError(f"{name}={value!r} is a bool; {name} takes {article[typ]}")
    try:
        if typ is bool:
            if isinstance(value, str):
                if value.strip().lower() in ("1", "true", "yes", "on"):
                    return True
                if value.strip().lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if isinstance(value, numbers.Number) and value in (0, 1):
                return bool(value)
            raise ValueError(value)
        if typ is int:
            if isinstance(value, numbers.Integral):
                return int(value)
            if isinstance(value, str):
                with contextlib.suppress(ValueError):
                    return int(value.strip().replace("_", ""))
            f = float(value)  # accepts "10e6"
            if not math.isfinite(f):
                raise ConfigError(f"{name}={value!r} is not a finite number; {name} takes an int")
            if f != int(f):
                raise ValueError(value)
            return int(f)
        if typ is float:
            f = float(value)
            if not math.isfinite(f):
                raise ConfigError(f"{name}={value!r} is not a finite number; {name} takes a finite float")
            return f
        if isinstance(value, str):
            return value
        if isinstance(value, numbers.Number):
            return str(value)
        raise ValueError(value)
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError):
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


__all__ = ["ARCH_FIELDS", "CHOICES", "LAPTOP", "LAPTOP_RULES", "Config", "ConfigError", "PRESETS", "add_config_args",
           "check_keys", "coerce", "config_from_args", "field", "laptop_lr", "member_config", "member_seeds"]
