"""Does ASHA + the kill rule save tokens on a real grid without changing the winner? Prints; asserts nothing.

A >= 16-trial grid (lr x glu_factor on the glu sweep's base at smoke scale) runs twice through the same
``tinylm.tune.run_sweep`` the sweep scripts use: once in full (no ASHA, no kill rule), once with ASHA and the kill
rule at the given settings. Printed: tokens spent by each (cooldown probes included), and the top-1 / top-3 of
each by final val loss (ASHA's ranking counts only trials that ran to the end). Target (issue 12): <= 1/3 of the
tokens, same winner.

An LR axis needs ``--schedule wsd`` (the default): under cosine a mid-run loss favours small LRs, and ASHA and
the kill rule stopped the winner (RESULTS.md, 2026-11-30). Under wsd every rung is judged on a cooldown probe,
the loss a finished run of that length reaches. The full grid records probes at ``--full-probes`` too (their
tokens are counted apart, not charged to the full grid), and the bench prints how well each point's probe loss
and raw stable-phase loss rank the trials' final losses.

    python bench/asha.py                                     # 16 trials x 65,536 tokens, wsd, ASHA defaults
    python bench/asha.py --grace-tokens 8192 --reduction-factor 4
    python bench/asha.py --skip-full --results DIR           # reuse the full grid already in DIR
    python bench/asha.py --schedule cosine                   # the cosine run that lost its winner
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time


def top(table, axes: list[str], k: int = 3) -> list[tuple]:
    done = table[table["status"] == "completed"].sort_values("val_loss")
    return [tuple(float(r[a]) for a in axes) + (round(float(r["val_loss"]), 4),) for _, r in done.head(k).iterrows()]


def rank_quality(uri: str, table, metrics: tuple[str, ...]) -> list[str]:
    """For each eval point of the full grid: how well the probe loss and the raw val loss there rank the
    trials' final losses (Spearman rho, and whether the final winner is first at that point)."""
    from tinylm.tracking import load_curves

    done = table[table["status"] == "completed"]
    final = dict(zip(done["run_id"], done["val_loss"], strict=True))
    winner = min(final, key=final.get)
    lines = []
    for metric in metrics:
        curves = load_curves(uri, list(final), metric=metric)
        for tokens, at in curves.groupby("tokens"):
            if len(at) < len(final) or tokens >= int(done["train_tokens"].max()):
                continue
            rho = at["value"].corr(at["run_id"].map(final), method="spearman")
            first = at.loc[at["value"].idxmin(), "run_id"] == winner
            lines.append(f"  {metric:>10} at {tokens:>7,} tokens: Spearman vs final {rho:+.2f}, "
                         f"final winner ranked first: {'yes' if first else 'no'}")
    return lines


def recorded(uri: str, table, axes: list[str]) -> dict[tuple, list[dict]]:
    """Each completed trial's results as it reported them (eval by eval, then its final one), keyed by its axes."""
    from tinylm.tracking import load_curves

    done = table[table["status"] == "completed"]
    ids = list(done["run_id"])
    curves = {m: {rid: dict(zip(g.tokens, g.value, strict=True))
                  for rid, g in load_curves(uri, ids, metric=m).groupby("run_id")}
              for m in ("val_loss", "probe_loss")}
    out = {}
    for _, row in done.iterrows():
        at = {m: c.get(row.run_id, {}) for m, c in curves.items()}
        evals = [{"tokens": t, "val_loss": v, "val_ppl": math.exp(v)} | (
                 {"probe_loss": at["probe_loss"][t]} if t in at["probe_loss"] else {})
                 for t, v in sorted(at["val_loss"].items()) if t < row.train_tokens]
        final = {"tokens": int(row.train_tokens), "val_loss": float(row.val_loss), "status": "completed"}
        out[tuple(float(row[a]) for a in axes)] = evals + [final]
    return out


def as_reported(results: list[dict], is_baseline: bool, rungs: list[int], cfg) -> list[dict]:
    """A trial's recorded results as the sweep would have reported them with probes at ``rungs`` only (none when
    empty): ``probe_loss`` there and nowhere else, ``probe_tokens`` counting the branches so far."""
    from tinylm.optim import probe_length

    spent, out = 0, []
    for r in results:
        r = {k: v for k, v in r.items() if k != "probe_loss" or r["tokens"] in rungs} | {"is_baseline": is_baseline}
        if "probe_loss" in r:
            spent += probe_length(cfg, r["tokens"])
        out.append(r | ({"probe_tokens": spent} if rungs else {}))
    return out


