"""Training throughput: tinylm's DeepSpeed engine step vs a plain PyTorch loop of the identical model.

What it measures: tokens/s of one optimiser step through ``tinylm.train.setup`` + ``train_step`` (DeepSpeed,
ZeRO 0, fp32, gradient clipping in DeepSpeed) and of a hand-written loop over the same GPT (same init), the same
optimizer from ``tinylm.optim.build_optimizer``, the same fixed batch and the same clipping
(``clip_grad_norm_``). MFU is ``flops_per_token * tokens/s / measured matmul peak`` (``tinylm.machine``).
The two are timed in alternating rounds and the median is kept, so load from other processes on a shared
machine hits both alike. Prints; asserts nothing.

    python bench/throughput.py                                # debug and medium at T=256, batch 8
    python bench/throughput.py --presets debug --steps 20 --rounds 3
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time

import torch

from tinylm.budget import flops_per_token
from tinylm.config import Config
from tinylm.machine import measured_matmul_peak
from tinylm.model import GPT
from tinylm.optim import build_optimizer, set_lr


def plain_step(model: GPT, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, clip: float) -> float:
    _, loss = model(x, y)
    loss.backward()
    if clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def matmul_peak(tries: int = 3) -> float:
    """``tinylm.machine.measured_matmul_peak`` (fp32), best of a few fresh measurements: on a shared machine one
    measurement can land in a burst of someone else's load and inflate every MFU."""
    return max(measured_matmul_peak(torch.float32) for _ in range(tries))


def timed(step, n: int) -> tuple[float, float]:
    """Seconds for ``n`` calls of ``step`` and the last loss."""
    t0 = time.perf_counter()
    for _ in range(n):
        loss = step()
    return time.perf_counter() - t0, loss


def bench(preset: str, steps: int, warmup: int, rounds: int, block_size: int, batch_size: int, peak: float) -> dict:
    from tinylm.train import sample_batch, setup, train_step

    cfg = Config.from_name(preset, block_size=block_size, batch_size=batch_size, precision="fp32", zero_stage=0,
                           schedule="constant", warmup_tokens=1, dropout=0.0)
    with tempfile.TemporaryDirectory() as out:
        run = setup(cfg, out)  # DeepSpeed engine around GPT(cfg) seeded with cfg.seed
    torch.manual_seed(cfg.seed)
    model = GPT(cfg)  # the same init as run.model (same seed, same construction order)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), run.model.state_dict().values()))
    opt = build_optimizer(model, cfg)
    set_lr(run.optimizer, cfg, cfg.train_tokens)  # constant schedule: the peak LR for both
    set_lr(opt, cfg, cfg.train_tokens)
    import numpy as np

    x, y = sample_batch(run, run.data.train, np.random.default_rng(0))  # ONE batch, reused by both
    run.engine.train()
    model.train()
    ds = lambda: train_step(run, lambda: (x, y))  # noqa: E731
    pt = lambda: plain_step(model, opt, x, y, cfg.grad_clip)  # noqa: E731
    timed(ds, warmup)
    timed(pt, warmup)
    ds_tps, pt_tps = [], []
    tokens = steps * cfg.tokens_per_step
    for _ in range(rounds):  # alternate, so a burst of load elsewhere hits both
        dt, ds_loss = timed(ds, steps)
        ds_tps.append(tokens / dt)
        dt, pt_loss = timed(pt, steps)
        pt_tps.append(tokens / dt)
    fpt = flops_per_token(cfg)
    ds_med, pt_med = statistics.median(ds_tps), statistics.median(pt_tps)
    return dict(preset=preset, params=model.num_params(), fpt=fpt, peak=peak, ds_tps=ds_med, pt_tps=pt_med,
                ratio=ds_med / pt_med, ds_mfu=fpt * ds_med / peak, pt_mfu=fpt * pt_med / peak, ds_loss=ds_loss,
                pt_loss=pt_loss, ds_all=ds_tps, pt_all=pt_tps)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", default="debug,medium")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--block_size", type=int, default=256)
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    a = p.parse_args(argv)
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if not torch.cuda.is_available() else "cuda")
    logging.basicConfig(level=logging.WARNING)
    if a.threads:
        torch.set_num_threads(a.threads)
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = float("nan")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, load {load:.1f}; "
          f"T={a.block_size}, batch {a.batch_size}, fp32, {a.rounds} rounds x {a.steps} steps (median)")
    peak = matmul_peak()
    rows = [bench(name, a.steps, a.warmup, a.rounds, a.block_size, a.batch_size, peak)
            for name in a.presets.split(",")]
    print(f"\nmeasured fp32 matmul peak (best of 3, measured before the runs): {peak / 1e9:.0f} GFLOP/s")
    head = f"{'preset':<8}{'params':>11}{'DeepSpeed tok/s':>17}{'plain tok/s':>13}{'ratio':>7}{'MFU ds':>8}" \
           f"{'MFU plain':>10}{'loss ds/plain':>18}"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['preset']:<8}{r['params']:>11,}{r['ds_tps']:>17,.0f}{r['pt_tps']:>13,.0f}{r['ratio']:>7.2f}"
              f"{100 * r['ds_mfu']:>7.1f}%{100 * r['pt_mfu']:>9.1f}%{r['ds_loss']:>9.4f}/{r['pt_loss']:.4f}")
    for r in rows:
        print(f"{r['preset']}: per-round tok/s DeepSpeed {[round(v) for v in r['ds_all']]}, "
              f"plain {[round(v) for v in r['pt_all']]}")
    try:
        load = os.getloadavg()[0]
        print(f"load after: {load:.1f}")
    except OSError:
        pass
    sys.stdout.flush()


if __name__ == "__main__":
    main()
