"""K seeds of one config trained as one batched model (``Config.seeds_per_trial``), applied from outside the model.

``Ensemble(cfg)`` builds the K members as plain ``GPT``s (member k: ``cfg.seed + k``, so its init is the solo run's
tensor for tensor: tinylm.model seeds every tensor from (seed, its name)), stacks their parameters with
``torch.func.stack_module_state`` (each parameter gains a leading member dimension) and runs one member's module
through ``vmap(functional_call)`` up to its final hidden states; each member's head and loss are then taken on their
own, as its solo run takes them. ``model.py`` stays one plain model, as torchtitan applies parallelism to
single-device model code. Members share nothing: a batched matmul computes each member from its own slice, the
loss is the sum of the members' mean losses (so each member's gradient is its solo gradient), and what a plain
optimizer step would couple across members is done per member here:

- gradient clipping: ``clip_per_member`` (each member's own global norm);
- a non-finite loss: ``quarantine`` zeroes that member's gradients on the device, so its NaNs never reach its
  optimizer state (each member's slice of every tensor is its own: AdamW and Lion are elementwise, and Muon
  orthogonalises each member's matrix on its own, tinylm.optim);
- the optimizer: parameter groups follow member 0's roles (``split_stacked``).

At bf16 or ZeRO 1/2 DeepSpeed moves each gradient into its own flat buffers during backward, so the loop takes the
members' gradients itself (``member_grads``), clips and quarantines them, and hands them over through one
DeepSpeed backward of ``forward(handoff=grads)``: a scalar whose gradient is exactly ``grads``
(tinylm.config.ensemble_handoff).

With ``dropout`` > 0 each member draws its own masks (vmap's ``randomness="different"``), not its solo run's: the
members stay independent, but match their solo runs only in distribution.

Pure PyTorch (no DeepSpeed, no Ray): ``tinylm.train.ensemble`` runs it through the usual engine.
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from tinylm.config import Config, member_config, member_seeds
from tinylm.model import GPT

# CPU's flash-attention kernel has no vmap batching rule, so vmap runs it once per member (measured on this CPU: as
# fast as the math kernel batched, 605-616 vs 640-659 ms for a K = 8 step); the warning would repeat in every log
warnings.filterwarnings("ignore", message=r".*batching rule for aten::_scaled_dot_product_flash_attention_for_cpu")
SEP = "::"  # a parameter's dotted name as a ParameterDict key (a key cannot hold '.')


class Ensemble(nn.Module):
    """``losses, loss = ensemble(x, y)``: x, y of shape (K, B, T) (each member its own batch) or (B, T) (the same
    batch for every member, as an eval); ``losses`` (K,) are the members' mean cross-entropies (detached), ``loss``
    their sum, what backward takes. ``member(k)`` is member k as a ``GPT`` (its own copy of the weights)."""

    def __init__(self, cfg: Config):
        super().__init__()
        self.cfg = cfg
        self.k = cfg.seeds_per_trial
        members = [GPT(member_config(cfg, k)) for k in range(self.k)]
        params, buffers = stack_module_state(members)  # tied weights appear once (wte; lm_head follows it)
        self.names = list(params)
        self.stacked = nn.ParameterDict({n.replace(".", SEP): nn.Parameter(p) for n, p in params.items()})
        for p in self.stacked.values():
            p._members = True  # Muon orthogonalises each member's matrix on its own (tinylm.optim)
        for n, b in buffers.items():  # identical across members (RoPE's tables): one copy
            self.register_buffer(n.replace(".", SEP), b[0].clone(), persistent=False)
        self._buffer_names = list(buffers)
        self._roles = _member_roles(members[0], cfg)
        # the skeleton functional_call runs (meta: it holds no weights), its head an identity: the vmapped forward
        # returns each member's final hidden states, and each member's logits and loss are taken one member at a
        # time outside vmap, as its solo run takes them. (The K members' logits at once are K x B x T x V floats,
        # 100 MB at the GLU replica's K = 8: written and read back from memory, not cache, they cost more than the
        # batching saved.)
        base = copy.deepcopy(members[0]).to("meta")
        base.lm_head = nn.Identity()
        object.__setattr__(self, "_base", base)  # not a submodule: its (meta) parameters are nobody's to train
        self.head = "transformer.wte.weight" if cfg.tie_embeddings else "lm_head.weight"
        self._body = [n for n in self.names if n != "lm_head.weight"]

        def hidden(params, buffers, x):
            return functional_call(self._base, (params, buffers), (x,))[0]

        self._hidden = hidden

    def param(self, name: str) -> nn.Parameter:
        """The stacked (K, ...) parameter of a member's parameter ``name`` (dotted, as in ``GPT``)."""
        return self.stacked[name.replace(".", SEP)]

    def _state(self) -> tuple[dict, dict]:
        params = {n: self.param(n) for n in self._body}
        buffers = {n: getattr(self, n.replace(".", SEP)) for n in self._buffer_names}
        return params, buffers

    def forward(self, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
                handoff: list[torch.Tensor] | None = None) -> tuple[torch.Tensor | None, torch.Tensor]:
        if handoff is not None:  # (None, a scalar whose gradient w.r.t. each stacked parameter is ``handoff``)
            return None, sum((p * g.to(p.dtype)).sum() for p, g in zip(self.stacked.values(), handoff, strict=True))
        params, buffers = self._state()
        shared = x.dim() == 2
        randomness = "different" if self.cfg.dropout > 0 else "error"
        h = vmap(self._hidden, in_dims=(0, None, None if shared else 0), randomness=randomness)(params, buffers, x)
        head = self.param(self.head)  # (K, V, C)
        losses = []
        for k in range(self.k):  # GPT.forward's head and loss, on member k's hidden states
            logits = F.linear(h[k], head[k])
            targets = y if shared else y[k]
            losses.append(F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1),
                                          ignore_index=-1))
        losses = torch.stack(losses)
        return losses.detach(), losses.sum()

    @torch.no_grad()
    def member(self, k: int) -> GPT:
        """Member ``k`` as a plain GPT of ``member_config(cfg, k)`` holding a copy of its current weights."""
        model = GPT(member_config(self.cfg, k)).to(next(iter(self.stacked.values())).device)
        own = dict(model.named_parameters())
        for n in self.names:
            own[n].copy_(self.param(n)[k])
        return model

    def split_stacked(self, muon: bool = False) -> dict[str, list[nn.Parameter]]:
        """``tinylm.optim.split_params`` for the stacked parameters: each goes where member 0's goes."""
        out: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "vector": []}
        for n in self.names:
            out[self._roles[n]].append(self.param(n))
        return out