def replay_settings(runs: dict[tuple, list[dict]], axes: list[str], orders: list[list[tuple]], base, baseline: dict,
                    settings: list[tuple[int, int]], kill: bool, probes: bool) -> list[str]:
    """Replay ASHA (+ the kill rule) at each (grace, reduction factor) over the given grid orders: tokens spent
    (probe branches included) and how often the full grid's winner is the replayed sweep's winner."""
    import statistics

    from tinylm.kill_rule import KillRule
    from tinylm.sweep import Sweep
    from tinylm.tune.stopping import KillStopper, make_scheduler, replay, rung_tokens

    full = sum(r[-1]["tokens"] for r in runs.values())
    winner = min(runs, key=lambda k: runs[k][-1]["val_loss"])
    key_base = tuple(float(baseline[a]) for a in axes)
    lines = []
    for grace, rf in settings:
        rungs = rung_tokens(base.train_tokens, grace, rf)
        sweep = Sweep(name="replay", grace_tokens=grace, reduction_factor=rf)
        cfg = base.replace(probes=",".join(map(str, rungs))) if probes else base
        if probes and any(not any(r.get("probe_loss") and r["tokens"] == m for r in runs[winner]) for m in rungs):
            continue  # the full grid recorded no probe at one of these rungs
        res = {k: as_reported(rs, k == key_base, rungs if probes else [], cfg) for k, rs in runs.items()}
        shares, kept = [], []
        for order in orders:
            rule = KillStopper(KillRule(window=max(1, base.train_tokens // 6)), probing=probes) if kill else None
            got = replay(res, order, make_scheduler(sweep, cfg, metric="val_loss", mode="min"), rule)
            shares.append(got.tokens / full)
            kept.append(min(got.completed, key=lambda k: runs[k][-1]["val_loss"]) == winner)
        lines.append(f"  grace {grace:>7,} rf {rf} (rungs {rungs}){' + kill rule' if kill else ''}: own order "
                     f"{shares[0]:6.1%} {'same' if kept[0] else 'LOST'}; random orders: tokens median "
                     f"{statistics.median(shares[1:]):6.1%} (min {min(shares[1:]):.1%}, max {max(shares[1:]):.1%}), "
                     f"same winner in {sum(kept[1:])}/{len(kept) - 1}")
    return lines


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python bench/asha.py", description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=65_536, help="train_tokens per trial")
    p.add_argument("--eval-every", type=int, default=4_096)
    p.add_argument("--schedule", choices=("wsd", "cosine"), default="wsd")
    p.add_argument("--full-probes", default="8192,16384,32768", help="wsd: probes the full grid records")
    p.add_argument("--axis", action="append", default=[], metavar="FIELD=V1,V2,...",
                   help="a grid axis (repeat; the first value is the baseline's); default lr x glu_factor")
    p.add_argument("--lr", type=float, default=3e-3, help="the LR when lr is not an axis")
    p.add_argument("--grace-tokens", type=int, default=0, help="0 = the sweep default")
    p.add_argument("--reduction-factor", type=int, default=0, help="0 = the sweep default")
    p.add_argument("--brackets", type=int, default=0, help="0 = the sweep default")
    p.add_argument("--max-concurrent", type=int, default=0)
    p.add_argument("--skip-full", action="store_true", help="the full grid is already in --results")
    p.add_argument("--only-full", action="store_true", help="run the full grid only")
    p.add_argument("--full-name", default="", help="the full grid's sweep name (default from the grid)")
    p.add_argument("--results", default=None)
    p.add_argument("--replay", type=int, default=200, metavar="N",
                   help="replay ASHA settings on the full grid's curves in the sweep's order and N random orders")
    args = p.parse_args(argv)

    from tinylm import tune
    from tinylm.sweep import Experiment, Space, Sweep

    glu = Experiment(name="glu", preset="budget-10m", space={}, smoke=dict(lr=3e-3))
    base = glu.base("smoke").replace(train_tokens=args.tokens, eval_every_tokens=args.eval_every, evals="",
                                     schedule=args.schedule, lr=args.lr)
    axes = args.axis or ["lr=3e-3,1e-3,1e-2,3e-2", "glu_factor=4.0,2.0,2.66,3.0"]
    space = {k: [type(getattr(base, k))(v) for v in vals.split(",")] for k, _, vals in (a.partition("=") for a in axes)}
    baseline = {k: v[0] for k, v in space.items()}  # the kill rule compares every trial with this one
    root = args.results or tempfile.mkdtemp(prefix="tinylm-asha-")
    asha = {k: v for k, v in (("grace_tokens", args.grace_tokens), ("reduction_factor", args.reduction_factor),
                              ("brackets", args.brackets)) if v}
    runs = {}
    grid = "x".join(space)
    tag = "-".join([grid, args.schedule] + [f"{k[0]}{v}" for k, v in asha.items()])
    full_name = args.full_name or f"asha-full-{grid}-{args.schedule}"
    halves = (("full", dict(asha=False, kill_margin=math.inf)),) + (() if args.only_full else (("asha", asha),))
    for name, kw in halves:
        sweep = Sweep(name=full_name if name == "full" else f"asha-{tag}", results_dir=root,
                           max_concurrent=args.max_concurrent, baseline=baseline, **kw)
        if name == "full" and args.skip_full:
            runs[name] = (tune.results_table(sweep), math.nan)
            continue
        b = base.replace(probes=args.full_probes) if name == "full" and args.schedule == "wsd" else base
        t0 = time.time()
        try:
            table = tune.run_sweep(sweep, b, Space(**space))
        finally:
            tune.shutdown()
        runs[name] = (table, time.time() - t0)
    from tinylm.tune.stopping import grace_tokens

    s = Sweep(name="x", **asha)
    print(f"\n{len(runs['full'][0])}-trial grid {' x '.join(space)}, {args.tokens:,} tokens each, {args.schedule}, "
          f"eval every {args.eval_every:,} ({base.n_embd}d x {base.n_layer}; ASHA grace "
          f"{grace_tokens(s, base):,} tokens, reduction factor {s.reduction_factor}, brackets "
          f"{s.brackets}; kill rule vs {baseline}); results in {root}")
    def probe_tokens(table) -> int:
        return int(table["probe_tokens"].fillna(0).sum()) if "probe_tokens" in table else 0

    full_tokens = tune.tokens_spent(runs["full"][0])[0] - probe_tokens(runs["full"][0])
    for name, (table, wall) in runs.items():
        spent, _ = tune.tokens_spent(table)  # probe branches included
        probes = probe_tokens(table)
        charged = spent - (probes if name == "full" else 0)
        early = tune.stopped_early(table)
        print(f"{name:>5}: tokens {charged:>12,} ({charged / max(1, full_tokens):6.1%} of full; probes {probes:,}"
              f"{' not charged' if name == 'full' else ''})  wall {wall:6.0f} s  stopped early {early:2d}/{len(table)}"
              f"  top-3 ({', '.join(space)}, val_loss) {top(table, list(space))}")
    print("how well a mid-run number ranks the full grid's final losses:")
    print("\n".join(rank_quality(Sweep(name=full_name, results_dir=root).uri(), runs["full"][0],
                                 ("probe_loss", "val_loss") if args.schedule == "wsd" else ("val_loss",))))
    if args.replay:
        import random

        from tinylm.tune.stopping import grid_sequence

        axes = list(space)
        curves = recorded(Sweep(name=full_name, results_dir=root).uri(), runs["full"][0], axes)
        own = [tuple(float(p[a]) for a in axes)
               for p in grid_sequence(tune.grid_space(base, Space(**space), 1, baseline, shuffle=True))]
        rng = random.Random(0)
        orders = [own] + [rng.sample(own, len(own)) for _ in range(args.replay)]
        T = args.tokens
        settings = [(g, rf) for g in (T // 16, T // 8, T // 4) for rf in (2, 3, 4) if g >= base.warmup]
        for probes in ((True, False) if args.schedule == "wsd" else (False,)):
            for kill in (False, True):
                judged = "cooldown probes" if probes else "the mid-run val loss"
                print(f"replayed on the full grid's curves (rungs judged on {judged}), the sweep's own order + "
                      f"{args.replay} random orders:")
                print("\n".join(replay_settings(curves, axes, orders, base, baseline, settings, kill, probes)))
    if "asha" in runs:
        first = [top(runs[n][0], list(space), 1)[:1] for n in ("full", "asha")]
        same = all(first) and first[0][0][:-1] == first[1][0][:-1]
        print(f"same winner: {bool(same)}")


if __name__ == "__main__":
    main()
