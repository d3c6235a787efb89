"""A tuned scaling ladder: L(N) from the smaller sizes predicts the largest, held out.

Hypothesis: trained compute-optimally (20 tokens per parameter) with the LR tuned per size, val loss follows a
power law in total parameters well enough that a fit on the smaller sizes predicts the largest within 2 % and its
95 % prediction interval covers the measurement.

    python sweeps/ladder.py               # laptop: 5 sizes 29k-348k params (12x), 3 LRs each, ~18 min here
    python sweeps/ladder.py --dry-run     # the 15 trials, tokens/param, epochs, estimated time
    python sweeps/ladder.py --mode isoflop    # 3 FLOP budgets x 4 sizes -> N_opt(C) and tokens/param
    python sweeps/ladder.py --scale full  # 5 sizes 3M-40M params, V=8k, on the attached Ray cluster
    python sweeps/ladder.py --points 0:0.25,3:4   # extra LRs where the report flags a grid edge
    python sweeps/ladder.py --analyze-only                  # rebuild the report from every ladder sweep stored

Per size, the LR grid is the size rule's LR x {1/2, 1, 2} (tinylm.config.laptop_lr: Porian et al.'s N^-1/3 anchored
on a measured laptop optimum) in its own sweep, every LR trained to the end: early stopping across an LR axis is
biased toward small LRs (a large LR pays off once its schedule decays; bench/asha.py, RESULTS.md 2026-11-30), and
the LR chosen per size is what the fit rests on. The best LR per size enters the fit; a best LR at its grid's edge
is flagged. Total parameters are counted (Pearce & Song 2024). Laptop data: State of the Union
(public domain), BPE-384: 5.36M train tokens, so the largest size reads 1.3 epochs (flagged).
Results: results/ladder-<i>/ per size, results/analysis/ladder/REPORT.md (+ points.csv).
"""

from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import replace

from tinylm.config import Config, ConfigError
from tinylm.experiment import VARIANT, Experiment, parse_sets, sweep_of
from tinylm.sweep.__main__ import parser as sweep_parser

TOKENS_PER_PARAM = 20.0
LR_MULT = (0.5, 1.0, 2.0)
# (d_model, layers, heads): head size 16-20 at laptop, d/L 16-40; d_ff = 4 d (the seed presets' GPT-2 MLP)
SHAPES = {
    "smoke": [(32, 1, 2), (32, 2, 2), (48, 2, 3), (64, 2, 4)],
    "laptop": [(32, 1, 2), (40, 2, 2), (56, 2, 2), (64, 3, 4), (80, 4, 5)],
    "full": [(192, 3, 3), (256, 4, 4), (384, 6, 6), (512, 8, 8), (640, 10, 10)],
}
ISO_BUDGETS = {"smoke": (1e10, 3e10, 1e11), "laptop": (4e11, 1.2e12, 3.6e12), "full": (1e17, 3e17, 1e18)}
ISO_SHAPES = {  # more, finer shapes: each budget takes the 4 whose compute-optimal size is nearest
    "smoke": SHAPES["smoke"],
    "laptop": [(32, 1, 2), (32, 2, 2), (40, 2, 2), (48, 2, 3), (56, 2, 2), (64, 2, 4), (64, 3, 4), (80, 3, 5)],
    "full": SHAPES["full"],
}
FAMILY = {"laptop": dict(dataset="sotu", vocab_size=384), "smoke": dict(dataset="sotu", vocab_size=384),
          "full": dict(vocab_size=8192)}


def _shape(base: Config, d: int, layers: int, heads: int) -> Config:
    return base.replace(n_embd=d, n_layer=layers, n_head=heads, d_ff=4 * d)


def ladder_points(scale: str) -> list[dict]:
    """Every (size, LR) trial: the size's shape, tokens (20 per parameter) and the LR grid point."""
    base = EXPERIMENT.base(scale)
    out = []
    for d, layers, heads in SHAPES[scale]:
        cfg = _shape(base, d, layers, heads)
        if scale != "smoke":
            cfg = cfg.with_tokens_per_param(TOKENS_PER_PARAM)
        for m in LR_MULT:
            out.append(dict(n_embd=d, n_layer=layers, n_head=heads, d_ff=4 * d, train_tokens=cfg.train_tokens,
                            eval_every_tokens=cfg.eval_every_tokens, warmup_tokens=cfg.warmup_tokens,
                            lr=float(f"{cfg.lr * m:.3g}")))
    return out


