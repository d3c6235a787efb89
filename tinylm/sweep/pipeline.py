"""How a declared Experiment runs (``run``): the checks, then the PRD's phases on ``tinylm.tune`` (the only
package that imports ray): the per-variant LR phase (``tune_lr``), the seed runs, ``--until-conclusive``'s added
seed rounds, ``--two-phase``'s ranking and finalists, and the report. The command line (``tinylm.sweep.cli``),
``tinylm.api.run_sweep`` and notebooks call it with the flags by dest name.

    python sweeps/glu.py                      # laptop scale (a replica) on this machine: local Ray, sqlite stores
    python sweeps/glu.py --dry-run            # the trials it would run (shapes, tokens/param, time), then exit
    python sweeps/glu.py --scale smoke        # mechanics only (seconds per trial; claims nothing)
    python sweeps/glu.py --scale full         # the seed's sizes, on whatever Ray cluster is attached
    python sweeps/glu.py --refine 20          # + refinement around the grid's best (--search: the searcher)
    python sweeps/glu.py --two-phase          # PRD: short ranking runs for all -> finalists x 3 seeds at full budget
    (Ctrl-C, then the same command)           # resumes: finished trials are kept, the rest continue
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import replace

from tinylm.config import CHOICES, Config, ConfigError
from tinylm.ranking import plain, trial_loss
from tinylm.sweep.experiment import Experiment, check_options, check_space, defaults, parse_sets, sweep_of
from tinylm.sweep.plan import RUN_LENGTH, lr_point, short_base
from tinylm.sweep.settings import MAX_SEEDS, Sweep
from tinylm.sweep.space import Space


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
        from tinylm.sweep.plan import print_plan

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
                space = Space(variants=tuned)
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


def until_conclusive(exp: Experiment, base: Config, space: Space, args: argparse.Namespace, sweep: Sweep,
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
    axes = [k for k in space.fields() if k != "lr"]  # a tuned LR belongs to its variant, it is not the variant
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
    best = lowest(results)
    c = results.get(centre, math.inf)
    return centre if c < math.inf and results[best] > c - tie else best


def lowest(results: dict[float, float]) -> float:
    """The multiplier with the lowest final val loss in ``results`` (the smaller multiplier on a tie)."""
    return min(sorted(results), key=lambda m: results[m])


def lr_grid_of(exp: Experiment, args: argparse.Namespace) -> tuple[float, ...]:
    """The LR multipliers this run tunes over: ``--lr-grid`` when given, else the experiment's own at laptop and
    full scale (a smoke run claims nothing, so it tunes nothing unless asked); sorted, duplicates dropped."""
    grid = args.lr_grid if args.lr_grid is not None else (exp.lr_grid if args.scale != "smoke" else ())
    return tuple(sorted(set(float(m) for m in grid)))


def tune_lr(exp: Experiment, base: Config, space: Space, grid: tuple[float, ...], args: argparse.Namespace,
            sweep: Sweep) -> tuple[list[dict], list[str], str]:
    """The PRD's per-variant LR phase: every variant of ``space`` at ``base.lr`` x each multiplier of ``grid``,
    one tuning seed (``base.seed + MAX_SEEDS``: no seed run, so the LR picked on it does not bias them),
    ``--lr-fraction`` of the run, every run to its end (no ASHA, no kill rule: early stopping across an LR axis
    loses winners, RESULTS.md 2026-11-30). A variant whose best LR is at an edge of its grid gets the next
    multiplier beyond that edge (the grid's own ratio) in another round, up to ``MAX_LR_EXTENSIONS`` rounds: the
    lowest loss decides the extensions, so the grid brackets the measured optimum even where the tie rule keeps
    the centre. The LR used is the grid's centre unless another LR beats it by more than ``LR_TIE_NATS``
    (``pick_lr``).
    Returns the variants with their chosen ``lr``, the rounds' trials that did not end as planned, and the
    choice as text (printed, and a section of the report)."""
    from tinylm import tune

    short = short_base(base, args.lr_fraction).replace(seed=base.seed + MAX_SEEDS)  # no seed run reaches it
    variants = space.points()
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
        space_r = Space(variants=[lr_point(base, variants[i], m, args.lr_fraction) for i, m in points])
        table = tune.run_sweep(phase, short, space_r)
        problems += [p for p in [tune.unplanned(phase, table)] if p]
        rows = table.to_dict("records")
        for (i, m), tried_point in zip(points, space_r.variants, strict=True):
            # a run that did not complete (diverged, failed) has no loss to compare: its LR counts as the worst
            match = [trial_loss(r) for r in rows if r.get("status") == "completed"
                     and math.isclose(float(r.get("lr", math.nan)), tried_point["lr"], rel_tol=1e-9)
                     and all(plain(r.get(k)) == v for k, v in tried_point.items() if k != "lr")]
            tried[i][m] = match[0] if match and match[0] == match[0] else math.inf
        todo = [[] for _ in variants]
        for i, results in enumerate(tried):
            ms = sorted(results)
            best = lowest(results)  # not pick_lr's: a centre kept by the tie rule may hide an optimum past an edge
            if results[best] == math.inf:
                continue  # every LR diverged or failed: nothing to extend from (reported as unplanned)
            if best == ms[-1] and round_ < MAX_LR_EXTENSIONS:
                todo[i] = [ms[-1] * ms[-1] / ms[-2]]
            elif best == ms[0] and round_ < MAX_LR_EXTENSIONS:
                todo[i] = [ms[0] * ms[0] / ms[1]]
    chosen, lines = [], []
    for v, results in zip(variants, tried, strict=True):
        ms, used, best = sorted(results), pick_lr(results, centre), lowest(results)
        edge = best in (ms[0], ms[-1])
        rule = float(v.get("lr", base.lr))
        chosen.append(v | {"lr": rule * used})
        shown = ", ".join(f"{k}={plain(x)}" for k, x in v.items() if k not in ("lr", *RUN_LENGTH))
        lines.append(f"  {shown}: lr {rule * used:.3g} (x{used:g})"
                     + "; " + ", ".join(f"x{m:g} {results[m]:.4f}" for m in ms)
                     + (f"  (lowest at x{best:g}, within {LR_TIE_NATS:g} nats of the centre: the centre kept)"
                        if used != best else "")
                     + ("  <- lowest at the grid edge after the extensions: not an interior optimum" if edge else ""))
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

    short = short_base(base, args.rank_fraction)  # the dry-run plan's phase 1 is the same config
    rank = replace(sweep, name=f"{exp.name}-rank", seeds=1, refine=0)
    ranked = tune.run_sweep(rank, short, exp.space_at(args.scale))
    problems = [p for p in [tune.unplanned(rank, ranked)] if p]
    axes = [k for k in exp.space_at(args.scale).fields() if k in ranked.columns]
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
        finalists, more, _ = tune_lr(exp, base, Space(variants=finalists), grid, args, sweep)
        problems += more
    space = Space(variants=finalists)
    # phase 2 is the PRD's decision: every finalist trains to the end (no ASHA, no kill rule), else the 3-seed
    # comparison it exists for may never happen
    final = replace(sweep, name=f"{exp.name}-final", seeds=max(3, args.seeds), refine=0, asha=False,
                    kill_margin=math.inf)
    return tune.run_sweep(final, base, space), final, space, problems
