"""Optimisers and learning-rate schedules: AdamW, Lion, Muon (+ AdamW for the rest); warmup + cosine/linear/constant.

Pure PyTorch. Everything a sweep varies comes from the Config (``optimizer``, ``lr``, ``muon_lr``, ``weight_decay``,
``beta1``, ``beta2``, ``schedule``, ``warmup``, ``min_lr_ratio``, ``train_tokens``); the schedule is a pure function
of tokens seen, so runs of different batch sizes share it. Gradient clipping is not done here (DeepSpeed's
``gradient_clipping`` or the training loop does it before ``step``).

Every param group carries ``lr_scale`` (its peak LR divided by ``cfg.lr``), so ``set_lr`` multiplies one factor:
``group["lr"] = cfg.lr * group["lr_scale"] * lr_factor(cfg, tokens_seen)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from tinylm.config import Config

try:  # private helper (torch >= 2.2); CPU joined the list with the CPU fused AdamW kernel in torch 2.4
    from torch.optim.optimizer import _get_fused_kernels_supported_devices
except ImportError:  # pragma: no cover - a future torch that renames it: fall back to the plain kernels
    def _get_fused_kernels_supported_devices() -> list[str]:
        return []

# Muon's own hyperparameters. The Config has no fields for them yet, so they are fixed here.
MUON_MOMENTUM = 0.95  # Keller Jordan's default; torch.optim.Muon's default
MUON_ADJUST_LR = "original"  # update scaled by sqrt(max(1, fan_out / fan_in)), as modded-nanogpt; muon_lr ~ 0.02


# --- parameter groups -------------------------------------------------------------------------------------------
def _is_embed_or_head(module_name: str, module: nn.Module) -> bool:
    return isinstance(module, nn.Embedding) or module_name.rsplit(".", 1)[-1] == "lm_head"


_BUCKET = {"matrix": "matrix", "experts": "matrix", "decay": "embed", "no_decay": "vector"}  # role -> split
_ROLE_NDIM = {"matrix": 2, "experts": 3}


def _declared_roles(model: nn.Module) -> dict[int, str]:
    """id(parameter) -> role, from every block's ``param_roles()`` (tinylm.blocks.registry); a block inside a
    declaring block is covered by the outer declaration."""
    roles: dict[int, str] = {}
    owners: list[str] = []
    for mname, module in model.named_modules(remove_duplicate=False):
        declare = getattr(module, "param_roles", None)
        if not callable(declare) or any(o == "" or mname.startswith(f"{o}.") for o in owners):
            continue
        owners.append(mname)
        params = dict(module.named_parameters())
        declared = declare()
        if set(declared) != set(params):
            raise ValueError(f"{mname or type(module).__name__}.param_roles() must name each of its parameters once: "
                             f"undeclared {sorted(set(params) - set(declared))}, unknown "
                             f"{sorted(set(declared) - set(params))}")
        for name, role in declared.items():
            p = params[name]
            if role not in _BUCKET or _ROLE_NDIM.get(role, p.ndim) != p.ndim:
                raise ValueError(f"{mname + '.' if mname else ''}{name}: role {role!r} for a {p.ndim}-D tensor; roles "
                                 "are matrix (2-D), experts (3-D), decay, no_decay")
            roles[id(p)] = role
    return roles


def split_params(model: nn.Module, muon: bool = False) -> dict[str, list[nn.Parameter]]:
    """Sort the trainable parameters into ``matrix`` (Muon's: hidden 2-D weight matrices, and an MoE's 3-D stacks of
    expert matrices), ``embed`` (decayed, not Muon's: token / position embeddings, an untied lm_head, a conv kernel)
    and ``vector`` (not decayed: biases, norm gains, a Mamba's A_log, D and dt_bias).

    A block of the registry declares its parameters' roles (``param_roles()``: matrix | experts -> ``matrix``,
    decay -> ``embed``, no_decay -> ``vector``; see tinylm.blocks.registry). Parameters of other modules
    (embeddings, head, norms) follow the shape rule: embeddings (``nn.Embedding``) and the module named ``lm_head``
    -> ``embed``; < 2-D or marked ``_no_weight_decay`` -> ``vector``; other 2-D -> ``matrix``; other >= 3-D ->
    ``embed``, except with ``muon``: Muon takes only the 3-D stacks a block declares, so an undeclared one raises
    ValueError. A parameter shared between modules (``wte`` tied to ``lm_head``) is listed once, as an embedding.
    """
    stacked = getattr(model, "split_stacked", None)  # tinylm.ensemble: K members, each parameter where member 0's is
    if callable(stacked):
        return stacked(muon)
    special: set[int] = set()
    for mname, module in model.named_modules(remove_duplicate=False):
        if _is_embed_or_head(mname, module):
            special.update(id(p) for p in module.parameters(recurse=False))
    roles = _declared_roles(model)
    out: dict[str, list[nn.Parameter]] = {"matrix": [], "embed": [], "vector": []}
    for name, p in model.named_parameters():  # deduplicated: a tied weight appears once
        if not p.requires_grad:
            continue
        if id(p) in roles:
            out[_BUCKET[roles[id(p)]]].append(p)
        elif p.ndim < 2 or getattr(p, "_no_weight_decay", False):
            out["vector"].append(p)
        elif id(p) in special or p.ndim > 2:
            if muon and p.ndim > 2 and id(p) not in special:
                raise ValueError(f"optimizer=muon: {name} is a {p.ndim}-D tensor {tuple(p.shape)} that no block "
                                 "declares; declare it in its block's param_roles() (experts: a stack of per-expert "
                                 "matrices for Muon; decay / no_decay: AdamW)")
            out["embed"].append(p)
        else:
            out["matrix"].append(p)
    return out


def param_groups(model: nn.Module, cfg: Config) -> list[dict[str, Any]]:
    """Param groups for ``cfg.optimizer``; every trainable parameter is in exactly one group, empty groups dropped.

    adamw / lion (nanoGPT): weight decay on every >= 2-D tensor (embeddings included), none on biases and norms.
    muon (Keller Jordan's MuonWithAuxAdam, modded-nanogpt): the hidden 2-D matrices go to Muon at ``cfg.muon_lr``
    (``use_muon=True``); embeddings, an untied head (decayed) and biases / norms (not decayed) go to AdamW at
    ``cfg.lr``. Each group has ``name``, ``lr`` (its peak LR), ``lr_scale`` (= lr / cfg.lr) and ``weight_decay``.
    """
    parts = split_params(model, muon=cfg.optimizer == "muon")
    wd = cfg.weight_decay
    if cfg.optimizer == "muon":
        groups = [
            dict(name="muon", params=parts["matrix"], use_muon=True, lr=cfg.muon_lr, lr_scale=cfg.muon_lr / cfg.lr,
                 weight_decay=wd),
            dict(name="adamw_decay", params=parts["embed"], use_muon=False, lr=cfg.lr, lr_scale=1.0, weight_decay=wd),
            dict(name="adamw_no_decay", params=parts["vector"], use_muon=False, lr=cfg.lr, lr_scale=1.0,
                 weight_decay=0.0),
        ]
    else:
        groups = [
            dict(name="decay", params=parts["matrix"] + parts["embed"], lr=cfg.lr, lr_scale=1.0, weight_decay=wd),
            dict(name="no_decay", params=parts["vector"], lr=cfg.lr, lr_scale=1.0, weight_decay=0.0),
        ]
    return [g for g in groups if g["params"]]


# --- Lion ----------------------------------------------------------------------------------------------------------
class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", arXiv:2302.06675, Alg. 2).

    ``c = b1*m + (1-b1)*g;  p <- p*(1 - lr*wd) - lr*sign(c);  m <- b2*m + (1-b2)*g``. The paper's defaults are
    betas=(0.9, 0.99) and an LR 3-10x below AdamW's with a weight decay 3-10x above; here both come from the Config.
    """

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0) -> None:
        if lr < 0 or weight_decay < 0 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: bad lr={lr}, betas={betas} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd, (b1, b2) = group["lr"], group["weight_decay"], group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lion does not support sparse gradients")
                g = p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                update = (m * b1).add_(g, alpha=1 - b1).sign_()
                p.mul_(1 - lr * wd).add_(update, alpha=-lr)
                m.mul_(b2).add_(g, alpha=1 - b2)
        return loss


# --- Muon + AdamW as one optimizer ---------------------------------------------------------------------------------
class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with ``use_muon=True``, AdamW for the others, behind ONE ``torch.optim.Optimizer``.

    The pattern of Keller Jordan's ``MuonWithAuxAdam`` (github.com/KellerJordan/Muon), with the update rules of
    ``torch.optim.Muon`` and ``torch.optim.AdamW``. This object owns ``param_groups`` and ``state``, so LR schedules,
    ``state_dict``/``load_state_dict`` and DeepSpeed's client-optimizer path see one optimizer. The two inner
    optimizers only supply ``step``: they are re-pointed at the current groups and state before every step, because
    ``load_state_dict`` replaces both and DeepSpeed's fp16/bf16 wrappers swap ``group["params"]``.
    """

    def __init__(self, params: Iterable[dict[str, Any]], *, muon_kwargs: dict[str, Any] | None = None,
                 adamw_kwargs: dict[str, Any] | None = None) -> None:
        groups = [dict(g) for g in params]
        for g in groups:
            if not isinstance(g.get("use_muon"), bool):
                raise ValueError(f"MuonAdamW: every param group needs use_muon=True/False (group {g.get('name')!r})")
        muon_groups = [g for g in groups if g["use_muon"]]
        adamw_groups = [g for g in groups if not g["use_muon"]]
        for g in muon_groups:
            bad = [tuple(p.shape) for p in g["params"] if p.ndim not in (2, 3)]
            if bad:
                raise ValueError(f"MuonAdamW: Muon takes 2-D matrices and 3-D stacks of them; group "
                                 f"{g.get('name')!r} holds shapes {bad}")
        # The inner constructors fill each group's defaults (AdamW: in place, the dicts are then shared with this
        # optimizer's param_groups; Muon: in its view of the group, copied back).
        muon_views = [_matrices(g) for g in muon_groups]
        self._inner = {
            True: torch.optim.Muon(muon_views, **(muon_kwargs or {})) if muon_groups else None,
            False: torch.optim.AdamW(adamw_groups, **(adamw_kwargs or {})) if adamw_groups else None,
        }
        for g, view in zip(muon_groups, muon_views, strict=True):
            for k, v in view.items():
                g.setdefault(k, v)
        super().__init__(groups, defaults={})  # raises if a parameter sits in two groups

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for use_muon, inner in self._inner.items():
            groups = [g for g in self.param_groups if bool(g["use_muon"]) == use_muon]
            if not groups:
                continue
            if inner is None:
                raise RuntimeError(f"MuonAdamW: a use_muon={use_muon} group was added after construction")
            inner.param_groups = [_matrices(g) for g in groups] if use_muon else groups
            inner.state = self.state
            inner.step()
            if use_muon:
                for g in groups:
                    for p in g["params"]:
                        if p.ndim == 3 and p.grad is not None:
                            _muon_stack_step(p, self.state[p], g)
        return loss


def _matrices(group: dict[str, Any]) -> dict[str, Any]:
    """A Muon group as torch.optim.Muon sees it: its 2-D matrices only (3-D expert stacks are stepped by
    ``_muon_stack_step``)."""
    return {**group, "params": [p for p in group["params"] if p.ndim == 2]}


def _muon_stack_step(p: torch.Tensor, state: dict, group: dict[str, Any]) -> None:
    """torch.optim.Muon's update applied to each matrix of a 3-D stack (an MoE's experts, (E, in, out)) on its
    own: one momentum buffer for the stack, Newton-Schulz orthogonalisation per expert, the LR adjusted by each
    expert's nn.Linear shape (out, in). The same update as E separate 2-D parameters (tests/test_optim.py); Muon
    on the stacked tensor would orthogonalise a reshaped (E*in, out) matrix that mixes the experts."""
    from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz  # torch's own Muon arithmetic

    grad = p.grad
    members = getattr(p, "_members", False)  # tinylm.ensemble: (K, out, in), each member's nn.Linear weight
    buf = state.get("momentum_buffer")
    if buf is None:
        buf = state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
    buf.lerp_(grad, 1 - group["momentum"])
    update = grad.lerp(buf, group["momentum"]) if group["nesterov"] else buf
    lr = float(group["lr"])
    shape = p.shape[1:] if members else torch.Size((p.size(2), p.size(1)))  # nn.Linear's (out, in)
    adjusted = _adjust_lr(lr, group["adjust_lr_fn"], shape)
    p.mul_(1 - lr * group["weight_decay"])
    for e in range(p.size(0)):
        u = update[e] if members else update[e].mT
        ortho = _zeropower_via_newtonschulz(u, group["ns_coefficients"], group["ns_steps"], group["eps"])
        p[e].add_(ortho if members else ortho.mT, alpha=-adjusted)


# --- construction --------------------------------------------------------------------------------------------------
def _fused_ok(groups: list[dict[str, Any]]) -> bool:
    """torch's fused AdamW: ~4x faster than the for-loop on this CPU (d=384, L=6: 15 vs 58 ms/step)."""
    supported = _get_fused_kernels_supported_devices()
    return all(p.is_floating_point() and p.device.type in supported for g in groups for p in g["params"])


