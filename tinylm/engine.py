"""The only module that imports deepspeed.

``ds_config(cfg)`` derives the DeepSpeed config from Config (never hand-written); ``build_engine`` wraps the pure
PyTorch model and the client optimizer from optim.py; checkpoints are DeepSpeed's (every rank saves its ZeRO
shards) plus a completion marker so a partial or corrupt checkpoint is detected and the previous one used.
Works in one process without a launcher (STACK.md recipe) and, unchanged, inside Ray Train workers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket

import torch

os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
import deepspeed  # noqa: E402
import torch.distributed as dist  # noqa: E402

from tinylm.config import Config  # noqa: E402

log = logging.getLogger(__name__)
COMPLETE = "tinylm_complete.json"  # written after every rank finished saving a tag


def ds_config(cfg: Config, world_size: int = 1) -> dict:
    """The DeepSpeed config for this Config. LR scheduling stays ours (optim.set_lr), so no DS scheduler."""
    conf = {
        "train_micro_batch_size_per_gpu": cfg.batch_size,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.batch_size * cfg.grad_accum * world_size,
        "gradient_clipping": cfg.grad_clip,
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed() -> tuple[int, int]:
    """Join the process group Ray Train / torchrun made, or make a one-process group. Returns (rank, world)."""
    if not dist.is_initialized():
        for k, v in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1")):
            os.environ.setdefault(k, v)
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    # DeepSpeed reads these even when the group already exists (e.g. made by Ray Train or an earlier call)
    os.environ.setdefault("RANK", str(dist.get_rank()))
    os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
    os.environ.setdefault("LOCAL_RANK", "0" if dist.get_world_size() == 1 else str(dist.get_rank()))
    return dist.get_rank(), dist.get_world_size()


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


def all_reduce_mean(x: float) -> float:
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return x
    t = torch.tensor([x], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / dist.get_world_size()


def save_checkpoint(engine, ckpt_dir: str, tag: str, client_state: dict, keep: int = 2) -> str:
    """Collective: every rank saves its shards under ``ckpt_dir/tag``; rank 0 marks the tag complete and
    prunes old tags (keeping ``keep``)."""
    engine.save_checkpoint(ckpt_dir, tag=tag, client_state=client_state)
    barrier()
    if dist.get_rank() == 0:
        with open(os.path.join(ckpt_dir, tag, COMPLETE), "w") as f:
            json.dump({"tag": tag, "tokens": client_state.get("tokens_seen"),
                       "config": client_state.get("config", {})}, f)
        for old in complete_tags(ckpt_dir)[:-keep]:
            shutil.rmtree(os.path.join(ckpt_dir, old), ignore_errors=True)
    barrier()
    return os.path.join(ckpt_dir, tag)


def complete_tags(ckpt_dir: str) -> list[str]:
    """Tags with a completion marker, oldest first (by tokens seen)."""
    if not os.path.isdir(ckpt_dir):
        return []
    tags = []
    for t in os.listdir(ckpt_dir):
        marker = os.path.join(ckpt_dir, t, COMPLETE)
        if os.path.isfile(marker):
            try:
                with open(marker) as f:
                    tags.append((json.load(f).get("tokens") or 0, t))
            except (OSError, ValueError):
                continue
    return [t for _, t in sorted(tags)]


def load_checkpoint(engine, ckpt_dir: str, check=None) -> dict | None:
    """Load the newest complete checkpoint that loads; a partial or corrupt one is skipped with a warning
    and the previous one used. Returns its client state, or None when there is nothing to resume.

    ``check(saved_config)`` runs on the marker BEFORE any weights load and may raise (e.g. an architecture
    change): a refused checkpoint must fail loudly, not look corrupt and silently restart from scratch."""
    for tag in reversed(complete_tags(ckpt_dir)):
        if check is not None:
            with open(os.path.join(ckpt_dir, tag, COMPLETE)) as f:
                check(json.load(f).get("config", {}))
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
