"""LR x batch probe at a sweep's laptop replica: which batch (optimizer steps) and LR end past the bigram reference.

A replica that keeps tokens per parameter but not the number of optimizer steps can end still on its early plateau
(above what a count bigram model scores): then its seeds measure when each run escapes the plateau. This trains one
variant of a sweep's laptop replica at the same token budget for every (batch, LR multiplier) pair, one seed each,
and prints the final val loss beside the unigram and bigram references on the same val windows (tinylm.regime).
Plain ``tinylm.train.train`` in this process (no Ray), one thread. Prints; asserts nothing.

    python bench/regime_probe.py                                   # glu, glu_factor=4.0, batch 16 and 4
    python bench/regime_probe.py --batch 16 8 4 2 --lr-mult 0.5 1 2 4 --set glu_factor=2.0
"""

from __future__ import annotations

import argparse
import logging
import os
import runpy
import tempfile
import time

import torch

from tinylm.sweep.experiment import parse_sets


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", default="sweeps/glu.py", help="a sweep script; its laptop replica's base Config")
    p.add_argument("--set", nargs="*", default=["glu_factor=4.0"], metavar="FIELD=VALUE", help="fields of the variant")
    p.add_argument("--batch", nargs="+", type=int, default=[16, 4], help="micro-batch sizes (block size kept)")
    p.add_argument("--lr-mult", nargs="+", type=float, default=[1.0, 2.0, 4.0], help="multipliers of the rule's LR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)
    from tinylm.data import load_data
    from tinylm.regime import reference_losses
    from tinylm.train import train

    exp = runpy.run_path(args.sweep, run_name="regime_probe")["EXPERIMENT"]
    base = exp.base("laptop").replace(**parse_sets(args.set), seed=args.seed, evals="")  # a grid point
    data = load_data(base)
    print(f"{exp.name} laptop replica {args.set}: {base.n_embd}/{base.n_layer}/{base.n_head}, d_ff {base.d_ff}, "
          f"{base.train_tokens:,} tokens, rule LR {base.lr:.4g}, block {base.block_size}")
    print(f"{'batch':>5} {'steps':>6} {'lr':>9} {'val_loss':>9} {'bigram':>7} {'unigram':>7} {'past':>5} "
          f"{'tok/s':>7} {'wall_s':>7}", flush=True)
    for batch in args.batch:
        cfg = base.replace(batch_size=batch)
        refs = reference_losses(data.train, data.val, data.tokenizer.n_vocab, cfg.batch_size, cfg.block_size,
                                cfg.eval_tokens)
        steps = cfg.train_tokens // (batch * cfg.block_size * cfg.grad_accum)
        for mult in args.lr_mult:
            run_cfg = cfg.replace(lr=base.lr * mult)
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                m = train(run_cfg, os.path.join(out, "run"))
            wall = time.perf_counter() - t0
            loss = float(m.get("final_val_loss", m.get("val_loss", float("nan"))))
            print(f"{batch:>5} {steps:>6} {run_cfg.lr:>9.4g} {loss:>9.4f} {refs['ref_bigram_loss']:>7.3f} "
                  f"{refs['ref_unigram_loss']:>7.3f} {str(loss < refs['ref_bigram_loss']):>5} "
                  f"{m.get('tokens_per_s', float('nan')):>7,.0f} {wall:>7.1f}", flush=True)


if __name__ == "__main__":
    main()
