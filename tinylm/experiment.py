"""What a sweep script declares (``Experiment``) and the command line every sweep shares (``main``; ``run`` is
the same call without argv, for ``tinylm.api.run_sweep`` and notebooks).

    python sweeps/glu.py                      # smoke scale on this machine: local Ray, sqlite MLflow + Optuna
    python sweeps/glu.py --scale full         # the seed's sizes, on whatever Ray cluster is attached
    python sweeps/glu.py --refine 20          # + Optuna refinement around the grid's best
    python sweeps/glu.py --two-phase          # PRD: short ranking runs for all -> finalists x 3 seeds at full budget
    (Ctrl-C, then the same command)           # resumes: finished trials are kept, the rest continue
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from tinylm.config import Config, ConfigError, coerce


@dataclass(frozen=True)
class Experiment:
    name: str
    preset: str
    space: dict | Callable[[str], dict]  # field -> values (the intervention) or "__variant" -> list of field
    # dicts; a function of the scale when the values themselves differ between smoke and full
    hypothesis: str = ""
    description: str = ""
    baseline: dict | Callable[[str], dict] = field(default_factory=dict)  # fields that pick the baseline trial
    overrides: dict = field(default_factory=dict)  # Config fields for every scale
    smoke: dict = field(default_factory=dict)  # Config fields applied only at smoke scale (after at_scale)
    refine_space: dict | None = None  # Tune domains for --refine (default: around the grid axes)
    asha: bool = True  # False for sweeps whose every row must finish (ablations, single long runs)
    options: dict = field(default_factory=dict)  # defaults for the sweep flags (CLI / run() kwargs still win),
    # by dest name, e.g. {"kill_margin": math.inf, "max_concurrent": 1} for an ablation that times every row
    after: Callable | None = None  # after(table, sweep=, base=, space=): a report once the sweep is done

    def space_at(self, scale: str) -> dict:
        return self.space(scale) if callable(self.space) else self.space

    def baseline_at(self, scale: str) -> dict:
        return self.baseline(scale) if callable(self.baseline) else self.baseline

    def base(self, scale: str, **extra) -> Config:
        cfg = Config.from_name(self.preset, scale=scale, **self.overrides)
        if scale == "smoke":
            cfg = cfg.replace(**self.smoke)
        return cfg.replace(name=self.name, **extra)


def parser(exp: Experiment) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"python sweeps/{exp.name}.py", description=exp.hypothesis or exp.name)
    p.add_argument("--scale", choices=("smoke", "full"), default="smoke")
    p.add_argument("--seeds", type=int, default=1, help="repeat every grid point with this many seeds")
    p.add_argument("--refine", type=int, default=0, help="Optuna trials after the grid (0 = none)")
    p.add_argument("--two-phase", action="store_true", help="rank all variants short, then finalists x 3 seeds")
    p.add_argument("--finalists", type=int, default=2)
    p.add_argument("--rank-fraction", type=float, default=0.25, help="phase-1 run length, fraction of train_tokens")
    p.add_argument("--no-asha", action="store_true")
    p.add_argument("--grace-tokens", type=int, default=0)
    p.add_argument("--reduction-factor", type=int, default=2)
    p.add_argument("--kill-margin", type=float, default=0.5)
    p.add_argument("--kill-window", type=int, default=0)
    p.add_argument("--results", default=os.environ.get("TINYLM_RESULTS", "results"))
    p.add_argument("--address", default=None, help="Ray cluster address (or RAY_ADDRESS); default: local Ray")
    p.add_argument("--workers", type=int, default=0, help="Train workers per trial (0 = auto)")
    p.add_argument("--max-concurrent", type=int, default=0)
    p.add_argument("--tracking-uri", default="")
    p.add_argument("--optuna-storage", default="")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="override Config fields")
    p.add_argument("--analyze", action="store_true", help="run the post-hoc analysis at the end")
    unknown = sorted(set(exp.options) - {a.dest for a in p._actions})
    if unknown:
        raise ConfigError(f"Experiment {exp.name!r} options {unknown} are not sweep flags; allowed: "
                          f"{', '.join(a.dest for a in p._actions if a.dest != 'help')}")
    p.set_defaults(**exp.options)
    return p


def parse_sets(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects FIELD=VALUE, got {pair!r}")
        k, v = pair.split("=", 1)
        out[k] = coerce(k, v) if k in Config.__dataclass_fields__ else v
    return out


def main(exp: Experiment, argv: list[str] | None = None):
    """Parse the shared flags, run the sweep (or the two-phase pipeline) and print the ranked table."""
    from tinylm.tracking import TrackingError

    args = parser(exp).parse_args(argv)
    try:
        return run(exp, **vars(args))
    except (ConfigError, TrackingError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted: run the same command to resume ({exp.name}; results in {args.results})")


def run(exp: Experiment, scale: str = "smoke", **options):
    """Run ``exp`` as ``main`` does, without argv: ``options`` are the flags by dest name (``seeds=3``,
    ``no_asha=True``, ``max_concurrent=1``, ``set={"lr": 2e-3}`` or ``set=["lr=2e-3"]``); unset ones take the
    parser's defaults (with ``exp.options``). Returns the ranked results table. Raises ConfigError on a bad
    option or Config, KeyboardInterrupt when interrupted (the same call resumes)."""
    p = parser(exp)
    args = p.parse_args([])
    unknown = sorted(set(options) - set(vars(args)))
    if unknown:
        raise ConfigError(f"unknown sweep option(s) {unknown}; allowed: {', '.join(sorted(vars(args)))}")
    if scale not in ("smoke", "full"):
        raise ConfigError(f"scale={scale!r}; choose one of smoke, full")
    vars(args).update(options, scale=scale)
    sets = args.set if isinstance(args.set, dict) else parse_sets(args.set)
    base = exp.base(args.scale, **sets)
    from tinylm import tune

    common = dict(results_dir=args.results, asha=exp.asha and not args.no_asha, grace_tokens=args.grace_tokens,
                  reduction_factor=args.reduction_factor, kill_margin=args.kill_margin, kill_window=args.kill_window,
                  baseline=exp.baseline_at(args.scale), address=args.address, workers=args.workers,
                  max_concurrent=args.max_concurrent, tracking_uri=args.tracking_uri,
                  optuna_storage=args.optuna_storage, hypothesis=exp.hypothesis, description=exp.description)
    t0 = time.time()
    try:
        if args.two_phase:
            table, sweep, space = two_phase(exp, base, args, common)
        else:
            sweep = tune.Sweep(name=exp.name, seeds=args.seeds, refine=args.refine, **common)
            space = exp.space_at(args.scale)
            table = tune.run_sweep(sweep, base, space, exp.refine_space)
    finally:
        tune.shutdown()
    tune.print_results(sweep, table, space)
    n_early = int(table["status"].isin(["stopped_asha", "killed_rule"]).sum())
    print(f"{len(table)} trials ({n_early} stopped early) in {time.time() - t0:.0f} s")
    if args.analyze:
        from tinylm.analysis.__main__ import main as analysis_main

        baseline = [f"{k}={v}" for k, v in exp.baseline_at(args.scale).items()]
        analysis_main([sweep.name, "--out", os.path.join(args.results, "analysis"),
                       "--uri", sweep.uri(), *(["--baseline", *baseline] if baseline else [])])
    if exp.after is not None:
        exp.after(table, sweep=sweep, base=base, space=space)
    return table


def two_phase(exp: Experiment, base: Config, args, common: dict):
    """PRD pipeline: phase 1 ranks every variant on a short run; phase 2 trains the finalists at the full
    budget with 3 seeds (or --seeds if larger)."""
    from tinylm import tune

    short = base.replace(train_tokens=max(base.eval_every_tokens, int(base.train_tokens * args.rank_fraction)))
    rank = tune.Sweep(name=f"{exp.name}-rank", seeds=1, **common)
    ranked = tune.run_sweep(rank, short, exp.space_at(args.scale))
    axes = [k for k in exp.space_at(args.scale) if k in ranked.columns]
    done = ranked[ranked["val_loss"].notna()].drop_duplicates(subset=axes)
    finalists = [{k: tune._py(row[k]) for k in axes} for _, row in done.head(args.finalists).iterrows()]
    baseline = exp.baseline_at(args.scale)
    if baseline and not any(all(f.get(k) == v for k, v in baseline.items()) for f in finalists):
        finalists.append(dict(baseline))  # the decision rule needs the baseline at the full budget too
    print(f"phase 1 ranked {len(done)} variants; finalists: {finalists}")
    space = {tune.VARIANT: finalists}
    final = tune.Sweep(name=f"{exp.name}-final", seeds=max(3, args.seeds), asha=False,
                       **{k: v for k, v in common.items() if k != "asha"})
    return tune.run_sweep(final, base, space), final, space
