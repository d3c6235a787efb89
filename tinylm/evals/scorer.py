"""The shared scorer: continuation log-likelihoods and greedy generation, batched and deterministic.

Protocol of lm-evaluation-harness (EleutherAI, v0.4, ``lm_eval/models/huggingface.py`` ``HFLM``), so numbers
are comparable:

- A request is (context, continuation). Trailing spaces of the context move to the continuation; the
  continuation's tokens are the tail of ``encode(context + continuation)`` after ``encode(context)``
  (``_encode_pair``). An empty context becomes the end-of-text token.
- The model reads ``(context + continuation)[-(block_size + 1):][:-1]``: a context longer than the window is
  left-truncated, the continuation kept. Its log-likelihood is the sum of its tokens' log-probs; ``is_greedy``
  says whether the argmax at every continuation position is the continuation's token.
- Multiple choice: ``acc`` picks the choice with the largest log-likelihood of ``" " + choice``, ``acc_norm``
  the largest log-likelihood per character of the choice (``len(choice)``, as lm-eval's ``completion_len``);
  standard errors are the sample standard deviation / sqrt(n) (lm-eval ``mean_stderr``).

Batching: rows are sorted longest first (ties by position), cut into batches, right-padded. Causal attention
means a row never sees the pad positions after its last token, and they are never scored, so results do not
depend on the batch size (up to float rounding of different matmul shapes, ~1e-6 in log-prob). Cost savers
that change no number: a choice whose input is a prefix of another choice's input is scored from that longer
row's forward pass (lm-eval caches one-token continuations the same way), and the vocabulary projection runs
only at the positions that are read (``head_at_positions``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from tinylm.checkpoint import unwrap
from tinylm.evals import decode


@dataclass(frozen=True)
class MC:
    """One multiple-choice example: the model scores ``context`` + ``" " + choice`` for every choice."""

    context: str
    choices: tuple[str, ...]
    gold: int


def model_device(model: torch.nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``_encode_pair``: (context tokens, continuation tokens)."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    if not context:
        return [tokenizer.eot_token], tokenizer.encode_ordinary(continuation)
    whole = tokenizer.encode_ordinary(context + continuation)
    ctx = tokenizer.encode_ordinary(context)
    if whole[: len(ctx)] != ctx:  # a merge across the boundary (not with GPT-2-style pre-tokenization)
        return ctx, tokenizer.encode_ordinary(continuation)
    return ctx, whole[len(ctx):]


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[s: s + batch_size] for s in range(0, len(order), batch_size)]


@contextlib.contextmanager
def head_at_positions(model: torch.nn.Module):
    """Make ``model(idx)`` return final hidden states instead of logits, and yield a function
    ``head(hidden) -> logits`` to apply at the few positions that are read.

    With V=8192 the vocabulary projection is about half the FLOPs of a 2M-parameter GPT, and the scorer reads
    only continuation positions (loglikelihood) or the last position (generation). Applies to models whose
    logits are exactly ``lm_head(final hidden)`` with ``lm_head`` an ``nn.Linear`` (tinylm.model.GPT), which is
    checked on a 4-token input each time; any other model runs unchanged and yields the identity.
    """
    head = getattr(model, "lm_head", None)
    ok = isinstance(head, nn.Linear)
    if ok:
        x = torch.arange(4, device=model_device(model))[None] % head.out_features
        full = model(x)[0]
        model.lm_head = nn.Identity()
        try:
            hidden = model(x)[0]
        finally:
            model.lm_head = head
        tol = 1e-4 if full.dtype == torch.float32 else 3e-2  # bf16 / fp16 GEMMs may round per shape
        ok = hidden.shape[-1] == head.in_features and torch.allclose(head(hidden).float(), full.float(),
                                                                      rtol=tol, atol=tol)
    if not ok:
        yield lambda logits: logits
        return
    model.lm_head = nn.Identity()
    try:
        yield head
    finally:
        model.lm_head = head


def _carriers(rows: Sequence[tuple[list[int], list[int]]], groups: Sequence[object]) -> list[int]:
    """carrier[i] = a row whose input starts with row i's input (itself if none), searched among rows of the same
    group (the choices of one question). A causal LM's logits on a prefix are the logits of the longer input at
    those positions, so one forward pass scores every choice whose input is a prefix of another's: all
    single-token choices of a question share one pass (e.g. the 39 sums of an arithmetic problem)."""
    carrier = list(range(len(rows)))
    members: dict[object, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    for idx in members.values():
        chosen: list[int] = []
        for i in sorted(idx, key=lambda i: (-len(rows[i][0]), i)):
            inp = rows[i][0]
            carrier[i] = next((c for c in chosen if rows[c][0][: len(inp)] == inp), i)
            if carrier[i] == i:
                chosen.append(i)
    return carrier


@torch.no_grad()
def loglikelihood(model: torch.nn.Module, tokenizer, requests: Sequence[tuple[str, str]], batch_size: int = 16,
                  block_size: int | None = None) -> list[tuple[float, bool, int]]:
    """(sum of log-probs, is_greedy, number of scored tokens) of each (context, continuation).

    Args:
        model: ``logits, _ = model(idx)`` with logits for every position (tinylm.model.GPT).
        tokenizer: ``encode_ordinary`` and ``eot_token``.
        requests: (context, continuation) pairs; the continuation usually starts with a space.
        batch_size: forward-pass rows per batch.
        block_size: the model's window (default ``model.cfg.block_size``).
    """
    model = unwrap(model)
    L = block_size or model.cfg.block_size
    device = model_device(model)
    rows = []  # (input ids, continuation ids scored)
    for ctx, cont in requests:
        c, t = encode_pair(tokenizer, ctx, cont)
        seq = (c + t)[-(L + 1):]
        n = min(len(t), len(seq) - 1)  # a continuation longer than the window keeps its last L tokens
        rows.append((seq[:-1], seq[len(seq) - n:]))
    carrier = _carriers(rows, [ctx for ctx, _ in requests])
    served: dict[int, list[int]] = {}
    for i, c in enumerate(carrier):
        served.setdefault(c, []).append(i)
    carriers = sorted(served)
    out: list[tuple[float, bool, int]] = [(0.0, True, 0)] * len(rows)
    with head_at_positions(model) as head:
        for batch in _batches([len(rows[c][0]) for c in carriers], batch_size):
            batch = [carriers[j] for j in batch]
            T = max(len(rows[c][0]) for c in batch)
            x = torch.zeros((len(batch), T), dtype=torch.long)
            b_idx, p_idx, tgt, owner, slots = [], [], [], [], []
            for b, c in enumerate(batch):
                x[b, : len(rows[c][0])] = torch.tensor(rows[c][0], dtype=torch.long)
                for i in served[c]:
                    inp, cont = rows[i]
                    b_idx += [b] * len(cont)
                    p_idx += range(len(inp) - len(cont), len(inp))
                    tgt += cont
                    owner += [len(slots)] * len(cont)
                    slots.append(i)
            hidden, _ = model(x.to(device))
            tgt_t, own_t = torch.tensor(tgt, device=device), torch.tensor(owner, device=device)
            sel = head(hidden[torch.tensor(b_idx, device=device), torch.tensor(p_idx, device=device)])
            sel = sel.to(torch.promote_types(sel.dtype, torch.float32))  # bf16 up to fp32; a float64 model stays
            logp = F.log_softmax(sel, dim=-1).gather(1, tgt_t[:, None]).squeeze(1).double()  # (N,)
            ll = torch.zeros(len(slots), dtype=torch.float64, device=device).index_add_(0, own_t, logp)
            miss = torch.zeros(len(slots), dtype=torch.float64, device=device).index_add_(
                0, own_t, (sel.argmax(dim=-1) != tgt_t).double())
            for s, i in enumerate(slots):
                out[i] = (float(ll[s]), bool(miss[s] == 0), len(rows[i][1]))
    return out


def _greedy_reread(model, head, prompts: list[list[int]], max_new_tokens: int,
                   done: Callable[[list[int]], bool]) -> list[list[int]]:
    """Greedy decoding without a cache: every step re-reads each active row's whole sequence. Rows are
    right-padded; row b's next-token logits are read at its own last position, which causal attention keeps
    blind to the pads after it. Finished rows leave the batch."""
    device = model_device(model)
    buf = torch.zeros((len(prompts), max(map(len, prompts)) + max_new_tokens), dtype=torch.long)
    for b, p in enumerate(prompts):
        buf[b, : len(p)] = torch.tensor(p, dtype=torch.long)
    lens = torch.tensor([len(p) for p in prompts])
    gen: list[list[int]] = [[] for _ in prompts]
    active = list(range(len(prompts)))
    for _ in range(max_new_tokens):
        if not active:
            break
        rows = torch.tensor(active)
        hidden, _ = model(buf[rows, : int(lens[rows].max())].to(device))
        nxt = head(hidden[torch.arange(len(active), device=device), (lens[rows] - 1).to(device)]).argmax(-1)
        still = []
        for j, b in enumerate(active):
            buf[b, lens[b]] = int(nxt[j])
            lens[b] += 1
            gen[b].append(int(nxt[j]))
            if not done(gen[b]):
                still.append(b)
        active = still
    return gen


@torch.no_grad()
def greedy_until(model: torch.nn.Module, tokenizer, contexts: Sequence[str], max_new_tokens: int = 16,
                 stop: str = "\n", batch_size: int = 16, block_size: int | None = None,
                 max_context: int | None = None, cache: bool = True) -> list[str]:
    """Greedy continuations of ``contexts``, cut at the first ``stop`` (or end-of-text, or the token budget).

    Contexts are left-truncated to ``block_size - max_new_tokens`` tokens (lm-eval's ``max_length -
    max_gen_toks``), or to ``max_context`` if smaller. With ``cache`` a tinylm GPT decodes with its key/value
    cache (``tinylm.evals.decode``); otherwise every step re-reads the sequence.
    """
    model = unwrap(model)
    L = block_size or model.cfg.block_size
    keep = max(1, min(L - max_new_tokens, max_context or L))
    enc = [(tokenizer.encode_ordinary(c) or [tokenizer.eot_token])[-keep:] for c in contexts]
    eot = tokenizer.eot_token

    def done(tokens: list[int]) -> bool:
        return tokens[-1] == eot or stop in tokenizer.decode(tokens)

    out = [""] * len(enc)
    use_cache = cache and decode.supports(model)
    with head_at_positions(model) as head:
        for batch in _batches([len(e) for e in enc], batch_size):
            prompts = [enc[i] for i in batch]
            if use_cache:
                gen = decode.greedy_batch(model, head, prompts, max_new_tokens, done)
            else:
                gen = _greedy_reread(model, head, prompts, max_new_tokens, done)
            for b, i in enumerate(batch):
                toks = gen[b][:-1] if gen[b] and gen[b][-1] == eot else gen[b]
                out[i] = tokenizer.decode(toks).split(stop)[0]
    return out


# --- metrics ------------------------------------------------------------------------------------------------
def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std / sqrt(n)) as lm-eval's ``mean`` and ``mean_stderr``; stderr is NaN for n < 2."""
    a = np.asarray(values, dtype=np.float64)
    if a.size == 0:
        return math.nan, math.nan
    return float(a.mean()), float(a.std(ddof=1) / math.sqrt(a.size)) if a.size > 1 else math.nan


