"""Parameter accounting and the parameter-budget solver.

``param_counts(cfg)`` is an exact, pure function of Config (tested equal to ``sum(p.numel())`` of the built
model for many configs). ``solve(total_params, vocab_size, embed_share, glu_factor)`` answers the PRD's
question "how should N parameters be split between embeddings and the backbone?": it picks d_model / n_layer /
n_head / d_ff on hardware-friendly multiples so the real total is within 1 % of the target and the real
embedding share within 1 point of the request. Every block's count (and FLOPs term) is its spec's in the block
registry (tinylm.blocks.registry, torch-free), the one definition the model builds from.

    python -m tinylm.budget --total_params 10e6 --vocab_size 16000 --embed_share 0.35 --glu_factor 2.66
"""

from __future__ import annotations

import argparse
import math
import typing
from dataclasses import dataclass, field

from tinylm.blocks.registry import (  # torch-free: the block specs' counts, and which block a layer gets
    components,
    mixer_layer_counts,
    mixer_spec,
    mlp_block,
)
from tinylm.errors import ConfigError

__all__ = ["Arch", "Shape", "Solution", "block_counts", "embed_share", "flops_per_token", "mixer_layers", "num_params",
           "param_counts", "solve"]


class Arch(typing.Protocol):
    """The architecture fields parameter accounting reads: a Config has them all, and so does the solver's Shape.
    budget.py imports nothing of Config (config.py imports the solver to derive a budget's dims)."""

    n_embd: int
    n_layer: int
    vocab_size: int
    block_size: int
    mlp: str
    pos: str
    norm: str
    bias: bool
    tie_embeddings: bool
    mixer: str
    attn_every: int
    d_state: int
    d_conv: int
    ssm_expand: int
    n_experts: int
    top_k: int

    @property
    def ffn_hidden(self) -> int: ...


@dataclass(frozen=True)
class Shape:
    """A candidate model of the solver: dims plus the fields that change its parameter count (Config's defaults)."""

    n_embd: int
    n_layer: int
    n_head: int
    d_ff: int
    vocab_size: int
    block_size: int
    mlp: str
    pos: str
    norm: str
    tie_embeddings: bool
    bias: bool = False
    mixer: str = "attention"
    attn_every: int = 0
    d_state: int = 16
    d_conv: int = 4
    ssm_expand: int = 2
    n_experts: int = 0
    top_k: int = 1

    @property
    def ffn_hidden(self) -> int:
        return self.d_ff


def block_counts(cfg: Arch, mixer: str = "attention") -> dict[str, int]:
    """Parameters of ONE block whose token mixer is the registered ``mixer`` (a hybrid's layers differ), by
    component: each registered block's ``component`` (``attn``: attention, ``ssm``: Mamba, ``mlp``: the MLP, all
    experts and the router of an MoE; zero where this block has none), ``norms``, and ``inactive``: the
    parameters one token does not use (an MoE's experts beyond top_k). The counts are the registry specs'."""
    counts = dict.fromkeys(components(), 0)
    inactive = 0
    for spec in (mixer_spec(mixer), mlp_block(cfg)):
        n = spec.params(cfg)
        counts[spec.component] += n
        inactive += n - spec.active(cfg)
    return counts | {"norms": 2 * _norm_params(cfg), "inactive": inactive}


def _norm_params(cfg: Arch) -> int:
    return cfg.n_embd * (2 if cfg.norm == "layernorm" and cfg.bias else 1)


def mixer_layers(cfg: Arch) -> int:
    """How many of the ``n_layer`` layers are attention: all, none, or a hybrid's n_layer // attn_every (layers
    attn_every-1, 2*attn_every-1, ...)."""
    return mixer_layer_counts(cfg).get("attention", 0)


