"""Would K seeds trained as one batched model be faster than one model at a time? A probe, not the feature.

One model of a sweep's laptop replica (default: the GLU replica's glu_factor=4.0, 143k params) trained with a plain
PyTorch loop (AdamW, fused), against K independent copies stacked with ``torch.func.stack_module_state`` and run
through ``vmap(functional_call)`` (model.py unchanged; the loss is taken outside vmap, where PyTorch's batched
log-softmax is slow), one thread, random tokens (speed only). Interleaved A/B rounds in one process; prints
member-tokens/s, the ratio to one model and MFU (``tinylm.machine.peak_flops``). Prints; asserts nothing.

    python bench/ensemble_probe.py                       # batch 16 and 2, K = 1 (the solo loop), 4 and 8
    python bench/ensemble_probe.py --batch 4 --k 8 32 --rounds 3
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, stack_module_state, vmap

from tinylm.budget import flops_per_token
from tinylm.config import Config
from tinylm.machine import peak_flops
from tinylm.model import GPT


def solo_step(cfg: Config, batch: int):
    model = GPT(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))
    y = torch.randint(0, cfg.vocab_size, (batch, cfg.block_size))

    def step():
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def ensemble_step(cfg: Config, batch: int, k: int):
    models = [GPT(cfg) for _ in range(k)]
    params, buffers = stack_module_state(models)
    params = {n: torch.nn.Parameter(p) for n, p in params.items()}
    base = copy.deepcopy(models[0])
    logits_of = vmap(lambda p, b, x: functional_call(base, (p, b), (x,))[0], randomness="different")
    opt = torch.optim.AdamW(list(params.values()), lr=1e-3, fused=True)
    x = torch.randint(0, cfg.vocab_size, (k, batch, cfg.block_size))
    y = torch.randint(0, cfg.vocab_size, (k, batch, cfg.block_size))

    def step():
        logits = logits_of(params, buffers, x)
        loss = F.cross_entropy(logits.reshape(-1, cfg.vocab_size), y.reshape(-1), reduction="none")
        loss.view(k, -1).mean(1).sum().backward()  # members are independent: each gets its own gradient
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def rate(step, tokens_per_step: int, seconds: float) -> float:
    for _ in range(2):
        step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return n * tokens_per_step / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--glu-factor", type=float, default=4.0)
    ap.add_argument("--batch", type=int, nargs="+", default=[16, 2])
    ap.add_argument("--k", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=4.0, help="timed per measurement")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = Config.from_name("budget-10m", glu_factor=a.glu_factor, scale="laptop")
    peak = peak_flops(torch.device("cpu"))
    fpt = flops_per_token(cfg)
    print(f"model: {cfg.n_layer} layers, width {cfg.n_embd}, d_ff {cfg.ffn_hidden}, V {cfg.vocab_size}; one thread; "
          f"CPU peak {peak / 1e9:.0f} GFLOP/s")
    for batch in a.batch:
        steps = {1: solo_step(cfg, batch), **{k: ensemble_step(cfg, batch, k) for k in a.k}}
        seen: dict[int, list[float]] = {k: [] for k in steps}
        for _ in range(a.rounds):  # interleaved: solo, K..., solo, K...
            for k, step in steps.items():
                seen[k].append(rate(step, k * batch * cfg.block_size, a.seconds))
        solo = statistics.median(seen[1])
        for k, rates in seen.items():
            r = statistics.median(rates)
            print(f"batch {batch:>3} x {cfg.block_size}, K = {k:>2}: {r:>9,.0f} member-tokens/s  "
                  f"{r / solo:4.2f}x one model  MFU {100 * fpt * r / peak:4.1f} %")


if __name__ == "__main__":
    main()
