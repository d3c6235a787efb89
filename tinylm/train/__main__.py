"""The training command: one model in this process, no Ray.

    python -m tinylm.train --preset debug
    python -m tinylm.train --preset debug --n_layer 3 --mlp swiglu --glu_factor 2.66 --norm rmsnorm --pos rope
    python -m tinylm.train --preset debug --sanity overfit     # PRD phase 0: memorise ~1k tokens
    python -m tinylm.train --preset debug --sanity lr_range    # PRD phase 0: LR range test
    python -m tinylm.train --preset debug --track              # plus an MLflow run (tinylm.api.run_experiment)

It sits over the library (``tinylm.train.train``, ``tinylm.sanity``, ``tinylm.api``); nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time

from tinylm.config import ConfigError, add_config_args, config_from_args
from tinylm.train import train


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m tinylm.train", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.add_argument("--out", default=None, help="output folder (default results/runs/<name>-<time>)")
    p.add_argument("--sanity", choices=("overfit", "lr_range"), default=None, help="PRD phase-0 checks")
    p.add_argument("--track", action="store_true", help="log the run to MLflow (sqlite under results/)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    out = args.out or os.path.join("results", "runs", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    from tinylm.data import CorpusUnavailable

    expected: tuple[type[Exception], ...] = (ConfigError, CorpusUnavailable)  # the user's to fix: one line each
    if args.track:
        from tinylm.tracking import TrackingError

        expected += (TrackingError,)
    t0 = time.perf_counter()
    try:
        if args.sanity:
            from tinylm import sanity

            return getattr(sanity, args.sanity)(cfg, out)
        if args.track:  # the notebook API's path: one MLflow parent + child run around the same train()
            from tinylm.api import run_experiment

            result = run_experiment(cfg, out_dir=out, track=True)
            final = {**result.metrics, "info": result.info}
        else:
            final = train(cfg, out)
    except expected as e:  # SystemExit, not a traceback (which torch.distributed prefixes with [rank0] per line)
        raise SystemExit(f"error: {e}") from None
    keys = ("status", "final_val_loss", "final_val_ppl", "tokens", "params_total", "tokens_per_s", "mfu",
            "latency_ms_b1_l128", "peak_mem_mb")
    print(json.dumps({k: final.get(k) for k in keys}, indent=1, default=str))
    wall = f"wall time {time.perf_counter() - t0:.1f} s"
    if final.get("status") != "completed":
        raise SystemExit(f"error: the run {final.get('status')}: {final.get('stop_reason')}; no model was saved "
                         f"({wall}; metrics in {out}/metrics.json)")
    if final.get("evals_error"):
        raise SystemExit(f"error: end-of-run evals failed ({final['evals_error']}); the model and metrics are kept "
                         f"in {out} ({wall})")
    print(f"{wall}; model and metrics in {out}")
    return final


if __name__ == "__main__":
    main()