def evaluate_mc(model: torch.nn.Module, tokenizer, docs: Sequence[MC], batch_size: int = 16,
                greedy: bool = False) -> dict[str, float]:
    """acc, acc_norm (per character), their standard errors and the random baseline mean(1 / n_choices).

    With ``greedy``, also ``greedy_acc``: the gold continuation is the model's greedy continuation
    (lm-eval's ``is_greedy``, the metric of its arithmetic and lambada tasks).
    """
    reqs = [(d.context, " " + c) for d in docs for c in d.choices]
    res = loglikelihood(model, tokenizer, reqs, batch_size=batch_size)
    acc, acc_norm, hit = [], [], []
    k = 0
    for d in docs:
        r = res[k: k + len(d.choices)]
        k += len(d.choices)
        lls = np.array([x[0] for x in r])
        lens = np.array([max(1, len(c)) for c in d.choices], dtype=np.float64)
        acc.append(float(np.argmax(lls) == d.gold))
        acc_norm.append(float(np.argmax(lls / lens) == d.gold))
        hit.append(float(r[d.gold][1]))
    out = {}
    out["acc"], out["acc_stderr"] = mean_stderr(acc)
    out["acc_norm"], out["acc_norm_stderr"] = mean_stderr(acc_norm)
    if greedy:
        out["greedy_acc"], out["greedy_acc_stderr"] = mean_stderr(hit)
    out["random"] = float(np.mean([1.0 / len(d.choices) for d in docs])) if docs else math.nan
    out["n"] = len(docs)
    return out