def param_counts(cfg: Arch) -> dict[str, int]:
    """Exact parameter counts by component; ``total`` equals the built model's ``sum(p.numel())``.

    ``nonembed`` follows Kaplan et al. (2020): total minus the token embedding, the position embedding and an
    untied output head. ``embed_share`` is the token embedding's fraction of ``total`` (the PRD's definition).
    ``active`` (and ``active_nonembed``): the parameters one token uses, which differ from the totals only for an
    MoE (its router and top_k of its experts); FLOPs per token follow them. The components ``attn``, ``ssm``,
    ``mlp`` (and any other registered block's) sum the registry specs' counts over the layers.
    """
    d = cfg.n_embd
    part: dict[str, int] = {}
    for mixer, n in mixer_layer_counts(cfg).items():
        for k, v in block_counts(cfg, mixer).items():
            part[k] = part.get(k, 0) + n * v
    blocks = sum(part[k] for k in components()) + part["norms"]
    counts = {
        "embedding": cfg.vocab_size * d,
        "position": cfg.block_size * d if cfg.pos == "learned" else 0,
        "blocks": blocks,
        **{k: part[k] for k in (*components(), "norms")},
        "final_norm": _norm_params(cfg),
        "head": 0 if cfg.tie_embeddings else cfg.vocab_size * d,
        "per_block": blocks // max(1, cfg.n_layer),
    }
    counts["total"] = (counts["embedding"] + counts["position"] + counts["blocks"] + counts["final_norm"]
                       + counts["head"])
    counts["nonembed"] = counts["total"] - counts["embedding"] - counts["position"] - counts["head"]
    counts["active"] = counts["total"] - part["inactive"]
    counts["active_nonembed"] = counts["nonembed"] - part["inactive"]
    return counts


def num_params(cfg: Arch, non_embedding: bool = False) -> int:
    c = param_counts(cfg)
    return c["nonembed"] if non_embedding else c["total"]


def embed_share(cfg: Arch) -> float:
    c = param_counts(cfg)
    return c["embedding"] / c["total"]


def flops_per_token(cfg: Arch) -> float:
    """Training FLOPs per token (forward + backward), PaLM appendix B / Kaplan et al.: 6 x (non-embedding params a
    token uses (``active_nonembed``: an MoE's router and top_k experts, not all of them) + the output head's matmul,
    tied or not) + each layer's blocks' own term from the registry (``spec.flops``): 12 x n_embd x block_size per
    attention layer (scores and values), 18 x d_inner x d_state per Mamba layer (the selective scan's
    discretisation, state update and readout, ~6 per state element forward, x3 for training; an estimate, small
    beside the projections). The one definition: MFU, ``train_flops`` and the dry-run's FLOPs and time estimate all
    use it."""
    c = param_counts(cfg)
    matmul_params = c["active_nonembed"] + cfg.vocab_size * cfg.n_embd
    per_layer = sum(n * mixer_spec(m).flops(cfg) for m, n in mixer_layer_counts(cfg).items()) \
        + cfg.n_layer * mlp_block(cfg).flops(cfg)  # each registered block's own term (attention, the scan)
    return 6.0 * matmul_params + per_layer


MAX_WIDTH = 16_384  # widest n_embd the solver considers (GPT-3 175B has 12,288)


def _finite(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True)
class Solution:
    """What the solver chose, with the real numbers it achieves."""

    dims: dict[str, int]
    target: int
    total: int
    embed_share: float
    requested_share: float
    glu_factor: float
    real_glu_factor: float
    table: dict[str, int] = field(default_factory=dict)

    @property
    def error(self) -> float:
        return (self.total - self.target) / self.target

    def describe(self) -> str:
        d = self.dims
        rows = [
            f"target {self.target:,} params -> real {self.total:,} ({100 * self.error:+.2f} %)",
            f"embedding share {100 * self.embed_share:.2f} % (requested {100 * self.requested_share:.2f} %)",
            f"n_embd={d['n_embd']} n_layer={d['n_layer']} n_head={d['n_head']} d_ff={d['d_ff']} "
            f"(GLU factor {self.real_glu_factor:.3f}, requested {self.glu_factor}"
            + (")" if abs(self.real_glu_factor / self.glu_factor - 1) <= 0.08 else
               "; the budget leaves too few layers to match it closer)"),
            "",
            f"{'component':<12}{'params':>14}{'share':>9}",
        ]
        for k in ("embedding", "position", "attn", "ssm", "mlp", "norms", "final_norm", "head", "total", "active"):
            if k in ("ssm", "active") and (not self.table.get(k) or k == "active" and self.table[k] == self.table[
                    "total"]):
                continue
            rows.append(f"{k:<12}{self.table[k]:>14,}{100 * self.table[k] / self.table['total']:>8.2f}%")
        rows.append(f"{'per block':<12}{self.table['per_block']:>14,}")
        return "\n".join(rows)


