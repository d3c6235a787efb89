"""The block registry: which nn.Module a layer's token mixer and MLP are, and what each costs. Imports no torch.

Every block kind the model can build is one frozen ``BlockSpec`` in ``MIXERS`` (token mixers: what moves
information between positions) or ``MLPS`` (the per-token feed-forward). The model, the parameter accounting
(tinylm.budget) and the optimizer's grouping (tinylm.optim) all read it, so a block is defined once:

- ``mixer_block(cfg, i)`` / ``mlp_block(cfg)`` pick the spec of layer ``i`` from the Config (the key functions:
  ``cfg.mixer`` attention | mamba | hybrid, hybrid choosing per layer by ``layer_mixer``; ``cfg.mlp`` gelu |
  swiglu, or the MoE ``moe`` wrapping ``cfg.mlp`` when ``cfg.n_experts`` > 0).
- ``spec.params(cfg)`` is the exact parameter count of one such block; ``spec.active(cfg)`` what one token uses
  (an MoE's router and top_k experts); ``spec.flops(cfg)`` its training FLOPs per token beyond the 6 per
  matmul parameter that budget.flops_per_token already counts (attention's scores, the selective scan).
  ``cfg`` is anything with budget.Arch's fields (a Config, or the solver's Shape).
- ``spec.load()`` imports its nn.Module class (``cls`` is a "module:Class" string, imported only then, or the
  class itself), so budget and config never import torch.

The block protocol (checked by ``load``): the class has ``from_config(cfg, layer_idx)`` building it from a
Config, and ``param_roles()`` returning one role from ``PARAM_ROLES`` for each of its parameters (names as its
own ``named_parameters()``), which tinylm.optim groups by:

- ``matrix``: a 2-D weight matrix, (out, in) or (in, out): Muon (``optimizer=muon``), else AdamW/Lion with decay;
- ``experts``: a 3-D stack (E, in, out) of per-expert matrices: Muon orthogonalises each ``p[e]`` on its own;
- ``decay``: any other tensor that is decayed but is no matrix for Muon (a conv kernel): AdamW with decay;
- ``no_decay``: biases, gains and parameters exempt from decay (Mamba's A_log, D, dt_bias): AdamW without decay.

A mixer is called ``mixer(x, rope, cache)`` and an MLP ``mlp(x)``, (B, T, C) in and out; a block stores the
module under ``spec.attr`` (the state_dict prefix: ``attn``, ``mamba``, ``mlp``). Blocks may also offer
``init_(std, std_out, generator_for)`` for GPT.init_weights' seeded init (after its nn.Linear/Embedding loop).
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

Arch = Any  # tinylm.budget.Arch: not imported (budget imports this module)

KINDS = ("mixer", "mlp")
_BLOCK_NAMES = ("ln_1", "ln_2", "mixer", "mixer_attr")  # model.Block's own attributes
PARAM_ROLES = ("matrix", "experts", "decay", "no_decay")


@dataclass(frozen=True)
class BlockSpec:
    """One block kind.

    Attributes:
        name: its registry key (``cfg.mixer`` / ``cfg.mlp`` value, or ``moe``).
        kind: ``mixer`` or ``mlp``.
        cls: its nn.Module class, or where it lives as ``"package.module:Class"`` (imported by ``load``).
        params: exact parameter count of one block, a function of the architecture fields.
        component: the budget.param_counts key its parameters add to (``attn``, ``ssm``, ``mlp``, ...).
        attr: the Block attribute (state_dict prefix) the module is stored under; ``mlp`` for every MLP.
        active_params: parameters one token uses (default: all of them; an MoE: router + top_k experts).
        flops_per_token: training FLOPs per token beyond 6 x its matmul parameters (default none).
    """

    name: str
    kind: str
    cls: str | type
    params: Callable[[Arch], int]
    component: str
    attr: str = "mlp"
    active_params: Callable[[Arch], int] | None = None
    flops_per_token: Callable[[Arch], float] | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"block {self.name!r}: kind={self.kind!r}; choose one of {', '.join(KINDS)}")
        if (self.attr == "mlp") != (self.kind == "mlp") or self.attr in _BLOCK_NAMES or not self.attr.isidentifier():
            raise ValueError(f"block {self.name!r}: attr={self.attr!r}; an MLP is stored as 'mlp', a mixer under a "
                             f"name of its own (an identifier, not {', '.join(_BLOCK_NAMES)})")

    def active(self, cfg: Arch) -> int:
        return self.params(cfg) if self.active_params is None else self.active_params(cfg)

    def flops(self, cfg: Arch) -> float:
        return 0.0 if self.flops_per_token is None else self.flops_per_token(cfg)

    def load(self) -> type:
        """The nn.Module class (imports its module on first use); checks the block protocol."""
        cls = self.cls
        if isinstance(cls, str):
            module, _, qualname = cls.partition(":")
            cls = importlib.import_module(module)
            for part in qualname.split("."):
                cls = getattr(cls, part)
        missing = [m for m in ("from_config", "param_roles") if not callable(getattr(cls, m, None))]
        if missing:
            raise TypeError(f"block {self.name!r}: {cls.__name__} lacks {', '.join(missing)} (tinylm.blocks.registry)")
        return cls


MIXERS: dict[str, BlockSpec] = {}
MLPS: dict[str, BlockSpec] = {}
_TABLES = {"mixer": MIXERS, "mlp": MLPS}


def register(spec: BlockSpec) -> BlockSpec:
    """Add ``spec`` to MIXERS or MLPS (by its kind); a name already there is refused."""
    table = _TABLES[spec.kind]
    if spec.name in table:
        raise ValueError(f"a {spec.kind} named {spec.name!r} is already registered")
    table[spec.name] = spec
    return spec


def unregister(kind: str, name: str) -> BlockSpec:
    """Remove and return the ``kind`` block ``name``."""
    return _TABLES[kind].pop(name)


@contextlib.contextmanager
def registered(spec: BlockSpec) -> Iterator[BlockSpec]:
    """``register(spec)`` for the duration of a ``with`` block (tests, experiments)."""
    register(spec)
    try:
        yield spec
    finally:
        unregister(spec.kind, spec.name)


def config_choices() -> dict[str, tuple[str, ...]]:
    """The values of ``cfg.mlp`` and ``cfg.mixer`` the registry offers, read whenever a Config is validated (so a
    block registered at run time counts): every dense MLP (``moe`` is chosen by ``n_experts`` and wraps one), and
    every mixer plus ``hybrid`` (attention every ``attn_every``-th layer, Mamba elsewhere)."""
    return {"mlp": tuple(n for n in MLPS if n != "moe"), "mixer": (*MIXERS, "hybrid")}


def components() -> tuple[str, ...]:
    """The param_counts keys the registered blocks add to, in registration order (attn, ssm, mlp, ...)."""
    return tuple(dict.fromkeys(s.component for t in (MIXERS, MLPS) for s in t.values()))


# --- the key functions: which block a Config gets --------------------------------------------------------------
def _lookup(kind: str, name: str) -> BlockSpec:
    table = _TABLES[kind]
    if name not in table:
        raise ValueError(f"no {kind} block named {name!r} is registered; choose one of {', '.join(table)}")
    return table[name]


def layer_mixer(cfg: Arch, i: int) -> str:
    """The mixer name of layer ``i``: ``cfg.mixer``, except in a hybrid, which has attention at layers
    attn_every-1, 2*attn_every-1, ... and mamba elsewhere."""
    if cfg.mixer == "hybrid":
        return "attention" if cfg.attn_every and (i + 1) % cfg.attn_every == 0 else "mamba"
    return cfg.mixer


def mixer_layer_counts(cfg: Arch) -> dict[str, int]:
    """How many of the ``n_layer`` layers have each mixer (``layer_mixer`` counted in closed form)."""
    if cfg.mixer == "hybrid":
        n_attn = cfg.n_layer // cfg.attn_every if cfg.attn_every else 0
        return {"attention": n_attn, "mamba": cfg.n_layer - n_attn}
    return {cfg.mixer: cfg.n_layer}


def mixer_block(cfg: Arch, i: int) -> BlockSpec:
    """The spec of layer ``i``'s token mixer."""
    return _lookup("mixer", layer_mixer(cfg, i))


