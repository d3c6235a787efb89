"""A model's inference footprint measured alone: forward latency (median of N, with its spread) and its memory.

The sweep's own numbers (``evals.suite.efficiency``) are read while other trials share the machine, and on CPU
its memory is the process's resident set (Ray, torch, data), so the same configuration read 2.7–5.1 ms and
734–1,188 MB across its seeds (issue 19). ``measure_many`` runs configurations by themselves, after the sweep:

- latency: batch 1 at 128 (and 512 when ``block_size`` allows) tokens, the median of ``repeats`` forwards after a
  warm-up, with the interquartile range, timed in rounds that visit every configuration in turn (a change of
  load falls on all alike); on CPU on one thread, its CPU time, so other processes change it little;
- memory, the model's own: the exact bytes of the parameters and buffers, of the KV cache at that length (from its
  shapes) and of the activations of one forward, measured: on CUDA the allocator's peak above what was live
  before; on CPU the peak of the bytes held by the tensors the forward creates (``_LiveBytes``), which depends
  only on the ops, so it is the same on every run.

Pure PyTorch (no ray / deepspeed / mlflow): the analysis measures each configuration of a sweep with it.
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import weakref
from collections.abc import Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from tinylm.budget import mixer_layers
from tinylm.config import Config
from tinylm.model import GPT

MB = 2**20
LENGTHS = (128, 512)


def param_bytes(model: torch.nn.Module) -> int:
    """Bytes of the parameters (a tied tensor once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def buffer_bytes(model: torch.nn.Module) -> int:
    """Bytes of the buffers (RoPE tables)."""
    return sum(b.numel() * b.element_size() for b in model.buffers())


def kv_cache_bytes(cfg: Config, length: int, batch_size: int = 1, dtype: torch.dtype = torch.float32) -> int:
    """Bytes of the decoding cache at ``length`` tokens (``model.make_cache``'s shapes): keys and values of every
    attention layer, which grow with the length, plus every Mamba layer's conv and SSM state, which do not."""
    n_attn = mixer_layers(cfg)
    d_inner = cfg.ssm_expand * cfg.n_embd
    state = (cfg.n_layer - n_attn) * batch_size * d_inner * (cfg.d_conv - 1 + cfg.d_state)
    kv = 2 * n_attn * batch_size * cfg.n_head * length * cfg.head_dim
    return (kv + state) * torch.empty((), dtype=dtype).itemsize


class _LiveBytes(TorchDispatchMode):
    """Peak bytes held by the tensors that ops create while the mode is on: each new storage counts from the op
    that returns it until it is freed (a weak reference's callback); views and in-place results share a storage
    that already counts (or one made before, such as a weight), so they add nothing."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, int] = {}  # storage address -> bytes
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            s = t.untyped_storage()
            key = s.data_ptr()
            if s.nbytes() == 0 or key in inputs or key in self.live:
                continue
            self.live[key] = s.nbytes()
            self.now += s.nbytes()
            self.peak = max(self.peak, self.now)
            weakref.finalize(s, self._free, key)
        return out


def activation_bytes(model: torch.nn.Module, idx: torch.Tensor) -> int:
    """Peak memory one no-grad forward of ``idx`` allocates beyond what was live before it (its output included)."""
    dev = idx.device
    with torch.no_grad():
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            before = torch.cuda.memory_allocated(dev)
            torch.cuda.reset_peak_memory_stats(dev)
            model(idx)
            torch.cuda.synchronize(dev)
            return torch.cuda.max_memory_allocated(dev) - before
        with _LiveBytes() as live:
            model(idx)
        return live.peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def latencies_ms(model: torch.nn.Module, idx: torch.Tensor, repeats: int, warmup: int, budget_s: float = math.inf
                 ) -> tuple[list[float], list[float]]:
    """(timed, wall) ms of ``repeats`` no-grad forwards of ``idx`` after ``warmup`` untimed ones, no GC in between;
    fewer (but at least 5) once the timed ones have taken ``budget_s`` seconds (a large model on a CPU). ``timed``
    is the calling thread's CPU time on CPU (on one intra-op thread, that is the forward's time on a core of its
    own: time the scheduler gives other processes is not counted) and the wall clock on CUDA."""
    dev = idx.device
    clock = time.thread_time if dev.type == "cpu" else time.perf_counter
    timed, wall = [], []
    with torch.no_grad():
        for _ in range(warmup):
            model(idx)
        gc.collect()
        gc.disable()
        try:
            while len(timed) < repeats and (len(timed) < 5 or sum(wall) < 1000 * budget_s):
                _sync(dev)
                t, w = clock(), time.perf_counter()
                model(idx)
                _sync(dev)
                timed.append(1000 * (clock() - t))
                wall.append(1000 * (time.perf_counter() - w))
        finally:
            gc.enable()
    return timed, wall


def measure(cfg: Config, model: torch.nn.Module | None = None, **kw) -> dict[str, float | int | str]:
    """``measure_many`` of one configuration (``model``: its trained weights, else a fresh model)."""
    return measure_many([cfg], None if model is None else [model], **kw)[0]


def measure_many(cfgs: Sequence[Config], models: Sequence[torch.nn.Module] | None = None, *,
                 device: str | torch.device | None = None, repeats: int = 30, rounds: int = 3, warmup: int = 5,
                 budget_s: float = 10.0, mem_repeats: int = 3, batch_size: int = 1,
                 lengths: tuple[int, ...] = LENGTHS) -> list[dict[str, float | int | str]]:
    """The footprint of each configuration's model (``models``: trained weights, measured where they are;
    default: fresh ones, as good for timing and memory, built on ``device``, CPU unless given) in float32, eval
    mode, batch ``batch_size`` (the keys say b1 for the default); train/eval modes are restored after.

    Timing runs in ``rounds`` rounds, each timing every model in turn (``repeats / rounds`` forwards, after
    ``warmup`` untimed ones in the first round and one in the others): a change in the machine's load while it
    runs falls on every configuration alike, and the spread (over all rounds) includes it.

    Returns, per configuration and for each length L of ``lengths`` (NaN when L > ``block_size``):
        ``latency_ms_b1_l{L}_alone``: the median forward latency (``latency_ms_b1_l{L}_n`` forwards: fewer, at
        least 5 a round, when a round takes over ``budget_s / rounds`` seconds): on CPU the thread's CPU time on
        one intra-op thread (the forward's time on a core of its own, however busy the machine), on CUDA the
        wall clock;
        ``latency_ms_b1_l{L}_iqr``: its interquartile range (q75 − q25), the spread the PRD rule treats as equal;
        ``latency_ms_b1_l{L}_wall``: the median wall clock (on a busy CPU, longer and noisier);
        ``act_mb_b1_l{L}``: activations of one forward (the peak over ``mem_repeats`` runs);
        ``kv_cache_mb_l{L}``: the KV cache at L tokens, from its shapes;
        ``model_mem_mb_b1_l{L}``: parameters + buffers + KV cache + activations at L, and
        ``model_mem_mb_b1_l{L}_spread``: the range of the activation measurements (0 when they agree);
    and ``param_bytes``, ``param_mb``, ``buffer_mb``, ``params``, ``footprint_threads`` (1 on CPU; 0 on CUDA)
    and ``footprint_device``.
    """
    if repeats < 5 * rounds or rounds < 1:
        raise ValueError(f"repeats={repeats} must be >= 5 per round (rounds={rounds}): the spread needs quartiles")
    if models is not None and len(models) != len(cfgs):
        raise ValueError(f"{len(models)} models for {len(cfgs)} configurations")
    cores = list(models) if models is not None else [GPT(c).to(device or "cpu") for c in cfgs]
    devs = {next(m.parameters()).device for m in cores}
    dtypes = {p.dtype for m in cores for p in m.parameters()}
    if len(devs) > 1 or dtypes - {torch.float32}:
        raise ValueError(f"measure_many() times float32 models on one device; got {sorted(map(str, dtypes))} on "
                         f"{sorted(map(str, devs))}")
    dev = devs.pop() if devs else torch.device("cpu")
    modes = {m: m.training for core in cores for m in core.modules()}
    old_threads = torch.get_num_threads()
    if dev.type == "cpu":
        torch.set_num_threads(1)  # the thread's CPU time is then the whole forward's
    per_round = -(-repeats // rounds)
    b = f"b{batch_size}"
    try:
        outs: list[dict[str, float | int | str]] = []
        for core in cores:
            core.eval()
            outs.append({"params": sum(p.numel() for p in core.parameters()), "param_bytes": param_bytes(core),
                         "param_mb": param_bytes(core) / MB, "buffer_mb": buffer_bytes(core) / MB,
                         "footprint_threads": 1 if dev.type == "cpu" else 0,
                         "footprint_device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu"})
        for L in lengths:
            keys = (f"latency_ms_{b}_l{L}_alone", f"latency_ms_{b}_l{L}_iqr", f"latency_ms_{b}_l{L}_wall",
                    f"latency_ms_{b}_l{L}_n", f"act_mb_{b}_l{L}", f"kv_cache_mb_l{L}", f"model_mem_mb_{b}_l{L}",
                    f"model_mem_mb_{b}_l{L}_spread")
            live = [i for i, c in enumerate(cfgs) if L <= c.block_size]
            idx = {i: torch.randint(cfgs[i].vocab_size, (batch_size, L), generator=torch.Generator().manual_seed(0)
                                    ).to(dev) for i in live}
            times: dict[int, tuple[list[float], list[float]]] = {i: ([], []) for i in live}
            for r in range(rounds):
                for i in live:
                    t, w = latencies_ms(cores[i], idx[i], per_round, warmup if r == 0 else 1, budget_s / rounds)
                    times[i][0].extend(t)
                    times[i][1].extend(w)
            for i, out in enumerate(outs):
                if i not in times:
                    out.update(dict.fromkeys(keys, math.nan))
                    continue
                timed, wall = times[i]
                q1, _, q3 = statistics.quantiles(timed, n=4)
                acts = [activation_bytes(cores[i], idx[i]) for _ in range(mem_repeats)]
                kv = kv_cache_bytes(cfgs[i], L, batch_size)
                weights = param_bytes(cores[i]) + buffer_bytes(cores[i])
                out.update(zip(keys, (statistics.median(timed), q3 - q1, statistics.median(wall), len(timed),
                                      max(acts) / MB, kv / MB, (weights + kv + max(acts)) / MB,
                                      (max(acts) - min(acts)) / MB), strict=True))
        return outs
    finally:
        torch.set_num_threads(old_threads)
        for m, mode in modes.items():
            m.training = mode
