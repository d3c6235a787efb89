"""Training throughput of every variant of a sweep at one scale, timed in interleaved rounds on this machine.

What it measures: tokens/s of a plain training step (forward, backward, clipping, the variant's own optimizer from
``tinylm.optim.build_optimizer``) of each grid point of a sweep script's ``Space`` at ``--scale``, on one fixed
batch, one thread unless ``--threads``. The variants take turns round by round and the median round is kept, so
load from other processes hits them alike; the ratio to the first variant (the sweep's baseline first in its
space) is the number to read. MFU is ``flops_per_token * tokens/s / measured matmul peak`` (for an MoE the
FLOPs of the parameters a token uses). Prints; asserts nothing.

    python bench/variants_throughput.py sweeps/moe.py             # dense vs the 8 MoE variants, laptop shapes
    python bench/variants_throughput.py sweeps/ssm.py --rounds 5  # attention vs Mamba vs hybrid
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from throughput import plain_step as step  # bench/throughput.py's plain training step (bench/ is on sys.path)

from tinylm.budget import flops_per_token, param_counts
from tinylm.machine import measured_matmul_peak
from tinylm.model import GPT
from tinylm.optim import build_optimizer
from tinylm.sweep import load


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("script", help="a sweep script, e.g. sweeps/moe.py")
    p.add_argument("--scale", default="laptop", choices=("smoke", "laptop", "full"))
    p.add_argument("--steps", type=int, default=8, help="timed steps per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    exp = load(a.script)
    base = exp.base(a.scale)
    cfgs = [base.replace(**point) for point in exp.space_at(a.scale).points()]
    runs = []
    for cfg in cfgs:
        torch.manual_seed(0)
        model = GPT(cfg)
        model.init_weights(cfg.seed)
        opt = build_optimizer(model, cfg)
        x = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.block_size))
        for _ in range(2):  # warm-up: allocator, first-call paths
            step(model, opt, x, x, cfg.grad_clip)
        runs.append((cfg, model, opt, x))
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(a.rounds):
        for i, (cfg, model, opt, x) in enumerate(runs):
            t0 = time.perf_counter()
            for _ in range(a.steps):
                step(model, opt, x, x, cfg.grad_clip)
            times[i].append((time.perf_counter() - t0) / a.steps)
    peak = measured_matmul_peak()
    first = None
    print(f"{exp.name} at {a.scale}: {a.rounds} interleaved rounds x {a.steps} steps, {a.threads} thread(s), "
          f"batch {base.batch_size} x {base.block_size}; matmul peak {peak / 1e9:.0f} GFLOP/s")
    print(f"{'variant':58s} {'total':>8s} {'active':>8s} {'tok/s':>8s} {'ratio':>6s} {'MFU':>6s}")
    for (cfg, *_), ts, point in zip(runs, times, exp.space_at(a.scale).points(), strict=True):
        tps = cfg.batch_size * cfg.block_size / statistics.median(ts)
        first = first or tps
        c = param_counts(cfg)
        label = ", ".join(f"{k}={v}" for k, v in point.items())
        print(f"{label[:58]:58s} {c['total']:8,d} {c['active']:8,d} {tps:8,.0f} {tps / first:6.2f} "
              f"{flops_per_token(cfg) * tps / peak:6.1%}")


if __name__ == "__main__":
    main()
