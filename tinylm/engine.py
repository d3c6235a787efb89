"""The only module that imports deepspeed.

``ds_config(cfg)`` derives the DeepSpeed config from Config (never hand-written); ``build_engine`` wraps the pure
PyTorch model and the client optimizer from optim.py; checkpoints are DeepSpeed's (every rank saves its ZeRO
shards) plus a completion marker so a partial or corrupt checkpoint is detected and the previous one used.
Works in one process without a launcher (RANK/WORLD_SIZE/MASTER_* set by ``init_distributed``, gloo on CPU)
and, unchanged, inside Ray Train workers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator

import torch


def _pin_op_toolchain() -> None:
    """DeepSpeed JIT-builds its C++ ops (deepspeed_shm_comm: ~30-100 s) into torch's extensions cache. Two
    things made every switch between entry points rebuild it (issue 12): (1) the `ninja` found on PATH — the
    venv's (1.13, build log v7) when .venv/bin is on PATH (scripts/test.sh), the system's (1.11) when it is not
    (the README's `.venv/bin/python sweeps/...`); each starts the build over on the other's log; (2) two
    installs (venvs) sharing ~/.cache/torch_extensions/<py>_cpu overwrite each other's build (other include
    paths). So: this interpreter's own bin dir goes first on PATH (its ninja, whatever the caller's PATH), and
    the cache gets one folder per install (sys.prefix + torch + deepspeed versions), unless
    TORCH_EXTENSIONS_DIR is set."""
    bindir = os.path.dirname(sys.executable)
    path = os.environ.get("PATH", "").split(os.pathsep)
    if os.path.exists(os.path.join(bindir, "ninja")) and path[:1] != [bindir]:
        os.environ["PATH"] = os.pathsep.join([bindir, *[p for p in path if p != bindir]])
    if "TORCH_EXTENSIONS_DIR" not in os.environ:
        from importlib.metadata import version

        from torch.utils.cpp_extension import get_default_build_root

        key = hashlib.sha256(f"{sys.prefix}|{torch.__version__}|{version('deepspeed')}".encode()).hexdigest()[:10]
        accel = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
        os.environ["TORCH_EXTENSIONS_DIR"] = os.path.join(
            get_default_build_root(), f"py{sys.version_info.major}{sys.version_info.minor}_{accel}-{key}")


_pin_op_toolchain()
os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402

from tinylm.config import Config, ensemble_handoff  # noqa: E402
from tinylm.layout import COMPLETE  # noqa: E402 - the marker written after every rank saved a tag
from tinylm.machine import free_port  # noqa: E402

log = logging.getLogger(__name__)


def _lock_holders(lock: str) -> list[int]:
    """PIDs with ``lock`` open. torch's FileBaton keeps the fd of its ``lock`` file open for the whole build."""
    real, pids = os.path.realpath(lock), []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
            if any(os.readlink(f"/proc/{pid}/fd/{fd}") == real for fd in fds):
                pids.append(int(pid))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def clear_stale_build_locks(root: str | None = None, recheck_s: float = 1.0) -> list[str]:
    """Remove op-build locks no live process holds (issue 13.9: a run killed during the build left one and every
    later run waited on it forever, silently). A held lock is a build in progress and is left alone. Without
    /proc (not Linux) a lock older than 30 minutes is reported in one line instead. Returns the removed paths."""
    root = root or os.environ.get("TORCH_EXTENSIONS_DIR")
    if not root or not os.path.isdir(root):
        return []
    locks = [os.path.join(root, d, "lock") for d in sorted(os.listdir(root))]
    locks = [lock for lock in locks if os.path.exists(lock)]
    if not locks:
        return []
    if not os.path.isdir("/proc"):
        old = [lock for lock in locks if time.time() - os.path.getmtime(lock) > 1800]
        if old:
            raise RuntimeError(f"DeepSpeed op build lock {old[0]} is over 30 minutes old: if no build is running, "
                               "delete it (a run killed during the build leaves it, and later runs wait on it)")
        return []
    suspects = [lock for lock in locks if not _lock_holders(lock)]
    if suspects:
        time.sleep(recheck_s)  # a builder closes its fd just before it deletes the lock: look twice
    removed = []
    for lock in suspects:
        if os.path.exists(lock) and not _lock_holders(lock):
            try:
                os.remove(lock)
            except FileNotFoundError:
                continue
            removed.append(lock)
            log.warning("removed a stale DeepSpeed op build lock %s (no process holds it: a build was killed)", lock)
    return removed


