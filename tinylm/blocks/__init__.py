"""The block library: token mixers (what moves information between positions, in place of attention) and MLPs
(the per-token feed-forward, in place of model.MLP), each selectable by name from ``MIXERS`` / ``MLPS`` with the
same input/output shape (B, T, C) as the blocks of tinylm.model. ``Mamba`` is a Mamba-1 selective SSM
(arXiv:2312.00752) with an ``SSMCache`` for decoding; ``MoEMLP`` a top-k mixture of experts (arXiv:2101.03961) with
its auxiliary losses. Every block offers ``init_(std, std_out, generator_for)`` for GPT.init_weights' seeded init.
"""

from tinylm.blocks.moe import MoEMLP
from tinylm.blocks.ssm import Mamba, SSMCache, selective_scan, selective_scan_ref

MIXERS = {"mamba": Mamba}
MLPS = {"moe": MoEMLP}

__all__ = ["MIXERS", "MLPS", "Mamba", "MoEMLP", "SSMCache", "selective_scan", "selective_scan_ref"]