def build_optimizer(model: nn.Module, cfg: Config) -> torch.optim.Optimizer:
    """The optimizer for ``cfg.optimizer`` over ``param_groups(model, cfg)``, each group at its peak LR.

    Args:
        model: the GPT (or any module; see ``split_params`` for how parameters are sorted).
        cfg: uses optimizer, lr, muon_lr, weight_decay, beta1, beta2.
    Returns:
        ``torch.optim.AdamW``, ``Lion`` or ``MuonAdamW``; call ``set_lr`` before each step for the schedule.
    """
    groups = param_groups(model, cfg)
    betas = (cfg.beta1, cfg.beta2)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, fused=_fused_ok(groups) or None)
    if cfg.optimizer == "lion":
        return Lion(groups, lr=cfg.lr, betas=betas)
    if cfg.optimizer == "muon":
        adamw = [g for g in groups if not g["use_muon"]]
        return MuonAdamW(groups, muon_kwargs=dict(lr=cfg.muon_lr, momentum=MUON_MOMENTUM, nesterov=True,
                                                  adjust_lr_fn=MUON_ADJUST_LR),
                         adamw_kwargs=dict(lr=cfg.lr, betas=betas, fused=_fused_ok(adamw) or None))
    raise ValueError(f"optimizer={cfg.optimizer!r}; choose one of adamw, lion, muon")