def ds_config(cfg: Config, world_size: int = 1) -> dict:
    """The DeepSpeed config for this Config. LR scheduling stays ours (optim.set_lr), so no DS scheduler."""
    # a batched trial at bf16 / ZeRO 1/2 accumulates its micro-batches itself and hands DeepSpeed one backward
    # per step (tinylm.config.ensemble_handoff): one DeepSpeed micro-batch of batch_size x grad_accum
    micro, accum = (cfg.batch_size * cfg.grad_accum, 1) if ensemble_handoff(cfg) else (cfg.batch_size, cfg.grad_accum)
    conf = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        # an ensemble clips each member on its own (tinylm.ensemble.clip_per_member); DeepSpeed's clip is global
        "gradient_clipping": cfg.grad_clip if cfg.seeds_per_trial == 1 else 0.0,
        "zero_optimization": {"stage": cfg.zero_stage},
        "steps_per_print": 10**9,  # we log ourselves
        "wall_clock_breakdown": False,
    }
    if cfg.precision == "bf16":
        conf["bf16"] = {"enabled": True}
    elif cfg.precision == "fp16":
        conf["fp16"] = {"enabled": True, "initial_scale_power": 16, "loss_scale_window": 100}
    if cfg.zero_stage > 0:
        # client optimizers under ZeRO need this on CPU; harmless on GPU
        conf["zero_allow_untested_optimizer"] = True
    return conf


def init_distributed() -> tuple[int, int]:
    """Join the process group Ray Train / torchrun made, or make a one-process group. Returns (rank, world)."""
    # DeepSpeed loads (on first use: builds) its shm op here or, under a group Ray Train made, in initialize(),
    # and torch waits on the build's lock file without a timeout
    clear_stale_build_locks()
    if not dist.is_initialized():
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_PORT", str(free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    # DeepSpeed reads these even when the group already exists (e.g. made by Ray Train or an earlier call)
    os.environ.setdefault("RANK", str(dist.get_rank()))
    os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
    os.environ.setdefault("LOCAL_RANK", "0" if dist.get_world_size() == 1 else str(dist.get_rank()))
    return dist.get_rank(), dist.get_world_size()


