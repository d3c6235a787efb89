"""The task registry, ``run_suite`` (flat metrics for tracking) and ``efficiency`` (inference speed and memory)."""

from __future__ import annotations

import logging
import math
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from tinylm.config import TASK_NAMES, parse_tasks
from tinylm.evals import arithmetic, association, commonsense, completion, lambada, qa, recall, squad
from tinylm.evals.scorer import evaluate_mc, model_device, unwrap

log = logging.getLogger("tinylm.evals")


@dataclass(frozen=True)
class Task:
    name: str
    load: Callable[[], list]  # the task's full, fixed pool of examples (cached after the first call)
    evaluate: Callable[..., dict]  # (model, tokenizer, docs, batch_size=) -> metrics without the eval_<task>_ prefix
    primary: str  # the metric eval_score averages; eval_<task>_random is its chance level


def _mc(name: str, load: Callable[[], list], primary: str) -> Task:
    return Task(name, load, lambda m, t, d, batch_size=16: evaluate_mc(m, t, d, batch_size=batch_size), primary)


TASKS: dict[str, Task] = {
    "lambada": Task("lambada", lambada.load, lambada.evaluate, "acc"),
    "hellaswag": _mc("hellaswag", commonsense.load_hellaswag, "acc_norm"),
    "piqa": _mc("piqa", commonsense.load_piqa, "acc_norm"),
    "siqa": _mc("siqa", commonsense.load_siqa, "acc"),
    "squad": Task("squad", squad.load, squad.evaluate, "f1"),
    "arithmetic": Task("arithmetic", arithmetic.load, arithmetic.evaluate, "acc"),
    "completion": _mc("completion", completion.load, "acc_norm"),
    "association": _mc("association", association.load, "acc"),
    "qa": _mc("qa", qa.load, "acc"),
    "recall": Task("recall", recall.load, recall.evaluate, "acc"),
}


assert tuple(TASKS) == TASK_NAMES, "tinylm.config.TASK_NAMES must list TASKS in order"


def resolve_tasks(tasks: Sequence[str] | str) -> list[str]:
    """``"all"`` -> every task; ``"lambada,piqa"`` or a list -> those, checked against ``TASKS``. An empty list
    (``""``) is an error, not the full suite: it is what a mistyped ``--tasks "$TASKS"`` gives."""
    return parse_tasks(tasks)


def select(pool: Sequence, n: int | None, seed: int = 0) -> list:
    """A fixed subset: ``n`` examples drawn by ``random.Random(seed)``, kept in pool order (all if n <= 0)."""
    if not n or n <= 0 or n >= len(pool):
        return list(pool)
    return [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), n))]


def run_suite(model: torch.nn.Module, tokenizer, tasks: Sequence[str] | str = "all", n: int = 200,
              batch_size: int = 16, device="cpu", seed: int = 0) -> dict[str, float]:
    """Evaluate ``model`` on the named tasks; returns flat metrics ready for MLflow.

    Args:
        model: a tinylm GPT (or a DeepSpeed/compile wrapper of one); put in eval mode, its modes restored after.
        tokenizer: ``encode_ordinary``, ``decode``, ``n_vocab``, ``eot_token`` (tinylm.data tokenizers).
        tasks: "all", a comma-separated string or a list of names from ``TASKS``.
        n: examples per task (a fixed random subset per ``seed``; 0 = all).
        batch_size: rows per forward pass (results do not depend on it).
        device: kept for the API; inputs go where the model's weights are.
        seed: picks the subset.

    Returns:
        ``eval_<task>_<metric>`` (acc, acc_norm, *_stderr, lambada ppl, squad em/f1, ...), ``eval_<task>_random``
        (the chance level of the task's primary metric, from its data), ``eval_<task>_n``, ``eval_<task>_time_s``;
        ``eval_score`` = the unweighted mean over the tasks run of their primary metric (``TASKS[t].primary``:
        acc for lambada/siqa/arithmetic/association/qa, acc_norm for hellaswag/piqa/completion, f1 for squad),
        ``eval_score_random`` = the same mean of the random baselines, and ``eval_time_s``.
    """
    t0 = time.perf_counter()
    names = resolve_tasks(tasks)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n={n!r} must be an int >= 0 (examples per task; 0 = all)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    core = unwrap(model)
    out: dict[str, float] = {}
    try:
        for name in names:
            task = TASKS[name]
            t = time.perf_counter()
            docs = select(task.load(), n, seed)
            res = task.evaluate(core, tokenizer, docs, batch_size=batch_size)
            out.update({f"eval_{name}_{k}": float(v) for k, v in res.items()})
            out[f"eval_{name}_time_s"] = time.perf_counter() - t
            log.info("eval %-11s %s=%.4f (random %.4f, n=%d) %.1f s", name, task.primary, res[task.primary],
                     res["random"], len(docs), out[f"eval_{name}_time_s"])
    finally:
        for m, mode in modes.items():
            m.training = mode
    out["eval_score"] = statistics.fmean(out[f"eval_{t}_{TASKS[t].primary}"] for t in names)
    out["eval_score_random"] = statistics.fmean(out[f"eval_{t}_random"] for t in names)
    out["eval_time_s"] = time.perf_counter() - t0
    return out


