"""The block library inside the GPT: the block registry (one spec per block, read by the model, the budget and the
optimizer; a block registered in a test reaches all three), Mamba and hybrid mixers, MoE MLPs, their parameter
accounting, the budget solver, decoding through the model's own cache, and the optimizer's handling of their
parameters."""

from __future__ import annotations

import copy
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinylm.blocks import MoEMLP
from tinylm.blocks.registry import (
    MIXERS,
    MLPS,
    PARAM_ROLES,
    BlockSpec,
    layer_mixer,
    mixer_block,
    mixer_layer_counts,
    mlp_block,
    register,
    registered,
)
from tinylm.budget import flops_per_token, param_counts, solve
from tinylm.config import CHOICES, Config
from tinylm.model import GPT, HybridCache, KVCache, make_cache
from tinylm.optim import MUON_ADJUST_LR, MUON_MOMENTUM, MuonAdamW, build_optimizer, param_groups, split_params

BASE = dict(vocab_size=96, block_size=32, n_embd=32, n_head=2, n_layer=4, d_ff=48, norm="rmsnorm", pos="rope",
            mlp="swiglu")
VARIANTS = {
    "mamba": dict(mixer="mamba"),
    "hybrid2": dict(mixer="hybrid", attn_every=2),
    "hybrid3-learned-bias": dict(mixer="hybrid", attn_every=3, pos="learned", norm="layernorm", bias=True),
    "moe4k1-gelu": dict(n_experts=4, top_k=1, mlp="gelu"),
    "moe4k2": dict(n_experts=4, top_k=2),
    "moe-hybrid-bias": dict(n_experts=3, top_k=2, mixer="hybrid", attn_every=2, bias=True, tie_embeddings=False),
}


def cfg_of(**kw) -> Config:
    return Config(**(BASE | kw))


@pytest.mark.parametrize("name", VARIANTS)
def test_param_counts_are_exact(name):
    cfg = cfg_of(**VARIANTS[name])
    model = GPT(cfg)
    c = param_counts(cfg)
    assert c["total"] == sum(p.numel() for p in model.parameters())
    moe = [b.mlp for b in model.transformer.h if isinstance(b.mlp, MoEMLP)]
    unused = sum(m.total_params() - m.active_params() for m in moe)
    assert c["active"] == c["total"] - unused  # the router and top_k experts per layer
    attn = sum(p.numel() for n, p in model.named_parameters() if ".attn." in n)
    ssm = sum(p.numel() for n, p in model.named_parameters() if ".mamba." in n)
    assert (c["attn"], c["ssm"]) == (attn, ssm)


@pytest.mark.parametrize("blocks,budget", [(dict(n_experts=8, top_k=2), "active"), (dict(n_experts=4, top_k=1),
                                            "total"), (dict(mixer="mamba"), "total"),
                                           (dict(mixer="hybrid", attn_every=3), "total")])
@pytest.mark.parametrize("target,vocab", [(1e6, 2048), (3e6, 4096), (10e6, 8192)])
def test_the_budget_solver_meets_total_or_active_params_within_1pct(blocks, budget, target, vocab):
    """The done-criterion of the blocks: accounting within 1 % at 3 sizes, checked on the built model."""
    cfg = Config(target_params=int(target), vocab_size=vocab, embed_share=0.25, glu_factor=2.66, mlp="swiglu",
                 norm="rmsnorm", pos="rope", block_size=64, budget_params=budget, **blocks)
    model = GPT(cfg)
    total = sum(p.numel() for p in model.parameters())
    moe = [b.mlp for b in model.transformer.h if isinstance(b.mlp, MoEMLP)]
    active = total - sum(m.total_params() - m.active_params() for m in moe)
    assert abs((active if budget == "active" else total) / target - 1) <= 0.01
    assert solve(target, vocab, 0.25, 2.66, block_size=64, blocks=cfg.blocks_shape(), budget=budget).dims == {
        k: getattr(cfg, k) for k in ("n_embd", "n_layer", "n_head", "d_ff")}