def mixer_spec(name: str) -> BlockSpec:
    """The mixer spec registered as ``name`` (a value of ``layer_mixer``)."""
    return _lookup("mixer", name)


def dense_mlp_block(cfg: Arch) -> BlockSpec:
    """The dense MLP ``cfg.mlp`` names (an MoE's experts are each one of these)."""
    return _lookup("mlp", cfg.mlp)


def mlp_block(cfg: Arch) -> BlockSpec:
    """The spec of every layer's MLP: the MoE ``moe`` when ``cfg.n_experts`` > 0, else ``cfg.mlp``."""
    return _lookup("mlp", "moe") if cfg.n_experts else dense_mlp_block(cfg)


# --- the built-in blocks: parameter counts and FLOPs -------------------------------------------------------------
def attention_params(cfg: Arch) -> int:
    """model.CausalSelfAttention: c_attn (d -> 3d) + c_proj (d -> d), biases if ``cfg.bias``."""
    d = cfg.n_embd
    return 4 * d * d + int(cfg.bias) * 4 * d


def attention_flops(cfg: Arch) -> float:
    """Scores and values over block_size keys: 2 x 2 x d x T forward, x3 for training."""
    return 12.0 * cfg.n_embd * cfg.block_size


def mamba_param_count(n_embd: int, d_state: int = 16, d_conv: int = 4, expand: float = 2,
                      dt_rank: int | str = "auto", bias: bool = False, conv_bias: bool = True) -> int:
    """Exact parameter count of ``tinylm.blocks.ssm.Mamba(n_embd, d_state, d_conv, expand, dt_rank, bias,
    conv_bias)``: in_proj, conv1d, x_proj, dt_proj + dt_bias, A_log, D, out_proj."""
    di = int(expand * n_embd)
    r = math.ceil(n_embd / 16) if dt_rank == "auto" else int(dt_rank)
    return (n_embd * 2 * di + (2 * di if bias else 0)  # in_proj
            + di * d_conv + (di if conv_bias else 0)  # depthwise conv1d
            + di * (r + 2 * d_state)  # x_proj
            + r * di + di  # dt_proj weight, dt_bias
            + di * d_state + di  # A_log, D
            + di * n_embd + (n_embd if bias else 0))  # out_proj


