"""K seeds trained as one batched model (``seeds_per_trial``) against one model at a time, through tinylm's trainer.

Speed: member-tokens/s of the real optimizer step (``tinylm.train.setup``: the DeepSpeed engine, the client
optimizer, per-member clipping) for K = 1 (``train_step``, today's path) and each K (``step_members``), at the main
job's replica (the GLU sweep's laptop baseline: glu 4.0, 143k params, batch 16 x 128) unless told otherwise,
timed in interleaved rounds (1, K..., 1, K..., medians), one thread by default. MFU = flops_per_token x
member-tokens/s / the device's peak (``tinylm.machine.peak_flops``, as every run reports it).

Equivalence, through ``tinylm.train.train`` (``--precision``, ``--zero-stage``): every member of a K-member trial
against its solo run after ``--check-steps`` optimizer steps (max |val loss difference|), and a member forced to
diverge (its embedding set to NaN halfway) against the same trial without it (the other members' val losses must not
move). K = 1 needs no check: ``train`` hands only K > 1 to the batched loop.

    python bench/ensemble.py                                  # K = 1, 2, 3, 4, 8 at batch 16; checks, K = 4
    python bench/ensemble.py --k 8 32 --batch 2 --rounds 3 --check-steps 0
    python bench/ensemble.py --device cuda --threads 0 --k 8 32 --params 1e6 --processes 8   # on a GPU: 1M, 10M
    python bench/ensemble.py --device cuda --threads 0 --k 8 32 --params 1e7 --batch 32
    python bench/ensemble.py --device cuda --threads 0 --k 8 32 --params 1e7 --precision bf16 --zero-stage 2

``--processes N`` also times the alternative batching must beat: N separate one-model processes at once on the
same device (``--trials-per-gpu N``; on CPU, N trials sharing the cores), their tokens/s summed.

Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

import torch


def replica(batch: int, block: int | None, lr_mult: float, params: float = 0) -> object:
    """The GLU sweep's laptop baseline (glu 4.0, 143k params); with ``params``, the full experiment's baseline
    (V = 16k, 3k below 5M; 35 % embedding, SwiGLU 4.0) re-solved at that many parameters (the issue's 1M, 10M)."""
    from tinylm.sweep.experiment import load

    exp = load("glu")
    if params:  # below ~5M a 16k vocabulary cannot hold 35 % of the parameters at a usable width: 3k there
        vocab = {} if params >= 5e6 else {"vocab_size": 3072}
        base = exp.base("full").replace(**exp.baseline_at("full"), **vocab, target_params=int(params),
                                        batch_size=batch)
    else:
        base = exp.base("laptop").replace(**exp.baseline_at("laptop"), batch_size=batch)
    base = base.replace(lr=base.lr * lr_mult)
    return base.replace(block_size=block) if block else base


def stepper(cfg, k: int, out: str):
    """A function running one optimizer step of a K-member trial (K = 1: one model, today's train_step)."""
    from tinylm.train import sample_batch, setup, train_step

    cfg = cfg.replace(seeds_per_trial=k)
    run = setup(cfg, out)
    if k == 1:
        import numpy as np

        rng = np.random.default_rng(0)
        return lambda: train_step(run, lambda: sample_batch(run, run.data.train, rng))
    from tinylm.train.ensemble import start, step_members

    p = start(run, None, {})
    return lambda: step_members(run, p)


def rate(step, tokens_per_step: int, steps: int) -> float:
    step()  # warm
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * tokens_per_step / (time.perf_counter() - t0)


def speed(cfg, ks: list[int], steps: int, rounds: int, out: str) -> float:
    from tinylm.budget import flops_per_token
    from tinylm.machine import peak_flops

    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    peak, fpt = peak_flops(device, cfg.precision), flops_per_token(cfg)
    steps_of = {k: stepper(cfg, k, os.path.join(out, f"speed-k{k}")) for k in dict.fromkeys([1, *ks])}
    seen: dict[int, list[float]] = {k: [] for k in steps_of}
    tokens = cfg.batch_size * cfg.block_size
    for _ in range(rounds):
        for k, step in steps_of.items():
            seen[k].append(rate(step, k * tokens, steps))
    solo = statistics.median(seen[1])
    print(f"\nspeed: {cfg.n_layer} layers, width {cfg.n_embd}, V {cfg.vocab_size}, batch {cfg.batch_size} x "
          f"{cfg.block_size}, {torch.get_num_threads()} thread(s), {device.type}; {rounds} interleaved rounds of "
          f"{steps} steps, medians")
    for k, rates in seen.items():
        r = statistics.median(rates)
        print(f"  K = {k:>2}: {r:>10,.0f} member-tokens/s  {r / solo:5.2f}x one model  "
              f"MFU {100 * fpt * r / peak:5.1f} %  (rounds: {', '.join(f'{x:,.0f}' for x in rates)})")
    return solo


def checks(cfg, k: int, steps: int, out: str) -> None:
    import tinylm.train.ensemble as te
    from tinylm.train import train

    tokens = steps * cfg.tokens_per_step
    base = cfg.replace(train_tokens=tokens, eval_every_tokens=tokens // 2, warmup_tokens=min(cfg.warmup, tokens // 4))

    def members(metrics: dict) -> list[float]:
        return [m["val_loss"] for m in json.loads(metrics["members_json"])]

    t0 = time.perf_counter()
    batched = train(base.replace(seeds_per_trial=k), os.path.join(out, "batched"))
    t_batched = time.perf_counter() - t0
    t0 = time.perf_counter()
    solo = [train(base.replace(seed=base.seed + i), os.path.join(out, f"solo{i}"))["val_loss"] for i in range(k)]
    t_solo = time.perf_counter() - t0
    gaps = [abs(a - b) for a, b in zip(members(batched), solo, strict=True)]
    print(f"\nequivalence after {steps} steps ({tokens:,} tokens per member, {base.precision}, ZeRO {base.zero_stage}, "
          f"LR {base.lr:.3g}): K = {k} members "
          f"vs their solo runs: max |val loss difference| {max(gaps):.2e} (each: {', '.join(f'{g:.1e}' for g in gaps)})"
          f"; wall {t_batched:.0f} s batched vs {t_solo:.0f} s for the {k} solo runs in turn")
    step = te.step_members

    def poisoned(run, p):
        if p.step == steps // 2:
            with torch.no_grad():
                run.model.param("transformer.wte.weight")[1].fill_(float("nan"))
        step(run, p)

    te.step_members = poisoned
    try:
        hit = train(base.replace(seeds_per_trial=k), os.path.join(out, "poisoned"))
    finally:
        te.step_members = step
    rows = json.loads(hit["members_json"])
    others = [i for i in range(k) if i != 1]
    moved = max(abs(rows[i]["val_loss"] - members(batched)[i]) for i in others)
    print(f"a member forced to diverge at step {steps // 2}: member 1 {rows[1]['status']} "
          f"({rows[1]['stop_reason']}); the other {len(others)} moved by at most {moved:.1e} in val loss "
          f"(statuses: {', '.join(r['status'] for r in rows)})")


def processes(argv: list[str], n: int, steps: int, solo: float, fpt: float, peak: float) -> None:
    """The alternative batching must beat (``--trials-per-gpu n``): n separate processes, each training one model at
    once on the same device (on a GPU each gets 1/n of its memory); their tokens/s summed."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), *argv, "--worker-steps", str(steps), "--worker-share", str(n)]
    # without this process's group (init_distributed put its port in the environment): each makes its own
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT")}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
             for _ in range(n)]
    rates = []
    for proc in procs:
        out, _ = proc.communicate(timeout=3600)
        rates += [float(line.split()[1]) for line in out.splitlines() if line.startswith("WORKER_RATE ")]
    if len(rates) < n:
        print(f"\n{n} processes at once: only {len(rates)} reported a rate (see their stderr by running one alone)")
        return
    total = sum(rates)
    print(f"\n{n} processes at once, one model each (as --trials-per-gpu {n}), {steps} steps each: "
          f"{total:,.0f} tokens/s summed = {total / solo:.2f}x one model alone, MFU {100 * fpt * total / peak:.1f} % "
          f"(each: {', '.join(f'{r:,.0f}' for r in rates)}); the in-process rows above are the batched alternative")


def worker(cfg, steps: int, share: int) -> None:
    """One of ``processes``: K = 1 steps, then its rate on one line."""
    if share > 1 and torch.cuda.is_available() and cfg.device != "cpu":
        torch.cuda.set_per_process_memory_fraction(0.95 / share)
    with tempfile.TemporaryDirectory(prefix="tinylm-ensemble-worker-") as out:
        step = stepper(cfg, 1, out)
        r = rate(step, cfg.batch_size * cfg.block_size, steps)
    print(f"WORKER_RATE {r}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--k", type=int, nargs="+", default=[2, 3, 4, 8],
                    help="members per trial to time beside K = 1")
    ap.add_argument("--batch", type=int, default=16, help="micro-batch in sequences (the replica's: 16)")
    ap.add_argument("--params", type=float, default=0,
                    help="the full GLU baseline re-solved at this many parameters (1e6, 1e7) instead of the replica")
    ap.add_argument("--block", type=int, default=0, help="sequence length (0 = the replica's)")
    ap.add_argument("--steps", type=int, default=20, help="optimizer steps timed per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0 = leave torch's default)")
    ap.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="bf16: DeepSpeed's bf16 (fp32 master weights); members' gradients handed over")
    ap.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2))
    ap.add_argument("--check-steps", type=int, default=200, help="steps of the equivalence checks (0 = skip)")
    ap.add_argument("--check-k", type=int, default=4)
    ap.add_argument("--lr-mult", type=float, default=None,
                    help="LR as a multiple of the config's (default: 4 for the replica, what the main job's LR phase "
                         "picks for glu 4.0; 1 with --params)")
    ap.add_argument("--processes", type=int, default=0,
                    help="also time this many separate one-model processes at once (the --trials-per-gpu "
                         "alternative), summed (0 = skip)")
    ap.add_argument("--worker-steps", type=int, default=0, help=argparse.SUPPRESS)  # one of --processes
    ap.add_argument("--worker-share", type=int, default=1, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    logging.getLogger("tinylm").setLevel(logging.WARNING)
    mult = a.lr_mult if a.lr_mult is not None else (1.0 if a.params else 4.0)
    cfg = replica(a.batch, a.block, mult, a.params).replace(device=a.device, precision=a.precision,
                                                              zero_stage=a.zero_stage)
    if a.worker_steps:
        return worker(cfg, a.worker_steps, a.worker_share)
    with tempfile.TemporaryDirectory(prefix="tinylm-ensemble-") as out:
        solo = speed(cfg, a.k, a.steps, a.rounds, out)
        if a.processes:
            from tinylm.budget import flops_per_token
            from tinylm.machine import peak_flops

            argv = list(sys.argv[1:])
            device = torch.device("cuda" if cfg.device != "cpu" and torch.cuda.is_available() else "cpu")
            # one device's peak; on a CPU the processes run on separate cores, each with one core's peak
            cores = min(a.processes, os.cpu_count() or 1) if device.type == "cpu" else 1
            processes(argv, a.processes, a.steps * a.rounds, solo, flops_per_token(cfg),
                      cores * peak_flops(device, cfg.precision))
        if a.check_steps:
            checks(cfg, a.check_k, a.check_steps, out)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