# --- schedule ------------------------------------------------------------------------------------------------------
def lr_factor(cfg: Config, tokens_seen: int) -> float:
    """The LR multiplier after ``tokens_seen`` training tokens: in (0, 1], a pure function of tokens.

    Linear warmup over ``cfg.warmup`` tokens ((t+1)/warmup: small but non-zero at t=0, as nanoGPT's (it+1)), then
    ``cfg.schedule``: cosine or linear decay from 1 to ``cfg.min_lr_ratio`` at ``cfg.train_tokens`` (held there
    beyond), constant 1, or wsd: 1 until ``cfg.stable_tokens``, then linear to ``cfg.min_lr_ratio`` at
    ``cfg.train_tokens`` (warmup-stable-decay; a run cut at any point of its stable phase and cooled down is a
    complete shorter run, which is what ``cooldown_factor`` and the train loop's probes use).
    """
    t = max(0, tokens_seen)
    warmup = cfg.warmup
    if t < warmup:
        return min(1.0, (t + 1) / warmup)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "wsd":
        return cooldown_factor(cfg, t - cfg.stable_tokens, cfg.train_tokens - cfg.stable_tokens)
    if cfg.schedule == "linear":  # one linear cooldown over the whole run after warmup
        return cooldown_factor(cfg, t - warmup, cfg.train_tokens - warmup)
    if cfg.schedule != "cosine":
        raise ValueError(f"schedule={cfg.schedule!r}; choose one of cosine, linear, constant, wsd")
    span = cfg.train_tokens - warmup
    progress = 1.0 if span <= 0 else min(1.0, (t - warmup) / span)
    return cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cooldown_factor(cfg: Config, into: int, length: int) -> float:
    """The LR multiplier ``into`` tokens into a linear cooldown of ``length`` tokens: 1 before it, falling
    linearly to ``cfg.min_lr_ratio`` at its end, held there beyond (WSD's decay phase)."""
    progress = min(1.0, max(0.0, into / length)) if length > 0 else 1.0
    return 1.0 + (cfg.min_lr_ratio - 1.0) * progress


