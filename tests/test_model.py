"""tinylm.model: shapes, loss at init, causality, rope vs learned positions, activation checkpointing, the math
attention path against SDPA, generation and weight tying."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from numerics import close, gap

import tinylm.model as model_mod
from tinylm.config import Config
from tinylm.model import GPT, apply_rope, rope_cache

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerics]

V, T = 97, 16


def tiny(**kw) -> Config:
    return Config(**{"n_embd": 32, "n_head": 4, "n_layer": 2, "vocab_size": V, "block_size": T, **kw})


def build(cfg: Config, seed: int = 0) -> GPT:
    torch.manual_seed(seed)  # dropout's stream; the init comes from cfg.seed (common random numbers)
    return GPT(cfg)


def tokens(b: int = 3, t: int = T, vocab: int = V, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (b, t), generator=torch.Generator().manual_seed(seed))


VARIANTS = [dict(norm=n, pos=p, mlp=m, tie_embeddings=tie) for n, p, m, tie in
            itertools.product(("layernorm", "rmsnorm"), ("learned", "rope"), ("gelu", "swiglu"), (True, False))]


def vid(kw: dict) -> str:
    return "-".join(str(v) for v in kw.values())


# --- shapes and loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", VARIANTS, ids=vid)
def test_forward_shapes_and_loss(kw):
    model = build(tiny(**kw))
    idx = tokens()
    logits, loss = model(idx)
    assert logits.shape == (3, T, V) and loss is None
    logits, loss = model(idx[:, :5], idx[:, 1:6])  # shorter than block_size
    assert logits.shape == (3, 5, V) and loss.shape == () and torch.isfinite(loss)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_sequence_longer_than_block_size_raises():
    with pytest.raises(ValueError, match=f"sequence length {T + 1} > block_size {T}"):
        build(tiny())(tokens(t=T + 1))


def test_ignore_index_minus_one():
    model = build(tiny())
    idx = tokens()
    targets = idx.clone()
    targets[:, ::2] = -1
    _, loss = model(idx, targets)
    logits, _ = model(idx)
    keep = targets != -1
    expected = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    assert close(loss, expected), gap(loss, expected)


@pytest.mark.parametrize("kw", [dict(), dict(pos="rope", norm="rmsnorm", mlp="swiglu"), dict(tie_embeddings=False)],
                         ids=["default", "rope-rms-swiglu", "untied"])
def test_loss_at_init_is_ln_vocab(kw):
    vocab = 1024
    model = build(tiny(vocab_size=vocab, block_size=64, **kw))
    idx = tokens(b=8, t=64, vocab=vocab)
    _, loss = model(idx, tokens(b=8, t=64, vocab=vocab, seed=2))
    assert abs(loss.item() - math.log(vocab)) < 0.05, loss.item()  # small init: near-uniform predictions
    # and it is the cross-entropy of the logits
    logits, _ = model(idx)
    ce = torch.nn.functional.cross_entropy(logits.view(-1, vocab), tokens(b=8, t=64, vocab=vocab, seed=2).view(-1))
    assert close(loss, ce), gap(loss, ce)


# --- causality ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pos,attention", list(itertools.product(("learned", "rope"), ("sdpa", "math"))))
def test_future_tokens_do_not_change_earlier_logits(pos, attention):
    model = build(tiny(pos=pos, attention=attention)).eval().double()  # float64: a leak is O(1), rounding ~1e-15
    idx = tokens()
    for t in (1, 7, T - 1):
        other = idx.clone()
        other[:, t:] = (other[:, t:] + 1 + torch.arange(T - t)) % V  # change every token from t on
        a, _ = model(idx)
        b, _ = model(other)
        assert close(a[:, :t], b[:, :t]), f"position < {t} saw the future: {gap(a[:, :t], b[:, :t])}"
        assert not close(a[:, t], b[:, t], rel=1e-3)  # the changed position itself does change


# --- positions ------------------------------------------------------------------------------------------------------
def test_rope_is_a_rotation_that_depends_on_relative_position():
    cfg = tiny(pos="rope")
    cos, sin = rope_cache(cfg)
    assert cos.shape == sin.shape == (T, cfg.head_dim // 2)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, 1, 1, cfg.head_dim, generator=g).expand(1, 1, T, -1)  # the same vector at every position
    k = torch.randn(1, 1, 1, cfg.head_dim, generator=g).expand(1, 1, T, -1)
    rq, rk = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    assert close(rq.norm(dim=-1), q.norm(dim=-1))  # rotations keep norms (float32 cos/sin: relative tolerance)
    scores = (rq @ rk.transpose(-2, -1))[0, 0]  # (T, T)
    for off in range(-3, 4):  # Toeplitz: the score depends on m - n only
        diag = torch.diagonal(scores, offset=off)
        assert close(diag, diag[0].expand_as(diag)), (off, gap(diag, diag[0].expand_as(diag)))
    assert torch.allclose(rq[..., 0, :], q[..., 0, :])  # position 0 is not rotated


def test_rope_and_learned_models_hold_the_right_parameters():
    learned, rope = build(tiny(pos="learned")), build(tiny(pos="rope"))
    assert "wpe" in learned.transformer and "wpe" not in rope.transformer
    assert rope.rope_cos.shape == (T, 4) and "rope_cos" not in rope.state_dict()  # derived, not saved


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_both_position_schemes_learn_a_position_dependent_task(pos):
    """Output the token seen 2 steps earlier: impossible without position information in attention."""
    cfg = tiny(pos=pos)
    model = build(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(500):  # learned positions need ~300 steps here, rope ~100
        idx = torch.randint(0, 16, (16, T), generator=g)
        targets = torch.full_like(idx, -1)
        targets[:, 2:] = idx[:, :-2]  # position t must output the token at t - 2
        _, loss = model(idx, targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if len(losses) >= 10 and sum(losses[-10:]) / 10 < 0.25 * math.log(16):
            break
    assert sum(losses[-10:]) / 10 < 0.25 * math.log(16), losses[-10:]  # far below guessing among 16 tokens


# --- execution variants are numerically the same model -------------------------------------------------------------
def _grads(model: GPT, idx: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    _, loss = model(idx, idx.roll(-1, dims=1))
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_activation_checkpointing_gives_the_same_gradients(pos, monkeypatch):
    plain = build(tiny(pos=pos, mlp="swiglu")).train().double()  # float64: the same function, any CPU
    ckpt = GPT(tiny(pos=pos, mlp="swiglu", activation_checkpointing=True)).train().double()
    ckpt.load_state_dict(plain.state_dict())
    calls = []
    real = model_mod.checkpoint
    monkeypatch.setattr(model_mod, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    idx = tokens()
    g1, g2 = _grads(plain, idx), _grads(ckpt, idx)
    assert len(calls) == 2  # one per block: the recompute path was really taken
    for n in g1:
        assert close(g1[n], g2[n]), (n, gap(g1[n], g2[n]))
    ckpt.eval()
    ckpt(idx)
    assert len(calls) == 2  # not in eval mode


@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_math_attention_equals_sdpa(pos):
    sdpa = build(tiny(pos=pos)).double()  # float64: two kernels of one function, compared on any CPU
    math_ = GPT(tiny(pos=pos, attention="math")).double()
    math_.load_state_dict(sdpa.state_dict())
    idx = tokens()
    a, _ = sdpa(idx)
    b, _ = math_(idx)
    assert close(a, b), gap(a, b)
    g1, g2 = _grads(sdpa, idx), _grads(math_, idx)
    for n in g1:
        assert close(g1[n], g2[n]), (n, gap(g1[n], g2[n]))


def test_dropout_only_in_train_mode():
    model = build(tiny(dropout=0.5))
    idx = tokens()
    model.train()
    assert not torch.allclose(model(idx)[0], model(idx)[0])
    model.eval()
    assert torch.equal(model(idx)[0], model(idx)[0])


# --- weights ---------------------------------------------------------------------------------------------------------
def test_weight_tying():
    tied, untied = build(tiny()), build(tiny(tie_embeddings=False))
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert untied.lm_head.weight is not untied.transformer.wte.weight
    assert untied.num_params() - tied.num_params() == V * 32


def test_residual_projections_get_the_scaled_init():
    cfg = tiny(n_embd=256, n_layer=8, vocab_size=512)
    model = build(cfg)
    std = model.transformer.h[0].attn.c_proj.weight.std().item()
    assert std == pytest.approx(0.02 / math.sqrt(2 * cfg.n_layer), rel=0.05)
    assert model.transformer.h[0].attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)


# --- init: common random numbers ----------------------------------------------------------------------------------
def test_same_seed_variants_share_every_tensor_they_have_in_common():
    """Each tensor is drawn from (seed, its name): a deeper or SwiGLU variant of one seed starts with the same
    embedding, attention and shared-layer weights as the baseline, whatever it builds first; another seed does not.
    The global RNG plays no part."""
    torch.manual_seed(123)
    base = GPT(tiny(seed=7))
    torch.manual_seed(456)  # a different global state must change nothing
    deeper = GPT(tiny(seed=7, n_layer=3, mlp="swiglu"))
    other = GPT(tiny(seed=8))
    b, d, o = dict(base.named_parameters()), dict(deeper.named_parameters()), dict(other.named_parameters())
    shared = [n for n in b if n in d and b[n].shape == d[n].shape]
    assert "transformer.wte.weight" in shared and "transformer.h.1.attn.c_attn.weight" in shared
    for n in shared:  # residual projections: the same draws, scaled by 1/sqrt(2 n_layer) of each model
        scale = math.sqrt(2 * 2) / math.sqrt(2 * 3) if n.endswith("c_proj.weight") else 1.0
        assert torch.allclose(b[n] * scale, d[n], rtol=1e-6, atol=0), n
    fc = "transformer.h.0.mlp.c_fc.weight"  # SwiGLU's fused (2 d_ff, d) weight: its leading rows are GELU's
    assert d[fc].shape[0] == 2 * b[fc].shape[0] and torch.equal(d[fc][: b[fc].shape[0]], b[fc])
    assert all(not torch.equal(b[n], o[n]) for n in b if b[n].dim() == 2)  # another seed: every matrix differs
    proj, attn = b["transformer.h.0.attn.c_proj.weight"], b["transformer.h.0.attn.c_attn.weight"]
    assert proj.std().item() == pytest.approx(0.02 / math.sqrt(2 * 2), rel=0.1)  # GPT-2's scales are kept
    assert attn.std().item() == pytest.approx(0.02, rel=0.1)


# --- generation -----------------------------------------------------------------------------------------------------
def test_greedy_generation_is_deterministic_and_extends_the_prompt():
    model = build(tiny()).eval()
    prompt = tokens(b=2, t=4)
    out1 = model.generate(prompt, max_new_tokens=6, temperature=0)
    out2 = model.generate(prompt, max_new_tokens=6, temperature=0)
    assert out1.shape == (2, 10) and out1.dtype == torch.long
    # exact equality holds on any CPU: each side runs the same float32 ops on the same kernels (the prefill is the
    # plain forward), so there is no reordering between them to round differently
    assert torch.equal(out1, out2) and torch.equal(out1[:, :4], prompt)
    assert torch.equal(out1[:, 4], model(prompt)[0][:, -1].argmax(-1))  # greedy = argmax of the last logits
    # top_k=1 sampling is greedy too
    assert torch.equal(model.generate(prompt, max_new_tokens=6, temperature=0.7, top_k=1), out1)


def test_generation_past_block_size_crops_the_context():
    model = build(tiny(pos="learned")).eval()
    out = model.generate(tokens(b=1, t=3), max_new_tokens=2 * T, temperature=0)
    assert out.shape == (1, 3 + 2 * T)


def test_sampling_is_seeded_and_stop_token_ends_early():
    model = build(tiny()).eval()
    prompt = tokens(b=1, t=4)
    torch.manual_seed(5)
    a = model.generate(prompt, max_new_tokens=8, temperature=1.0, top_k=10)
    torch.manual_seed(5)
    b = model.generate(prompt, max_new_tokens=8, temperature=1.0, top_k=10)
    assert torch.equal(a, b) and a.shape == (1, 12)
    first = model.generate(prompt, max_new_tokens=1, temperature=0)[0, -1].item()
    stopped = model.generate(prompt, max_new_tokens=8, temperature=0, stop_token=first)
    assert stopped.shape == (1, 5) and stopped[0, -1].item() == first