def test_flops_per_token_count_active_parameters():
    """An MoE costs what one token uses: its FLOPs equal a dense model's with the same expert size, plus k-1 more
    experts and the router; a Mamba layer has no attention term."""
    dense, moe = cfg_of(), cfg_of(n_experts=8, top_k=2)
    expert = param_counts(dense)["mlp"] // dense.n_layer
    extra = dense.n_layer * (expert + dense.n_embd * 8)  # one more expert + the router, per layer
    assert flops_per_token(moe) == flops_per_token(dense) + 6 * extra
    mamba = cfg_of(mixer="mamba")
    no_attn = 6.0 * (param_counts(mamba)["active_nonembed"] + mamba.vocab_size * mamba.n_embd)
    assert flops_per_token(mamba) == no_attn + 18.0 * 2 * 32 * 16 * 4


@pytest.mark.parametrize("name", ["mamba", "hybrid2", "hybrid3-learned-bias", "moe-hybrid-bias"])
def test_decoding_through_the_cache_equals_the_full_forward(name):
    torch.manual_seed(0)
    cfg = cfg_of(**VARIANTS[name])
    model = GPT(cfg).double().eval()
    idx = torch.randint(0, cfg.vocab_size, (2, 20))
    full, _ = model(idx)
    cache = make_cache(cfg, 2)
    assert isinstance(cache, HybridCache)
    pre, _ = model(idx[:, :7], kv_cache=cache)
    steps = [model(idx[:, i:i + 1], kv_cache=cache)[0] for i in range(7, 20)]
    torch.testing.assert_close(torch.cat([pre, *steps], dim=1), full, rtol=1e-9, atol=1e-9)
    with torch.no_grad():
        a = model.generate(idx[:, :5], 10, temperature=0, cache=True)
        b = model.generate(idx[:, :5], 10, temperature=0, cache=False)
    assert torch.equal(a, b)


def test_a_mamba_cache_refuses_rows_at_different_positions():
    cache = make_cache(cfg_of(mixer="mamba"), 2)
    cache.pos = torch.tensor([3, 5])
    with pytest.raises(ValueError, match="cannot skip padding"):
        cache.begin(1, torch.device("cpu"))
    assert type(make_cache(cfg_of(), 2)) is KVCache


def test_moe_losses_join_training_only():
    """Training adds moe_aux_weight x balance + moe_z_weight x z (summed over layers) to the cross-entropy; eval
    reports the cross-entropy alone, so val losses compare with dense models."""
    cfg = cfg_of(n_experts=4, top_k=2, moe_aux_weight=0.5, moe_z_weight=0.25)
    model = GPT(cfg)
    idx = torch.randint(0, cfg.vocab_size, (2, 16))
    model.eval()
    _, ce = model(idx, idx)
    model.train()
    _, total = model(idx, idx)
    aux = [b.mlp.aux for b in model.transformer.h]
    expect = ce + 0.5 * sum(a["balance"] for a in aux) + 0.25 * sum(a["z"] for a in aux)
    torch.testing.assert_close(total, expect)
    assert float(total) > float(ce)
    stats = model.routing_stats()
    assert set(stats) == {"moe_max_over_mean", "moe_load_cv", "moe_dropped_frac"} and stats["moe_max_over_mean"] >= 1
    assert GPT(cfg_of()).routing_stats() == {}