# --- efficiency ---------------------------------------------------------------------------------------------
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


_CPU_PEAK = """
import json, sys, torch
from tinylm.config import Config
from tinylm.model import GPT
def kb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))
cfg, B = Config.from_dict(json.loads(sys.argv[1])), int(sys.argv[2])
torch.set_num_threads(1)
model, x = GPT(cfg).eval(), torch.randint(cfg.vocab_size, (B, cfg.block_size))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # resets the high-water mark VmHWM (Linux >= 4.0)
rss0 = kb("VmRSS")
with torch.no_grad():
    model(x)
print((kb("VmHWM") - rss0) / 1024)
"""


def _cpu_activation_mb(cfg, batch_size: int) -> float:
    """Peak resident-memory growth of one batched forward, measured in a fresh process: in this one, memory
    freed earlier (training, the warm-up) is reused without growing the resident set, so nothing would show."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tinylm importable
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    res = subprocess.run([sys.executable, "-c", _CPU_PEAK, cfg.to_json(), str(batch_size)], capture_output=True,
                         text=True, timeout=300, env=env)
    if res.returncode:
        raise RuntimeError(res.stderr[-500:])
    return float(res.stdout.split()[-1])


@torch.no_grad()
def efficiency(model: torch.nn.Module, cfg, device="cpu", batch_size: int = 8, repeats: int = 3) -> dict:
    """Inference speed and memory of ``model`` (eval mode, no grad; modes restored after).

    Returns:
        ``infer_tokens_per_s``: tokens/s of a batched forward (``batch_size`` x ``block_size``, median of
        ``repeats`` after a warm-up); ``latency_ms_b1_l128`` / ``latency_ms_b1_l512``: median forward latency at
        batch 1 and that length (NaN when longer than ``block_size``); ``peak_mem_mb``: on CUDA the peak allocated
        memory of the batched forward; on CPU the weights plus the peak resident-set growth of the same forward
        in a fresh fp32 process (``_cpu_activation_mb``, ~3 s; the process peak RSS if that fails).
    """
    core = unwrap(model)
    dev = model_device(core)
    modes = {m: m.training for m in core.modules()}
    core.eval()
    g = torch.Generator().manual_seed(0)

    def forward(B: int, L: int) -> float:
        x = torch.randint(cfg.vocab_size, (B, L), generator=g).to(dev)
        _sync(dev)
        t = time.perf_counter()
        core(x)
        _sync(dev)
        return time.perf_counter() - t

    try:
        T = cfg.block_size
        forward(batch_size, T)  # warm-up (kernels, allocator)
        weights_mb = sum(p.numel() * p.element_size() for p in core.parameters()) / 2**20
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        times = [forward(batch_size, T) for _ in range(repeats)]
        if dev.type == "cuda":
            peak = torch.cuda.max_memory_allocated(dev) / 2**20
        else:
            try:
                peak = weights_mb + _cpu_activation_mb(cfg, batch_size)
            except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
                log.warning("CPU memory probe failed (%s); reporting the process peak RSS", e)
                peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        out = {"infer_tokens_per_s": batch_size * T / statistics.median(times)}
        for L in (128, 512):
            if L > T:
                out[f"latency_ms_b1_l{L}"] = math.nan
                continue
            forward(1, L)
            out[f"latency_ms_b1_l{L}"] = 1000 * statistics.median(forward(1, L) for _ in range(max(3, repeats)))
        out["peak_mem_mb"] = peak
        return out
    finally:
        for m, mode in modes.items():
            m.training = mode
