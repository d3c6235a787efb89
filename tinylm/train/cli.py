"""The training command: one model in this process, no Ray.

    python -m tinylm.train --preset debug
    python -m tinylm.train --preset debug --n_layer 3 --mlp swiglu --glu_factor 2.66 --norm rmsnorm --pos rope
    python -m tinylm.train --preset debug --sanity overfit     # PRD phase 0: memorise ~1k tokens
    python -m tinylm.train --preset debug --sanity lr_range    # PRD phase 0: LR range test
    python -m tinylm.train --preset debug --track              # plus an MLflow run (tinylm.api.run_experiment)

It sits over the train package (``train``, ``sanity``, ``tracked``); nothing imports it. Every
failure the user can act on is one line: a refused input or output folder (``--force`` takes over a folder that
holds other files), a full disk, and Ctrl-C, which prints where it stopped and the command that goes on (exit 130).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import time

from tinylm.config import ConfigError, add_config_args, config_from_args
from tinylm.layout import results_dir
from tinylm.train import Interrupted, SaveError, train


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tinylm.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--out", default=None, help="output folder (default RESULTS/runs/<name>-<time>, RESULTS = "
                                                  "$TINYLM_RESULTS or results)")
    p.add_argument("--force", action="store_true", help="start from scratch in an --out folder that holds other files "
                                                        "(refused otherwise: an output folder is never overwritten)")
    p.add_argument("--sanity", choices=("overfit", "lr_range"), default=None, help="PRD phase-0 checks")
    p.add_argument("--track", action="store_true", help="log the run to MLflow (sqlite under the results folder)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    out = args.out or os.path.join(results_dir(), "runs", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from tinylm.data import CorpusUnavailable

    expected: tuple[type[Exception], ...] = (ConfigError, CorpusUnavailable, SaveError)  # one line each
    if args.track:
        from tinylm.tracking import TrackingError

        expected += (TrackingError,)
    t0 = time.perf_counter()
    try:
        if args.sanity:
            from tinylm.train import sanity

            return getattr(sanity, args.sanity)(cfg, out, force=args.force)
        if args.track:  # as tinylm.run_experiment(track=True): one MLflow parent + child run around train()
            from tinylm.train.tracked import train_tracked

            final = train_tracked(cfg, out, results_dir(), force=args.force)
        else:
            final = train(cfg, out, force=args.force)
    except expected as e:  # SystemExit, not a traceback (which torch.distributed prefixes with [rank0] per line)
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt as e:  # one line, what is kept and the command that goes on; 130 as a shell reports it
        print(interrupted(e, out, argv if args.out else [*argv, "--out", out]), file=sys.stderr)
        raise SystemExit(130) from None
    keys = ("status", "final_val_loss", "final_val_ppl", "ref_unigram_loss", "ref_bigram_loss", "tokens",
            "params_total", "tokens_per_s", "mfu", "latency_ms_b1_l128", "peak_mem_mb")  # refs: tinylm.regime
    print(json.dumps({k: final.get(k) for k in keys}, indent=1, default=str))
    wall = f"wall time {time.perf_counter() - t0:.1f} s"
    if cfg.seeds_per_trial > 1:  # the numbers above are the mean of the members that completed
        from tinylm.layout import MEMBERS

        members = json.loads(final.get(MEMBERS) or "[]")
        print(f"{len(members)} seeds as one batched model (the numbers above: their mean): " + "; ".join(
            f"seed {m['seed']} {m['status']} val {m.get('val_loss', float('nan')):.4f}" for m in members)
            + f"; each in {out}/members/seed<s>/")
    if final.get("status") != "completed":
        raise SystemExit(f"error: the run {final.get('status')}: {final.get('stop_reason')}; no model was saved "
                         f"({wall}; metrics in {out}/metrics.json)")
    if final.get("evals_error"):
        raise SystemExit(f"error: end-of-run evals failed ({final['evals_error']}); the model and metrics are kept "
                         f"in {out} ({wall})")
    print(f"{wall}; model and metrics in {out}")
    return final


def interrupted(e: KeyboardInterrupt, out: str, argv: list[str]) -> str:
    """``interrupted at N tokens (...); resume with: <this command, with its --out>``. Ctrl-C outside the loop (the
    data build, the model) carries no count: the newest checkpoint on disk says where the next run starts."""
    if isinstance(e, Interrupted):
        tokens, saved = e.tokens, e.saved
    else:
        from tinylm.checkpoint import resume_point

        try:
            point = resume_point(os.path.join(out, "ckpt"))
        except ConfigError:
            point = None
        saved = point.get("tokens") if point else None
        tokens = saved or 0
    kept = "nothing trained is kept: it starts over" if saved is None else f"the checkpoint at {saved:,} tokens is kept"
    return f"interrupted at {tokens:,} tokens ({kept}); resume with: python -m tinylm.train {shlex.join(argv)}"