def _member_roles(model: GPT, cfg: Config) -> dict[str, str]:
    """A member's parameter name -> its optimizer bucket (matrix / embed / vector), from tinylm.optim's rules."""
    from tinylm.optim import split_params

    ids = {id(p): n for n, p in model.named_parameters()}
    return {ids[id(p)]: bucket for bucket, ps in split_params(model, muon=cfg.optimizer == "muon").items()
            for p in ps}


def member_grads(model: Ensemble, loss: torch.Tensor) -> list[torch.Tensor]:
    """d ``loss`` / d every stacked parameter (in ``model.stacked`` order), fp32, taken with ``autograd.grad``:
    ``p.grad`` and the hooks DeepSpeed puts on its accumulation are not touched (tinylm.config.ensemble_handoff).
    A parameter the loss does not reach gets zeros."""
    params = list(model.stacked.values())
    got = torch.autograd.grad(loss, params, allow_unused=True)
    return [torch.zeros(p.shape, dtype=torch.float32, device=p.device) if g is None else g.float()
            for p, g in zip(params, got, strict=True)]


def _grads(model: Ensemble, grads: list[torch.Tensor] | None) -> list[torch.Tensor]:
    """``grads`` (``member_grads``'s), or the stacked parameters' ``p.grad`` where they have one."""
    if grads is not None:
        return grads
    return [p.grad for p in model.stacked.values() if p.grad is not None]


@torch.no_grad()
def grad_norms(model: Ensemble, grads: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Each member's global gradient 2-norm, (K,) float32 (a missing gradient counts as zero), of ``p.grad`` or of
    ``grads``."""
    sq = None
    for g in _grads(model, grads):
        s = g.detach().float().pow(2).reshape(model.k, -1).sum(1)
        sq = s if sq is None else sq + s
    return torch.zeros(model.k, device=next(iter(model.stacked.values())).device) if sq is None else sq.sqrt()


@torch.no_grad()
def clip_per_member(model: Ensemble, max_norm: float, grads: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Clip each member's gradients (``p.grad``, or ``grads``) to its own global norm ``max_norm`` (the rule of
    torch's clip_grad_norm_ and DeepSpeed's: scale by max_norm / (norm + 1e-6) when that is < 1). Returns the norms
    before clipping."""
    norms = grad_norms(model, grads)
    if max_norm > 0:
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in _grads(model, grads):
            g.mul_(coef.to(g.device, g.dtype).view(-1, *[1] * (g.dim() - 1)))
    return norms


@torch.no_grad()
def quarantine(model: Ensemble, dead: torch.Tensor, grads: list[torch.Tensor] | None = None) -> None:
    """Zero the gradients (``p.grad``, or ``grads``) of the members marked in ``dead`` (K,) bool, on the device and
    without a host sync: a diverged member's NaN gradients never reach its optimizer state (each member's slice of
    every tensor is its own, so they could not reach the others' anyway); the live members' gradients are
    untouched."""
    for g in _grads(model, grads):
        g.masked_fill_(dead.to(g.device).view(-1, *[1] * (g.dim() - 1)), 0.0)


__all__ = ["Ensemble", "clip_per_member", "grad_norms", "member_config", "member_grads", "member_seeds", "quarantine"]