def probe_length(cfg: Config, tokens: int) -> int:
    """Tokens of the cooldown branch that turns ``tokens`` of a wsd run's stable phase into a complete run with
    the same ``decay_frac``: tokens * decay_frac / (1 - decay_frac) (a quarter of ``tokens`` at 0.2)."""
    return max(1, round(tokens * cfg.decay_frac / (1.0 - cfg.decay_frac)))


def set_lr_factor(optimizer: torch.optim.Optimizer, cfg: Config, factor: float) -> float:
    """Set every group's ``lr = cfg.lr * lr_scale * factor``; return ``cfg.lr * factor``."""
    for group in optimizer.param_groups:
        group["lr"] = cfg.lr * group.get("lr_scale", 1.0) * factor
    return cfg.lr * factor


def set_lr(optimizer: torch.optim.Optimizer, cfg: Config, tokens_seen: int) -> float:
    """Set every group's ``lr = cfg.lr * lr_scale * lr_factor(cfg, tokens_seen)``; return ``cfg.lr * factor``,
    the LR of the groups at the peak ``cfg.lr`` (AdamW's; for muon the Muon group runs at ``muon_lr * factor``)."""
    return set_lr_factor(optimizer, cfg, lr_factor(cfg, tokens_seen))


__all__ = ["Lion", "MuonAdamW", "build_optimizer", "cooldown_factor", "lr_factor", "param_groups", "probe_length",
           "set_lr", "set_lr_factor", "split_params"]