def test_parameters_go_to_the_right_optimizer_groups():
    cfg = cfg_of(n_experts=4, top_k=2, mixer="hybrid", attn_every=2, bias=True, optimizer="muon")
    model = GPT(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    parts = {k: {names[id(p)] for p in v} for k, v in split_params(model).items()}
    assert {n for n in parts["matrix"] if n.endswith(("w_in", "w_out"))} == {
        f"transformer.h.{i}.mlp.{w}" for i in range(4) for w in ("w_in", "w_out")}
    for suffix in ("A_log", "mamba.D", "dt_bias", "mlp.b_in", "mlp.b_out"):
        assert all(n in parts["vector"] for n in names.values() if n.endswith(suffix)), suffix
    assert all(n in parts["embed"] for n in names.values() if n.endswith("conv1d.weight"))
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert all(p.ndim in (2, 3) for p in groups["muon"]["params"])
    assert isinstance(build_optimizer(model, cfg), MuonAdamW)


def test_muon_on_an_expert_stack_is_muon_on_each_expert():
    """A 3-D stack (E, in, out) stepped by MuonAdamW equals E nn.Linear-shaped (out, in) matrices stepped by
    torch.optim.Muon: per-expert orthogonalisation and LR adjustment, one momentum per expert."""
    torch.manual_seed(0)
    stack = torch.nn.Parameter(torch.randn(3, 8, 20))
    solo = [torch.nn.Parameter(stack[e].detach().T.clone()) for e in range(3)]  # Linear's (out, in)
    kw = dict(lr=0.05, momentum=MUON_MOMENTUM, nesterov=True, adjust_lr_fn=MUON_ADJUST_LR, weight_decay=0.1)
    ours = MuonAdamW([dict(params=[stack], use_muon=True, lr=0.05, weight_decay=0.1)], muon_kwargs=kw)
    ref = torch.optim.Muon(solo, **kw)
    for _ in range(3):
        g = torch.randn(3, 8, 20)
        stack.grad = g.clone()
        for e in range(3):
            solo[e].grad = g[e].T.clone()
        ours.step()
        ref.step()
    for e in range(3):
        torch.testing.assert_close(stack[e].detach().T, solo[e].detach(), rtol=1e-6, atol=1e-6)
    saved = copy.deepcopy(ours.state_dict())  # the stack's momentum is in the one optimizer's state
    assert saved["state"][0]["momentum_buffer"].shape == (3, 8, 20)


def test_recall_eval_scores_a_copier_one_and_a_non_copier_chance():
    """The recall task's known difficulty: a model that copies from the first half scores 1 at every length that
    fits; one that echoes its input scores near chance (1 / (V - 1))."""
    from types import SimpleNamespace

    from tinylm.evals import recall

    class Copier(torch.nn.Module):
        def __init__(self, echo: bool):
            super().__init__()
            self.cfg, self.echo, self.w = SimpleNamespace(vocab_size=50, block_size=64), echo, torch.nn.Parameter(
                torch.zeros(1))

        def forward(self, x):
            T = x.size(1)
            src = x if self.echo else torch.roll(x, T // 2 - 1, dims=1)  # position t sees x[t + 1 - T/2]
            return torch.nn.functional.one_hot(src, 50).float(), None

    docs = recall.load()
    tok = SimpleNamespace(eot_token=0)
    perfect = recall.evaluate(Copier(echo=False), tok, docs)
    assert {k for k in perfect if k.startswith("acc_L")} == {"acc_L8", "acc_L16", "acc_L32"}  # 2L <= 64
    assert perfect["acc"] == 1.0 and perfect["random"] == 1 / 49
    echo = recall.evaluate(Copier(echo=True), tok, docs)
    assert echo["acc"] < 0.1
    # a tokenizer without EOT: the bare ``s + s``, the same scores
    bare = recall.evaluate(Copier(echo=False), SimpleNamespace(), docs)
    assert bare["acc"] == 1.0 and bare["random"] == 1 / 50


def test_recall_eval_starts_each_sequence_with_eot():
    """The sequences the model sees start with the tokenizer's EOT (a packed stream's document start), fill 2 L
    positions, and the score reads the copy's L tokens."""
    from types import SimpleNamespace

    from tinylm.evals import recall

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.cfg, self.w = SimpleNamespace(vocab_size=20, block_size=16), torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(*x.shape, 20), None

    out = recall.evaluate(Spy(), SimpleNamespace(eot_token=19), [d for d in recall.load() if d["length"] == 8])
    x = torch.cat(seen)
    assert x.shape == (recall.PER_LENGTH, 16) and (x[:, 0] == 19).all() and (x[:, 1:] != 19).all()
    assert (x[:, 9:16] == x[:, 1:8]).all()  # the second copy, its last token left out
    assert set(out) == {"acc_L8", "loss_L8", "acc", "random"}


# --- the block registry ----------------------------------------------------------------------------------------
REGISTRY_CFGS = [dict(), dict(bias=True), dict(mlp="gelu"), dict(mlp="gelu", bias=True, d_ff=40),
                 dict(n_experts=3, top_k=2), dict(n_experts=4, top_k=1, mlp="gelu", bias=True),
                 dict(mixer="mamba", d_state=8, d_conv=3, ssm_expand=3), dict(mixer="mamba", bias=True)]


@pytest.mark.parametrize("kw", REGISTRY_CFGS)
def test_every_registered_block_counts_and_declares_what_it_builds(kw):
    """Each spec the Config picks builds a module whose numel is the spec's count (and, for an MoE, whose
    active_params is the spec's active count), and whose param_roles name every parameter once with a valid role."""
    cfg = cfg_of(**kw)
    for spec in (mixer_block(cfg, 0), mlp_block(cfg)):
        block = spec.load().from_config(cfg, 0)
        assert sum(p.numel() for p in block.parameters()) == spec.params(cfg), spec.name
        if isinstance(block, MoEMLP):
            assert spec.active(cfg) == block.active_params() < spec.params(cfg)
        else:
            assert spec.active(cfg) == spec.params(cfg)
        roles = block.param_roles()
        assert sorted(roles) == sorted(n for n, _ in block.named_parameters()) and set(roles.values()) <= set(
            PARAM_ROLES), spec.name
    assert mlp_block(cfg).name == ("moe" if cfg.n_experts else cfg.mlp)
    assert mixer_block(cfg, 0).name == cfg.mixer


def test_the_declared_roles_are_the_optimizers_view():
    """What each built-in block declares (the optimizer's grouping reads these, not shapes)."""
    mamba = MIXERS["mamba"].load()(16, bias=True).param_roles()
    assert mamba["conv1d.weight"] == "decay" and mamba["x_proj.weight"] == "matrix"
    assert {n for n, r in mamba.items() if r == "no_decay"} == {"A_log", "D", "dt_bias", "conv1d.bias", "in_proj.bias",
                                                                 "out_proj.bias"}
    moe = MoEMLP(8, 12, 3, 1, bias=True).param_roles()
    assert moe == {"router.weight": "matrix", "w_in": "experts", "w_out": "experts", "b_in": "no_decay",
                   "b_out": "no_decay"}
    attn = MIXERS["attention"].load().from_config(cfg_of(bias=True)).param_roles()
    assert attn == {"c_attn.weight": "matrix", "c_attn.bias": "no_decay", "c_proj.weight": "matrix",
                    "c_proj.bias": "no_decay"}


def test_mixer_layer_counts_is_layer_mixer_counted_and_the_model_follows_it():
    for n_layer in range(2, 10):
        for every in range(2, n_layer + 1):
            cfg = cfg_of(n_layer=n_layer, mixer="hybrid", attn_every=every)
            per_layer = [layer_mixer(cfg, i) for i in range(n_layer)]
            assert mixer_layer_counts(cfg) == {m: per_layer.count(m) for m in ("attention", "mamba")}
    cfg = cfg_of(n_layer=7, mixer="hybrid", attn_every=3, n_embd=16, d_ff=16)
    blocks = GPT(cfg).transformer.h
    assert [b.mixer_attr for b in blocks] == ["mamba", "mamba", "attn"] * 2 + ["mamba"]
    assert all(b.mixer is getattr(b, b.mixer_attr) for b in blocks)


def test_the_state_dict_names_of_every_block_are_the_checkpoint_format():
    """Checkpoints written before the registry still load: a layer's parameter names are unchanged."""
    def layer0(**kw):
        return sorted(k.removeprefix("transformer.h.0.") for k in GPT(cfg_of(**kw)).state_dict() if ".h.0." in k)

    norms = ["ln_1.weight", "ln_2.weight"]
    assert layer0() == sorted(norms + ["attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight",
                                       "mlp.c_proj.weight"])
    assert layer0(mlp="gelu", bias=True, norm="layernorm") == sorted(
        [f"{m}.{w}" for m in ("ln_1", "ln_2", "attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
         for w in ("weight", "bias")])
    assert layer0(n_experts=2, top_k=1, bias=True) == sorted(norms + ["attn.c_attn.bias", "attn.c_attn.weight",
                                                                      "attn.c_proj.bias", "attn.c_proj.weight",
                                                                      "mlp.b_in", "mlp.b_out", "mlp.router.weight",
                                                                      "mlp.w_in", "mlp.w_out"])
    assert layer0(mixer="mamba") == sorted(norms + [f"mamba.{n}" for n in (
        "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight", "dt_bias", "A_log", "D",
        "out_proj.weight")] + ["mlp.c_fc.weight", "mlp.c_proj.weight"])


def test_the_registry_refuses_unknown_duplicate_and_malformed_blocks():
    with pytest.raises(ValueError, match="no mlp block named 'nope'"):
        mlp_block(SimpleNamespace(n_experts=0, mlp="nope"))
    with pytest.raises(ValueError, match="already registered"):
        register(MLPS["gelu"])
    with pytest.raises(ValueError, match="attr"):
        BlockSpec("x", "mixer", "m:C", lambda cfg: 0, component="x", attr="mlp")
    with pytest.raises(ValueError, match="kind"):
        BlockSpec("x", "norm", "m:C", lambda cfg: 0, component="x")
    with pytest.raises(TypeError, match="param_roles"):
        BlockSpec("x", "mlp", nn.Linear, lambda cfg: 0, component="mlp").load()
    assert set(MIXERS) == {"attention", "mamba"} and set(MLPS) == {"gelu", "swiglu", "moe"}


def test_the_registry_and_budget_import_no_torch():
    code = "import sys, tinylm.blocks, tinylm.blocks.registry, tinylm.budget; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


class Relu2MLP(nn.Module):
    """A toy MLP for the registry test: squared ReLU (Primer) with a learned per-channel gain, a 2-D (1, hidden)
    tensor it declares ``no_decay`` (the shape rule would have handed it to Muon)."""

    def __init__(self, n_embd: int, hidden: int):
        super().__init__()
        self.up = nn.Linear(n_embd, hidden, bias=False)
        self.down = nn.Linear(hidden, n_embd, bias=False)
        self.gain = nn.Parameter(torch.ones(1, hidden))

    @classmethod
    def from_config(cls, cfg, layer_idx: int = 0) -> Relu2MLP:
        return cls(cfg.n_embd, cfg.ffn_hidden)

    def param_roles(self) -> dict[str, str]:
        return {"up.weight": "matrix", "down.weight": "matrix", "gain": "no_decay"}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)).square() * self.gain)


