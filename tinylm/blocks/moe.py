"""A mixture-of-experts MLP (registry name ``moe``), a drop-in for the dense MLPs of tinylm.blocks.mlp: (B, T, C)
in, (B, T, C) out.

A linear router (no bias) scores the E experts per token; softmax, then top-k: k=1 is Switch routing
(arXiv:2101.03961, the gate is the top probability so the router learns through it), k>=2 renormalises the
top-k probabilities to sum to 1 (Mixtral-style). Routing is dropless by default: every assignment is computed
(tokens sorted by expert, one gathered matmul per expert, results scattered back with ``index_add_``). With
``capacity_factor`` each expert takes at most ``ceil(capacity_factor * tokens * k / E)`` assignments and the rest
are dropped (contribute 0), in GShard/Switch priority order: every token's first choice (in token order) before
any second choice. A dropped assignment depends on the other tokens of the call, so with a capacity the output
of a token is not a function of its prefix alone: decode and evaluate dropless (``capacity_factor=None``).

Expert weights are 3-D stacks ``w_in`` (E, C, m*hidden) and ``w_out`` (E, hidden, C), m = 2 for SwiGLU (gate and
up fused, gate first, as blocks.mlp.SwiGLU) else 1, so an optimiser can treat each expert's matrix on its own
(``param_roles()`` declares them ``experts``). They are not nn.Linear, so GPT.init_weights' Linear loop does not
reach them: call ``init_(std, std_out, generator_for)`` after it (see that method).

Each forward stores, for the loss, ``self.aux = {"balance", "z"}`` (tensors with grad): the Switch load-balancing
loss E * sum_i f_i P_i (arXiv:2101.03961; f_i = fraction of the token-assignments routed to expert i before any
drop, P_i = mean router probability of i; 1 at perfect balance, E when one expert takes everything) and the
router z-loss mean(logsumexp(logits)^2) (ST-MoE, arXiv:2202.08906). Scale and add them in the training loop.
Routing statistics for reports go in ``self.stats`` (detached tensors, no device sync; ``routing_stats()`` gives
floats): per-expert ``load`` fractions, ``max_over_mean`` load, coefficient of variation ``cv`` of the loads, and
``dropped_frac``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F


class MoEMLP(nn.Module):
    """Top-k routed experts, each an MLP ``n_embd -> hidden -> n_embd`` (``act`` "swiglu" or "gelu").

    Args:
        n_embd: model width C.
        hidden: each expert's hidden width (as a dense MLP's ``cfg.ffn_hidden``).
        n_experts: E.
        top_k: experts per token (1 <= k <= E).
        act: "swiglu" (arXiv:2002.05202) or "gelu".
        bias: per-expert biases ``b_in`` (E, m*hidden) and ``b_out`` (E, C), zero-initialised.
        dropout: on the output, as a dense MLP.
        capacity_factor: None (or 0) for dropless routing; > 0 caps each expert at
            ``ceil(capacity_factor * tokens * k / E)`` assignments per forward.
    """

    def __init__(self, n_embd: int, hidden: int, n_experts: int, top_k: int, act: str = "swiglu",
                 bias: bool = False, dropout: float = 0.0, capacity_factor: float | None = None):
        super().__init__()
        if act not in ("swiglu", "gelu"):
            raise ValueError(f"act={act!r}; choose swiglu or gelu")
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be in [1, n_experts={n_experts}]")
        if capacity_factor is not None and capacity_factor < 0:
            raise ValueError(f"capacity_factor={capacity_factor} must be > 0 (or None / 0 for dropless)")
        self.n_embd, self.hidden, self.n_experts, self.top_k = n_embd, hidden, n_experts, top_k
        self.swiglu = act == "swiglu"
        self.capacity_factor = capacity_factor or None
        m = 2 if self.swiglu else 1
        self.router = nn.Linear(n_embd, n_experts, bias=False)
        self.w_in = nn.Parameter(torch.empty(n_experts, n_embd, m * hidden))
        self.w_out = nn.Parameter(torch.empty(n_experts, hidden, n_embd))
        self.b_in = nn.Parameter(torch.zeros(n_experts, m * hidden)) if bias else None
        self.b_out = nn.Parameter(torch.zeros(n_experts, n_embd)) if bias else None
        self.dropout = nn.Dropout(dropout)
        nn.init.normal_(self.w_in, std=0.02)  # usable standalone; init_ redraws everything reproducibly
        nn.init.normal_(self.w_out, std=0.02)
        self.aux: dict[str, torch.Tensor] = {}
        self.stats: dict[str, torch.Tensor] = {}

    @classmethod
    def from_config(cls, cfg, layer_idx: int = 0) -> MoEMLP:
        """``cfg.n_experts`` experts of ``cfg.ffn_hidden``, each the dense MLP ``cfg.mlp``, top ``cfg.top_k``."""
        return cls(cfg.n_embd, cfg.ffn_hidden, cfg.n_experts, cfg.top_k, act=cfg.mlp, bias=cfg.bias,
                   dropout=cfg.dropout, capacity_factor=cfg.capacity_factor or None)

    # --- parameters ----------------------------------------------------------------------------------
    def param_roles(self) -> dict[str, str]:
        """The router is a matrix; ``w_in``/``w_out`` are (E, rows, cols) stacks, one matrix per expert
        (orthogonalise / precondition ``p[e]`` per expert); the biases ``b_in``/``b_out`` (if any) are per-expert
        vectors (E, n), not decayed (tinylm.blocks.registry)."""
        roles = {"router.weight": "matrix", "w_in": "experts", "w_out": "experts"}
        return roles | {n: "no_decay" for n in ("b_in", "b_out") if getattr(self, n) is not None}

    def expert_params(self) -> tuple[str, ...]:
        """Names of the per-expert matrix stacks (``param_roles`` ``experts``)."""
        return tuple(n for n, role in self.param_roles().items() if role == "experts")

    def _expert_numel(self) -> int:
        n = self.w_in[0].numel() + self.w_out[0].numel()
        if self.b_in is not None:
            n += self.b_in[0].numel() + self.b_out[0].numel()
        return n

    def total_params(self) -> int:
        """Router plus all E experts (= sum of numel over parameters)."""
        return self.router.weight.numel() + self.n_experts * self._expert_numel()

    def active_params(self) -> int:
        """Parameters one token uses: router plus k experts."""
        return self.router.weight.numel() + self.top_k * self._expert_numel()

    @torch.no_grad()
    def init_(self, std: float, std_out: float, generator_for: Callable[[str], torch.Generator]) -> None:
        """Draw every parameter as GPT.init_weights draws a Linear: normal(0, std) for the router and each expert's
        input matrix, normal(0, std_out) (the residual-projection std) for each expert's output matrix, zero
        biases. Expert e's matrices are drawn in nn.Linear's (out, in) shape from ``generator_for("w_in.{e}")`` /
        ``generator_for("w_out.{e}")`` and stored transposed, the router from ``generator_for("router.weight")``.
        Drawn on the CPU in float32, so values do not depend on device or dtype. GPT.init_weights would call
        ``module.init_(0.02, std_proj, lambda n: tensor_generator(seed, f"{mod_name}.{n}"))`` after its Linear
        loop (the router's name then matches that loop's, so its draw is the same either way)."""
        def draw(shape, s, name):
            return torch.empty(shape).normal_(0.0, s, generator=generator_for(name))

        self.router.weight.copy_(draw(self.router.weight.shape, std, "router.weight"))
        for e in range(self.n_experts):
            self.w_in[e].copy_(draw(self.w_in[e].shape[::-1], std, f"w_in.{e}").t())
            self.w_out[e].copy_(draw(self.w_out[e].shape[::-1], std_out, f"w_out.{e}").t())
        if self.b_in is not None:
            self.b_in.zero_()
            self.b_out.zero_()

    # --- forward -------------------------------------------------------------------------------------
    def capacity(self, n_tokens: int) -> int | None:
        """Assignments each expert accepts for ``n_tokens`` tokens (None: unlimited)."""
        if self.capacity_factor is None:
            return None
        return math.ceil(self.capacity_factor * n_tokens * self.top_k / self.n_experts)

    def _expert(self, e: int, x: torch.Tensor) -> torch.Tensor:
        h = x @ self.w_in[e]
        if self.b_in is not None:
            h = h + self.b_in[e]
        if self.swiglu:
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        else:
            h = F.gelu(h)
        y = h @ self.w_out[e]
        if self.b_out is not None:
            y = y + self.b_out[e]
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape, C, E, k = x.shape, x.size(-1), self.n_experts, self.top_k
        xf = x.reshape(-1, C)
        N = xf.size(0)
        logits = self.router(xf)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # routing in >= float32
        probs = logits.softmax(dim=-1)  # (N, E)
        top_w, top_e = probs.topk(k, dim=-1)  # (N, k)
        if k > 1:
            top_w = top_w / top_w.sum(dim=-1, keepdim=True)
        # assignments in priority order: every token's first choice, then every token's second choice, ...
        flat_e = top_e.t().reshape(-1)  # (k N,)
        flat_w = top_w.t().reshape(-1)
        flat_tok = torch.arange(N, device=x.device).repeat(k)
        counts = torch.bincount(flat_e, minlength=E)  # routed (before drops)
        order = torch.argsort(flat_e, stable=True)  # grouped by expert, priority order kept within an expert
        cap = self.capacity(N)
        kept = counts
        if cap is not None:
            start = torch.cumsum(counts, 0) - counts
            rank = torch.arange(order.numel(), device=x.device) - start[flat_e[order]]
            order = order[rank < cap]
            kept = counts.clamp(max=cap)

        out = xf.new_zeros(N, C)
        for e, idx in enumerate(order.split(kept.tolist())):
            if idx.numel() == 0:
                continue
            tok = flat_tok[idx]
            y = self._expert(e, xf[tok]) * flat_w[idx, None].to(xf.dtype)
            out.index_add_(0, tok, y.to(out.dtype))

        # auxiliary losses (with grad) and routing statistics (detached)
        load = counts.to(probs.dtype) / (N * k)  # f_i
        self.aux = {"balance": E * (load * probs.mean(dim=0)).sum(),
                    "z": torch.logsumexp(logits, dim=-1).square().mean()}
        self.stats = {"load": load.detach(), "max_over_mean": load.max().detach() * E,
                      "cv": (load.std(unbiased=False) * E).detach(),
                      "dropped_frac": (1 - kept.sum() / (N * k)).to(probs.dtype).detach()}
        return self.dropout(out.view(shape))

    def routing_stats(self) -> dict[str, float | list[float]]:
        """The last forward's routing statistics as Python numbers (one device sync)."""
        return {name: v.tolist() for name, v in self.stats.items()}

    def extra_repr(self) -> str:
        return (f"n_embd={self.n_embd}, hidden={self.hidden}, n_experts={self.n_experts}, top_k={self.top_k}, "
                f"act={'swiglu' if self.swiglu else 'gelu'}, capacity_factor={self.capacity_factor}")