def solve(total_params: float, vocab_size: int, embed_share: float, glu_factor: float, mlp: str = "swiglu",
          pos: str = "rope", norm: str = "rmsnorm", tie_embeddings: bool = True, block_size: int = 256,
          width_multiple: int = 16, ff_multiple: int = 8,
          head_dims: tuple[int, ...] = (64, 32, 48, 96, 128, 80, 40, 56, 16, 8),
          ff_windows: tuple[float, ...] = (0.08, 0.2, 0.4, 0.99),
          tol: float = 0.01, share_tol: float = 0.01, blocks: dict | None = None, budget: str = "total") -> Solution:
    """Choose dims for a parameter budget.

    Args:
        total_params: target total parameter count (tied embeddings count once).
        vocab_size: tokenizer vocabulary.
        embed_share: requested fraction of all params in the token embedding (PRD: 0.25 / 0.35 / 0.45).
        glu_factor: MLP expansion d_ff / d_model (PRD: 2.0 / 2.66 / 3.0 / 4.0).
        width_multiple, ff_multiple: hardware-friendly multiples for d_model and d_ff.
        tol, share_tol: allowed relative error on the total and absolute error on the share.
        blocks: the block fields beyond dims (``Config.blocks_shape()``: mixer, attn_every, Mamba's d_state /
            d_conv / ssm_expand, an MoE's n_experts / top_k); default a dense attention block.
        budget: ``total`` or ``active``: which count ``total_params`` and ``embed_share`` refer to (they differ
            only for an MoE: all experts, or the router and top_k experts one token uses).

    Searches d_model (multiples of ``width_multiple`` inside the share window), n_layer, a head size from
    ``head_dims`` (the first that divides d_model) and the d_ff that fills the budget; among the feasible choices
    it keeps the one closest to the requested GLU factor, then the most conventional aspect ratio (d/L ~ 64).
    d_ff stays within ±8 % of ``glu_factor * d_model`` when any such model meets the budget, else the window
    widens (``ff_windows``) and ``Solution.real_glu_factor`` says what was achieved.

    Raises:
        ConfigError: when no choice meets both tolerances (the message says what was closest).
    """
    for name, value, ok, allowed in (
            ("total_params", total_params, _finite(total_params) and total_params >= 1, "a finite number >= 1"),
            ("vocab_size", vocab_size, _int(vocab_size) and vocab_size > 0, "an int > 0"),
            ("embed_share", embed_share, _finite(embed_share) and 0 < embed_share < 1,
             "in (0, 1) (PRD: 0.25, 0.35, 0.45)"),
            ("glu_factor", glu_factor, _finite(glu_factor) and glu_factor > 0, "> 0 (PRD: 2.0, 2.66, 3.0, 4.0)"),
            ("block_size", block_size, _int(block_size) and block_size > 0, "an int > 0")):
        if not ok:
            raise ConfigError(f"{name}={value!r} must be {allowed}")
    target = int(round(float(total_params)))
    # The embedding alone is vocab_size * n_embd, so the share fixes the width: bound it before searching (a
    # 1e12 budget at V=16k would mean n_embd ~ 2e7 and a search over millions of widths).
    need = (embed_share - share_tol) * target / vocab_size
    if need > MAX_WIDTH:
        raise ConfigError(
            f"total_params={target:,} with vocab_size={vocab_size} and embed_share={embed_share} needs "
            f"n_embd >= {int(need):,} (the embedding is vocab_size * n_embd); the solver searches n_embd <= "
            f"{MAX_WIDTH:,}. Lower total_params or embed_share, or raise vocab_size")
    base = dict(vocab_size=vocab_size, mlp=mlp, pos=pos, norm=norm, tie_embeddings=tie_embeddings,
                block_size=block_size, **(blocks or {}))
    metric = "active" if budget == "active" else "total"
    d_lo = (embed_share - share_tol) * target / vocab_size
    d_hi = min(MAX_WIDTH, (embed_share + share_tol) * target / vocab_size)
    closest = (math.inf, "nothing in the share window")
    # The total and the share are hard limits; the GLU factor is matched as closely as the budget allows. With a
    # big vocabulary share only 1-4 wide layers fit and one layer is 20-50 % of the backbone, so d_ff must absorb
    # the remainder: try a tight window first and widen it only when nothing fits (Solution reports the real factor).
    for window in ff_windows:
        best, best_key = None, None
        step = max(8, width_multiple // 2)  # multiples of width_multiple preferred, of its half accepted
        for d in range(max(step, math.ceil(d_lo / step) * step), int(d_hi) + 1, step):
            heads = [d // hd for hd in head_dims if d % hd == 0 and d // hd >= 2] or \
                [d // hd for hd in head_dims if d % hd == 0]
            if not heads:
                continue
            def counted(n: int, d=d, head=heads[0], ff=ff_multiple) -> int:
                return param_counts(Shape(n_embd=d, n_layer=n, n_head=head, d_ff=ff, **base))[metric]

            # params per unit of d_ff in one block (all experts of an MoE, or top_k for an active budget): the
            # registered MLP's count, which is linear in d_ff
            per_ff = max(1, (counted(1, ff=2 * ff_multiple) - counted(1)) // ff_multiple)
            # What does not grow with d_ff (embeddings, head, norms, mixers, routers) is linear in the depth, except
            # in a hybrid, whose attention layers come every attn_every-th: there it is counted at each depth.
            hybrid = base.get("mixer") == "hybrid"
            one, two = (0, 0) if hybrid else (counted(1), counted(2))
            for n_layer in range(base.get("attn_every") or 1, 129):
                # the d_ff that hits the target exactly for this depth, clipped to the window around glu_factor
                at = counted(n_layer) if hybrid else one + (n_layer - 1) * (two - one)
                no_ff = at - n_layer * per_ff * ff_multiple
                ff_exact = (target - no_ff) / (n_layer * per_ff)
                lo, hi = glu_factor * d * (1 - window), glu_factor * d * (1 + window)
                cands = {ff_multiple * math.floor(ff_exact / ff_multiple),
                         ff_multiple * math.ceil(ff_exact / ff_multiple)}
                for ff in sorted(f for f in cands if lo <= f <= hi and f > 0):
                    cfg = Shape(n_embd=d, n_layer=n_layer, n_head=heads[0], d_ff=ff, **base)
                    c = param_counts(cfg)
                    err = abs(c[metric] - target) / target
                    share = c["embedding"] / c[metric]
                    if err < closest[0]:
                        closest = (err, f"n_embd={d} n_layer={n_layer} d_ff={ff}: {metric} {c[metric]:,}, "
                                        f"share {share:.3f}")
                    if err > tol or abs(share - embed_share) > share_tol:
                        continue
                    aspect = abs(math.log((d / n_layer) / 64))  # Kaplan: loss is flat in aspect ratio; prefer ~64
                    key = (round(abs(ff / d - glu_factor) / glu_factor, 2), d % width_multiple != 0, aspect, err)
                    if best_key is None or key < best_key:
                        best_key, best = key, cfg
        if best is not None:
            break
    if best is None:
        raise ConfigError(
            f"no model with total_params={target:,} (±{100 * tol:.0f} %), vocab_size={vocab_size} and "
            f"embed_share={embed_share} (±{100 * share_tol:.0f} pt) exists; closest: {closest[1]}. "
            "Raise total_params, lower embed_share or use a smaller vocab_size.")
    c = param_counts(best)
    dims = dict(n_embd=best.n_embd, n_layer=best.n_layer, n_head=best.n_head, d_ff=best.d_ff)
    return Solution(dims=dims, target=target, total=c[metric], embed_share=c["embedding"] / c[metric],
                    requested_share=embed_share, glu_factor=glu_factor, real_glu_factor=best.d_ff / best.n_embd,
                    table=c)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m tinylm.budget", description=solve.__doc__.split("\n")[0])
    p.add_argument("--total_params", type=float, required=True)
    p.add_argument("--vocab_size", type=int, default=16000)
    p.add_argument("--embed_share", type=float, default=0.35)
    p.add_argument("--glu_factor", type=float, default=2.66)
    p.add_argument("--mlp", default="swiglu", choices=("gelu", "swiglu"))
    p.add_argument("--pos", default="rope", choices=("learned", "rope"))
    p.add_argument("--norm", default="rmsnorm", choices=("layernorm", "rmsnorm"))
    p.add_argument("--untied", action="store_true", help="untied output head (counts V*d twice)")
    p.add_argument("--block_size", type=int, default=256)
    a = p.parse_args(argv)
    try:
        sol = solve(a.total_params, a.vocab_size, a.embed_share, a.glu_factor, mlp=a.mlp, pos=a.pos, norm=a.norm,
                    tie_embeddings=not a.untied, block_size=a.block_size)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    print(sol.describe())


if __name__ == "__main__":
    main()
