"""The block library: token mixers (what moves information between positions: attention, ``Mamba``) and MLPs (the
per-token feed-forward: ``GeluMLP``, ``SwiGLU``, the mixture of experts ``MoEMLP``), all chosen through ONE
registry, ``tinylm.blocks.registry``, which the model (which block a layer builds), the parameter accounting
(tinylm.budget: counts and FLOPs) and the optimizer (tinylm.optim: which parameters Muon takes, which are decayed)
read. ``Mamba`` is a Mamba-1 selective SSM (arXiv:2312.00752) with an ``SSMCache`` for decoding; ``MoEMLP`` a top-k
mixture of experts (arXiv:2101.03961) with its auxiliary losses.

Importing this package (and the registry) loads no torch: the modules are imported when first used
(``tinylm.blocks.Mamba``, or ``spec.load()`` when a model is built), so config.py and budget.py stay light.

How to add a block (say an MLP ``relu2``):

1. One class, in one file (e.g. ``tinylm/blocks/relu2.py``): an nn.Module with ``from_config(cfg, layer_idx)``
   (a classmethod that builds it from a Config) and ``param_roles()`` (each of its parameters -> ``matrix`` |
   ``experts`` | ``decay`` | ``no_decay``, what the optimizer does with it); its forward is ``mlp(x)`` for an MLP,
   ``mixer(x, rope, cache)`` for a mixer, (B, T, C) in and out. Optionally ``init_(std, std_out, generator_for)``
   for tensors GPT.init_weights' nn.Linear/Embedding loop does not draw.
2. One registration, in ``tinylm/blocks/registry.py``: ``register(BlockSpec("relu2", "mlp",
   "tinylm.blocks.relu2:Relu2MLP", relu2_params, component="mlp"))`` with ``relu2_params(cfg)`` its exact
   parameter count (torch-free), and for a mixer ``attr=`` (its state_dict prefix) and ``flops_per_token=`` (its
   FLOPs beyond 6 per matmul parameter). The name is then a value of ``cfg.mlp`` / ``cfg.mixer``
   (``tinylm.config.CHOICES`` reads the registry when it validates a Config).
3. One test: the built block's ``sum(numel)`` equals its spec's count and ``GPT`` trains with it (see
   tests/test_blocks_model.py, which registers a toy block and checks model, budget and optimizer pick it up).
"""

import importlib

from tinylm.blocks.registry import (
    MIXERS,
    MLPS,
    PARAM_ROLES,
    BlockSpec,
    mixer_block,
    mlp_block,
    register,
    registered,
    unregister,
)

_LAZY = {"Mamba": "tinylm.blocks.ssm", "SSMCache": "tinylm.blocks.ssm", "selective_scan": "tinylm.blocks.ssm",
         "selective_scan_ref": "tinylm.blocks.ssm", "MoEMLP": "tinylm.blocks.moe", "GeluMLP": "tinylm.blocks.mlp",
         "SwiGLU": "tinylm.blocks.mlp"}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["MIXERS", "MLPS", "PARAM_ROLES", "BlockSpec", "GeluMLP", "Mamba", "MoEMLP", "SSMCache", "SwiGLU",
           "mixer_block", "mlp_block", "register", "registered", "selective_scan", "selective_scan_ref",
           "unregister"]