def relu2_params(cfg) -> int:
    return 2 * cfg.n_embd * cfg.ffn_hidden + cfg.ffn_hidden


def test_a_block_registered_in_a_test_reaches_model_budget_and_optimizer():
    """One class and one registration, no other file changed: the model builds it, the budget counts it (and the
    solver sizes models with it), the optimizer groups its parameters as it declares them."""
    assert "relu2" not in CHOICES["mlp"]
    with registered(BlockSpec("relu2", "mlp", Relu2MLP, relu2_params, component="mlp")):
        assert "relu2" in CHOICES["mlp"]  # Config validates mlp against the registry
        cfg = cfg_of(mlp="relu2", mixer="hybrid", attn_every=2, optimizer="muon")
        model = GPT(cfg)
        assert all(type(b.mlp) is Relu2MLP for b in model.transformer.h)
        c = param_counts(cfg)
        assert c["total"] == sum(p.numel() for p in model.parameters())
        assert c["mlp"] == sum(p.numel() for n, p in model.named_parameters() if ".mlp." in n) == 4 * (2 * 32 * 48
                                                                                                    + 48)
        d, T = cfg.n_embd, cfg.block_size  # 2 attention and 2 Mamba layers; the toy adds no FLOPs of its own
        assert flops_per_token(cfg) == 6.0 * (c["active_nonembed"] + cfg.vocab_size * d) + 2 * 12.0 * d * T \
            + 2 * 18.0 * 2 * d * 16

        names = {id(p): n for n, p in model.named_parameters()}
        groups = {g["name"]: {names[id(p)] for p in g["params"]} for g in param_groups(model, cfg)}
        mlp = {n for n in names.values() if ".mlp." in n}
        assert {n for n in mlp if n.endswith(("up.weight", "down.weight"))} <= groups["muon"]
        assert {n for n in mlp if n.endswith(".gain")} <= groups["adamw_no_decay"]  # 2-D, declared no_decay
        opt = build_optimizer(model, cfg)
        idx = torch.randint(0, cfg.vocab_size, (2, 16))
        before = model.transformer.h[0].mlp.up.weight.detach().clone()
        model(idx, idx)[1].backward()
        opt.step()
        assert not torch.equal(model.transformer.h[0].mlp.up.weight, before)

        # the solver sizes a budget with it, and the built model meets it
        sized = Config(target_params=1_000_000, vocab_size=2048, embed_share=0.25, glu_factor=2.66, mlp="relu2",
                       norm="rmsnorm", pos="rope", block_size=64)
        with torch.device("meta"):
            total = sum(p.numel() for p in GPT(sized).parameters())
        assert total == param_counts(sized)["total"] and abs(total / 1e6 - 1) <= 0.01
    assert "relu2" not in MLPS
    with pytest.raises(ValueError, match="no mlp block named 'relu2'"):
        GPT(cfg)
