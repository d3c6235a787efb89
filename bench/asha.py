"""Does ASHA + the kill rule save tokens on a real grid without changing the winner? Prints; asserts nothing.

A >= 16-trial grid (lr x glu_factor on the glu sweep's base at smoke scale) runs twice through the same
``tinylm.tune.run_sweep`` the sweep scripts use: once in full (no ASHA, no kill rule), once with ASHA and the kill
rule at the given settings. Printed: tokens spent by each, and the top-1 / top-3 of each by final val loss
(ASHA's ranking counts only trials that ran to the end). Target (issue 12): <= 1/3 of the tokens, same winner.

    python bench/asha.py                                     # 16 trials x 120k tokens, ASHA defaults
    python bench/asha.py --grace-tokens 15000 --reduction-factor 4 --brackets 1
    python bench/asha.py --skip-full --results DIR           # reuse the full grid already in DIR
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time


def top(table, k: int = 3) -> list[tuple]:
    done = table[table["status"] == "completed"].sort_values("val_loss")
    return [(round(float(r.lr), 6), float(r.glu_factor), round(float(r.val_loss), 4))
            for r in done.head(k).itertuples()]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python bench/asha.py", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=120_000, help="train_tokens per trial")
    p.add_argument("--eval-every", type=int, default=10_000)
    p.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2])
    p.add_argument("--glu", type=float, nargs="+", default=[2.0, 2.66, 3.0, 4.0])
    p.add_argument("--grace-tokens", type=int, default=0, help="0 = the sweep default")
    p.add_argument("--reduction-factor", type=int, default=0, help="0 = the sweep default")
    p.add_argument("--brackets", type=int, default=0, help="0 = the sweep default")
    p.add_argument("--max-concurrent", type=int, default=0)
    p.add_argument("--skip-full", action="store_true", help="the full grid is already in --results")
    p.add_argument("--results", default=None)
    args = p.parse_args(argv)

    from tinylm import tune
    from tinylm.experiment import Experiment

    glu = Experiment(name="glu", preset="budget-10m", space={}, smoke=dict(lr=3e-3))
    base = glu.base("smoke").replace(train_tokens=args.tokens, eval_every_tokens=args.eval_every, evals="")
    space = {"lr": args.lrs, "glu_factor": args.glu}
    root = args.results or tempfile.mkdtemp(prefix="tinylm-asha-")
    asha = {k: v for k, v in (("grace_tokens", args.grace_tokens), ("reduction_factor", args.reduction_factor),
                              ("brackets", args.brackets)) if v}
    runs = {}
    tag = "-".join(f"{k[0]}{v}" for k, v in asha.items()) or "defaults"
    baseline = {"glu_factor": 4.0, "lr": 3e-3}  # the kill rule compares every trial with this one
    for name, kw in (("full", dict(asha=False, kill_margin=math.inf)), ("asha", asha)):
        sweep = tune.Sweep(name="asha-full" if name == "full" else f"asha-{tag}", results_dir=root,
                           max_concurrent=args.max_concurrent, baseline=baseline, **kw)
        if name == "full" and args.skip_full:
            runs[name] = (tune.results_table(sweep), math.nan)
            continue
        t0 = time.time()
        try:
            table = tune.run_sweep(sweep, base, space)
        finally:
            tune.shutdown()
        runs[name] = (table, time.time() - t0)
    s = tune.Sweep(name="x", **asha)
    print(f"\n{len(runs['full'][0])}-trial grid lr x glu_factor, {args.tokens:,} tokens each, eval every "
          f"{args.eval_every:,} ({base.n_embd}d x {base.n_layer}; ASHA grace {s.grace_tokens or args.tokens // 4:,} "
          f"tokens, reduction factor {s.reduction_factor}, brackets {s.brackets}; kill rule vs {baseline}); "
          f"results in {root}")
    full_tokens = tune.tokens_spent(runs["full"][0])[0]
    for name, (table, wall) in runs.items():
        spent, _ = tune.tokens_spent(table)
        early = tune.stopped_early(table)
        print(f"{name:>5}: tokens {spent:>12,} ({spent / max(1, full_tokens):6.1%} of full)  wall {wall:6.0f} s  "
              f"stopped early {early:2d}/{len(table)}  top-3 (lr, glu, val_loss) {top(table)}")
    same = top(runs["full"][0], 1)[:1] and top(runs["asha"][0], 1)[:1] and \
        top(runs["full"][0], 1)[0][:2] == top(runs["asha"][0], 1)[0][:2]
    print(f"same winner: {bool(same)}")


if __name__ == "__main__":
    main()
