"""What a sweep script declares (``Experiment``), the options a run of it takes (``flags``: the run's own,
``RUN_FLAGS``, then the Sweep's settings, ``tinylm.sweep.settings``) and every check of them before anything
starts (``check_options``, ``check_space``). ``tinylm.sweep.pipeline`` runs it; ``tinylm.sweep.cli`` is its
command line.

    EXPERIMENT = Experiment(name="glu", preset="budget-10m", space=Space(glu_factor=[2.0, 2.66, 3.0, 4.0]),
                            baseline=dict(glu_factor=4.0), hypothesis="...")
    EXPERIMENT = load("sweeps/glu.py")        # the EXPERIMENT a sweep script declares
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tinylm.config import CHOICES, Config, ConfigError, coerce
from tinylm.layout import unwritable_parent
from tinylm.sweep.settings import MAX_SEEDS, MAX_TRIALS, Flag, Sweep, int_at_least, is_number
from tinylm.sweep.settings import flags as sweep_flags
from tinylm.sweep.space import Space


@dataclass(frozen=True)
class Experiment:
    name: str
    preset: str
    space: Space | dict | Callable[[str], Space | dict]  # the intervention (a Space; a dict of field -> values is
    # read as one); a function of the scale when the values themselves differ between smoke and full
    hypothesis: str = ""
    description: str = ""
    baseline: dict | Callable[[str], dict] = field(default_factory=dict)  # fields that pick the baseline trial
    overrides: dict = field(default_factory=dict)  # Config fields for every scale
    smoke: dict = field(default_factory=dict)  # Config fields applied only at smoke scale (after at_scale)
    laptop: dict = field(default_factory=dict)  # Config fields applied only at laptop scale (after at_scale; sizes
    # only: the tokens per parameter and the size-dependent hparams are re-derived after them)
    tokens_per_param: float = 0.0  # laptop: train on this many tokens per parameter (0 = the full experiment's)
    warmup_tokens_per_param: float = 0.0  # laptop: warm up over this many tokens per parameter, capped at 1/4 of
    # the run (0 = the laptop rule's 1); where a replica's deep variants leave the unigram plateau late at the rule's
    # warmup (measured: RESULTS.md), so that its seeds measure when they escape, not the question
    tokens_per_param_per_point: dict[str, float] = field(default_factory=dict)  # scale -> tokens per parameter
    # every grid point trains on at that scale, each of its own model (a scaling sweep: {"laptop": 20}); space_at
    # re-derives each point from base(scale) by Config.with_tokens_per_param (``per_point_tokens``)
    fit_tokens_per_param: float | None = None  # the tokens per parameter a claim of this sweep needs at every
    # scale (a scaling fit: 20); the dry run flags trials below it. None: the most of tokens_per_param_per_point,
    # else 1 (declare it where the points vary the data by design: data_scale)
    refine_space: dict | None = None  # Tune domains for --refine (default: around the grid axes)
    lr_grid: tuple[float, ...] = ()  # laptop / full: multipliers of the rule's LR tried per variant on one tuning
    # seed before the seed runs (``tune_lr``; extended while the best is at an edge); () = every variant at the rule
    early_stopping: bool = True  # False: every trial runs to its end, no ASHA and no kill rule (scaling fits,
    # seeded verdicts, LR or schedule axes, losses in different units, timings); the CLI's flags still win
    options: dict = field(default_factory=dict)  # defaults for the sweep flags (CLI / run() kwargs still win),
    # by dest name, e.g. {"kill_margin": math.inf, "max_concurrent": 1} for an ablation that times every row
    after: Callable | None = None  # after(table, sweep=, base=, space=): a report once the sweep is done

    def space_at(self, scale: str) -> Space:
        """The grid at ``scale``; where ``tokens_per_param_per_point`` names the scale, each point re-derived to
        that many tokens per parameter of its own model (``per_point_tokens``), one variant per point."""
        space = Space.of(self.space(scale) if callable(self.space) else self.space)
        tpp = self.tokens_per_param_per_point.get(scale)
        return per_point_tokens(space, self.base(scale), tpp) if tpp else space  # base without --set: no recursion

    def baseline_at(self, scale: str) -> dict:
        return self.baseline(scale) if callable(self.baseline) else self.baseline

    def base(self, scale: str, **extra) -> Config:
        """The Config every trial of this sweep starts from at ``scale``; ``extra``: the ``--set`` fields, which may
        name neither a field the sweep sets itself nor one its space sweeps (``check_sets``)."""
        if extra:
            check_sets(extra, self.space_at(scale))
        if scale == "laptop":  # a replica of the full experiment: its overrides apply at full scale, then it shrinks
            from tinylm.budget import num_params

            full = Config.from_name(self.preset, **self.overrides)
            cfg = full.at_scale("laptop")
            if cfg.scale == "laptop":
                tpp = self.tokens_per_param or full.train_tokens / num_params(full)
                if self.warmup_tokens_per_param:
                    if self.tokens_per_param_per_point:  # per_point_tokens re-derives each point's warmup by the rule
                        raise ConfigError(f"{self.name}: warmup_tokens_per_param applies to the sweep's base only, "
                                          "not with tokens_per_param_per_point")
                    if not self.warmup_tokens_per_param > 0:
                        raise ConfigError(f"warmup_tokens_per_param: {self.warmup_tokens_per_param!r} is not a "
                                          "positive number of tokens per parameter (0 = the laptop rule's 1)")
                cfg = cfg.replace(**self.laptop).with_tokens_per_param(tpp, self.warmup_tokens_per_param or 1.0)
                run_length = ("train_tokens", "eval_every_tokens", "warmup_tokens")  # explicit laptop values win
                cfg = cfg.replace(**{k: v for k, v in self.laptop.items() if k in run_length})
        else:
            cfg = Config.from_name(self.preset, scale=scale, **self.overrides)
        if cfg.scale == "smoke":  # also a small preset (debug) asked for at laptop scale
            cfg = cfg.replace(**self.smoke)
        return cfg.replace(name=self.name, **extra)



SIZE_RULED = ("train_tokens", "eval_every_tokens", "warmup_tokens", "lr")  # what with_tokens_per_param derives


def per_point_tokens(space: Space, base: Config, tokens_per_param: float) -> Space:
    """``space`` with every point trained on ``tokens_per_param`` tokens per parameter of its own model: ``base``
    with the point, re-derived by ``Config.with_tokens_per_param`` (run length in whole optimizer steps, eval
    interval, warmup and the size rule's LR, ``tinylm.config.laptop_lr``, unrounded), those four fields added to
    the point. One variant per point (the grid's order). A point may not set them itself: they would be replaced."""
    if not tokens_per_param > 0:
        raise ConfigError(f"tokens_per_param_per_point: {tokens_per_param!r} is not a positive number of tokens per "
                          "parameter")
    points = []
    for point in space.points():
        own = sorted(set(point) & set(SIZE_RULED))
        if own:
            raise ConfigError(f"a grid point sets {', '.join(own)}, which tokens_per_param_per_point derives per "
                              f"point ({point}): drop them from the space, or the per-point tokens per parameter")
        cfg = base.replace(**point).with_tokens_per_param(tokens_per_param)
        points.append(point | {k: getattr(cfg, k) for k in SIZE_RULED})
    return Space(variants=points)

# Options of a run that are not Sweep settings (those are declared once, on the Sweep: tinylm.sweep.flags()).
RUN_FLAGS: list[Flag] = [
    Flag("--scale", "laptop", choices=CHOICES["scale"],
         help="laptop: a scaled-down replica that can answer the question here (default); smoke: mechanics only, "
              "claims nothing; full: the experiment's own sizes (a cluster)"),
    Flag("--dry-run", False, action="store_true",
         help="print the trials (shapes, params, tokens, tokens/param, estimated time) and the diagnostics, then "
              "exit without starting Ray"),
    Flag("--two-phase", False, action="store_true", help="rank all variants short, then finalists x 3 seeds"),
    Flag("--finalists", 2, type=int, check=(int_at_least(1), "an int >= 1")),
    Flag("--rank-fraction", 0.25, type=float, help="phase-1 run length, fraction of train_tokens",
         check=(lambda v: is_number(v) and 0 < v <= 1, "a fraction of train_tokens in (0, 1]")),
    Flag("--set", [], action="extend", nargs="*", metavar="FIELD=VALUE",
         help="override Config fields (repeatable: --set a=1 --set b=2 sets both)"),
    Flag("--analyze", False, action="store_true", help="run the post-hoc analysis at the end"),
    Flag("--lr-grid", None, type=float, nargs="*", metavar="MULT",
         help="per-variant LR tuning before the seed runs: multipliers of the rule's LR, tried on one tuning seed "
              "and extended while the best is at an edge (default: the experiment's own at laptop and full scale, "
              "none at smoke; no values: every variant at the rule's LR)",
         check=(lambda v: v is None or (isinstance(v, list | tuple) and len(v) != 1 and len(v) != 2
                                        and all(is_number(m) and 0 < m < math.inf for m in v)),
                "no values, or >= 3 positive multipliers (an optimum is interior only between two others)")),
    Flag("--until-conclusive", False, action="store_true",
         help="after the seed runs, add one seed per variant at a time until every comparison with the baseline is "
              "conclusive (different, or equivalent within the hypothesis's margin) or --max-seeds / --budget-min "
              "is spent; decisions spend alpha across the looks (tinylm.analysis.sequential), so they stay valid"),
    Flag("--max-seeds", 10, type=int, help="--until-conclusive: at most this many seeds per variant",
         check=(lambda v: isinstance(v, int) and not isinstance(v, bool) and 2 <= v <= MAX_SEEDS,
                f"an int from 2 to {MAX_SEEDS}")),
    Flag("--budget-min", 0.0, type=float, help="--until-conclusive: add no seed round after this many minutes "
                                               "of the run (0 = no time budget)",
         check=(lambda v: is_number(v) and 0 <= v < math.inf, "a number of minutes >= 0 (0 = none)")),
    Flag("--lr-fraction", 1.0, type=float,
         help="length of the LR-tuning runs, a fraction of train_tokens (default 1: the seed runs' own length; a "
              "shorter run can sit in another regime, where its best LR is not the full run's)",
         check=(lambda v: is_number(v) and 0 < v <= 1, "a fraction of train_tokens in (0, 1]")),
]


# Config fields a sweep sets itself (Experiment.base): ``--set`` cannot take them; what to use instead
RESERVED = {"scale": "--scale (smoke, laptop or full)",
            "name": "--results DIR to keep two runs of this sweep apart (its trials are named after the sweep)"}


def check_sets(sets: dict, space: Space | None = None) -> None:
    """``--set`` may not name a field the sweep sets itself (``RESERVED``) nor one of its space, which the grid
    would override in silence (``--set glu_factor=3.0`` on the GLU sweep ran all four factors)."""
    axes = space.swept() if space is not None else {}
    for k, v in sets.items():
        if k in RESERVED:
            raise ConfigError(f"--set {k}={v}: {k} is set by the sweep itself; use {RESERVED[k]}")
        if k in axes:
            values = ", ".join(dict.fromkeys(map(str, axes[k])))
            raise ConfigError(f"--set {k}={v}: {k} is an axis of this sweep (values {values}), which sets it per "
                              "trial and would ignore --set; drop the --set, or sweep the values you want in a "
                              "script of your own")


def flags() -> list[Flag]:
    """Every option of a sweep run, CLI and ``run()`` alike: the run's own, then the Sweep's."""
    return RUN_FLAGS + sweep_flags()


def defaults(exp: Experiment) -> dict:
    """Every option by dest name with its default, ``exp.options`` applied (what ``main`` parses from no flags)."""
    out = {f.dest: f.default_value() for f in flags()}
    unknown = sorted(set(exp.options) - set(out))
    if unknown:
        raise ConfigError(f"Experiment {exp.name!r} options {unknown} are not sweep flags; allowed: "
                          f"{', '.join(out)}")
    return out | ({} if exp.early_stopping else {"kill_margin": math.inf}) | exp.options


def sweep_of(exp: Experiment, options: dict, scale: str) -> Sweep:
    """The Sweep that ``options`` (by dest name) ask for, for ``exp`` at ``scale``."""
    return Sweep.from_flags(exp.name, options, baseline=exp.baseline_at(scale), hypothesis=exp.hypothesis,
                            description=exp.description,
                            asha=exp.early_stopping and not options.get("no_asha", False))


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects FIELD=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k] = coerce(k, v) if k in Config.__dataclass_fields__ else v
    check_sets(out)  # a reserved field (scale, name) is refused here, before Experiment.base takes the scale
    return out


def check_options(args: argparse.Namespace) -> None:
    """Refuse a bad sweep flag (``--seeds 0``, ``--reduction-factor 0``, ``--workers -1``, ...) in one line, before
    anything starts; ``run()`` kwargs get the same check as the CLI."""
    for f in flags():
        refusal = f.refusal(getattr(args, f.dest)) if f.dest in vars(args) else None
        if refusal:
            raise ConfigError(refusal)
    if args.seeds > MAX_SEEDS:
        raise ConfigError(f"--seeds={args.seeds:,} is more than {MAX_SEEDS} (tinylm.sweep.MAX_SEEDS; a seeded verdict "
                          "needs 3-10): lower --seeds")
    existing = unwritable_parent(str(args.results))
    if existing:
        raise ConfigError(f"--results={args.results!r}: {existing} is not a writable folder")
    if "%" in os.path.abspath(str(args.results)):
        raise ConfigError(f"--results={args.results!r}: its path holds '%'; the stores in it are sqlite URLs, which "
                          "SQLAlchemy decodes (%20 is a space), so MLflow would open another file: choose a folder "
                          "without '%'")
    # before Experiment.base, which takes the scale as an argument (--set scale=full was a TypeError there)
    check_sets(args.set if isinstance(args.set, dict) else dict(p.split("=", 1) for p in args.set if "=" in p))
    k = args.seeds_per_trial
    if k > 1:
        final = max(3, args.seeds) if args.two_phase else args.seeds
        if final > 1 and final % k:  # one seed: one model per trial (as the LR phase's runs)
            raise ConfigError(f"--seeds-per-trial={k} does not divide the {final} seeds of the seed runs: every "
                              f"trial trains the same number of seeds; use --seeds a multiple of {k}")
        if args.refine:
            raise ConfigError(f"--seeds-per-trial={k} with --refine={args.refine}: a refinement trial is one Optuna "
                              "sample of one seed; drop --refine, or use --seeds-per-trial 1")
    if args.until_conclusive and args.max_seeds < args.seeds:
        raise ConfigError(f"--max-seeds={args.max_seeds} is below --seeds={args.seeds}: --until-conclusive adds seeds "
                          f"after the first {args.seeds}; raise --max-seeds")
    if args.until_conclusive and args.two_phase:
        raise ConfigError("--until-conclusive and --two-phase: pick one (two-phase fixes its finalists' seeds); "
                          "run --until-conclusive on the finalists' own sweep")
    check_services(args)


def check_services(args: argparse.Namespace) -> None:
    """The tracking store, the Optuna storage and the Ray cluster a sweep would use answer within
    ``REACH_TIMEOUT_S`` each (the dry run checks them too, creating nothing): a bad ``--optuna-storage`` used to
    fail only after every trial had trained, a bad ``--address`` or ``--tracking-uri`` after minutes of retries."""
    from tinylm.tracking import TrackingError, check_storage, check_tracking

    sweep = Sweep.from_flags("check", vars(args))
    for flag, given, check in (("--tracking-uri", args.tracking_uri, lambda: check_tracking(sweep.uri(), create=False)),
                               ("--optuna-storage", args.optuna_storage, lambda: check_storage(sweep.storage()))):
        try:
            check()
        except TrackingError as e:
            raise TrackingError(f"{flag}: {e}" if given else str(e)) from None
    if sweep.address or os.environ.get("RAY_ADDRESS"):
        from tinylm.tune.resources import check_address

        check_address(sweep.address)


def check_space(base: Config, space: Space, args: argparse.Namespace | None = None, lr_runs: int = 0) -> None:
    """Every grid point builds a valid Config before Ray starts, none sets a dim that the budget solver would
    silently replace (``Config.replace`` refuses that), every dataset named exists, no axis is inert (all its
    values build the same run) and, given the run's ``args``, the sweep has at most ``MAX_TRIALS`` trials
    (``lr_runs``: LR-tuning runs per grid point before the seed runs)."""
    from tinylm.data import check_dataset

    space = Space.of(space)
    variants = space.variants or []
    points = [dict(v) for v in variants] + [{k: v} for k, values in space.axes.items() if isinstance(values, list)
                                            for v in values]
    cfgs = [base] + [base.replace(**point) for point in points]
    if args is not None and getattr(args, "seeds_per_trial", 1) > 1:  # what a batched trial cannot run, named now
        cfgs = [c.replace(seeds_per_trial=args.seeds_per_trial) for c in cfgs]
    for dataset in {c.dataset for c in cfgs}:
        check_dataset(dataset)
    if any(c.compile for c in cfgs):  # checked on this machine: a cluster's workers run the same image
        import torch

        from tinylm.machine import check_compile

        check_compile(on_gpu=torch.cuda.is_available() and any(c.device != "cpu" for c in cfgs if c.compile))
    for name, (_, values) in zip(space.axis_names(), space.lists(), strict=True):
        if len(values) > 1:
            runs = [base.replace(**(dict(v) if name == "variant" else {name: v})).effective() for v in values]
            if all(r == runs[0] for r in runs[1:]):
                axis = "the variants" if name == "variant" else f"axis {name}"
                verb = "change" if name == "variant" else "changes"
                raise ConfigError(f"{axis} ({', '.join(map(str, values))}) {verb} nothing here: every value builds "
                                  "the same model and training settings from this base (after the budget solver "
                                  "and the derived sizes), so its trials would repeat one run; "
                                  f"{_inert_hint(name, base)}")
    if args is not None:
        n = len(space)
        if args.two_phase:
            trials, how = n + (args.finalists + 1) * max(3, args.seeds), f"{n} ranking runs + finalists x seeds"
        else:
            seeds = max(args.seeds, args.max_seeds) if args.until_conclusive else args.seeds  # its ceiling
            trials = n * (seeds + lr_runs) + args.refine
            how = (f"{n} grid points x ({lr_runs} LR-tuning runs + {seeds} seeds)" if lr_runs else
                   f"{n} grid points x {seeds} seeds") + f" + {args.refine} refined"
        if trials > MAX_TRIALS:
            raise ConfigError(f"{trials:,} trials ({how}) is more than {MAX_TRIALS:,} (tinylm.sweep.MAX_TRIALS): lower "
                              "--seeds or --refine, or split the sweep")


def _inert_hint(axis: str, base: Config) -> str:
    """Why an axis can change nothing, for the common cases; what to do."""
    if axis == "glu_factor" and base.d_ff and not base.target_params:
        return (f"d_ff={base.d_ff} is fixed and glu_factor only sets d_ff when d_ff=0 (or through target_params): "
                "add --set d_ff=0, or drop the --set that fixed the dims")
    if axis == "embed_share" and not base.target_params:
        return "embed_share only acts through the budget solver (target_params > 0): drop --set target_params=0"
    return f"drop the --set (or pick the scale) that fixes what {axis} changes"


def load(script: str | os.PathLike) -> Experiment:
    """The ``EXPERIMENT = Experiment(...)`` a sweep script declares, without running its ``__main__`` block:
    ``script`` is a path to a ``.py`` file, or a sweep's name (``"glu"``: ``sweeps/glu.py`` in the working
    directory, else in the tinylm checkout). ConfigError, in one line, for a missing script or one that declares
    none."""
    import runpy

    name = str(script)
    candidates = [Path(name)] if name.endswith(".py") or os.sep in name else [
        Path.cwd() / "sweeps" / f"{name}.py", Path(__file__).resolve().parents[2] / "sweeps" / f"{name}.py"]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        known = sorted({p.stem for c in candidates if c.parent.is_dir() for p in c.parent.glob("*.py")
                        if not p.stem.startswith("_")})
        raise ConfigError(f"no sweep {name!r}: looked for {', '.join(map(str, candidates))}; known sweeps: "
                          f"{', '.join(known) or '(none)'}")
    exp = runpy.run_path(str(path), run_name=f"tinylm_sweep_{path.stem}").get("EXPERIMENT")
    if not isinstance(exp, Experiment):
        raise ConfigError(f"{path} defines no EXPERIMENT = Experiment(...)")
    return exp
