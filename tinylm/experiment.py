"""What a sweep script declares (``Experiment``) and how it runs (``run``: the sweep scripts' command line,
``tinylm.sweep.__main__``, parses its flags and calls it; so do ``tinylm.api.run_sweep`` and notebooks, with the
flags by dest name). The flags: the run's own (``RUN_FLAGS``) and the Sweep's (declared on ``tinylm.sweep.Sweep``).

    python sweeps/glu.py                      # laptop scale (a replica) on this machine: local Ray, sqlite stores
    python sweeps/glu.py --dry-run            # the trials it would run (shapes, tokens/param, time), then exit
    python sweeps/glu.py --scale smoke        # mechanics only (seconds per trial; claims nothing)
    python sweeps/glu.py --scale full         # the seed's sizes, on whatever Ray cluster is attached
    python sweeps/glu.py --refine 20          # + Optuna refinement around the grid's best
    python sweeps/glu.py --two-phase          # PRD: short ranking runs for all -> finalists x 3 seeds at full budget
    (Ctrl-C, then the same command)           # resumes: finished trials are kept, the rest continue
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tinylm.config import CHOICES, Config, ConfigError, coerce
from tinylm.layout import VARIANT, unwritable_parent  # VARIANT: re-exported for the sweep scripts
from tinylm.ranking import plain, trial_loss
from tinylm.sweep import MAX_SEEDS, MAX_TRIALS, Flag, Sweep, int_at_least, is_number
from tinylm.sweep import flags as sweep_flags


@dataclass(frozen=True)
class Experiment:
    name: str
    preset: str
    space: dict | Callable[[str], dict]  # field -> values (the intervention) or VARIANT -> list of field
    # dicts; a function of the scale when the values themselves differ between smoke and full
    hypothesis: str = ""
    description: str = ""
    baseline: dict | Callable[[str], dict] = field(default_factory=dict)  # fields that pick the baseline trial
    overrides: dict = field(default_factory=dict)  # Config fields for every scale
    smoke: dict = field(default_factory=dict)  # Config fields applied only at smoke scale (after at_scale)
    laptop: dict = field(default_factory=dict)  # Config fields applied only at laptop scale (after at_scale; sizes
    # only: the tokens per parameter and the size-dependent hparams are re-derived after them)
    tokens_per_param: float = 0.0  # laptop: train on this many tokens per parameter (0 = the full experiment's)
    refine_space: dict | None = None  # Tune domains for --refine (default: around the grid axes)
    lr_grid: tuple[float, ...] = ()  # laptop / full: multipliers of the rule's LR tried per variant on one tuning
    # seed before the seed runs (``tune_lr``; extended while the best is at an edge); () = every variant at the rule
    early_stopping: bool = True  # False: every trial runs to its end, no ASHA and no kill rule (scaling fits,
    # seeded verdicts, LR or schedule axes, losses in different units, timings); the CLI's flags still win
    options: dict = field(default_factory=dict)  # defaults for the sweep flags (CLI / run() kwargs still win),
    # by dest name, e.g. {"kill_margin": math.inf, "max_concurrent": 1} for an ablation that times every row
    after: Callable | None = None  # after(table, sweep=, base=, space=): a report once the sweep is done

    def space_at(self, scale: str) -> dict:
        return self.space(scale) if callable(self.space) else self.space

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
                cfg = cfg.replace(**self.laptop).with_tokens_per_param(tpp)
                run_length = ("train_tokens", "eval_every_tokens", "warmup_tokens")  # explicit laptop values win
                cfg = cfg.replace(**{k: v for k, v in self.laptop.items() if k in run_length})
        else:
            cfg = Config.from_name(self.preset, scale=scale, **self.overrides)
        if cfg.scale == "smoke":  # also a small preset (debug) asked for at laptop scale
            cfg = cfg.replace(**self.smoke)
        return cfg.replace(name=self.name, **extra)


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


def swept(space: dict) -> dict[str, list]:
    """Every Config field that ``space`` sets per trial (an axis, a fixed value, or a field of a VARIANT's dicts)
    -> the values it takes, in order."""
    out: dict[str, list] = {}
    for k, values in space.items():
        if k == VARIANT:
            for variant in values:
                for f, v in dict(variant).items():
                    out.setdefault(f, []).append(v)
        else:
            out[k] = list(values) if isinstance(values, list) else [values]
    return out


def check_sets(sets: dict, space: dict) -> None:
    """``--set`` may not name a field the sweep sets itself (``RESERVED``) nor one of its space, which the grid
    would override in silence (``--set glu_factor=3.0`` on the GLU sweep ran all four factors)."""
    axes = swept(space)
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
    check_sets(out, {})  # a reserved field (scale, name) is refused here, before Experiment.base takes the scale
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
    check_sets(args.set if isinstance(args.set, dict) else dict(p.split("=", 1) for p in args.set if "=" in p), {})
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


def check_space(base: Config, space: dict, args: argparse.Namespace | None = None, lr_runs: int = 0) -> None:
    """Every grid point builds a valid Config before Ray starts, none sets a dim that the budget solver would
    silently replace (``Config.replace`` refuses that), every dataset named exists, no axis is inert (all its
    values build the same run) and, given the run's ``args``, the sweep has at most ``MAX_TRIALS`` trials
    (``lr_runs``: LR-tuning runs per grid point before the seed runs)."""
    from tinylm.data import check_dataset

    points = [dict(v) for v in space.get(VARIANT, [])] if isinstance(space.get(VARIANT), list) else []
    points += [{k: v} for k, values in space.items() if k != VARIANT and isinstance(values, list)
               for v in values]
    for dataset in {base.dataset} | {base.replace(**point).dataset for point in points}:
        check_dataset(dataset)
    for k, values in space.items():
        if isinstance(values, list) and len(values) > 1:
            runs = [base.replace(**(dict(v) if k == VARIANT else {k: v})).effective() for v in values]
            if all(r == runs[0] for r in runs[1:]):
                axis = "the variants" if k == VARIANT else f"axis {k}"
                verb = "change" if k == VARIANT else "changes"
                raise ConfigError(f"{axis} ({', '.join(map(str, values))}) {verb} nothing here: every value builds "
                                  "the same model and training settings from this base (after the budget solver "
                                  f"and the derived sizes), so its trials would repeat one run; {_inert_hint(k, base)}")
    if args is not None:
        n = math.prod(len(v) if isinstance(v, list) else 1 for v in space.values())
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


def run(exp: Experiment, scale: str | None = None, **options):
    """Run ``exp`` as the sweep scripts' ``main`` does, without argv: ``options`` are the flags by dest name
    (``seeds=3``, ``no_asha=True``, ``max_concurrent=1``, ``set={"lr": 2e-3}`` or ``set=["lr=2e-3"]``); unset
    ones take the flags' defaults (with ``exp.options``). Returns the ranked results table. Raises ConfigError on
    a bad option or Config, KeyboardInterrupt when interrupted (the same call resumes). When some trials did not
    end as planned (diverged, failed) it warns in one line, also kept in ``table.attrs["unplanned"]`` (the CLI
    then exits 1)."""
    args = argparse.Namespace(**defaults(exp))
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise ConfigError(f"unknown sweep option(s) {unknown}; allowed: {', '.join(sorted(vars(args)))}")
    scale = args.scale if scale is None else scale
    if scale not in CHOICES["scale"]:
        raise ConfigError(f"scale={scale!r}; choose one of {', '.join(CHOICES['scale'])}")
    vars(args).update(options, scale=scale)
    check_options(args)
    sets = args.set if isinstance(args.set, dict) else parse_sets(args.set)
    base = exp.base(args.scale, **sets)
    grid = lr_grid_of(exp, args)
    check_space(base, exp.space_at(args.scale), args, lr_runs=len(grid))
    if args.until_conclusive and not exp.baseline_at(args.scale):
        raise ConfigError(f"--until-conclusive needs a baseline to compare with; sweep {exp.name!r} declares none "
                          "(Experiment(baseline=...))")
    if args.dry_run:  # no Ray, no stores: what would run, and what it could claim
        from tinylm.analysis.plan import print_plan

        return print_plan(exp, base, args, grid)
    from tinylm import tune

    sweep = sweep_of(exp, vars(args), args.scale)
    t0 = time.time()
    problems = []  # trials that did not end as planned, per phase: the table is returned, the CLI exits 1
    rounds: dict = {}  # --until-conclusive: the added seed rounds' sweeps
    sections: list[tuple[str, str]] = []  # for the report: the LR phase, the sequential decision
    try:
        if args.two_phase:
            table, sweep, space, problems = two_phase(exp, base, args, sweep)
        else:
            space = exp.space_at(args.scale)
            if grid:
                tuned, problems, text = tune_lr(exp, base, space, grid, args, sweep)
                space = {VARIANT: tuned}
                sections.append(("LR tuned per variant", "```\n" + text + "\n```"))
            table = tune.run_sweep(sweep, base, space, exp.refine_space)
            if args.until_conclusive:
                table, rounds, decision = until_conclusive(exp, base, space, args, sweep, table, t0)
                problems += [p for p in rounds.pop("unplanned", []) if p]
                sections.append(("Sequential decision (--until-conclusive)", (
                    "Seeds were added after looking at the data, so the verdict's fixed-n p-values and intervals "
                    "above over-state certainty; this decision spends alpha across the looks and is the one to "
                    "read.\n\n```\n" + decision + "\n```")))
    finally:
        tune.shutdown()
    tune.print_results(sweep, table, space)
    print(f"{len(table)} trials ({tune.stopped_early(table)} stopped early) in {time.time() - t0:.0f} s")
    problems = [p for p in (*problems, tune.unplanned(sweep, table)) if p]
    if problems:
        table.attrs["unplanned"] = "; ".join(problems)
        print(f"warning: {table.attrs['unplanned']}", file=sys.stderr)
    if args.analyze:  # as `python -m tinylm.analysis <sweep> --out <results>/analysis --baseline ...` does
        from pathlib import Path

        from tinylm.analysis.cost import load_prices
        from tinylm.analysis.report import report_sweep

        path = report_sweep(sweep.uri(), sweep.name, Path(args.results) / "analysis",
                            exp.baseline_at(args.scale) or None, load_prices(None), n_boot=200,
                            also=list(rounds.get("sweeps", [])), sections=sections)
        print(path)
    if exp.after is not None:
        exp.after(table, sweep=sweep, base=base, space=space)
    return table


def until_conclusive(exp: Experiment, base: Config, space: dict, args: argparse.Namespace, sweep: Sweep,
                     table, t0: float):
    """``--until-conclusive``: look at every comparison with the baseline after the first ``--seeds`` seeds, then
    run one more seed of every variant (a sweep ``<name>-seed<k>`` of its own: Tune cannot add trials to a finished
    experiment) and look again, until each comparison is different or equivalent within the hypothesis's margin,
    ``--max-seeds`` is reached or ``--budget-min`` minutes have passed. Each look tests at its share of alpha
    (``tinylm.analysis.sequential``), so stopping on what it saw keeps the error rates. Returns the table of every
    seed, {"sweeps": the rounds' sweep names, "unplanned": their unplanned lines}, and the last look as text
    (also written to ``<results>/<name>/sequential.json``)."""
    import json

    import pandas as pd

    from tinylm import tune
    from tinylm.analysis import sequential as seq
    from tinylm.analysis.verdict import equivalence_margin

    baseline = exp.baseline_at(args.scale)
    margin = equivalence_margin(exp.hypothesis)
    axes = [k for k in swept(space) if k != "lr"]  # a tuned LR belongs to its variant, it is not the variant
    label = lambda row: ", ".join(f"{k}={plain(row[k])}" for k in axes)  # noqa: E731
    base_label = ", ".join(f"{k}={baseline[k]}" for k in axes) if baseline else ""
    tables, names, unplanned, looks = [table], [], [], []
    n, first = args.seeds, args.seeds
    while True:
        rows = pd.concat(tables, ignore_index=True)
        done = rows[rows["status"] == "completed"].copy()
        done["_loss"] = [trial_loss(r) for r in done.to_dict("records")]
        groups = done.apply(label, axis=1).to_numpy()
        alpha_k = seq.look_alpha(n, first, args.max_seeds)
        look = seq.decide(done["_loss"].to_numpy(float), groups, done["seed"].to_numpy(), base_label, alpha_k, margin)
        text = seq.describe(look, n, first, args.max_seeds, alpha_k, margin)
        print(text)
        looks.append({"seeds": n, "alpha": alpha_k, "comparisons": look.to_dict("records")})
        minutes = (time.time() - t0) / 60
        if seq.conclusive(look):
            text += "\nevery comparison is conclusive"
            break
        if n >= args.max_seeds:
            text += f"\n--max-seeds={args.max_seeds} reached: the open comparisons stay open"
            break
        if args.budget_min and minutes >= args.budget_min:
            text += f"\n--budget-min={args.budget_min:g} spent ({minutes:.1f} min): the open comparisons stay open"
            break
        name = f"{exp.name}-seed{base.seed + n}"
        round_ = replace(sweep, name=name, seeds=1, refine=0)
        more = tune.run_sweep(round_, base.replace(seed=base.seed + n), space)
        unplanned.append(tune.unplanned(round_, more))
        tables.append(more)
        names.append(name)
        n += 1
    print(text.splitlines()[-1])
    os.makedirs(os.path.join(sweep.root, sweep.name), exist_ok=True)
    with open(os.path.join(sweep.root, sweep.name, "sequential.json"), "w") as f:
        json.dump({"margin_pct": margin, "max_seeds": args.max_seeds, "rounds": names, "looks": looks,
                   "conclusive": seq.conclusive(look)}, f, indent=1, default=str)
    return pd.concat(tables, ignore_index=True), {"sweeps": names, "unplanned": unplanned}, text


MAX_LR_EXTENSIONS = 3  # rounds that extend an LR grid whose best is at an edge; then it is reported as an edge
# An LR replaces the grid's centre (the prior: the rule's LR x the middle multiplier) only when it beats it by more
# than one seed's noise: one tuning seed cannot rank LRs closer than that, and at the GLU replica a 0.007-nat "win"
# of x2 over x4 (seed s.d. 0.018 nats) picked an LR at which 1 of 3 seeds left the n-gram plateau late and ended
# 0.35 nats behind (RESULTS.md 2026-12-03)
LR_TIE_NATS = 0.02


def pick_lr(results: dict[float, float], centre: float, tie: float = LR_TIE_NATS) -> float:
    """The multiplier to use from ``results`` (multiplier -> final val loss, inf when the run did not complete):
    the best one, unless the ``centre`` completed within ``tie`` nats of it (then the centre)."""
    best = min(sorted(results), key=lambda m: results[m])
    c = results.get(centre, math.inf)
    return centre if c < math.inf and results[best] > c - tie else best


def lr_grid_of(exp: Experiment, args: argparse.Namespace) -> tuple[float, ...]:
    """The LR multipliers this run tunes over: ``--lr-grid`` when given, else the experiment's own at laptop and
    full scale (a smoke run claims nothing, so it tunes nothing unless asked); sorted, duplicates dropped."""
    grid = args.lr_grid if args.lr_grid is not None else (exp.lr_grid if args.scale != "smoke" else ())
    return tuple(sorted(set(float(m) for m in grid)))


def variants_of(space: dict) -> list[dict]:
    """The grid points of ``space`` as field dicts (its axes' product; a VARIANT list as it is), in Tune's order."""
    from tinylm.analysis.plan import expand

    return [{k: v for k, v in p.items() if k != "seed"} for p in expand(space, 1, Config())]


def tune_lr(exp: Experiment, base: Config, space: dict, grid: tuple[float, ...], args: argparse.Namespace,
            sweep: Sweep) -> tuple[list[dict], list[str], str]:
    """The PRD's per-variant LR phase: every variant of ``space`` at ``base.lr`` x each multiplier of ``grid``,
    one tuning seed (``base.seed + MAX_SEEDS``: no seed run, so the LR picked on it does not bias them),
    ``--lr-fraction`` of the run, every run to its end (no ASHA, no kill rule: early stopping across an LR axis
    loses winners, RESULTS.md 2026-11-30). A variant whose best LR is at an edge of its grid gets the next
    multiplier beyond that edge (the grid's own ratio) in another round, up to ``MAX_LR_EXTENSIONS`` rounds. The
    best is the grid's centre unless another LR beats it by more than ``LR_TIE_NATS`` (``pick_lr``).
    Returns the variants with their chosen ``lr``, the rounds' trials that did not end as planned, and the
    choice as text (printed, and a section of the report)."""
    from tinylm import tune
    from tinylm.analysis.plan import RUN_LENGTH, lr_point, short_base

    short = short_base(base, args.lr_fraction).replace(seed=base.seed + MAX_SEEDS)  # no seed run reaches it
    variants = variants_of(space)
    centre = grid[len(grid) // 2]  # the prior; another LR must beat it by more than LR_TIE_NATS
    tried: list[dict[float, float]] = [{} for _ in variants]  # per variant: multiplier -> final val loss
    todo = [list(grid) for _ in variants]
    problems: list[str] = []
    for round_ in range(MAX_LR_EXTENSIONS + 1):
        points = [(i, m) for i, ms in enumerate(todo) for m in ms]
        if not points:
            break
        name = f"{exp.name}-lr" + (f"-x{round_}" if round_ else "")
        phase = replace(sweep, name=name, seeds=1, refine=0, asha=False, kill_margin=math.inf)
        # each variant at its own rule LR x m (a ladder's sizes carry theirs), on the short run
        space_r = {VARIANT: [lr_point(base, variants[i], m, args.lr_fraction) for i, m in points]}
        table = tune.run_sweep(phase, short, space_r)
        problems += [p for p in [tune.unplanned(phase, table)] if p]
        rows = table.to_dict("records")
        for (i, m), tried_point in zip(points, space_r[VARIANT], strict=True):
            # a run that did not complete (diverged, failed) has no loss to compare: its LR counts as the worst
            match = [trial_loss(r) for r in rows if r.get("status") == "completed"
                     and math.isclose(float(r.get("lr", math.nan)), tried_point["lr"], rel_tol=1e-9)
                     and all(plain(r.get(k)) == v for k, v in tried_point.items() if k != "lr")]
            tried[i][m] = match[0] if match and match[0] == match[0] else math.inf
        todo = [[] for _ in variants]
        for i, results in enumerate(tried):
            ms = sorted(results)
            best = pick_lr(results, centre)
            if results[best] == math.inf:
                continue  # every LR diverged or failed: nothing to extend from (reported as unplanned)
            if best == ms[-1] and round_ < MAX_LR_EXTENSIONS:
                todo[i] = [ms[-1] * ms[-1] / ms[-2]]
            elif best == ms[0] and round_ < MAX_LR_EXTENSIONS:
                todo[i] = [ms[0] * ms[0] / ms[1]]
    chosen, lines = [], []
    for v, results in zip(variants, tried, strict=True):
        ms = sorted(results)
        best = pick_lr(results, centre)
        edge = best in (ms[0], ms[-1])
        rule = float(v.get("lr", base.lr))
        chosen.append(v | {"lr": rule * best})
        shown = ", ".join(f"{k}={plain(x)}" for k, x in v.items() if k not in ("lr", *RUN_LENGTH))
        lines.append(f"  {shown}: lr {rule * best:.3g} (x{best:g})"
                     + "; " + ", ".join(f"x{m:g} {results[m]:.4f}" for m in ms)
                     + ("  <- best at the grid edge after the extensions: not an interior optimum" if edge else ""))
        if edge:
            problems.append(f"LR of {v} at the edge of {[f'x{m:g}' for m in ms]}")
    text = (f"LR tuning ({args.lr_fraction:g} of the run, seed {short.seed}, final val loss per multiplier of the "
            "rule's LR):\n" + "\n".join(lines))
    print(text)
    return chosen, problems, text


def two_phase(exp: Experiment, base: Config, args, sweep: Sweep):
    """PRD pipeline: phase 1 ranks every variant on a short run; phase 2 trains the finalists at the full
    budget with 3 seeds (or --seeds if larger). ``sweep``: the settings both phases start from. Returns phase 2's
    table, Sweep and space, and phase 1's trials that did not end as planned (``tune.unplanned``)."""
    from tinylm import tune
    from tinylm.analysis.plan import short_base

    short = short_base(base, args.rank_fraction)  # the dry-run plan's phase 1 is the same config
    rank = replace(sweep, name=f"{exp.name}-rank", seeds=1, refine=0)
    ranked = tune.run_sweep(rank, short, exp.space_at(args.scale))
    problems = [p for p in [tune.unplanned(rank, ranked)] if p]
    axes = [k for k in exp.space_at(args.scale) if k in ranked.columns]
    ranked = ranked.assign(_loss=[trial_loss(r) for r in ranked.to_dict("records")]).sort_values(
        "_loss", na_position="last", kind="stable")  # the ranking of tinylm.ranking (final, else latest val loss)
    done = ranked[ranked["_loss"].notna()].drop_duplicates(subset=axes)
    finalists = [{k: plain(row[k]) for k in axes} for _, row in done.head(args.finalists).iterrows()]
    baseline = exp.baseline_at(args.scale)
    if baseline and not any(all(f.get(k) == v for k, v in baseline.items()) for f in finalists):
        finalists.append(dict(baseline))  # the decision rule needs the baseline at the full budget too
    print(f"phase 1 ranked {len(done)} variants; finalists: {finalists}")
    grid = lr_grid_of(exp, args)
    if grid:
        finalists, more, _ = tune_lr(exp, base, {VARIANT: finalists}, grid, args, sweep)
        problems += more
    space = {VARIANT: finalists}
    # phase 2 is the PRD's decision: every finalist trains to the end (no ASHA, no kill rule), else the 3-seed
    # comparison it exists for may never happen
    final = replace(sweep, name=f"{exp.name}-final", seeds=max(3, args.seeds), refine=0, asha=False,
                    kill_margin=math.inf)
    return tune.run_sweep(final, base, space), final, space, problems
