"""tinylm.model.KVCache: decoding through the model's own forward gives the logits and greedy tokens of the
uncached forward, for every model variant (norm x positions x MLP x tying x attention kernel).

The point is that two code paths compute the same function, so the models run in float64: the cached and the
full forward sum in different orders, which in float32 moves logits of ~10 by 1e-5 on one CPU and 5e-5 on another
(kernel families, tests/numerics.py), while a real cache bug (a wrong slot, position or mask) moves them by O(1)."""

from __future__ import annotations

import itertools

import pytest
import torch
from numerics import close, gap

from tinylm.config import Config
from tinylm.model import GPT, KVCache

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]

V, T = 61, 16
VARIANTS = [dict(norm=n, pos=p, mlp=m, tie_embeddings=tie, attention=a) for n, p, m, tie, a in
            itertools.product(("layernorm", "rmsnorm"), ("learned", "rope"), ("gelu", "swiglu"), (True, False),
                              ("sdpa", "math"))]


def vid(kw: dict) -> str:
    return "-".join(str(v) for v in kw.values())


def sharp_model(**kw) -> GPT:
    """A tiny random GPT with weights scaled up, so greedy text varies instead of repeating one token; float64, so
    the comparisons below test the cache, not the CPU's summation order."""
    torch.manual_seed(0)
    model = GPT(Config(n_embd=32, n_head=4, n_layer=2, vocab_size=V, block_size=T, **kw)).eval().double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)
    return model


def ids(b: int, t: int, seed: int) -> torch.Tensor:
    return torch.randint(0, V, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kw", VARIANTS, ids=vid)
@torch.no_grad()
def test_cached_decoding_equals_the_uncached_forward(kw):
    model = sharp_model(**kw)
    seq = ids(3, T, seed=1)
    full, _ = model(seq)  # (3, T, V): the reference logits at every position
    # prefill 5 tokens, then one token at a time: each step's logits are the full forward's at that position
    cache = KVCache(model.cfg, 3)
    pre, _ = model(seq[:, :5], kv_cache=cache)
    assert close(pre, full[:, :5]), gap(pre, full[:, :5])  # the prefill is the plain causal forward
    for t in range(5, T):
        step, _ = model(seq[:, t: t + 1], kv_cache=cache)
        assert close(step[:, 0], full[:, t]), (t, gap(step[:, 0], full[:, t]))
    assert cache.pos.tolist() == [T] * 3
    with pytest.raises(ValueError, match="cache"):  # the window is full: no position T exists
        model(seq[:, :1], kv_cache=cache)
    # ragged rows: a right-padded prefill, each row rewound to its own length, then two tokens (a chunk) per step
    lens = [3, 9, 6]
    cache = KVCache(model.cfg, 3)
    model(torch.where(torch.arange(9) < torch.tensor(lens)[:, None], seq[:, :9], 0), kv_cache=cache)
    cache.pos = torch.tensor(lens)
    new = ids(3, 2, seed=2)
    got, _ = model(new, kv_cache=cache)
    for b, n in enumerate(lens):
        ref, _ = model(torch.cat((seq[b: b + 1, :n], new[b: b + 1]), dim=1))
        assert close(got[b], ref[0, n:]), (b, gap(got[b], ref[0, n:]))
    # greedy decoding: the same tokens with and without the cache, including past block_size (crop, re-read)
    prompt = ids(2, 4, seed=3)
    for n_new in (T - 4, T + 3):
        cached = model.generate(prompt, n_new, temperature=0)
        plain = model.generate(prompt, n_new, temperature=0, cache=False)
        assert torch.equal(cached, plain) and cached.shape == (2, 4 + n_new)
    assert len(set(plain[0, 4:].tolist())) > 2  # the text varies: the comparison is not trivially equal


@torch.no_grad()
def test_the_comparison_catches_a_cache_one_slot_off():
    """The float64 tolerance is tight enough to see a real bug: a decode step that reads the cache one position
    behind (it overwrites the last real slot) differs from the full forward far beyond ``close``'s bound."""
    model = sharp_model(pos="rope")
    seq = ids(3, T, seed=1)
    full, _ = model(seq)
    cache = KVCache(model.cfg, 3)
    model(seq[:, :6], kv_cache=cache)
    cache.pos = cache.pos - 1  # the bug: position 5 is taken for position 6
    step, _ = model(seq[:, 6:7], kv_cache=cache)
    assert not close(step[:, 0], full[:, 6]) and not close(step[:, 0], full[:, 6], rel=1e-3)


def test_generate_reads_the_prompt_once_and_then_one_token_per_step(monkeypatch):
    model = sharp_model(pos="rope")
    lengths = []
    real = GPT.forward
    monkeypatch.setattr(GPT, "forward", lambda self, idx, *a, **k: lengths.append(idx.size(1)) or real(
        self, idx, *a, **k))
    model.generate(ids(1, 5, seed=4), T - 5 + 2, temperature=0)
    assert lengths == [5] + [1] * (T - 5) + [T]  # past block_size (2 more tokens) every step re-reads the window
    lengths.clear()
    model.generate(ids(1, 5, seed=4), 3, temperature=0, cache=False)
    assert lengths == [5, 6, 7]


def test_cache_rejects_a_batch_of_another_size():
    model = sharp_model()
    with pytest.raises(ValueError, match="batch of 2 rows, the cache holds 3"):
        model(ids(2, 4, seed=5), kv_cache=KVCache(model.cfg, 3))
