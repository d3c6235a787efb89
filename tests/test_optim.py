"""tinylm.optim: param groups, the three optimizers, the schedule, checkpoint round trips, DeepSpeed at ZeRO 0."""

from __future__ import annotations

import copy
import io
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tinylm.config import Config
from tinylm.machine import free_port
from tinylm.optim import (
    Lion,
    MuonAdamW,
    build_optimizer,
    cooldown_factor,
    lr_factor,
    param_groups,
    probe_length,
    set_lr,
)

VOCAB, BLOCK, D = 32, 16, 32


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls: two intra-op threads on a shared 2-core machine ran these tests ~10x slower than one."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- a nanoGPT-shaped stand-in (names and module types as in nanoGPT) -------------------------------------------
class _Attn(nn.Module):
    def __init__(self, d: int, n_head: int = 2):
        super().__init__()
        self.n_head = n_head
        self.c_attn, self.c_proj = nn.Linear(d, 3 * d), nn.Linear(d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in self.c_attn(x).split(C, 2))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, C))


class _Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1, self.attn, self.ln_2 = nn.LayerNorm(d), _Attn(d), nn.LayerNorm(d)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(d, 4 * d))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(4 * d, d))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class TinyGPT(nn.Module):
    def __init__(self, tied: bool = True, n_layer: int = 2):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(VOCAB, D), wpe=nn.Embedding(BLOCK, D),
            h=nn.ModuleList([_Block(D) for _ in range(n_layer)]), ln_f=nn.LayerNorm(D)))
        self.lm_head = nn.Linear(D, VOCAB, bias=False)
        if tied:
            self.transformer.wte.weight = self.lm_head.weight  # nanoGPT's direction of tying

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(T))
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None if targets is None else F.cross_entropy(logits.view(-1, VOCAB), targets.reshape(-1))
        return logits, loss


def batch(gen: torch.Generator, B: int = 8):
    """A learnable sequence task: x[t+1] = (3 x[t] + 1) mod V from a random start."""
    start = torch.randint(0, VOCAB, (B, 1), generator=gen)
    seq = [start]
    for _ in range(BLOCK):
        seq.append((3 * seq[-1] + 1) % VOCAB)
    seq = torch.cat(seq, dim=1)
    return seq[:, :-1], seq[:, 1:]


def cfg_for(optimizer: str, **kw) -> Config:
    base = dict(lr={"adamw": 3e-3, "lion": 2e-3, "muon": 3e-3}[optimizer], muon_lr=0.02)
    return Config.from_name("debug", optimizer=optimizer, **{**base, **kw})


def model_for(seed: int = 0, tied: bool = True) -> TinyGPT:
    torch.manual_seed(seed)
    return TinyGPT(tied=tied)


def group_ids(groups) -> list[list[int]]:
    return [[id(p) for p in g["params"]] for g in groups]


# --- param groups --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["adamw", "lion", "muon"])
@pytest.mark.parametrize("tied", [True, False])
def test_every_parameter_in_exactly_one_group(opt, tied):
    model = model_for(tied=tied)
    groups = param_groups(model, cfg_for(opt))
    ids = [i for g in group_ids(groups) for i in g]
    assert len(ids) == len(set(ids)), "a parameter sits in two groups (tied weights counted twice?)"
    assert set(ids) == {id(p) for p in model.parameters()}
    assert all(g["params"] for g in groups)
    assert len(ids) == len(list(model.parameters())) == (28 if tied else 29)
    build_optimizer(model, cfg_for(opt))  # torch also refuses a parameter in two groups


