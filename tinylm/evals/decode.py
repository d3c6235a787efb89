"""Greedy decoding with a key/value cache for tinylm.model.GPT (the model itself has none).

Without a cache every generated token re-reads the whole prompt: SQuAD at 16 new tokens over ~220-token prompts
cost 2/3 of the suite. ``CachedGPT`` runs the model's own submodules (embeddings, norms, ``c_attn``/``c_proj``,
MLP) but keeps each layer's keys and values, so a step costs one token per row. It mirrors
``GPT.forward``/``Block.forward``/``CausalSelfAttention.forward``; ``greedy_until`` checks the prompt logits of
its first batch against ``model(idx)`` and falls back to full re-reads on any mismatch (a model change that this
file does not follow, e.g. a new attention variant, costs time, never correctness).

Rows of a batch have different prompt lengths. The batch is right-padded and prefilled at once (causal masking
keeps each row's real positions blind to its pads); row b's first new token then goes to position ``len_b``,
overwriting the pad's cache slot, and each new query sees keys ``<= its own position`` only (an explicit mask).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def supports(model: torch.nn.Module) -> bool:
    from tinylm.model import GPT

    return type(model) is GPT and not model.training


class CachedGPT:
    def __init__(self, model, batch: int, length: int):
        self.m, self.cfg = model, model.cfg
        p = next(model.parameters())
        shape = (batch, model.cfg.n_head, length, model.cfg.head_dim)
        self.cache = [(torch.zeros(shape, dtype=p.dtype, device=p.device),
                       torch.zeros(shape, dtype=p.dtype, device=p.device)) for _ in range(model.cfg.n_layer)]
        self.keys = torch.arange(length, device=p.device)

    def _rope(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        # as tinylm.model.apply_rope, with a position per row: cos/sin (B, 1, t, hs/2)
        cos, sin = self.m.rope_cos[pos][:, None].to(x.dtype), self.m.rope_sin[pos][:, None].to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)

    def __call__(self, idx: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, t, C) of tokens ``idx`` (B, t) at positions ``pos`` (B, t); caches their K/V."""
        tr, (B, t) = self.m.transformer, idx.shape
        x = tr.wte(idx)
        if self.cfg.pos == "learned":
            x = x + tr.wpe(pos)
        x = tr.drop(x)
        mask = (self.keys[None, None, :] <= pos[:, :, None])[:, None]  # (B, 1, t, S): key j visible to query i
        rows = torch.arange(B, device=idx.device)[:, None].expand(B, t)
        for block, (K, V) in zip(tr.h, self.cache):
            att = block.attn
            h = block.ln_1(x)
            C = h.size(-1)
            q, k, v = (z.view(B, t, att.n_head, C // att.n_head).transpose(1, 2)  # (B, nh, t, hs)
                       for z in att.c_attn(h).split(att.n_embd, dim=2))
            if self.cfg.pos == "rope":
                q, k = self._rope(q, pos), self._rope(k, pos)
            K[rows, :, pos] = k.transpose(1, 2)  # (B, t, nh, hs) into slots (b, :, pos[b, i])
            V[rows, :, pos] = v.transpose(1, 2)
            y = F.scaled_dot_product_attention(q, K, V, attn_mask=mask)  # (B, nh, t, hs)
            x = x + att.resid_dropout(att.c_proj(y.transpose(1, 2).contiguous().view(B, t, C)))
            x = x + block.mlp(block.ln_2(x))
        return tr.ln_f(x)


@torch.no_grad()
def greedy_batch(model, head: Callable, prompts: list[list[int]], max_new_tokens: int,
                 done: Callable[[list[int]], bool], check: bool = True) -> list[list[int]] | None:
    """Greedy tokens after each prompt until ``done(tokens)`` or ``max_new_tokens``; with ``check``, None if the
    cached forward does not reproduce ``model(idx)`` (the caller then re-reads the prompts without a cache)."""
    dev = next(model.parameters()).device
    B, P = len(prompts), max(len(p) for p in prompts)
    lens = torch.tensor([len(p) for p in prompts], device=dev)
    x = torch.zeros((B, P), dtype=torch.long, device=dev)
    for b, p in enumerate(prompts):
        x[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    run = CachedGPT(model, B, P + max_new_tokens)
    rows = torch.arange(B, device=dev)
    hidden = run(x, torch.arange(P, device=dev).expand(B, P))
    last = head(hidden[rows, lens - 1])
    if check:  # the model's own logits at each row's last prompt token
        ref = head(model(x)[0][rows, lens - 1])
        tol = 1e-4 if ref.dtype == torch.float32 else 3e-2
        if ref.shape != last.shape or not torch.allclose(last.float(), ref.float(), rtol=tol, atol=tol):
            return None
    gen: list[list[int]] = [[] for _ in prompts]
    active = [True] * B
    for step in range(max_new_tokens):
        nxt = last.argmax(-1)
        for b in range(B):
            if active[b]:
                gen[b].append(int(nxt[b]))
                active[b] = not done(gen[b])
        if not any(active) or step == max_new_tokens - 1:
            break
        last = head(run(nxt[:, None], (lens + step)[:, None])[:, 0])
    return gen