def fresh_process(seed: int) -> None:
    """Make a reused process (a Tune actor running its next trial in Train's local mode) look new: no process
    group or DeepSpeed group left from the last trial, a one-rank env with a fresh port (init_distributed only
    sets what is unset), the global RNGs seeded, and no graph compiled for an earlier trial: each model structure
    (a variant's depth) and each grad mode (train, eval) is a recompile of the same ``forward``, so a worker would
    reach torch's recompile limit (8) by its third variant and run ``forward`` eager, silently, for every later
    trial. Reset, each trial compiles its own graphs (inductor's on-disk cache makes a shape seen before quicker)."""
    import random

    import numpy as np

    if dist.is_initialized():  # the last trial's finally tore down already unless it died before it
        end_distributed()
    torch._dynamo.reset()
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def end_distributed() -> None:
    """Destroy the process group through DeepSpeed, which also drops the groups it caches (world, data
    parallel, ...): torch's own destroy_process_group would leave those pointing at the dead group."""
    import gc

    if dist.is_initialized():
        deepspeed.comm.destroy_process_group()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def build_engine(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg: Config):
    """Wrap model + client optimizer. Returns (engine, resolved ds config)."""
    conf = ds_config(cfg, dist.get_world_size())
    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=conf)
    if dist.get_world_size() == 1 and cfg.zero_stage == 0:
        # One rank, no partitions: DeepSpeed would still flatten every gradient, all-reduce it over a 1-rank
        # group and copy it back at each step. (ZeRO 1/2 need that path to fill their partitions.)
        engine.enable_backward_allreduce = False
    if cfg.compile:
        engine.compile()  # torch.compile of the wrapped module (DeepSpeed >= 0.14); an execution toggle
    return engine, conf


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum(x: float, device: torch.device | str = "cpu") -> float:
    """``x`` summed over the ranks of the process group (``x`` itself without one). ``device``: the run's device,
    where the reduction's tensor lives (NCCL reduces CUDA tensors only; gloo CPU ones)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    t = torch.tensor([x], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item()


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average each tensor over the ranks in place (what DeepSpeed does to gradients); nothing on one rank."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for t in tensors:
        dist.all_reduce(t)
        t.div_(dist.get_world_size())


def save_checkpoint(engine, ckpt_dir: str, tag: str, client_state: dict, keep: int = 2) -> str:
    """Collective: every rank saves its shards under ``ckpt_dir/tag``; rank 0 marks the tag complete and
    prunes old tags (keeping ``keep``). A save that fails or is interrupted (a full disk, Ctrl-C) removes its
    unmarked tag, so the space it took is free again and the previous checkpoint is the one to resume from."""
    try:
        engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state)
    except BaseException:
        if not os.path.exists(os.path.join(ckpt_dir, tag, COMPLETE)):
            shutil.rmtree(os.path.join(ckpt_dir, tag), ignore_errors=True)
        raise
    barrier()
    if dist.get_rank() == 0:
        with open(os.path.join(ckpt_dir, tag, COMPLETE), "w") as f:
            json.dump({"tag": tag, "tokens": client_state.get("tokens_seen"),
                       "config": client_state.get("config", {})}, f)
        for old in complete_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    barrier()
    return os.path.join(ckpt_dir, tag)


@contextlib.contextmanager
def branch(engine, scratch_dir: str) -> Iterator[None]:
    """Collective: train a throw-away branch inside the ``with`` block; on exit the engine is where it was on
    entry (weights, optimizer state, DeepSpeed's step counters, torch's RNG), at any precision and ZeRO stage.

    The state goes through DeepSpeed's own checkpoint (a ``branch`` tag under ``scratch_dir``, removed after),
    not an in-memory copy: the same code restores fp32, bf16 / fp16 master weights and ZeRO shards."""
    engine.save_checkpoint(scratch_dir, tag="branch", save_latest=False)
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    try:
        yield
    finally:
        path, _ = engine.load_checkpoint(scratch_dir, tag="branch", load_optimizer_states=True,
                                         load_lr_scheduler_states=False)
        if path is None:
            raise RuntimeError(f"could not restore the state saved before a branch from {scratch_dir}/branch")
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        barrier()
        if dist.get_rank() == 0:
            shutil.rmtree(os.path.join(scratch_dir, "branch"), ignore_errors=True)
        barrier()


def read_marker(ckpt_dir: str, tag: str) -> dict:
    """A tag's completion marker (``tag``, ``tokens``, ``config``); OSError / ValueError when it is unreadable or
    not a marker object."""
    with open(os.path.join(ckpt_dir, tag, COMPLETE)) as f:
        marker = json.load(f)
    if not isinstance(marker, dict) or not isinstance(marker.get("config", {}), dict):
        raise ValueError(f"not a marker object: {str(marker)[:80]}")
    return marker


def scan_markers(ckpt_dir: str) -> tuple[list[tuple[str, dict]], dict[str, str]]:
    """(tags with a readable completion marker and the marker, oldest first by tokens seen; tag -> why, for the
    markers that exist but cannot be read). A tag folder without a marker is a save that never finished: in
    neither."""
    good, corrupt = [], {}
    for tag in sorted(os.listdir(ckpt_dir)) if os.path.isdir(ckpt_dir) else []:
        if os.path.isfile(os.path.join(ckpt_dir, tag, COMPLETE)):
            try:
                good.append((tag, read_marker(ckpt_dir, tag)))
            except (OSError, ValueError) as e:
                corrupt[tag] = f"{type(e).__name__}: {e}"
    return sorted(good, key=lambda tm: (tm[1].get("tokens") or 0, tm[0])), corrupt


def unmarked_saves(ckpt_dir: str) -> list[str]:
    """Tag folders without a completion marker when DeepSpeed finished a save there (its ``latest`` file names
    one of them): checkpoints whose markers were removed, not a save cut short (that writes no ``latest``)."""
    try:
        with open(os.path.join(ckpt_dir, "latest")) as f:
            latest = f.read().strip()
    except (OSError, UnicodeDecodeError):
        return []
    unmarked = [tag for tag in sorted(os.listdir(ckpt_dir)) if os.path.isdir(os.path.join(ckpt_dir, tag))
                and not os.path.exists(os.path.join(ckpt_dir, tag, COMPLETE))]
    return unmarked if latest in unmarked else []


def complete_tags(ckpt_dir: str) -> list[str]:
    """Tags with a readable completion marker, oldest first (by tokens seen)."""
    return [tag for tag, _ in scan_markers(ckpt_dir)[0]]


def load_checkpoint(engine, ckpt_dir: str, check=None) -> dict | None:
    """Load the newest complete checkpoint that loads; a partial or corrupt one is skipped with a warning
    and the previous one used. Returns its client state, or None when there is nothing to resume.

    ``check(saved_config)`` runs on the marker BEFORE any weights load and may raise (e.g. an architecture
    change): a refused checkpoint must fail loudly, not look corrupt and silently restart from scratch."""
    for tag in reversed(complete_tags(ckpt_dir)):
        if check is not None:
            check(read_marker(ckpt_dir, tag).get("config", {}))
        try:
            path, client_state = engine.load_checkpoint(ckpt_dir, tag=tag)
        except Exception as e:  # noqa: BLE001 - any unreadable shard means "try the previous tag"
            log.warning("checkpoint %s/%s is unreadable (%s: %s); trying the previous one", ckpt_dir, tag,
                        type(e).__name__, e)
            continue
        if path is None:
            log.warning("checkpoint %s/%s did not load; trying the previous one", ckpt_dir, tag)
            continue
        return client_state
    return None