def iso_points(scale: str) -> list[dict]:
    """Every (budget, size) trial: D = C / (6 N), the size's LR rule (no LR tuning in this mode)."""
    from tinylm.budget import num_params

    base = EXPERIMENT.base(scale)
    shapes = [(s, num_params(_shape(base, *s))) for s in ISO_SHAPES[scale]]
    out = []
    for c in ISO_BUDGETS[scale]:
        n_star = math.sqrt(c / (6 * TOKENS_PER_PARAM))  # the 20-tokens-per-parameter size, the grid's centre
        near = sorted(shapes, key=lambda s: abs(math.log(s[1] / n_star)))[:4]
        for (d, layers, heads), n in sorted(near, key=lambda s: s[1]):
            cfg = _shape(base, d, layers, heads).with_tokens_per_param(c / (6 * n) / n)
            out.append(dict(n_embd=d, n_layer=layers, n_head=heads, d_ff=4 * d, train_tokens=cfg.train_tokens,
                            eval_every_tokens=cfg.eval_every_tokens, warmup_tokens=cfg.warmup_tokens, lr=cfg.lr))
    return out


EXPERIMENT = Experiment(
    name="ladder", preset="medium", space=lambda scale: {VARIANT: ladder_points(scale)},  # <- sizes x LRs
    hypothesis="a power law fitted on the smaller sizes predicts the largest within 2 % (20 tokens/param, tuned LR)",
    description="scaling ladder: 5 sizes spanning >= 10x params, 20 tokens/param, LR tuned per size, held-out largest",
    tokens_per_param=TOKENS_PER_PARAM, early_stopping=False,
    overrides=FAMILY["full"], laptop=FAMILY["laptop"], smoke=dict(FAMILY["smoke"], train_tokens=16_384,
                                                                  eval_every_tokens=4_096),
)
ISOFLOP = Experiment(
    name="isoflop", preset="medium", space=lambda scale: {VARIANT: iso_points(scale)},  # <- budgets x sizes
    hypothesis="loss has a minimum in N at each FLOP budget; N_opt grows ~ C^0.5 (Chinchilla)",
    description="isoFLOP: 3 budgets x 4 sizes, LR from the size rule",
    early_stopping=False,
    overrides=FAMILY["full"], laptop=FAMILY["laptop"], smoke=dict(FAMILY["smoke"], eval_every_tokens=4_096),
)


def _groups(points: list[dict], key) -> list[list[dict]]:
    out: dict = {}
    for p in points:
        out.setdefault(key(p), []).append(p)
    return list(out.values())


