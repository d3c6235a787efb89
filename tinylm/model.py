"""A GPT in pure PyTorch with string-selected variants (nanoGPT names and shapes).

Variants come from Config: norm layernorm|rmsnorm, pos learned|rope, tied|untied head, dropout, attention sdpa
(flash / memory-efficient kernels on GPU) | math, activation checkpointing; and, through the block registry
(tinylm.blocks.registry), each layer's token mixer attention | mamba | hybrid (``mixer``, ``attn_every``) and MLP
gelu | swiglu (``mlp``, with glu_factor / d_ff) or a mixture of experts of them (``n_experts`` > 0), whose balance
and z losses join the training loss.
No ray / deepspeed / mlflow here: parallelism and precision are applied from engine.py.

Decoding passes a ``KVCache`` through the same forward (as nanochat does), so every variant is written once:
``model(idx, kv_cache=cache)`` runs only the new tokens, at positions offset by what the cache holds.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from tinylm.blocks import MoEMLP, SSMCache
from tinylm.blocks.registry import mixer_block, mlp_block
from tinylm.blocks.ssm import check_same_position
from tinylm.config import Config


def make_norm(cfg: Config) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(cfg.n_embd, eps=1e-6)
    return nn.LayerNorm(cfg.n_embd, bias=cfg.bias)


def rope_cache(cfg: Config, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin tables for rotary embeddings (Su et al. 2021, arXiv:2104.09864), shape (T, hs/2)."""
    hs = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hs, 2, device=device, dtype=torch.float32) / hs))
    t = torch.arange(cfg.block_size, device=device, dtype=torch.float32)
    freqs = torch.outer(t, inv_freq)  # (T, hs/2)
    return freqs.cos(), freqs.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x: (B, nh, T, hs); cos/sin: the (T_max, hs/2) table (its first T rows are used) or one row per position,
    # (B, 1, T, hs/2) when decoding with a cache; rotate pairs (x1, x2) of the two halves
    T = x.size(-2)
    cos, sin = cos[..., :T, :].to(x.dtype), sin[..., :T, :].to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)