def test_adamw_groups_decay_matrices_and_embeddings_only():
    model = model_for(tied=False)
    cfg = cfg_for("adamw")
    by_name = {g["name"]: g for g in param_groups(model, cfg)}
    assert set(by_name) == {"decay", "no_decay"}
    assert by_name["decay"]["weight_decay"] == cfg.weight_decay and by_name["no_decay"]["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in by_name["decay"]["params"])
    assert all(p.ndim < 2 for p in by_name["no_decay"]["params"])
    decay = {id(p) for p in by_name["decay"]["params"]}
    for emb in (model.transformer.wte.weight, model.transformer.wpe.weight, model.lm_head.weight):
        assert id(emb) in decay  # nanoGPT: 2-D -> decay, embeddings included
    assert all(g["lr_scale"] == 1.0 and g["lr"] == cfg.lr for g in by_name.values())


@pytest.mark.parametrize("tied", [True, False])
def test_muon_split_matrices_vs_embeddings_head_norms(tied):
    model = model_for(tied=tied)
    cfg = cfg_for("muon")
    by_name = {g["name"]: g for g in param_groups(model, cfg)}
    h = model.transformer.h
    hidden = [m.weight for b in h for m in (b.attn.c_attn, b.attn.c_proj, b.mlp.c_fc, b.mlp.c_proj)]
    embed = [model.transformer.wte.weight, model.transformer.wpe.weight] + ([] if tied else [model.lm_head.weight])
    vectors = [p for p in model.parameters() if p.ndim == 1]
    assert {id(p) for p in by_name["muon"]["params"]} == {id(p) for p in hidden}
    assert {id(p) for p in by_name["adamw_decay"]["params"]} == {id(p) for p in embed}
    assert {id(p) for p in by_name["adamw_no_decay"]["params"]} == {id(p) for p in vectors}
    assert by_name["muon"]["use_muon"] and not by_name["adamw_decay"]["use_muon"]
    assert by_name["muon"]["lr"] == cfg.muon_lr and by_name["adamw_decay"]["lr"] == cfg.lr
    assert by_name["muon"]["lr_scale"] == pytest.approx(cfg.muon_lr / cfg.lr)
    assert by_name["adamw_no_decay"]["weight_decay"] == 0.0


def test_a_3d_tensor_no_block_declares_is_refused_under_muon_only():
    """Muon takes only the 3-D stacks a block declares (``param_roles``: experts); an undeclared one is a one-line
    error under muon (it used to go silently to AdamW), and decayed like any >= 2-D tensor under adamw / lion."""
    model = model_for()
    model.transformer.h[0].attn.register_parameter("table", nn.Parameter(torch.zeros(2, 3, 4)))
    with pytest.raises(ValueError, match=r"^optimizer=muon: transformer\.h\.0\.attn\.table is a 3-D tensor "
                                         r"\(2, 3, 4\) that no block declares[^\n]*$"):
        param_groups(model, cfg_for("muon"))
    decay = {id(p) for p in {g["name"]: g for g in param_groups(model, cfg_for("adamw"))}["decay"]["params"]}
    assert id(model.transformer.h[0].attn.table) in decay


class _Declared(nn.Module):
    """A block that declares its parameters' roles (the registry's protocol): shapes do not decide."""

    def __init__(self, roles: dict[str, str]):
        super().__init__()
        self.w, self.stack, self.g = (nn.Parameter(torch.randn(*s)) for s in ((4, 4), (2, 4, 4), (1, 4)))
        self.inner = nn.Linear(4, 4, bias=False)
        self.roles = roles

    def param_roles(self) -> dict[str, str]:
        return self.roles


def test_declared_roles_decide_the_groups_and_must_be_complete():
    full = {"w": "decay", "stack": "experts", "g": "no_decay", "inner.weight": "matrix"}
    block = _Declared(full)
    groups = {g["name"]: [id(p) for p in g["params"]] for g in param_groups(block, cfg_for("muon"))}
    assert groups == {"muon": [id(block.stack), id(block.inner.weight)], "adamw_decay": [id(block.w)],
                      "adamw_no_decay": [id(block.g)]}  # a 2-D tensor declared decay / no_decay is not Muon's
    for roles, match in (({k: v for k, v in full.items() if k != "g"}, r"undeclared \['g'\]"),
                         (full | {"bias": "no_decay"}, r"unknown \['bias'\]"),
                         (full | {"w": "experts"}, "role 'experts' for a 2-D tensor"),
                         (full | {"g": "vector"}, "role 'vector'")):
        with pytest.raises(ValueError, match=match):
            param_groups(_Declared(roles), cfg_for("adamw"))


def test_optimizer_types():
    model = model_for()
    assert isinstance(build_optimizer(model, cfg_for("adamw")), torch.optim.AdamW)
    assert isinstance(build_optimizer(model, cfg_for("lion")), Lion)
    opt = build_optimizer(model, cfg_for("muon"))
    assert isinstance(opt, MuonAdamW) and isinstance(opt, torch.optim.Optimizer)
    assert [g["name"] for g in opt.param_groups] == ["muon", "adamw_decay", "adamw_no_decay"]
    assert opt.param_groups[0]["momentum"] == 0.95 and opt.param_groups[1]["betas"] == (0.9, 0.95)


# --- optimisation actually works -----------------------------------------------------------------------------------
def train(model, opt, cfg, steps: int, seed: int = 1, schedule: bool = False) -> list[float]:
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for step in range(steps):
        if schedule:
            set_lr(opt, cfg, step * 8 * BLOCK)
        x, y = batch(gen)
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("opt", ["adamw", "lion", "muon"])
def test_each_optimizer_lowers_lm_loss(opt):
    # untied: with a tied head the stand-in first has to unlearn "predict the input token" (slow for all three)
    cfg = cfg_for(opt)
    model = model_for(tied=False)
    losses = train(model, build_optimizer(model, cfg), cfg, steps=50)
    first, last = losses[0], sum(losses[-5:]) / 5
    assert first == pytest.approx(math.log(VOCAB), rel=0.15)
    assert last < 0.3 * first, f"{opt}: loss {first:.3f} -> {last:.3f}"  # measured: ~0.25-0.5 from ~3.6


def test_muon_moves_matrices_by_orthogonalised_steps():
    """One Muon step on a hidden matrix has the shape-scaled, near-orthogonal update of torch.optim.Muon."""
    cfg = cfg_for("muon", weight_decay=0.0)
    model = model_for()
    opt = build_optimizer(model, cfg)
    w = model.transformer.h[0].mlp.c_fc.weight  # (4D, D): Keller's scale sqrt(max(1, 4D/D)) = 2
    before = w.detach().clone()
    x, y = batch(torch.Generator().manual_seed(0))
    model(x, y)[1].backward()
    opt.step()
    delta = (before - w.detach()) / (cfg.muon_lr * 2.0)  # the orthogonalised update O
    sv = torch.linalg.svdvals(delta.float())
    # quintic Newton-Schulz (5 steps) maps singular values to ~(0.5, 1.5), not 1; the smallest may lag behind
    assert sv.max() < 1.6 and (sv > 0.5).float().mean() > 0.9


# --- Lion by hand --------------------------------------------------------------------------------------------------
def test_lion_matches_hand_computed_sign_update():
    lr, wd, b1, b2 = 0.1, 0.5, 0.9, 0.99
    p0 = [1.0, -2.0, 0.5]
    grads = [[0.3, -0.1, 0.0], [-0.01, 0.005, 0.5]]
    p = nn.Parameter(torch.tensor(p0, dtype=torch.float64))
    opt = Lion([p], lr=lr, betas=(b1, b2), weight_decay=wd)
    ref, m = list(p0), [0.0, 0.0, 0.0]
    sign = lambda v: (v > 0) - (v < 0)
    for g in grads:
        p.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        c = [b1 * mi + (1 - b1) * gi for mi, gi in zip(m, g, strict=True)]
        ref = [pi * (1 - lr * wd) - lr * sign(ci) for pi, ci in zip(ref, c, strict=True)]
        m = [b2 * mi + (1 - b2) * gi for mi, gi in zip(m, g, strict=True)]
        assert p.detach().tolist() == pytest.approx(ref, abs=1e-12)
        assert opt.state[p]["exp_avg"].tolist() == pytest.approx(m, abs=1e-15)
    # the second step's sign comes from the interpolation, not the gradient: -0.01 -> +1, and sign(0) = 0 first
    assert ref == pytest.approx([(1.0 * 0.95 - 0.1) * 0.95 - 0.1, (-2.0 * 0.95 + 0.1) * 0.95 + 0.1,
                                 0.5 * 0.95 * 0.95 - 0.1])


# --- schedule --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_lr_factor_warmup_then_decay_to_min(schedule):
    cfg = Config.from_name("debug", schedule=schedule, warmup_tokens=2_000, train_tokens=60_000, min_lr_ratio=0.1)
    assert 0 < lr_factor(cfg, 0) < 0.01
    assert lr_factor(cfg, 1_000) == pytest.approx(0.5, abs=1e-3)
    assert lr_factor(cfg, cfg.warmup) == 1.0 and lr_factor(cfg, cfg.warmup - 1) == 1.0
    assert lr_factor(cfg, cfg.train_tokens) == pytest.approx(cfg.min_lr_ratio)
    assert lr_factor(cfg, 10 * cfg.train_tokens) == pytest.approx(cfg.min_lr_ratio)
    assert lr_factor(cfg, (cfg.warmup + cfg.train_tokens) // 2) == pytest.approx(0.55)  # midpoint: both 0.55
    quarter = lr_factor(cfg, cfg.warmup + (cfg.train_tokens - cfg.warmup) // 4)
    assert quarter == pytest.approx(0.1 + 0.9 * (0.5 * (1 + math.cos(math.pi / 4)) if schedule == "cosine" else 0.75))
    f = [lr_factor(cfg, t) for t in range(0, cfg.train_tokens + 5_000, 250)]
    w = cfg.warmup // 250
    assert all(a <= b for a, b in zip(f[:w], f[1:w + 1], strict=True)), "warmup must rise"
    assert all(a >= b for a, b in zip(f[w:-1], f[w + 1:], strict=True)), "decay must be monotone"
    assert all(cfg.min_lr_ratio - 1e-12 <= v <= 1.0 for v in f[w:])


def test_lr_factor_constant_and_default_warmup():
    cfg = Config.from_name("debug", schedule="constant", warmup_tokens=0, train_tokens=50_000)
    assert cfg.warmup == 1_000  # 2 % of train_tokens
    assert lr_factor(cfg, 0) < 0.01
    assert all(lr_factor(cfg, t) == 1.0 for t in (1_000, 20_000, 50_000, 10**9))


def test_wsd_is_flat_then_decays_linearly_over_its_last_share():
    cfg = Config.from_name("debug", schedule="wsd", warmup_tokens=2_000, train_tokens=60_000, decay_frac=0.2,
                           min_lr_ratio=0.1)
    assert cfg.stable_tokens == 48_000
    assert lr_factor(cfg, 1_000) == pytest.approx(0.5, abs=1e-3)
    assert all(lr_factor(cfg, t) == 1.0 for t in (2_000, 30_000, 48_000))
    assert lr_factor(cfg, 54_000) == pytest.approx(0.55)  # halfway through the decay
    assert lr_factor(cfg, 60_000) == pytest.approx(0.1) and lr_factor(cfg, 10**9) == pytest.approx(0.1)
    # a cooldown branch from t is the decay of a wsd run of t / (1 - decay_frac) tokens
    assert probe_length(cfg, 48_000) == 12_000 and probe_length(cfg, 8_000) == 2_000
    short = cfg.replace(train_tokens=10_000)
    assert [cooldown_factor(cfg, u, 2_000) for u in (0, 1_000, 2_000)] == \
        pytest.approx([lr_factor(short, 8_000 + u) for u in (0, 1_000, 2_000)])


def test_set_lr_respects_lr_scale():
    cfg = cfg_for("muon", lr=1e-3, muon_lr=0.02, schedule="cosine", min_lr_ratio=0.1)
    opt = build_optimizer(model_for(), cfg)
    for t, factor in ((0, lr_factor(cfg, 0)), (cfg.warmup, 1.0), (cfg.train_tokens, 0.1)):
        peak = set_lr(opt, cfg, t)
        assert peak == pytest.approx(1e-3 * factor)
        lrs = {g["name"]: g["lr"] for g in opt.param_groups}
        assert lrs["muon"] == pytest.approx(0.02 * factor)
        assert lrs["adamw_decay"] == lrs["adamw_no_decay"] == pytest.approx(1e-3 * factor)
    # the schedule reaches the update: an LR scheduler-style change is read by the inner optimizers
    opt_plain = build_optimizer(model_for(), cfg_for("adamw"))
    set_lr(opt_plain, cfg, cfg.train_tokens)
    assert all(g["lr"] == pytest.approx(1e-4) for g in opt_plain.param_groups)


def test_zero_lr_freezes_every_group():
    """MuonAdamW steps with the group lr it holds now (inner optimizers see the same group dicts)."""
    cfg = cfg_for("muon", weight_decay=0.0)
    model = model_for()
    opt = build_optimizer(model, cfg)
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = copy.deepcopy(model.state_dict())
    train(model, opt, cfg, steps=2)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


# --- checkpoint resume -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opt", ["adamw", "lion", "muon"])
def test_state_dict_round_trip_gives_identical_next_steps(opt):
    cfg = cfg_for(opt, train_tokens=2_000, warmup_tokens=256)
    a = model_for(seed=0)
    opt_a = build_optimizer(a, cfg)
    train(a, opt_a, cfg, steps=3, seed=5, schedule=True)
    buf = io.BytesIO()
    torch.save({"model": a.state_dict(), "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    b = model_for(seed=123)  # different init: everything must come from the checkpoint
    b.load_state_dict(ckpt["model"])
    opt_b = build_optimizer(b, cfg)
    opt_b.load_state_dict(ckpt["opt"])
    assert [g["lr"] for g in opt_b.param_groups] == [g["lr"] for g in opt_a.param_groups]
    assert len(opt_b.state) == len(opt_a.state) > 0

    gen_seed = 9
    la = train(a, opt_a, cfg, steps=4, seed=gen_seed, schedule=True)
    lb = train(b, opt_b, cfg, steps=4, seed=gen_seed, schedule=True)
    assert la == lb
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), n


def test_muon_state_dict_names_both_kinds_of_state():
    cfg = cfg_for("muon")
    model = model_for()
    opt = build_optimizer(model, cfg)
    train(model, opt, cfg, steps=1)
    sd = opt.state_dict()
    keys = {k for s in sd["state"].values() for k in s}
    assert {"momentum_buffer", "exp_avg", "exp_avg_sq", "step"} <= keys
    assert [g["use_muon"] for g in sd["param_groups"]] == [True, False, False]
    assert all("lr_scale" in g for g in sd["param_groups"])


# --- the real model, when it is there ------------------------------------------------------------------------------
def test_real_gpt_groups_and_one_step():
    model_mod = pytest.importorskip("tinylm.model")
    for tie in (True, False):
        cfg = Config.from_name("debug", optimizer="muon", tie_embeddings=tie)
        torch.manual_seed(0)
        model = model_mod.GPT(cfg)
        by_name = {g["name"]: g for g in param_groups(model, cfg)}
        ids = [id(p) for g in by_name.values() for p in g["params"]]
        assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in model.parameters()}
        muon = {id(p) for p in by_name["muon"]["params"]}
        assert len(muon) == 4 * cfg.n_layer
        for n, p in model.named_parameters():
            assert (id(p) in muon) == (".h." in n and p.ndim == 2), n
        assert id(model.lm_head.weight) in {id(p) for p in by_name["adamw_decay"]["params"]}
        opt = build_optimizer(model, cfg)
        x = torch.randint(0, cfg.vocab_size, (2, cfg.block_size))
        _, loss = model(x, x)
        loss.backward()
        opt.step()


# --- DeepSpeed takes MuonAdamW as a client optimizer at ZeRO 0 ----------------------------------------------------
DS_SCRIPT = textwrap.dedent("""
    import sys, json, tempfile
    import torch, deepspeed
    sys.path.insert(0, {tests!r})
    from test_optim import TinyGPT, batch, cfg_for
    from tinylm.optim import MuonAdamW, build_optimizer, set_lr
    torch.set_num_threads(1)
    deepspeed.init_distributed(dist_backend="gloo")
    cfg = cfg_for("muon", lr=1e-2, muon_lr=0.05, train_tokens=20_000, warmup_tokens=256)
    out = {{}}

    def run(precision, steps=20):
        torch.manual_seed(0)
        model = TinyGPT()
        opt = build_optimizer(model, cfg)
        ds = {{"train_micro_batch_size_per_gpu": 8, "gradient_accumulation_steps": 1, "gradient_clipping": 1.0,
              "zero_optimization": {{"stage": 0}}}}
        if precision == "bf16":
            ds["bf16"] = {{"enabled": True}}
        engine, ds_opt, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=ds)
        gen, losses = torch.Generator().manual_seed(1), []
        for step in range(steps):
            set_lr(engine.optimizer, cfg, step * 8 * 16)
            x, y = batch(gen)
            _, loss = engine(x, y)
            engine.backward(loss)
            engine.step()
            losses.append(loss.item())
        return engine, opt, losses

    engine, opt, ds_losses = run("fp32")
    out["same_object"] = engine.optimizer is opt
    out["lrs"] = engine.get_lr()
    tmp = tempfile.mkdtemp()
    engine.save_checkpoint(tmp, tag="t")
    engine2, opt2, _ = run("fp32", steps=0)
    engine2.load_checkpoint(tmp, tag="t")
    out["resumed_state"] = len(opt2.state) == len(opt.state) and all(
        torch.equal(opt.state[p]["momentum_buffer"], opt2.state[q]["momentum_buffer"])
        for p, q in zip(opt.param_groups[0]["params"], opt2.param_groups[0]["params"]))

    # the same run without DeepSpeed
    torch.manual_seed(0)
    model = TinyGPT()
    opt = build_optimizer(model, cfg)
    gen, ref = torch.Generator().manual_seed(1), []
    for step in range(20):
        set_lr(opt, cfg, step * 8 * 16)
        x, y = batch(gen)
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ref.append(loss.item())
    out["ds_losses"], out["ref_losses"] = ds_losses, ref
    engine, opt, out["bf16_losses"] = run("bf16")
    out["bf16_wrapper"] = type(engine.optimizer).__name__
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
@pytest.mark.numerics
def test_deepspeed_accepts_muon_adamw_at_zero0(tmp_path):
    pytest.importorskip("deepspeed")
    tests = str(Path(__file__).resolve().parent)
    env = dict(os.environ, DS_ACCELERATOR="cpu", RANK="0", LOCAL_RANK="0", WORLD_SIZE="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    # A subprocess: init_distributed leaves a process group behind that other tests should not inherit.
    proc = subprocess.run([sys.executable, "-c", DS_SCRIPT.format(tests=tests)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-5000:]
    import json

    out = json.loads(lines[-1][len("RESULT "):])
    assert out["same_object"], "at ZeRO 0 / fp32 DeepSpeed should step the client optimizer itself"
    assert out["lrs"][0] == pytest.approx(out["lrs"][1] * 0.05 / 1e-2)  # engine.get_lr reads our groups
    assert out["resumed_state"]
    ref = out["ref_losses"]
    # the engine runs the plain loop's float32 ops on the same CPU (bit-identical where measured); rel 1e-5 leaves
    # room for a kernel family that reduces the clipping norm in another order, a wrong LR or clip is >1e-3
    assert out["ds_losses"] == pytest.approx(ref, rel=1e-5)
    assert ref[-1] < 0.9 * ref[0]
    # bf16 at ZeRO 0 wraps the client optimizer in FP16_UnfusedOptimizer, which keeps one fp32 master per tensor
    # (shapes kept), so Muon still sees matrices; a flattening wrapper would break it.
    assert out["bf16_wrapper"] == "FP16_UnfusedOptimizer"
    assert out["bf16_losses"] == pytest.approx(ref, abs=0.1)