def main(argv: list[str] | None = None) -> int:
    p = sweep_parser(EXPERIMENT)
    p.add_argument("--mode", choices=("ladder", "isoflop"), default="ladder")
    p.add_argument("--points", default="", help="SIZE:MULT[,SIZE:MULT...]: run only these (size index, LR x the "
                   "size rule) as extra sweeps, e.g. where the report flags a best LR at its grid's edge")
    p.add_argument("--analyze-only", action="store_true", help="rebuild the report from the stored sweeps")
    args = p.parse_args(argv)
    exp = EXPERIMENT if args.mode == "ladder" else ISOFLOP
    try:
        base = exp.base(args.scale, **parse_sets(args.set))
    except ConfigError as e:
        sys.exit(f"error: {e}")
    grid = points = exp.space_at(args.scale)[VARIANT]  # grid: the experiment's own trials, largest size last
    prefix = exp.name
    if args.points and args.mode == "ladder":  # extra (size, LR multiple) points, in sweeps of their own
        base_pts = points[1::len(LR_MULT)]  # the rule's LR (multiple 1) of each size
        extra = []
        for item in args.points.split(","):
            i, m = item.split(":")
            q = dict(base_pts[int(i)])
            q["lr"] = float(f"{q['lr'] * float(m):.3g}")
            extra.append(q)
        points, prefix = extra, f"{exp.name}-x" + args.points.replace(":", "_").replace(",", "-")
    if args.dry_run:
        import dataclasses

        from tinylm.analysis.plan import print_plan

        print_plan(dataclasses.replace(exp, space={VARIANT: points}), base, args)
        return 0
    from tinylm import tune
    from tinylm.analysis import ladder, stats
    from tinylm.analysis.plan import corpus_tokens
    from tinylm.tracking import TrackingError

    # every sweep flag as given (tinylm.sweep.Sweep); early_stopping=False already means no ASHA and, unless
    # --kill-margin says otherwise, no kill rule; no refinement (the LR grid is the search)
    common = replace(sweep_of(exp, vars(args), args.scale), refine=0)
    t0, tables = time.time(), []
    if args.mode == "ladder":  # one sweep per size, every LR to the end (no early stopping across an LR axis)
        groups = _groups(points, lambda q: (q["n_embd"], q["n_layer"]))
    else:  # one sweep per budget, every size to the end
        groups = [points[i:i + 4] for i in range(0, len(points), 4)]  # iso_points: 4 sizes per budget, in order
    if args.analyze_only:
        groups = []
    try:
        for i, group in enumerate(groups):
            shape = {k: v for k, v in group[0].items() if k != "lr"}
            b = base.replace(**shape)
            sweep = replace(common, name=f"{prefix}-{i}")
            space = {"lr": [q["lr"] for q in group]} if args.mode == "ladder" else {VARIANT: group}
            print(f"[{exp.name}] group {i + 1}/{len(groups)}: {shape} ({len(group)} trials)", flush=True)
            tables.append(tune.run_sweep(sweep, b, space))
    except (ConfigError, TrackingError) as e:  # refused before its group started (a lock, a store, a changed grid)
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted after {len(tables)} group(s): run the same command to resume")
    finally:
        tune.shutdown()
    import pandas as pd

    from tinylm import tracking

    uri = common.uri()  # every sweep of this experiment in the store: grid + extras
    names = [n for n in dict.fromkeys(tracking.list_sweeps(uri)["sweep"]) if str(n).startswith(f"{exp.name}-")]
    tables = [tracking.load_runs(uri, sweep=n) for n in names] or tables
    df = stats.prepare(pd.concat(tables, ignore_index=True))
    out = os.path.join(args.results, "analysis", exp.name)
    os.makedirs(out, exist_ok=True)
    largest = base.replace(**grid[-1])  # the ladder's largest size, also when --points ran only extra points
    avail, _ = corpus_tokens(largest)
    epochs = largest.train_tokens / avail if avail == avail and avail else math.nan
    if args.mode == "ladder":
        pts = ladder.best_per_size(df)
        held = None
        try:
            held = ladder.heldout(pts)
        except Exception as e:  # too few completed sizes: say so in the report
            print(f"no held-out check: {e}")
        flags = ladder.ladder_flags(pts, held, epochs)
        text = ladder.ladder_markdown(pts, held, base.scale, flags)
    else:
        pts = df[df["status"].astype(str) == "completed"][["N", "D", "C", "loss", "lr"]].copy()
        iso = ladder.isoflop_table(pts)
        flags = ladder.ladder_flags(pts.assign(edge="", tokens_per_param=25.0), None, epochs)
        text = ladder.ladder_markdown(pd.DataFrame(), None, base.scale, flags, iso=iso)
    pts.to_csv(os.path.join(out, "points.csv"), index=False)
    path = os.path.join(out, "REPORT.md")
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"{len(df)} trials in {time.time() - t0:.0f} s; report: {path}")
    # exit 0 only when every trial ended as planned (tinylm.sweep.__main__ does the same for the other sweeps)
    problems = [m for m in (tune.unplanned(replace(common, name=n), t) for n, t in zip(names, tables)) if m]
    for m in problems:
        print(f"warning: {m}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