class KVCache:
    """Keys and values of every layer for decoding a few tokens at a time (nanochat's ``KVCache``), with a
    position per row so that prompts of different lengths share a batch.

    ``model(idx, kv_cache=cache)`` runs tokens ``idx`` (B, t) at positions ``cache.pos[b] + i``, stores their
    keys and values in those slots, lets each query attend to the slots up to its own position, and advances
    ``pos`` by t. The first call on an empty cache (every ``pos`` 0) is the plain causal forward (SDPA with
    ``is_causal``), the same computation as ``model(idx)``. Rows of a right-padded batch prefill together; set
    ``cache.pos`` to each row's real length afterwards: its next token overwrites the first pad's slot, and
    causal masking kept its real positions blind to the pads.

    Args:
        cfg: the model's Config (layers, heads, head size, block_size).
        batch_size: rows of every call.
        max_len: slots per row (default and at most ``cfg.block_size``: positions past it do not exist).
    """

    def __init__(self, cfg: Config, batch_size: int, max_len: int | None = None):
        self.n_layer, self.batch_size = cfg.n_layer, batch_size
        self.max_len = min(max_len or cfg.block_size, cfg.block_size)
        self.shape = (batch_size, cfg.n_head, self.max_len, cfg.head_dim)  # (B, nh, S, hs) per layer
        self.k: list[torch.Tensor] = []  # allocated at the first call, in the dtype and device of the keys
        self.v: list[torch.Tensor] = []
        self.pos = torch.zeros(batch_size, dtype=torch.long)  # (B,) next position of each row
        self._pos, self._mask, self._end = None, None, 0  # of the call in progress

    def begin(self, t: int, device: torch.device) -> torch.Tensor:
        """Positions (B, t) of the next ``t`` tokens of each row; prepares the mask every layer uses."""
        if self.pos.shape != (self.batch_size,):
            raise ValueError(f"cache.pos has shape {tuple(self.pos.shape)}, expected ({self.batch_size},)")
        self.pos = self.pos.to(device)
        start = int(self.pos.max())
        self._end = start + t
        if self._end > self.max_len:
            raise ValueError(f"sequence length {self._end} > the cache's {self.max_len} positions (block_size "
                             "bounds both)")
        self._pos = self.pos[:, None] + torch.arange(t, device=device)  # (B, t)
        self._mask = None  # prefill of an empty cache: plain causal attention over the new tokens
        if start > 0:  # key slot j is visible to the query at position p iff j <= p
            keys = torch.arange(self._end, device=device)
            self._mask = (keys[None, None, :] <= self._pos[:, :, None])[:, None]  # (B, 1, t, S)
        return self._pos

    def insert(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store keys/values (B, nh, t, hs) of the call in progress; return the keys, values and boolean mask
        (None: causal over the new tokens only) that its queries attend to."""
        if not self.k:
            self.k = [k.new_zeros(self.shape) for _ in range(self.n_layer)]
            self.v = [v.new_zeros(self.shape) for _ in range(self.n_layer)]
        K, V = self.k[layer], self.v[layer]
        rows = torch.arange(K.size(0), device=K.device)[:, None]
        K[rows, :, self._pos] = k.transpose(1, 2).to(K.dtype)  # (B, t, nh, hs) into slots (b, :, pos[b, i])
        V[rows, :, self._pos] = v.transpose(1, 2).to(V.dtype)
        if self._mask is None:
            return k, v, None
        return K[:, :, : self._end], V[:, :, : self._end], self._mask

    def advance(self) -> None:
        self.pos = self._pos[:, -1] + 1


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention (the registry's ``attention`` mixer): c_attn (C -> 3C: q, k, v), SDPA or the
    math reference, c_proj (C -> C); keys and values go through a KVCache when one is passed."""

    def __init__(self, cfg: Config, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx  # its slot in a KVCache
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.math = cfg.attention == "math"
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    @classmethod
    def from_config(cls, cfg: Config, layer_idx: int = 0) -> CausalSelfAttention:
        return cls(cfg, layer_idx)

    def param_roles(self) -> dict[str, str]:
        """Weights are Muon matrices, biases are not decayed (tinylm.blocks.registry)."""
        return {n: "matrix" if n.endswith(".weight") else "no_decay" for n, _ in self.named_parameters()}

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None,
                kv_cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        mask = None  # None: causal over these T tokens; with a cache, (B, 1, T, S) over its S key slots
        if kv_cache is not None:
            k, v, mask = kv_cache.insert(self.layer_idx, k, v)  # (B, nh, S, hs)
        p = self.dropout if self.training else 0.0
        if self.math:  # the reference path the speed ablation compares SDPA against
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, nh, T, S)
            if mask is None:
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
            att = F.dropout(att.masked_fill(~mask, float("-inf")).softmax(dim=-1), p, self.training)
            y = att @ v
        else:  # is_causal only without an explicit mask (the mask of a cached step is not lower-triangular)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p,
                                               is_causal=mask is None)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class HybridCache(KVCache):
    """The decoding cache of a model with Mamba layers (``mixer`` mamba or hybrid): a KVCache for its attention
    layers (allocated only if it has some) plus an SSMCache's conv and state slots for its Mamba layers. An SSM
    state cannot skip padding, so every row must be at the same position."""

    def __init__(self, cfg: Config, batch_size: int, max_len: int | None = None):
        super().__init__(cfg, batch_size, max_len)
        self.states = SSMCache(cfg.n_layer, batch_size)

    def get(self, layer: int):
        return self.states.get(layer)

    def update(self, layer: int, conv: torch.Tensor, ssm: torch.Tensor) -> None:
        self.states.update(layer, conv, ssm)

    def begin(self, t: int, device: torch.device) -> torch.Tensor:
        check_same_position(self.pos)
        return super().begin(t, device)


def make_cache(cfg: Config, batch_size: int, max_len: int | None = None) -> KVCache:
    """The decoding cache ``cfg``'s layers need: a KVCache for attention only, else a HybridCache."""
    return (KVCache if cfg.mixer == "attention" else HybridCache)(cfg, batch_size, max_len)


