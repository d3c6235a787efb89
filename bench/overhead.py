"""Per-trial start-up overhead of a sweep, phase by phase, and the sweep's efficiency. Prints; asserts nothing.

A sweep of N short trials (debug preset, one trial at a time, no ASHA, no kill rule) through the same
``tinylm.tune.run_sweep`` the sweep scripts use. Each trial writes ``startup.json`` (``tinylm.machine.mark``) with
wall-clock marks; this script turns them into phases, from the end of the previous trial (the sweep's start for
the first one) to the trial's first optimizer step:

    schedule     previous trial ended -> the Tune trial function runs (Tune, trial actor start or reuse)
    train_setup  trial function -> the train function runs (TorchTrainer: controller, placement group, worker
                 process; ~0 in local mode, where the train function runs in the trial's own process)
    torch        ``import torch`` in that process (0 once imported)
    deepspeed    ``import tinylm.engine`` (deepspeed; 0 once imported)
    pg           process group (+ the DeepSpeed comm backend and its shm op load)
    data         dataset / tokenizer (cached after the first trial)
    model_engine model, optimizer, ``deepspeed.initialize``
    first_step   everything else up to the end of the first optimizer step

efficiency = sum of the trials' training time (``train_time_s``: steps only, no evals) / the sweep's wall time.

    python bench/overhead.py                          # 4 trials, the default path for 1-worker trials
    python bench/overhead.py --trials 6 --path trainer  # force the TorchTrainer path (a Train worker group)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time

PHASES = [("schedule", "trial"), ("train_setup", "worker_fn"), ("torch", "import_torch"),
          ("deepspeed", "import_deepspeed"), ("pg", "process_group"), ("data", "data"),
          ("model_engine", "model_engine"), ("first_step", "first_step")]


def trial_rows(root: str, name: str, t_start: float) -> list[dict]:
    """One row per trial (in start order): seconds per phase, overhead total, training time."""
    trials_dir = os.path.join(root, name, "trials")
    trials = []
    for tid in os.listdir(trials_dir):
        d = os.path.join(trials_dir, tid)
        try:
            with open(os.path.join(d, "startup.json")) as f:
                marks = json.load(f)
            with open(os.path.join(d, "metrics.json")) as f:
                metrics = json.load(f)
        except (OSError, ValueError):
            continue
        marks["end"] = os.path.getmtime(os.path.join(d, "metrics.json"))
        trials.append((marks["trial"], tid, marks, metrics))
    rows, prev_end = [], t_start
    for _, tid, marks, metrics in sorted(trials):
        row, t = {"trial": tid, "pid": marks.get("pid")}, prev_end
        for phase, key in PHASES:
            row[phase] = max(0.0, marks[key] - t) if key in marks else math.nan
            t = marks.get(key, t)
        row["process_started"] = "new" if marks["process_start"] > prev_end else "reused"
        row["overhead"] = marks["first_step"] - prev_end
        row["train_s"] = float(metrics.get("train_time_s", math.nan))
        row["trial_wall"] = marks["end"] - prev_end
        prev_end = marks["end"]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python bench/overhead.py", description=__doc__.split("\n")[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--tokens", type=int, default=8192, help="train_tokens per trial (debug preset)")
    p.add_argument("--path", choices=("auto", "local", "trainer"), default="auto",
                   help="1-worker trial path: auto (the default a sweep takes), local (Train local mode in the "
                        "trial process) or trainer (a TorchTrainer worker group)")
    p.add_argument("--results", default=None, help="results folder (default: a new temp folder)")
    args = p.parse_args(argv)

    from tinylm import tune
    from tinylm.config import Config
    from tinylm.sweep import Space, Sweep

    root = args.results or tempfile.mkdtemp(prefix="tinylm-overhead-")
    extra = {} if args.path == "auto" else {"local_mode": args.path == "local"}
    sweep = Sweep(name="overhead", results_dir=root, asha=False, kill_margin=math.inf, max_concurrent=1,
                       **extra)
    base = Config.from_name("debug", train_tokens=args.tokens, eval_every_tokens=args.tokens // 2,
                            eval_tokens=1024, evals="").replace(name="overhead")
    space = Space(lr=[round(3e-3 * (1 + 0.1 * i), 6) for i in range(args.trials)])
    t0 = time.time()
    res = tune.connect(sweep)
    t_ray = time.time() - t0
    t1 = time.time()
    try:
        tune.run_sweep(sweep, base, space)
    finally:
        tune.shutdown()
    wall = time.time() - t0
    rows = trial_rows(sweep.root, sweep.name, t1)
    cols = ["schedule", "train_setup", "torch", "deepspeed", "pg", "data", "model_engine", "first_step",
            "overhead", "train_s", "trial_wall"]
    print(f"\n{len(rows)} trials, {res['workers']} worker(s) x {res['cpus_per_worker']} CPU, "
          f"path={args.path}, {args.tokens:,} tokens each; results in {root}")
    print(f"ray.init + resources: {t_ray:.1f} s (once per sweep)\n")
    print(f"{'trial':<14}{'process':>8}" + "".join(f"{c:>13}" for c in cols))
    for r in rows:
        print(f"{r['trial']:<14}{r['process_started']:>8}" + "".join(f"{r[c]:>13.2f}" for c in cols))
    if rows:
        later = [r["overhead"] for r in rows[1:]]
        train = sum(r["train_s"] for r in rows)
        print(f"\nfirst trial overhead (sweep start -> first step): {rows[0]['overhead']:.1f} s")
        if later:
            print(f"later trials overhead (previous end -> first step): median {statistics.median(later):.1f} s, "
                  f"max {max(later):.1f} s")
        print(f"efficiency = training time / wall: {train:.1f} s / {wall:.1f} s = {train / wall:.1%} "
              f"(wall includes ray.init; without it {train / (wall - t_ray):.1%})")


if __name__ == "__main__":
    main()