def mamba_params(cfg: Arch) -> int:
    return mamba_param_count(cfg.n_embd, cfg.d_state, cfg.d_conv, cfg.ssm_expand, bias=bool(cfg.bias))


def mamba_flops(cfg: Arch) -> float:
    """The selective scan's discretisation, state update and readout: ~6 per state element forward, x3 for
    training (an estimate, small beside the projections)."""
    return 18.0 * cfg.ssm_expand * cfg.n_embd * cfg.d_state


def gelu_params(cfg: Arch) -> int:
    """blocks.mlp.GeluMLP: c_fc (d -> ff) + c_proj (ff -> d)."""
    d, ff, b = cfg.n_embd, cfg.ffn_hidden, int(cfg.bias)
    return 2 * d * ff + b * (ff + d)


def swiglu_params(cfg: Arch) -> int:
    """blocks.mlp.SwiGLU: c_fc (d -> 2ff: gate and up) + c_proj (ff -> d)."""
    d, ff, b = cfg.n_embd, cfg.ffn_hidden, int(cfg.bias)
    return 3 * d * ff + b * (2 * ff + d)


def moe_params(cfg: Arch) -> int:
    """blocks.moe.MoEMLP: the router (d -> E) and E experts, each the dense MLP ``cfg.mlp``."""
    return cfg.n_embd * cfg.n_experts + cfg.n_experts * dense_mlp_block(cfg).params(cfg)


def moe_active_params(cfg: Arch) -> int:
    """What one token uses: the router and top_k experts."""
    return cfg.n_embd * cfg.n_experts + cfg.top_k * dense_mlp_block(cfg).params(cfg)


register(BlockSpec("attention", "mixer", "tinylm.model:CausalSelfAttention", attention_params, component="attn",
                   attr="attn", flops_per_token=attention_flops))
register(BlockSpec("mamba", "mixer", "tinylm.blocks.ssm:Mamba", mamba_params, component="ssm", attr="mamba",
                   flops_per_token=mamba_flops))
register(BlockSpec("gelu", "mlp", "tinylm.blocks.mlp:GeluMLP", gelu_params, component="mlp"))
register(BlockSpec("swiglu", "mlp", "tinylm.blocks.mlp:SwiGLU", swiglu_params, component="mlp"))
register(BlockSpec("moe", "mlp", "tinylm.blocks.moe:MoEMLP", moe_params, component="mlp",
                   active_params=moe_active_params))

__all__ = ["KINDS", "MIXERS", "MLPS", "PARAM_ROLES", "BlockSpec", "components", "dense_mlp_block", "layer_mixer",
           "mamba_param_count", "mixer_block", "mixer_layer_counts", "mixer_spec", "mlp_block", "register",
           "registered", "unregister"]
