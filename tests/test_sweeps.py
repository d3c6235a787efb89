"""Every sweep script declares a space whose every point builds a valid Config, at both scales."""

import glob
import importlib.util
import os
import sys

import pytest

from tinylm.config import ConfigError
from tinylm.sweep import Space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "sweeps", "*.py")))
GRID_SCRIPTS = [p for p in SCRIPTS if "EXPERIMENT = " in open(p).read()]  # baselines.py is a plain script


def load(path):
    spec = importlib.util.spec_from_file_location("sweep_" + os.path.basename(path)[:-3], path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_seed_sweeps_exist():
    names = {os.path.basename(p)[:-3] for p in SCRIPTS}
    assert {"arch", "lr", "seq", "dynamics", "embed", "glu", "vocab", "optim", "schedule", "precision",
            "tokenizer", "data_scale", "width", "depth", "heads"} <= names


@pytest.mark.parametrize("path", GRID_SCRIPTS, ids=lambda p: os.path.basename(p))
def test_space_builds_valid_configs(path):
    from tinylm.tune import build_config, grid_space

    mod = load(path)
    exp = mod.EXPERIMENT
    assert exp.hypothesis and exp.description, "every experiment states its hypothesis"
    assert (mod.__doc__ or "").count("python sweeps/") >= 2, "the docstring gives the commands"
    for scale in ("smoke", "laptop", "full"):
        base = exp.base(scale)
        assert base.scale == scale
        space = exp.space_at(scale)
        grid_space(base, space, seeds=2)  # raises on any invalid point
        cfgs = [build_config(base.to_dict() | p) for p in space.points()]
        assert len({c.to_json() for c in cfgs}) == len(cfgs), "grid points are distinct configs"
        baseline = exp.baseline_at(scale)
        if baseline:
            hits = [c for c in cfgs if all(getattr(c, k) == v for k, v in baseline.items())]
            assert len(hits) == 1 or exp.name == "vocab", f"the baseline {baseline} is one grid point at {scale}"
        if scale == "smoke":
            assert all(c.train_tokens <= 500_000 for c in cfgs), "smoke trials take seconds, not hours"


def test_budget_sweeps_keep_total_params_fixed():
    from tinylm.budget import num_params
    from tinylm.tune import build_config

    for name, key, values in (("embed", "embed_share", (0.25, 0.35, 0.45)), ("glu", "glu_factor", (2.0, 2.66, 3.0, 4.0))):
        exp = load(os.path.join(ROOT, "sweeps", f"{name}.py")).EXPERIMENT
        for scale in ("smoke", "laptop", "full"):
            base = exp.base(scale)
            for v in values:
                cfg = build_config(base.to_dict() | {key: v})
                assert abs(num_params(cfg) / base.target_params - 1) <= 0.01


def test_seed_head_grid_fails_before_scheduling():
    """The seed's 12 heads at hidden 320 is invalid: the error names the field and the allowed values."""
    from tinylm.tune import grid_space

    exp = load(os.path.join(ROOT, "sweeps", "heads.py")).EXPERIMENT
    with pytest.raises(ConfigError, match=r"n_embd=320 is not divisible by n_head=12.*allowed n_head: \[1, 2, 4, 5, 8, 10, 16, 20, 32, 40, 64\]"):
        grid_space(exp.base("full"), Space(n_head=[5, 8, 12, 16]), seeds=1)


# --- the laptop scale: a replica of each experiment, not a shrunken copy ------------------------------------------
SCALING = {"arch", "width", "depth", "ladder"}  # scaling fits: every laptop point on 20 tokens per parameter


def laptop_configs(exp):
    from tinylm.sweep.plan import expand
    from tinylm.tune import build_config

    base = exp.base("laptop")
    return base, [build_config(base.to_dict() | {k: v for k, v in p.items() if k != "seed"})
                  for p in expand(exp.space_at("laptop"), 1, base)]


@pytest.mark.parametrize("path", GRID_SCRIPTS, ids=lambda p: os.path.basename(p))
def test_laptop_config_is_a_replica(path):
    """Head size >= 16; tokens per parameter = the full experiment's (>= 20 for scaling sweeps); the embedding
    share of a parameter budget as requested (±1 pt) and of a fixed-shape preset within 2.5 pts of full scale;
    LR / warmup / beta2 from the size rules, never a per-script constant."""
    from tinylm.budget import embed_share, num_params, param_counts
    from tinylm.config import laptop_lr

    exp = load(path).EXPERIMENT
    base, cfgs = laptop_configs(exp)
    full = exp.base("full")
    full_tpp = full.train_tokens / num_params(full)
    for c in cfgs:
        counts = param_counts(c)
        n = counts[c.budget_params]  # an MoE solved at equal active params trains on tokens per active param
        assert c.head_dim >= 16, f"{exp.name}: head size {c.head_dim}"
        tpp = c.train_tokens / n
        if exp.tokens_per_param_per_point.get("laptop"):  # declared: each point on its own tokens per parameter
            assert abs(tpp / exp.tokens_per_param_per_point["laptop"] - 1) < 0.03, f"{exp.name}: {tpp:.2f} tokens/param"
        elif exp.name == "data_scale":
            assert 2.4 <= tpp <= 20.5
        elif exp.tokens_per_param:  # a floor that keeps the regime (glu: 20), above the full experiment's
            assert exp.tokens_per_param > full_tpp and abs(tpp / exp.tokens_per_param - 1) < 0.03, (exp.name, tpp)
        elif exp.name not in ("seq", "speed", "vocab", "tokenizer", "isoflop"):  # their axes change N or D
            assert abs(tpp / full_tpp - 1) < 0.03, f"{exp.name}: {tpp:.2f} vs full {full_tpp:.2f} tokens/param"
        if c.target_params:
            assert abs(counts["embedding"] / n - c.embed_share) <= 0.011
        if c.optimizer == "adamw" and exp.name not in ("optim",):
            ok = c.lr == pytest.approx(laptop_lr(n), rel=0.01) or c.lr == pytest.approx(laptop_lr(num_params(base)))
            assert ok, "LR by the size rule (of the trial, or of the base for ablations), unrounded"
        assert c.beta2 == 0.99 and c.batch_size * c.block_size <= 4096
        w = exp.warmup_tokens_per_param or 1.0  # the rule's 1 token per parameter unless the experiment measured
        assert any(c.warmup == pytest.approx(min(w * m, t // 4), rel=0.01) for m in (n, num_params(c), num_params(base))
                   for t in (c.train_tokens, base.train_tokens)), f"{exp.name}: warmup {c.warmup:,}"  # (data axes)
    if not full.target_params and exp.name not in ("vocab", "tokenizer", "width", "ladder", "isoflop", "arch", "depth"):
        assert abs(embed_share(base) - embed_share(full)) <= 0.025, "the preset's embedding share is kept"


def test_a_measured_warmup_is_the_glu_replica_s_own_and_checked_before_anything_runs():
    """glu warms up over 4 tokens per parameter (20 % of its run), the other replicas over the rule's 1; a bad
    value, or one a per-point sweep would silently re-derive, stops in one line."""
    from dataclasses import replace

    from tinylm.budget import num_params

    glu = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    base = glu.base("laptop")
    assert base.warmup == round(4 * num_params(base)) and 0.19 < base.warmup / base.train_tokens <= 0.25
    assert replace(glu, warmup_tokens_per_param=0.0).base("laptop").warmup == min(num_params(base),
                                                                                     base.train_tokens // 4)
    assert replace(glu, warmup_tokens_per_param=100.0).base("laptop").warmup == base.train_tokens // 4
    with pytest.raises(ConfigError, match="warmup_tokens_per_param: -1.0 is not a positive number"):
        replace(glu, warmup_tokens_per_param=-1.0).base("laptop")
    ladder = load(os.path.join(ROOT, "sweeps", "ladder.py")).EXPERIMENT
    with pytest.raises(ConfigError, match="ladder: warmup_tokens_per_param applies to the sweep's base only"):
        replace(ladder, warmup_tokens_per_param=2.0).base("laptop")


def test_glu_laptop_keeps_every_glu_factor_distinct_and_close():
    from tinylm.budget import num_params

    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    base, cfgs = laptop_configs(exp)
    real = [c.ffn_hidden / c.n_embd for c in cfgs]
    for c, r in zip(cfgs, real):
        assert abs(r / c.glu_factor - 1) <= 0.07, (c.glu_factor, r)
        assert abs(num_params(c) / base.target_params - 1) <= 0.01
    assert len(set(real)) == 4 and real == sorted(real)
    assert exp.options["seeds"] >= 2 and not exp.early_stopping, "the verdict needs every seed of every variant"


def test_dry_run_prints_the_trials_and_starts_nothing(capsys, monkeypatch):

    from tinylm.sweep.pipeline import run

    monkeypatch.setitem(sys.modules, "ray", None)  # importing ray would fail: --dry-run must not need it
    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    table = run(exp, dry_run=True)
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "estimated wall time here" in out and "diagnostics" in out
    assert "this experiment's own: warmup = 4 tokens per parameter" in out
    lr, seeds = table[table["phase"] == "lr"], table[table["phase"] == "seeds*"]
    assert len(lr) == 4 * len(exp.lr_grid) and len(seeds) == 4 * exp.options["seeds"]
    assert (seeds["tokens_per_param"].round(0) == 20).all() and (lr["tokens"] == seeds["tokens"].min()).all()
    short = run(exp, dry_run=True, lr_fraction=0.25)
    assert (short[short["phase"] == "lr"]["tokens"] < seeds["tokens"].min() / 3).all()
    assert sorted(set((lr["lr"] / seeds["lr"].iloc[0]).round(6))) == list(exp.lr_grid)
    assert len(run(exp, dry_run=True, lr_grid=[])) == 4 * exp.options["seeds"]  # no tuning: the seed runs only
    run(exp, scale="smoke", dry_run=True)
    assert "SMOKE scale: mechanics only" in capsys.readouterr().out


def test_ladder_spans_a_decade_at_twenty_tokens_per_param():
    from tinylm.budget import num_params
    from tinylm.config import laptop_lr
    from tinylm.sweep.ladder import SHAPES

    mod = load(os.path.join(ROOT, "sweeps", "ladder.py"))
    base, cfgs = laptop_configs(mod.EXPERIMENT)
    sizes = sorted({num_params(c) for c in cfgs})
    assert len(sizes) == len(cfgs) >= 5 and sizes[-1] / sizes[0] >= 10  # one variant per size
    assert len(mod.EXPERIMENT.lr_grid) >= 3 and mod.EXPERIMENT.options["seeds"] >= 2, "one protocol: LR grid, seeds"
    for scale in ("laptop", "full"):  # declared: every size on 20 tokens per parameter of its own, the rule's LR
        base_s = mod.EXPERIMENT.base(scale)
        for p in mod.EXPERIMENT.space_at(scale).points():
            c = base_s.replace(**p)
            assert abs(c.train_tokens / num_params(c) / 20 - 1) < 0.03 and c.lr == laptop_lr(num_params(c))
    assert mod.EXPERIMENT.space_at("smoke").points() == [dict(n_embd=d, n_layer=n, n_head=h, d_ff=4 * d)
                                                         for d, n, h in SHAPES["smoke"]]  # smoke: the base's run
    iso = load(os.path.join(ROOT, "sweeps", "isoflop.py"))
    points = iso.EXPERIMENT.space_at("laptop").points()
    budgets = {round(6 * (base.replace(**p).train_tokens) * num_params(base.replace(**p)), -10) for p in points}
    assert len(points) >= 12 and len(budgets) >= 3


def test_scaling_sweeps_declare_their_tokens_per_param():
    """The scaling sweeps declare what they need (no list of names in the library): each laptop point of arch,
    width, depth and the ladder re-derived to 20 tokens per parameter of its own model, the size rule's LR; the
    dry run flags a data_scale point below 20 (it declares the fit's need: its points vary the data by design),
    while isoFLOP (tokens per parameter vary by design) and a non-scaling sweep only need 1."""
    from dataclasses import replace

    from tinylm.budget import num_params
    from tinylm.config import laptop_lr
    from tinylm.sweep.plan import diagnose, plan

    for name in sorted(SCALING):
        exp = load(os.path.join(ROOT, "sweeps", f"{name}.py")).EXPERIMENT
        assert exp.tokens_per_param_per_point.get("laptop") == 20 and "smoke" not in exp.tokens_per_param_per_point
        base = exp.base("laptop")
        points = exp.space_at("laptop").points()
        assert exp.space_at("laptop").variants == points  # one variant per point
        for p in points:
            c = base.replace(**p)
            assert abs(c.train_tokens / num_params(c) / 20 - 1) < 0.03, (name, p)
            assert c.lr == laptop_lr(num_params(c)) and c.warmup_tokens == min(num_params(c), c.train_tokens // 4)
        assert not [d for d in diagnose(plan(exp, base), "laptop", exp) if "undertrained" in d], name
        full = exp.base("full")
        if name != "ladder":  # the full experiments' 50M tokens: under 20 per parameter for the larger sizes
            assert any("< 20 for a scaling fit" in d for d in diagnose(plan(exp, full), "full", exp)), name
    data = load(os.path.join(ROOT, "sweeps", "data_scale.py")).EXPERIMENT
    assert data.fit_tokens_per_param == 20 and not data.tokens_per_param_per_point
    table = plan(data, data.base("laptop"))
    assert (table["tokens_per_param"] < 19.4).sum() == 3  # 1x, 2x, 4x; 8x = 20
    assert any(d.startswith("undertrained by design: 3 trial(s)") and "< 20 for a scaling fit" in d
               for d in diagnose(table, "laptop", data))
    iso = load(os.path.join(ROOT, "sweeps", "isoflop.py")).EXPERIMENT
    assert iso.fit_tokens_per_param is None and not iso.tokens_per_param_per_point
    assert not any("scaling fit" in d for d in diagnose(plan(iso, iso.base("laptop")), "laptop", iso))
    assert any("< 20 for a scaling fit" in d for d in diagnose(table, "laptop", replace(data, name="renamed")))
    assert not any("undertrained" in d for d in diagnose(table, "laptop", replace(data, fit_tokens_per_param=None)))


def test_tokens_per_param_per_point_is_declared_not_named():
    """Any Experiment (not only the library's named sweeps) gets its points re-derived at the scales it names and
    the dry run's 20-tokens check; a point may not set a field the re-derivation replaces; --set extras are
    checked against the re-derived space without recursion."""
    from dataclasses import replace

    from tinylm.budget import num_params
    from tinylm.sweep import Experiment, Space
    from tinylm.sweep.plan import diagnose, plan

    exp = Experiment(name="mine", preset="medium", space=Space(n_layer=[2, 3]), tokens_per_param_per_point={"laptop": 10},
                     hypothesis="h", description="d")
    base = exp.base("laptop")
    pts = exp.space_at("laptop").points()
    assert [p["n_layer"] for p in pts] == [2, 3] and len({p["train_tokens"] for p in pts}) == 2
    assert all(abs(base.replace(**p).train_tokens / num_params(base.replace(**p)) / 10 - 1) < 0.03 for p in pts)
    assert exp.space_at("full") == Space(n_layer=[2, 3])  # no other scale is touched
    assert any("< 10 for a scaling fit" in d for d in diagnose(plan(exp, exp.base("full")), "full", exp))
    assert exp.base("laptop", seed=3).seed == 3
    with pytest.raises(ConfigError, match="lr is an axis"):
        exp.base("laptop", lr=1e-3)  # the re-derived points set the LR
    bad = replace(exp, space=Space(variants=[dict(n_layer=2, lr=1e-3), dict(n_layer=3, lr=1e-3)]))
    with pytest.raises(ConfigError, match="sets lr, which tokens_per_param_per_point derives"):
        bad.space_at("laptop")


def stub_tune(monkeypatch, run_sweep_) -> None:
    """tinylm.tune without Ray: ``run_sweep_`` stands in for run_sweep; nothing printed, nothing to shut down."""
    tune = pytest.importorskip("tinylm.tune")
    monkeypatch.setattr(tune, "run_sweep", run_sweep_)
    monkeypatch.setattr(tune, "print_results", lambda *a, **k: "")
    monkeypatch.setattr(tune, "shutdown", lambda: None)


def test_two_phase_trains_finalists_to_the_end(monkeypatch, tmp_path):
    """Phase 2 is the PRD's decision: no ASHA and no kill rule may stop a finalist (issue 11: the rule killed all
    three 2.66 seeds once); phase 1 ranks on a short run with a warmup that fits in it."""
    import pandas as pd

    from tinylm.sweep.pipeline import run

    calls = []

    def run_sweep_(sweep, base, space, refine_space=None):
        calls.append((sweep, base, space))
        return pd.DataFrame([{"glu_factor": g, "val_loss": 5.0 + i / 10, "status": "completed"}
                             for i, g in enumerate((2.66, 3.0, 2.0, 4.0))])

    stub_tune(monkeypatch, run_sweep_)
    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    run(exp, two_phase=True, kill_margin=0.02, results=str(tmp_path), lr_grid=[])
    (rank, short, _), (final, full, space) = calls
    assert rank.kill_margin == 0.02 and short.train_tokens < full.train_tokens
    assert short.warmup_tokens <= short.train_tokens // 4
    assert not final.asha and final.kill_margin == float("inf") and final.seeds >= 3
    assert full.train_tokens == exp.base("laptop").train_tokens
    assert [v["glu_factor"] for v in space.variants] == [2.66, 3.0, 4.0]  # 2 finalists + the baseline


def test_the_ladder_tunes_every_size_by_one_rule_then_runs_its_seeds(monkeypatch, tmp_path):
    """Each size at its own rule LR x {1/2, 1, 2} on the tuning seed, at its own full run length; a size whose best
    is at an edge gets the next multiple (the same rule for the held-out largest size); then 2 seeds per size at
    its tuned LR; then the ladder report."""
    import pandas as pd

    from tinylm.sweep import Space
    from tinylm.sweep.pipeline import run

    mod = load(os.path.join(ROOT, "sweeps", "ladder.py"))
    sizes = mod.EXPERIMENT.space_at("laptop").variants
    rule = {v["n_embd"]: v["lr"] for v in sizes}
    best = {32: 0.5, 40: 1.0, 56: 1.0, 64: 2.0, 80: 4.0}  # multiples of each size's rule: 80 needs an extension
    calls, reports = [], []

    def run_sweep_(sweep, base, space, refine_space=None):
        calls.append((sweep, base, space))
        return pd.DataFrame([{**v, "seed": s, "status": "completed",
                              "val_loss": 4 + 0.1 * __import__("math").log2(v["lr"] / rule[v["n_embd"]]
                                                                             / best[v["n_embd"]]) ** 2}
                             for v in space.variants for s in range(base.seed, base.seed + sweep.seeds)])

    stub_tune(monkeypatch, run_sweep_)
    exp = __import__("dataclasses").replace(mod.EXPERIMENT, after=lambda table, **kw: reports.append(kw))
    run(exp, results=str(tmp_path))
    (lr0, short, space0), (lr1, _, space1), (lr2, _, space2), (final, full, space) = calls
    assert [c[0].name for c in calls] == ["ladder-lr", "ladder-lr-x1", "ladder-lr-x2", "ladder"] and final.seeds == 2
    for v in space0.variants:  # full length and the size's own rule
        size = next(s for s in sizes if s["n_embd"] == v["n_embd"])
        assert v["train_tokens"] == size["train_tokens"] and v["lr"] / size["lr"] in (0.5, 1.0, 2.0)
    assert [(v["n_embd"], round(v["lr"] / rule[v["n_embd"]], 6)) for v in space1.variants] == [(32, 0.25), (64, 4.0),
                                                                                         (80, 4.0)]
    assert [(v["n_embd"], round(v["lr"] / rule[v["n_embd"]], 6)) for v in space2.variants] == [(80, 8.0)]
    assert {v["n_embd"]: round(v["lr"] / rule[v["n_embd"]], 6) for v in space.variants} == best
    assert all(v["train_tokens"] == s["train_tokens"] for v, s in zip(space.variants, sizes, strict=True))
    assert len(reports) == 1 and reports[0]["space"] == space and isinstance(space, Space)  # the hook gets a Space


def test_repeated_set_flags_all_apply():
    """``--set a=1 --set b=2`` sets both (argparse's default would keep only the last ``--set``)."""
    from tinylm.sweep.cli import parser

    glu = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    args = parser(glu).parse_args(["--set", "schedule=wsd", "--set", "decay_frac=0.3", "lr=1e-3"])
    assert args.set == ["schedule=wsd", "decay_frac=0.3", "lr=1e-3"]
    assert parser(glu).parse_args([]).set == []


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: os.path.basename(p)[:-3])
def test_a_sweep_without_early_stopping_has_neither_asha_nor_the_kill_rule(path):
    """``Experiment(early_stopping=False)`` means every trial runs to its end: the Sweep it builds has no ASHA and
    an infinite kill margin (the tokenizer and precision sweeps once kept the kill rule: it compared perplexities
    per character with perplexities per BPE token), while a flag given on the command line still wins."""
    import math

    from tinylm.sweep.experiment import defaults, sweep_of

    mod = load(path)
    for exp in [v for v in vars(mod).values() if type(v).__name__ == "Experiment"]:
        sweep = sweep_of(exp, defaults(exp), "smoke")
        if exp.early_stopping:
            assert sweep.asha and math.isfinite(sweep.kill_margin)
        else:
            assert not sweep.asha and sweep.kill_margin == math.inf
            assert sweep_of(exp, defaults(exp) | {"kill_margin": 0.05}, "smoke").kill_margin == 0.05


def _fake_lr_sweeps(monkeypatch, best: dict[float, float], fail: tuple = ()):
    """tinylm.tune stand-ins: a run's final val loss is a parabola in log2(lr) with its minimum at ``best[glu]``
    (an LR), so where the tuning must go is known; points in ``fail`` (glu, lr multiple of the rule) diverge."""
    import math

    import pandas as pd

    calls = []

    def run_sweep_(sweep, base, space, refine_space=None):
        calls.append((sweep, base, space))
        rows = []
        variants = space.variants or [{"glu_factor": g} for g in space.axes["glu_factor"]]
        for v in variants:
            lr = v.get("lr", base.lr)
            loss = 4.0 + 0.1 * math.log2(lr / best[v["glu_factor"]]) ** 2
            status = "diverged" if (v["glu_factor"], round(lr / base.lr, 6)) in fail else "completed"
            rows += [{**v, "lr": lr, "seed": s, "val_loss": loss, "status": status}
                     for s in range(base.seed, base.seed + sweep.seeds)]
        return pd.DataFrame(rows)

    stub_tune(monkeypatch, run_sweep_)
    return calls


def test_lr_is_tuned_per_variant_before_the_seed_runs_and_extended_until_interior(monkeypatch, tmp_path, capsys):
    """The PRD's LR phase: every variant x the grid on one tuning seed (not one of the seed runs), short, every run
    to its end; a best at an edge gets the next multiplier in a new round until it is interior; the seed runs
    then train each variant at its own best LR."""
    from tinylm.sweep.pipeline import run

    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    rule = exp.base("laptop").lr
    # glu 2: optimum x 4 (interior at once); 2.66: x 16 (two rounds up); 3: x 1 (one round down); 4: x 64 (never
    # interior within MAX_LR_EXTENSIONS = 3 rounds up from x 8: x 16, x 32, x 64, still the best, stays an edge)
    best = {2.0: 4 * rule, 2.66: 16 * rule, 3.0: 1 * rule, 4.0: 64 * rule}
    calls = _fake_lr_sweeps(monkeypatch, best)
    run(exp, results=str(tmp_path), seeds=2)
    *tuning, (final, full, space) = calls
    first = tuning[0]
    assert first[0].name == "glu-lr" and not first[0].asha and first[0].kill_margin == float("inf")
    assert first[0].seeds == 1 and first[1].seed == full.seed + 100  # a tuning seed no seed run uses (MAX_SEEDS)
    assert first[1].train_tokens == full.train_tokens and len(first[2].variants) == 12  # in the seeds' regime
    assert [c[0].name for c in tuning] == ["glu-lr", "glu-lr-x1", "glu-lr-x2", "glu-lr-x3"]
    assert final.name == "glu" and final.seeds == 2 and full.train_tokens == exp.base("laptop").train_tokens
    chosen = {v["glu_factor"]: v["lr"] / rule for v in space.variants}
    assert chosen == pytest.approx({2.0: 4, 2.66: 16, 3.0: 1, 4.0: 64})
    out = capsys.readouterr().out
    assert "glu_factor=4.0: lr" in out and "lowest at the grid edge after the extensions" in out
    assert out.count("lowest at the grid edge") == 1, "only glu 4 stays at an edge"


def test_an_edge_the_tie_rule_hides_is_still_extended(monkeypatch, tmp_path, capsys):
    """glu 2's optimum lies between x 4 and x 8 (x 8 lowest, 0.007 nats below the centre x 4, inside the tie):
    the grid is still extended past x 8 until the lowest loss is interior, and the seeds run at the centre."""
    from tinylm.sweep.pipeline import run

    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    rule = exp.base("laptop").lr
    calls = _fake_lr_sweeps(monkeypatch, {2.0: 5.8 * rule, 2.66: 4 * rule, 3.0: 4 * rule, 4.0: 4 * rule})
    run(exp, results=str(tmp_path), seeds=2)
    *tuning, (_, _, space) = calls
    assert [c[0].name for c in tuning] == ["glu-lr", "glu-lr-x1"]
    assert [round(v["lr"] / rule, 6) for v in tuning[1][2].variants] == [16.0]  # glu 2 only, one step past x 8
    assert {v["glu_factor"]: round(v["lr"] / rule, 6) for v in space.variants}[2.0] == 4.0
    out = capsys.readouterr().out
    assert "lowest at x8, within 0.02 nats of the centre: the centre kept" in out and "grid edge" not in out


def test_lr_tuning_skips_a_diverged_lr_and_can_be_turned_off(monkeypatch, tmp_path):
    from tinylm.sweep.pipeline import run

    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    rule = exp.base("laptop").lr
    best = {g: 4 * rule for g in (2.0, 2.66, 3.0, 4.0)}
    calls = _fake_lr_sweeps(monkeypatch, best, fail={(2.0, 4.0)})  # glu 2's best LR diverged: x 2 or x 8 wins
    run(exp, results=str(tmp_path), seeds=2)
    space = calls[-1][2]
    assert {v["glu_factor"]: round(v["lr"] / rule) for v in space.variants}[2.0] in (2, 8)
    calls.clear()
    run(exp, results=str(tmp_path / "b"), seeds=2, lr_grid=[])
    assert len(calls) == 1 and calls[0][2] == Space(glu_factor=[2.0, 2.66, 3.0, 4.0])  # the rule's LR, no phase
    with pytest.raises(ConfigError, match=r"--lr-grid=\[1.0, 2.0\] must be no values, or >= 3 positive"):
        run(exp, results=str(tmp_path / "c"), lr_grid=[1.0, 2.0])
    with pytest.raises(ConfigError, match="--lr-fraction=0 must be a fraction"):
        run(exp, results=str(tmp_path / "c"), lr_fraction=0)


def _fake_seed_sweeps(monkeypatch, effect: dict[float, float], sd: float):
    """tinylm.tune stand-ins for --until-conclusive: the final val loss of (glu, seed) is 4 + log(1 + effect %)
    + a seed effect + noise of s.d. ``sd``, drawn from (glu, seed) so every rerun of a trial reads the same."""
    import math

    import numpy as np
    import pandas as pd

    calls = []

    def run_sweep_(sweep, base, space, refine_space=None):
        calls.append((sweep, base, space))
        rows = []
        for g in space.axes["glu_factor"]:
            for s in range(base.seed, base.seed + sweep.seeds):
                rng = np.random.default_rng([s, int(100 * g)])
                loss = 4.0 + math.log1p(effect[g] / 100) + 0.05 * np.random.default_rng(s).normal() \
                    + sd * rng.normal()
                rows.append({"glu_factor": g, "seed": s, "val_loss": loss, "status": "completed"})
        return pd.DataFrame(rows)

    stub_tune(monkeypatch, run_sweep_)
    return calls


def test_until_conclusive_adds_seed_rounds_until_every_comparison_is_decided(monkeypatch, tmp_path, capsys):
    import json

    from tinylm.sweep.pipeline import run

    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    calls = _fake_seed_sweeps(monkeypatch, {2.0: 8.0, 2.66: 0.0, 3.0: 0.5, 4.0: 0.0}, sd=0.02)
    table = run(exp, results=str(tmp_path), seeds=3, lr_grid=[], until_conclusive=True, max_seeds=12)
    names = [c[0].name for c in calls]
    assert names[0] == "glu" and len(names) > 1, "3 seeds at s.d. 0.02 cannot decide +0.5 % within ±5 %"
    assert names[1:] == [f"glu-seed{k}" for k in range(3, 3 + len(names) - 1)]
    assert all(c[0].seeds == 1 and c[1].seed == int(c[0].name[8:]) for c in calls[1:])  # one new seed per round
    assert sorted(table["seed"].unique()) == list(range(len(names) + 2))
    state = json.loads((tmp_path / "glu" / "sequential.json").read_text())
    assert state["conclusive"] and state["rounds"] == names[1:] and state["margin_pct"] == 5.0
    last = {c["group"]: c["reading"] for c in state["looks"][-1]["comparisons"]}
    assert last == {"glu_factor=2.0": "different", "glu_factor=2.66": "equivalent", "glu_factor=3.0": "equivalent"}
    assert sum(look["alpha"] for look in state["looks"]) < 0.05  # stopped before spending it all
    assert "every comparison is conclusive" in capsys.readouterr().out


def test_until_conclusive_stops_at_its_seed_budget_and_refuses_what_it_cannot_do(monkeypatch, tmp_path):
    import json

    from tinylm.sweep.pipeline import run

    exp = load(os.path.join(ROOT, "sweeps", "glu.py")).EXPERIMENT
    calls = _fake_seed_sweeps(monkeypatch, {2.0: 5.0, 2.66: 0.0, 3.0: 0.0, 4.0: 0.0}, sd=0.05)  # at the margin
    run(exp, results=str(tmp_path), seeds=2, lr_grid=[], until_conclusive=True, max_seeds=4)
    assert [c[0].name for c in calls] == ["glu", "glu-seed2", "glu-seed3"]
    state = json.loads((tmp_path / "glu" / "sequential.json").read_text())
    assert not state["conclusive"] and sum(look["alpha"] for look in state["looks"]) == pytest.approx(0.05)
    with pytest.raises(ConfigError, match="--max-seeds=2 is below --seeds=3"):
        run(exp, results=str(tmp_path / "b"), seeds=3, until_conclusive=True, max_seeds=2)
    with pytest.raises(ConfigError, match="--until-conclusive and --two-phase: pick one"):
        run(exp, results=str(tmp_path / "b"), two_phase=True, until_conclusive=True)
    with pytest.raises(ConfigError, match=r"2,004 trials \(4 grid points x 100 seeds \+ 1604 refined\)"):
        run(exp, results=str(tmp_path / "b"), until_conclusive=True, max_seeds=100, lr_grid=[], refine=1604,
            dry_run=True)  # the seed ceiling counts, not the first round
    nobase = __import__("dataclasses").replace(exp, baseline={})
    with pytest.raises(ConfigError, match="--until-conclusive needs a baseline to compare with; sweep 'glu'"):
        run(nobase, results=str(tmp_path / "b"), until_conclusive=True, dry_run=True)
    with pytest.raises(ConfigError, match="--budget-min=-1 must be a number of minutes"):
        run(exp, results=str(tmp_path / "b"), until_conclusive=True, budget_min=-1)


def test_an_lr_must_beat_the_grid_centre_by_more_than_a_seed_s_noise():
    """One tuning seed cannot rank LRs closer than the seed noise: the centre (the prior) stays unless beaten by
    more than LR_TIE_NATS; a centre that did not complete is no prior."""
    import math

    from tinylm.sweep.pipeline import LR_TIE_NATS, pick_lr

    measured = {2.0: 4.1433, 4.0: 4.1500, 8.0: 4.5693}  # glu 2.0's tuning runs (RESULTS.md 2026-12-03)
    assert pick_lr(measured, 4.0) == 4.0 and LR_TIE_NATS >= 0.018
    assert pick_lr({2.0: 4.10, 4.0: 4.15, 8.0: 4.5}, 4.0) == 2.0
    assert pick_lr({2.0: 4.14, 4.0: math.inf, 8.0: 4.2}, 4.0) == 2.0
    assert pick_lr({1.0: 4.30, 2.0: 4.25, 4.0: 4.30}, 2.0) == 2.0
