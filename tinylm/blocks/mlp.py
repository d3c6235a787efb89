"""The dense MLPs (registry names ``gelu`` and ``swiglu``): ``n_embd -> hidden -> n_embd``, (B, T, C) in and out.

Both hold ``c_fc`` and ``c_proj`` (nanoGPT's names, so state_dicts and the seeded init's per-name draws are those
of every earlier tinylm model). GeluMLP: c_fc (C -> hidden), GELU. SwiGLU (Shazeer 2020, arXiv:2002.05202): the
gate and up projections fused into one matmul, c_fc (C -> 2 hidden), gate first, silu(gate) * up.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class DenseMLP(nn.Module):
    """c_fc (C -> ``FC_MULT`` x hidden), ``activation``, c_proj (hidden -> C), dropout on the output."""

    FC_MULT = 1

    def __init__(self, n_embd: int, hidden: int, bias: bool = False, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, self.FC_MULT * hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_config(cls, cfg, layer_idx: int = 0) -> DenseMLP:
        return cls(cfg.n_embd, cfg.ffn_hidden, bias=cfg.bias, dropout=cfg.dropout)

    def param_roles(self) -> dict[str, str]:
        """Weights are Muon matrices, biases are not decayed (tinylm.blocks.registry)."""
        return {n: "matrix" if n.endswith(".weight") else "no_decay" for n, _ in self.named_parameters()}

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.activation(self.c_fc(x))))


class GeluMLP(DenseMLP):
    FC_MULT = 1

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        return F.gelu(h)


class SwiGLU(DenseMLP):
    FC_MULT = 2

    def activation(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