class Block(nn.Module):
    """Norm, token mixer, residual; norm, MLP, residual. Which mixer (stored as ``attn``, ``mamba``, ...: the
    spec's ``attr``) and which MLP (``mlp``: dense, or an MoE) come from the block registry
    (tinylm.blocks.registry: ``mixer_block(cfg, layer_idx)``, ``mlp_block(cfg)``)."""

    def __init__(self, cfg: Config, layer_idx: int = 0):
        super().__init__()
        self.ln_1, self.ln_2 = make_norm(cfg), make_norm(cfg)
        mixer = mixer_block(cfg, layer_idx)
        self.mixer_attr = mixer.attr
        self.add_module(mixer.attr, mixer.load().from_config(cfg, layer_idx))
        self.mlp = mlp_block(cfg).load().from_config(cfg, layer_idx)

    @property
    def mixer(self) -> nn.Module:
        return getattr(self, self.mixer_attr)

    def forward(self, x: torch.Tensor, rope=None, kv_cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.mixer(self.ln_1(x), rope, kv_cache)
        return x + self.mlp(self.ln_2(x))


def tensor_generator(seed: int, name: str) -> torch.Generator:
    """A CPU generator seeded by (seed, a parameter's name): the same stream for that name in every model."""
    digest = hashlib.sha256(f"tinylm-init/{seed}/{name}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))


class GPT(nn.Module):
    """``logits, loss = model(idx, targets)``; ``loss`` is None without targets, logits cover every position.
    ``model(idx, kv_cache=cache)`` decodes: ``idx`` holds only the tokens after those the cache holds."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(cfg.vocab_size, cfg.n_embd),
            drop=nn.Dropout(cfg.dropout),
            h=nn.ModuleList([Block(cfg, i) for i in range(cfg.n_layer)]),
            ln_f=make_norm(cfg),
        ))
        if cfg.pos == "learned":
            self.transformer["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        else:
            cos, sin = rope_cache(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight  # weight tying (Press & Wolf 2017)
        self.init_weights(cfg.seed)

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """GPT-2's init (normal 0.02, residual projections 0.02/sqrt(2 n_layer), zero biases, norms at one), each
        tensor drawn from its own generator seeded by (``seed``, its name): common random numbers. Two models of
        one seed start with identical tensors wherever name and shape agree (and a wider tensor's leading values
        agree), whatever else differs, so a comparison of variants pairs its seeds on the init as it does on the
        data order. (Seeding the global RNG once would not: construction draws a different amount per
        architecture, so same-seed variants shared nothing but their norm weights.)"""
        std_proj = 0.02 / math.sqrt(2 * self.cfg.n_layer)  # GPT-2: scale residual projections by 1/sqrt(2 * n_layer)
        for mod_name, module in self.named_modules():
            if not isinstance(module, nn.Linear | nn.Embedding) or module is self.lm_head and self.cfg.tie_embeddings:
                continue
            name = f"{mod_name}.weight"
            std = std_proj if name.endswith("c_proj.weight") else 0.02
            draw = torch.empty(module.weight.shape).normal_(0.0, std, generator=tensor_generator(seed, name))
            module.weight.copy_(draw)  # drawn on the CPU in float32: the same values on any device and dtype
            if getattr(module, "bias", None) is not None:
                torch.nn.init.zeros_(module.bias)
        for mod_name, module in self.named_modules():  # the block library's own draws (experts, Mamba's dt/A/D)
            if hasattr(module, "init_"):
                module.init_(0.02, std_proj, lambda n, p=mod_name: tensor_generator(seed, f"{p}.{n}"))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared (tied) tensors count once

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, kv_cache: KVCache | None = None):
        B, T = idx.size()
        if T > self.cfg.block_size:
            raise ValueError(f"sequence length {T} > block_size {self.cfg.block_size}")
        pos = torch.arange(T, device=idx.device)  # (T,), or (B, T) after what a cache holds
        if kv_cache is not None:
            if B != kv_cache.batch_size:
                raise ValueError(f"batch of {B} rows, the cache holds {kv_cache.batch_size}")
            pos = kv_cache.begin(T, idx.device)
        x = self.transformer.wte(idx)  # (B, T, C)
        rope = None
        if self.cfg.pos == "learned":
            x = x + self.transformer.wpe(pos)
        elif kv_cache is None:
            rope = (self.rope_cos, self.rope_sin)
        else:
            rope = (self.rope_cos[pos][:, None], self.rope_sin[pos][:, None])  # (B, 1, T, hs/2)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            if self.cfg.activation_checkpointing and self.training and kv_cache is None:
                x = checkpoint(block, x, rope, use_reentrant=False)  # recompute in backward: memory for FLOPs
            else:
                x = block(x, rope, kv_cache)
        if kv_cache is not None:
            kv_cache.advance()
        logits = self.lm_head(self.transformer.ln_f(x))  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
            if self.training and self.cfg.n_experts:  # the routers' losses, summed over layers (Switch, ST-MoE)
                moe = [b.mlp.aux for b in self.transformer.h]
                loss = loss + self.cfg.moe_aux_weight * sum(a["balance"] for a in moe) \
                    + self.cfg.moe_z_weight * sum(a["z"] for a in moe)
        return logits, loss

    def routing_stats(self) -> dict[str, float]:
        """An MoE's routing balance at its last forward, averaged over layers: ``moe_max_over_mean`` (the busiest
        expert's load over the mean; 1 = balanced), ``moe_load_cv`` (coefficient of variation of the loads),
        ``moe_dropped_frac`` (assignments over capacity). Empty for a dense model."""
        stats = [b.mlp.routing_stats() for b in self.transformer.h if isinstance(b.mlp, MoEMLP) and b.mlp.stats]
        if not stats:
            return {}
        mean = lambda k: sum(float(s[k]) for s in stats) / len(stats)  # noqa: E731
        return {"moe_max_over_mean": mean("max_over_mean"), "moe_load_cv": mean("cv"),
                "moe_dropped_frac": mean("dropped_frac")}

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 stop_token: int | None = None, cache: bool = True) -> torch.Tensor:
        """Sample ``max_new_tokens`` continuations (greedy when temperature == 0); crops to block_size.

        With ``cache`` the prompt is read once and each new token runs alone through the same forward (a
        ``KVCache``) while the sequence fits in block_size; past it every step re-reads the last block_size
        tokens, as without a cache (positions shift, so nothing cached is reusable)."""
        if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an int >= 0")
        if not isinstance(temperature, int | float) or not math.isfinite(temperature) or temperature < 0:
            raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy)")
        if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
            raise ValueError(f"top_k={top_k!r} must be None (no cut) or an int >= 1")
        if idx.dim() != 2 or idx.size(1) == 0 or idx.dtype not in (torch.long, torch.int, torch.int32):
            raise ValueError(f"idx must be a (batch, length >= 1) tensor of token ids; got shape {tuple(idx.shape)}, "
                             f"dtype {idx.dtype}")
        if int(idx.min()) < 0 or int(idx.max()) >= self.cfg.vocab_size:
            raise ValueError(f"idx holds token ids outside [0, vocab_size={self.cfg.vocab_size})")
        kv = make_cache(self.cfg, idx.size(0)) if cache else None
        new = idx  # the tokens the cache has not seen
        for _ in range(max_new_tokens):
            if kv is not None and idx.size(1) <= self.cfg.block_size:
                logits, _ = self(new, kv_cache=kv)
            else:
                logits, _ = self(idx[:, -self.cfg.block_size:])
            logits = logits[:, -1, :]
            if temperature == 0:
                nxt = logits.argmax(dim=-1, keepdim=True)
            else:
                logits = logits / temperature
                if top_k is not None:
                    v, _ = torch.topk(logits, min(top_k, logits.size(-1)))
                    logits[logits < v[:, [-1]]] = -float("inf")
                nxt = torch.multinomial(F.softmax(logits, dim=-1), num_samples=1)
            idx, new = torch.cat((idx, nxt), dim=1), nxt
            if stop_token is not None and bool((nxt == stop_token).all()):
                break
        return idx
