"""Mamba: chunked scan vs the sequential loop, full forward vs cached decoding, causality, counts, a training smoke."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tinylm.blocks.registry import mamba_param_count
from tinylm.blocks.ssm import Mamba, SSMCache, selective_scan, selective_scan_ref
from tinylm.model import tensor_generator


def scan_inputs(b=2, T=37, d=5, n=4, dtype=torch.float64, dt_scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)
    u, delta = r(b, T, d), F.softplus(r(b, T, d)) * dt_scale
    A = -torch.exp(r(d, n))
    return u, delta, A, r(b, T, n), r(b, T, n), r(d), r(b, d, n)


@pytest.mark.parametrize("chunk", [1, 4, 7, 16, 37, 64])
def test_chunked_scan_equals_sequential(chunk):
    u, delta, A, B, C, D, h0 = scan_inputs()
    for init in (None, h0):
        y_ref, h_ref = selective_scan_ref(u, delta, A, B, C, D, h0=init)
        y, h = selective_scan(u, delta, A, B, C, D, h0=init, chunk_size=chunk)
        torch.testing.assert_close(y, y_ref, atol=1e-6, rtol=0)
        torch.testing.assert_close(h, h_ref, atol=1e-6, rtol=0)


def test_scan_stable_with_large_steps():
    u, delta, A, B, C, D, _ = scan_inputs(T=200, dtype=torch.float32, dt_scale=50.0)  # cumsum(dt A) ~ -1e4
    A = A * 16
    y, h = selective_scan(u, delta, A, B, C, D, chunk_size=64)
    y_ref, h_ref = selective_scan_ref(u, delta, A, B, C, D)
    assert torch.isfinite(y).all() and torch.isfinite(h).all()
    torch.testing.assert_close(y, y_ref, atol=1e-3, rtol=1e-4)


def make(n_embd=16, seed=0, **kw) -> Mamba:
    torch.manual_seed(seed)
    m = Mamba(n_embd, d_state=4, chunk_size=8, **kw).double()
    with torch.no_grad():  # larger random projections than init, so the conv, gate and state all matter
        for lin in (m.in_proj, m.x_proj, m.out_proj):
            lin.weight.normal_(0, 0.3)
    return m


@pytest.mark.parametrize("d_conv", [4, 1])
def test_forward_equals_recurrent_decoding(d_conv):
    m = make(d_conv=d_conv)
    x = torch.randn(2, 21, 16, dtype=torch.float64)
    full = m(x)
    cache = SSMCache(n_layer=1, batch_size=2)
    steps = torch.cat([m(x[:, t : t + 1], cache=cache) for t in range(21)], dim=1)
    torch.testing.assert_close(steps, full, atol=1e-5, rtol=0)
    cache = SSMCache(n_layer=1, batch_size=2)
    pieces = torch.cat([m(x[:, :5], cache=cache), m(x[:, 5:], cache=cache)], dim=1)
    torch.testing.assert_close(pieces, full, atol=1e-5, rtol=0)
    assert cache.ssm[0].shape == (2, m.d_inner, 4) and cache.conv[0].shape == (2, m.d_inner, d_conv - 1)


def test_cache_holds_one_slot_per_layer():
    layers = [make(seed=i) for i in range(2)]
    for i, m in enumerate(layers):
        m.layer_idx = i
    x = torch.randn(1, 9, 16, dtype=torch.float64)
    run = lambda h, cache=None: layers[1](layers[0](h, cache=cache), cache=cache)
    full = run(x)
    cache = SSMCache(n_layer=2, batch_size=1, max_len=9)
    out = []
    for t in range(9):
        pos = cache.begin(1, x.device)
        assert pos.tolist() == [[t]]
        out.append(run(x[:, t : t + 1], cache))
        cache.advance()
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=0)
    assert cache.ssm[0] is not None and cache.ssm[1] is not None and not torch.equal(cache.ssm[0], cache.ssm[1])
    with pytest.raises(ValueError):
        cache.begin(1, x.device)  # past max_len
    cache.reset()
    assert cache.ssm == [None, None] and cache.pos.tolist() == [0]
    ragged = SSMCache(n_layer=2, batch_size=2)
    ragged.pos = torch.tensor([3, 5])
    with pytest.raises(ValueError):
        ragged.begin(1, x.device)


def test_causal():
    m = make()
    x = torch.randn(1, 24, 16, dtype=torch.float64)
    y = m(x)
    for t in (0, 9, 23):
        x2 = x.clone()
        x2[:, t] += 1.0
        y2 = m(x2)
        torch.testing.assert_close(y2[:, :t], y[:, :t], atol=1e-12, rtol=0)
        assert (y2[:, t] - y[:, t]).abs().max() > 1e-6


@pytest.mark.parametrize("shape", [
    dict(n_embd=16), dict(n_embd=48, d_state=8, d_conv=3, expand=1.5, dt_rank=5, bias=True, conv_bias=False),
    dict(n_embd=33, d_state=16, d_conv=2, expand=2, bias=True), dict(n_embd=64, d_conv=1, expand=3, dt_rank=2)])
def test_param_count_exact(shape):
    m = Mamba(**shape)
    assert mamba_param_count(**shape) == sum(p.numel() for p in m.parameters())


def test_init():
    m = Mamba(32, d_state=8, layer_idx=3)
    gen = lambda name: tensor_generator(1, f"h.3.attn.{name}")
    m.init_(0.02, 0.004, gen)
    dt = F.softplus(m.dt_bias)
    assert (dt >= 1e-3 * 0.999).all() and (dt <= 0.1 * 1.001).all() and dt.max() / dt.min() > 10
    torch.testing.assert_close(m.A_log[5], torch.log(torch.arange(1.0, 9.0)))
    assert (m.D == 1).all() and m.dt_rank == 2
    assert m.dt_proj.weight.abs().max() <= 2**-0.5
    assert m.out_proj.weight.std().item() == pytest.approx(0.004, rel=0.1)
    torch.testing.assert_close(m.in_proj.weight, torch.empty(128, 32).normal_(0, 0.02, generator=gen("in_proj.weight")))
    before = [p.clone() for p in m.parameters()]
    m.init_(0.02, 0.004, gen)
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_gradients_finite():
    torch.manual_seed(0)
    m = Mamba(16, d_state=8, chunk_size=16)
    x = torch.randn(3, 40, 16, requires_grad=True)
    m(x).square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    assert torch.isfinite(x.grad).all()


def test_training_smoke(one_thread):
    torch.manual_seed(0)
    V, C, T = 16, 32, 32
    model = nn.Sequential(nn.Embedding(V, C), Mamba(C, d_state=8, chunk_size=16), nn.Linear(C, V))
    seq = torch.randint(0, V, (4, T + 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(model(seq[:, :-1]).reshape(-1, V), seq[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[-1]) and losses[-1] < 0.7 * losses[0], losses
