"""MoEMLP against a per-token reference, the dense MLP, hand-computed capacity drops and aux losses."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tinylm.blocks.moe import MoEMLP
from tinylm.blocks.registry import MLPS
from tinylm.config import Config
from tinylm.model import tensor_generator


def make(C=8, H=12, E=4, k=2, act="swiglu", bias=False, cf=None, seed=0) -> MoEMLP:
    torch.manual_seed(seed)
    m = MoEMLP(C, H, E, k, act=act, bias=bias, capacity_factor=cf).double()
    with torch.no_grad():  # non-trivial weights, so every term matters
        for p in m.parameters():
            p.normal_(0, 0.5)
    return m


def reference(m: MoEMLP, x: torch.Tensor, keep=None) -> torch.Tensor:
    """Explicit loop: each token, each of its top-k experts, ``keep(token, slot)`` False drops that assignment."""
    C = x.size(-1)
    xf = x.reshape(-1, C)
    out = torch.zeros_like(xf)
    for n in range(xf.size(0)):
        probs = torch.softmax(m.router.weight @ xf[n], dim=-1)
        w, idx = probs.topk(m.top_k)
        if m.top_k > 1:
            w = w / w.sum()
        for j in range(m.top_k):
            if keep is not None and not keep(n, j):
                continue
            e = int(idx[j])
            h = xf[n] @ m.w_in[e] + (m.b_in[e] if m.b_in is not None else 0)
            if m.swiglu:
                g, u = h.chunk(2)
                h = F.silu(g) * u
            else:
                h = F.gelu(h)
            out[n] += w[j] * (h @ m.w_out[e] + (m.b_out[e] if m.b_out is not None else 0))
    return out.view_as(x)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("act", ["swiglu", "gelu"])
@pytest.mark.parametrize("bias", [False, True])
def test_matches_per_token_reference(k, act, bias):
    m = make(k=k, act=act, bias=bias)
    x = torch.randn(3, 7, 8, dtype=torch.float64)
    torch.testing.assert_close(m(x), reference(m, x), atol=1e-5, rtol=0)
    assert m.stats["dropped_frac"] == 0


@pytest.mark.parametrize("act", ["swiglu", "gelu"])
@pytest.mark.parametrize("bias", [False, True])
def test_one_expert_is_the_dense_mlp(act, bias):
    cfg = Config(n_embd=16, n_head=2, n_layer=1, d_ff=24, mlp=act, bias=bias)
    dense = MLPS[act].load().from_config(cfg).double()  # the registry's dense MLP of that name
    moe = MoEMLP(16, cfg.ffn_hidden, n_experts=1, top_k=1, act=act, bias=bias).double()
    with torch.no_grad():
        for p in dense.parameters():
            p.normal_(0, 0.3)
        moe.w_in[0].copy_(dense.c_fc.weight.t())
        moe.w_out[0].copy_(dense.c_proj.weight.t())
        if bias:
            moe.b_in[0].copy_(dense.c_fc.bias)
            moe.b_out[0].copy_(dense.c_proj.bias)
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    torch.testing.assert_close(moe(x), dense(x), atol=1e-12, rtol=0)
    assert moe.aux["balance"].item() == pytest.approx(1.0)


@pytest.mark.parametrize("k", [1, 2])
def test_gradients_reach_router_and_experts(k):
    m = make(E=4, k=k)
    x = torch.randn(4, 6, 8, dtype=torch.float64)
    m(x).square().sum().backward()  # the task loss only: the router learns through its gate weights
    assert m.router.weight.grad is not None and m.router.weight.grad.abs().sum() > 0
    used = m.stats["load"] > 0
    assert used.any()
    per_expert = m.w_in.grad.abs().sum(dim=(1, 2))
    assert (per_expert[used] > 0).all() and (per_expert[~used] == 0).all()
    assert (m.w_out.grad.abs().sum(dim=(1, 2))[used] > 0).all()
    m.zero_grad()
    m(x)
    (m.aux["balance"] + m.aux["z"]).backward()  # the aux losses train the router
    assert m.router.weight.grad.abs().sum() > 0


def one_hot_router(m: MoEMLP, scale=10.0):
    with torch.no_grad():
        m.router.weight.copy_(scale * torch.eye(m.n_experts, m.n_embd, dtype=m.router.weight.dtype))


def test_balance_loss_uniform_and_collapsed():
    E = 4
    m = make(C=E, E=E, k=1)
    one_hot_router(m)
    x = torch.eye(E, dtype=torch.float64).repeat(3, 1).view(1, 3 * E, E)  # each expert gets 3 tokens, same probs
    m(x)
    assert m.aux["balance"].item() == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(m.stats["load"], torch.full((E,), 1 / E, dtype=torch.float64))
    assert m.stats["max_over_mean"].item() == pytest.approx(1.0) and m.stats["cv"].item() == pytest.approx(0.0)
    # every token to expert 0: f = (1, 0, 0, 0), P_0 ~ 1  ->  balance ~ E
    x = torch.zeros(1, 10, E, dtype=torch.float64)
    x[..., 0] = 1.0
    m(x)
    p0 = torch.softmax(torch.tensor([10.0, 0, 0, 0], dtype=torch.float64), 0)[0].item()
    assert m.aux["balance"].item() == pytest.approx(E * p0) and m.aux["balance"].item() > 3.9
    assert m.stats["max_over_mean"].item() == pytest.approx(E)
    assert m.stats["cv"].item() == pytest.approx(math.sqrt(E - 1))
    lse = torch.logsumexp(torch.tensor([10.0, 0, 0, 0], dtype=torch.float64), 0).item()
    assert m.aux["z"].item() == pytest.approx(lse**2)


def test_capacity_top1_drops_by_token_order():
    E, C = 4, 4
    m = make(C=C, E=E, k=1, cf=1.0)  # capacity ceil(1.0 * 8 * 1 / 4) = 2
    one_hot_router(m)
    route = [0, 0, 0, 1, 1, 2, 0, 3]  # expert 0 takes tokens 0, 1 and drops 2, 6
    x = torch.eye(E, dtype=torch.float64)[route].view(1, 8, C)
    assert m.capacity(8) == 2
    y = m(x)
    assert m.stats["dropped_frac"].item() == pytest.approx(2 / 8)
    assert (y[0, [2, 6]] == 0).all()
    dropless = reference(m, x)
    kept = [0, 1, 3, 4, 5, 7]
    torch.testing.assert_close(y[0, kept], dropless[0, kept], atol=1e-12, rtol=0)
    assert (dropless[0, [2, 6]] != 0).any()
    torch.testing.assert_close(m.stats["load"], torch.tensor([4, 2, 1, 1], dtype=torch.float64) / 8)


def test_capacity_top2_first_choices_have_priority():
    E = C = 4
    m = make(C=C, E=E, k=2, cf=0.5)  # capacity ceil(0.5 * 4 * 2 / 4) = 1
    one_hot_router(m)
    first, second = [0, 0, 1, 3], [1, 2, 0, 2]
    x = 10 * torch.eye(E, dtype=torch.float64)[first] + 5 * torch.eye(E, dtype=torch.float64)[second]
    m.router.weight.data /= 10
    # by hand: first choices in token order: t0->0 keep, t1->0 drop, t2->1 keep, t3->3 keep; then second choices:
    # t0->1 drop (full), t1->2 keep, t2->0 drop, t3->2 drop (full)
    kept = {(0, 0), (1, 1), (2, 0), (3, 0)}
    y = m(x.view(1, 4, C))
    assert m.stats["dropped_frac"].item() == pytest.approx(4 / 8)
    torch.testing.assert_close(y, reference(m, x.view(1, 4, C), keep=lambda n, j: (n, j) in kept), atol=1e-12, rtol=0)


@pytest.mark.parametrize("act", ["swiglu", "gelu"])
@pytest.mark.parametrize("bias", [False, True])
def test_param_counts(act, bias):
    m = MoEMLP(16, 40, n_experts=8, top_k=2, act=act, bias=bias)
    assert m.total_params() == sum(p.numel() for p in m.parameters())
    router = m.router.weight.numel()
    per_expert = (sum(p.numel() for p in m.parameters()) - router) // 8
    assert m.active_params() == router + 2 * per_expert
    assert set(m.expert_params()) == {"w_in", "w_out"}
    assert all(getattr(m, n).dim() == 3 and getattr(m, n).size(0) == 8 for n in m.expert_params())


def test_init_draws_each_expert_like_a_linear():
    m = MoEMLP(16, 24, n_experts=3, top_k=1, bias=True)
    gen = lambda name: tensor_generator(7, f"h.0.mlp.{name}")
    m.init_(0.02, 0.005, gen)
    lin = torch.empty(48, 16).normal_(0.0, 0.02, generator=gen("w_in.2"))  # nn.Linear(16, 48).weight's shape
    torch.testing.assert_close(m.w_in[2], lin.t())
    torch.testing.assert_close(m.w_out[1], torch.empty(16, 24).normal_(0, 0.005, generator=gen("w_out.1")).t())
    torch.testing.assert_close(m.router.weight, torch.empty(3, 16).normal_(0, 0.02, generator=gen("router.weight")))
    assert not torch.equal(m.w_in[0], m.w_in[1]) and (m.b_in == 0).all()
    before = [p.clone() for p in m.parameters()]
    m.init_(0.02, 0.005, gen)  # reproducible
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))


def test_float32_and_3d_shapes_and_validation():
    m = MoEMLP(8, 16, 4, 2, capacity_factor=1.25)
    y = m(torch.randn(2, 9, 8))
    assert y.shape == (2, 9, 8) and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert 0 <= m.routing_stats()["dropped_frac"] < 1
    with pytest.raises(ValueError):
        MoEMLP(8, 16, 4, 5)
    with pytest.raises(ValueError):
        MoEMLP(8, 16, 4, 1, act="relu")
