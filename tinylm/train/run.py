"""A run's parts that every train loop shares: the checks before anything starts (``preflight``, ``claim_folder``),
``setup`` (process group, data, model, optimizer, DeepSpeed engine), the schedule, resuming, batches and the
failure-safe writes. ``tinylm.train.train`` (one model) and ``tinylm.train.ensemble`` (K seeds as one batched
model) are loops over these.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tinylm.budget import flops_per_token, param_counts
from tinylm.config import ARCH_FIELDS, Config, ConfigError
from tinylm.layout import jsonable, unwritable_parent, write_failure
from tinylm.model import GPT
from tinylm.regime import cached_reference_losses, regime_metrics

log = logging.getLogger("tinylm.train")
# report(metrics, checkpoint_dir | None): Ray's report on a cluster, a logger or nothing locally


Report = Callable[[dict, "str | None"], None]
# what a run writes into its folder; a run that starts from scratch claims a folder holding nothing else


OWN_ENTRIES = ("run_info.json", "metrics.json", "model", "members", "ckpt", "probe", "startup.json", "lr_range.csv",
               "lr_range.png")


class SaveError(RuntimeError):
    """A save that failed for lack of room (or permission): one line naming the path and what is kept."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during the training loop, with how far it got: ``tokens`` trained, ``saved`` the tokens of the last
    checkpoint kept on disk (None: none yet)."""

    def __init__(self, tokens: int, saved: int | None):
        super().__init__(tokens, saved)
        self.tokens, self.saved = tokens, saved


@dataclass
class Run:
    """Everything a training loop needs, built once by ``setup``."""

    cfg: Config
    out_dir: str
    engine: object
    model: GPT  # a tinylm.ensemble.Ensemble of seeds_per_trial members when that is > 1
    optimizer: torch.optim.Optimizer
    data: object
    device: torch.device
    rank: int
    world: int
    ds_config: dict
    info: dict


def pick_device(cfg: Config) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise ConfigError("device='cuda' but CUDA is not available; use device=auto or cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def preflight(cfg: Config, out_dir: str, resume_from: str | None = None, resume: bool = True,
              force: bool = False) -> dict:
    """Every check that needs no data, model or process group, so a mistake costs seconds, not a data build: the
    corpus exists, the vocabulary fits the tokenizer, the device and precision exist here, the output folder can
    be written, and what is already in it: (``resume``) a checkpoint that is refused (another architecture, a
    shorter run than it already trained, corrupt markers) fails here, and a run that starts from scratch claims
    only a folder that is new, empty or its own (``claim_folder``; ``force`` overrides). Returns what ``train``
    compares once the data exists (the resumed run's tokenizer hash).
    """
    from tinylm.checkpoint import resume_point
    from tinylm.data import check_dataset

    check_dataset(cfg.dataset)
    least = {"bpe": 257, "char": 3}.get(cfg.tokenizer, 0)
    if cfg.vocab_size < least:
        why = "256 bytes + EOT" if cfg.tokenizer == "bpe" else "a character, unknown, EOT"
        raise ConfigError(f"vocab_size={cfg.vocab_size} is too small for tokenizer={cfg.tokenizer!r}; it needs >= "
                          f"{least} ({why})")
    cuda = torch.cuda.is_available()
    if cfg.device == "cuda" and not cuda:
        raise ConfigError("device='cuda' but CUDA is not available here; use device=auto or cpu")
    if cfg.precision == "fp16" and not (cuda and cfg.device != "cpu"):
        raise ConfigError("precision='fp16' needs a CUDA GPU (DeepSpeed has no fp16 on CPU); use precision=fp32 "
                          "(the fastest on CPU) or bf16")
    if cfg.compile:
        from tinylm.machine import check_compile

        check_compile(on_gpu=cuda and cfg.device != "cpu")
    existing = unwritable_parent(out_dir)
    if existing:
        raise ConfigError(f"output folder {out_dir} cannot be created: {existing} is not a writable folder")
    ckpt_dir = resume_from or os.path.join(out_dir, "ckpt")
    point = resume_point(ckpt_dir) if resume else None
    if point is None:
        claim_folder(cfg, out_dir, ckpt_dir, force)
        return {}
    saved = point.get("config") or {}
    check_resume(cfg, saved)
    done = point.get("tokens") or 0
    if saved.get("train_tokens", cfg.train_tokens) != cfg.train_tokens and done >= cfg.train_tokens:
        raise ConfigError(f"cannot resume: the checkpoint in {point['ckpt_dir']} has trained {done:,} tokens and "
                          f"train_tokens changed {saved['train_tokens']:,} -> {cfg.train_tokens:,}, which it is "
                          f"already past: a finished run cannot be made shorter. Use a new output folder, or "
                          f"train_tokens > {done:,} to continue it")
    try:
        with open(os.path.join(out_dir, "run_info.json")) as f:
            return {"tokenizer_hash": json.load(f)["info"]["tokenizer_hash"]}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def claim_folder(cfg: Config, out_dir: str, ckpt_dir: str, force: bool = False) -> None:
    """Refuse (ConfigError) to start a run from scratch in a folder holding anything it would overwrite or did not
    write: checkpoints whose markers were removed, a trained model, files a run does not write, another run's
    run_info.json, a metrics.json other than a diverged or stopped run of this same config. Allowed: a new or empty
    folder, this same run's folder with nothing trained kept (killed before its first checkpoint, or ended without
    a model: a Tune trial restarts there after a crash), or anything with ``force``."""
    from tinylm.engine import unmarked_saves

    entries = sorted(os.listdir(out_dir)) if os.path.isdir(out_dir) else []
    if force or not entries:
        return

    def refuse(what: str) -> None:
        raise ConfigError(f"{out_dir} {what}, which a run from scratch would overwrite: use a new output folder "
                          "(--out), move that one away, or pass --force")

    def read(name: str) -> dict:
        try:
            with open(os.path.join(out_dir, name)) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    unmarked = unmarked_saves(ckpt_dir)
    if unmarked:
        refuse(f"holds checkpoints with no completion marker ({', '.join(unmarked)} in {ckpt_dir})")
    if os.path.isfile(os.path.join(out_dir, "model", "model.safetensors")):
        refuse("already holds a trained model (model/) and no checkpoint to continue from")
    foreign = [e for e in entries if e not in OWN_ENTRIES and not e.startswith("restored-") and ".tmp-" not in e]
    if foreign:
        refuse(f"holds files a run does not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})")
    own = read("run_info.json").get("config") == jsonable(cfg.to_dict())
    if "run_info.json" in entries and not own:
        refuse("holds the run_info.json of another run (another config, or not tinylm's)")
    if "metrics.json" in entries and not (own and read("metrics.json").get("status") in ("diverged", "stopped")):
        refuse("holds a run's metrics.json and no checkpoint to continue from")


@contextlib.contextmanager
def saving(path: str, kept: str) -> Iterator[None]:
    """A save that fails for lack of room (a full disk, a quota) raises one SaveError naming ``path`` and what
    ``kept`` says survives, instead of a long traceback from torch's writer; any other error passes through."""
    try:
        yield
    except (OSError, RuntimeError) as e:
        line = write_failure(path, e)
        if line is None:
            raise
        raise SaveError(f"{line}; {kept}") from e


def kept(saved: int | None) -> str:
    """What a failed save leaves to continue from, for its one-line error."""
    return "no checkpoint was saved yet" if saved is None else f"the checkpoint at {saved:,} tokens is kept"


def write_json(path: str, obj: dict) -> None:
    """Strict JSON, written atomically: NaN / inf become null (``json.dump`` would write the non-JSON ``NaN``)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            json.dump(jsonable(obj), f, indent=2, allow_nan=False)
        os.replace(tmp, path)
    finally:  # a failed write (a full disk) leaves neither a partial file nor a changed one
        if os.path.exists(tmp):
            os.remove(tmp)


def write_run_info(run: Run) -> None:
    write_json(os.path.join(run.out_dir, "run_info.json"), {"config": run.cfg.to_dict(), "info": run.info,
                                                            "params": param_counts(run.cfg), "data": run.data.meta})


def setup(cfg: Config, out_dir: str, write_info: bool = True) -> Run:
    """Distributed init, data (rank 0 builds the cache first), model, optimizer, DeepSpeed engine. ``write_info``:
    write ``run_info.json`` now (``train`` writes it only once a resume has been accepted)."""
    from tinylm import engine as eng
    from tinylm.data import load_data
    from tinylm.machine import mark, provenance, reset_peak_memory
    from tinylm.optim import build_optimizer

    rank, world = eng.init_distributed()
    mark("process_group")
    device = pick_device(cfg)
    reset_peak_memory(device)  # this run's peak, also in a process that ran another one before (Tune reuse)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
    if rank == 0:
        data = load_data(cfg)
    eng.barrier()
    if rank != 0:
        data = load_data(cfg)
    mark("data")
    if data.tokenizer.n_vocab > cfg.vocab_size:
        raise ConfigError(f"vocab_size={cfg.vocab_size} < tokenizer size {data.tokenizer.n_vocab}")
    for split in ("train", "val"):  # get_batch needs block_size + 1 tokens; refused before any model is built
        n = len(getattr(data, split))
        if n <= cfg.block_size:
            raise ConfigError(f"block_size={cfg.block_size:,} needs more than {cfg.block_size:,} tokens in each split "
                              f"but dataset={cfg.dataset!r} gave {split} {n:,} (num_documents={cfg.num_documents}, "
                              f"max_tokens={cfg.max_tokens}, val_fraction={cfg.val_fraction}); lower block_size "
                              f"below {n:,} or use more data")
    torch.manual_seed(cfg.seed)
    if cfg.seeds_per_trial > 1:  # K seeds as one batched model (tinylm.ensemble); tinylm.train.ensemble trains it
        from tinylm.ensemble import Ensemble

        model = Ensemble(cfg).to(device)
    else:
        model = GPT(cfg).to(device)
    optimizer = build_optimizer(model, cfg)
    engine, conf = eng.build_engine(model, optimizer, cfg)
    mark("model_engine")
    sample = np.asarray(data.val[:200_000])  # bytes per val token, for bits-per-byte (tokenizer-independent)
    n_bytes = len(data.tokenizer.decode(sample[sample != data.tokenizer.eot_token].tolist()).encode("utf-8"))
    data.meta["val_bytes_per_token"] = n_bytes / max(1, len(sample))
    # what count models of the train split score on the val windows evaluate() scores: a run above the bigram is
    # still on its early plateau (tinylm.regime); every eval reports them beside val_loss
    data.meta["refs"] = cached_reference_losses(data, cfg.batch_size, cfg.block_size, cfg.eval_tokens)
    info = {**provenance(device), "tokenizer_hash": data.tokenizer_hash, "data_fingerprint": data.fingerprint,
            "data_source": str(data.meta.get("source", "")), "world_size": str(world),
            "ds_config": json.dumps(conf, sort_keys=True)}
    os.makedirs(out_dir, exist_ok=True)
    run = Run(cfg, out_dir, engine, model, optimizer, data, device, rank, world, conf, info)
    if rank == 0 and write_info:
        write_run_info(run)
    return run


def sample_batch(run: Run, split: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """One (x, y) micro-batch of ``split`` drawn with ``rng``, on the run's device (the loop's and sanity's)."""
    from tinylm.data import get_batch

    x, y = get_batch(split, run.cfg.batch_size, run.cfg.block_size, rng)
    return x.to(run.device, non_blocking=True), y.to(run.device, non_blocking=True)


def eval_share(n: int, rank: int, world: int) -> range:
    """The indices of the ``n`` val batches that ``rank`` of ``world`` evaluates: every ``world``-th one from its
    rank, so the ranks cover each batch exactly once and differ by at most one batch."""
    return range(rank, n, world)


def eval_batches(cfg: Config) -> int:
    """How many val batches an eval scores: ``eval_tokens`` in whole batches, at least one."""
    return max(1, cfg.eval_tokens // (cfg.batch_size * cfg.block_size))


def val_windows(run: Run, rng: np.random.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """This rank's share of the fixed val batches every eval scores (``rng`` seeded ``tinylm.regime.EVAL_SEED``, on
    whose windows the n-gram references are scored too). Every rank draws all ``eval_batches`` from ``rng``, so the
    set does not depend on the world size, and gets its own (``eval_share``); ``rng`` is then past them all."""
    from tinylm.data import get_batch

    n = eval_batches(run.cfg)
    mine = eval_share(n, run.rank, run.world)
    for i in range(n):
        if i in mine:
            yield sample_batch(run, run.data.val, rng)
        else:  # another rank's batch: drawn all the same, so the generator stays in step
            get_batch(run.data.val, run.cfg.batch_size, run.cfg.block_size, rng)


def eval_metrics(run: Run, *, tokens: int, step: int, train_loss: float, val: float, lr: float, tps: float,
                 mfu: float, elapsed: float, sizes: dict) -> dict:
    """What every eval reports about one model (a run, or one member of a batched trial): losses, perplexity, bits
    per byte, throughput, memory, FLOPs so far, its sizes and the n-gram references."""
    from tinylm.machine import peak_memory_mb

    return {"tokens": tokens, "step": step, "train_loss": train_loss, "val_loss": val,
            "val_ppl": math.exp(min(val, 50)), "val_bpb": val / math.log(2) / run.data.meta["val_bytes_per_token"],
            "lr": lr, "tokens_per_s": tps, "mfu": mfu, "peak_mem_mb": peak_memory_mb(run.device),
            "elapsed_s": elapsed, "train_flops": sizes["flops_per_token"] * tokens, **sizes,
            **regime_metrics(val, run.data.meta["refs"])}


def final_metrics(metrics: dict, *, tokens: int, trained: int, status: str, stop_reason: str, elapsed: float,
                  sizes: dict) -> dict:
    """One model's final metrics from its latest eval's (``metrics``, empty before the first): every result carries
    the scheduler's keys (Tune rejects a result without its metric), so a model that diverged before its first eval
    reports NaN, which ASHA ignores and Optuna records as FAIL; ``trained``: the tokens its FLOPs count."""
    final = dict(metrics)
    final.setdefault("tokens", tokens)
    for key in ("val_loss", "val_ppl", "val_bpb"):
        final.setdefault(key, float("nan"))
    final.update(status=status, stop_reason=stop_reason, train_flops=sizes["flops_per_token"] * trained,
                 train_time_s=elapsed, **sizes)
    if metrics:
        final.update(final_val_loss=metrics["val_loss"], final_val_ppl=metrics["val_ppl"],
                     final_val_bpb=metrics["val_bpb"])
    return final


def efficiency_metrics(model: GPT, cfg: Config, device: torch.device) -> dict:
    """Latency at batch 1 (L=128/512) and inference tokens/s; its memory as ``infer_peak_mem_mb`` (training's peak
    stays ``peak_mem_mb``)."""
    from tinylm.evals import efficiency

    eff = efficiency(model, cfg, device=device)
    eff["infer_peak_mem_mb"] = eff.pop("peak_mem_mb", float("nan"))
    return eff


def suite_metrics(model: GPT, cfg: Config, tokenizer, device: torch.device) -> dict:
    """The eval tasks named in ``cfg.evals`` (none: empty), seeded by ``cfg.seed``."""
    from tinylm.evals import run_suite

    if not cfg.evals:
        return {}
    tasks = "all" if cfg.evals == "all" else cfg.evals.split(",")
    return run_suite(model, tokenizer, tasks=tasks, n=cfg.eval_n, device=device, seed=cfg.seed)


def load_resume_state(run: Run, resume_from: str | None, resumed_from: dict) -> dict | None:
    """The client state of the checkpoint the run continues from (``resume_from``, else ``out_dir/ckpt``) when one
    loads and fits (same architecture and tokenizer), else None; ``run_info.json`` is written once the resume is
    accepted. Refuses (ConfigError) to start over when every complete checkpoint fails to load."""
    from tinylm import engine as eng

    cfg, out_dir = run.cfg, run.out_dir
    src = resume_from or os.path.join(out_dir, "ckpt")
    state = eng.load_checkpoint(run.engine, src, check=lambda saved: check_resume(cfg, saved))
    if state is None and eng.complete_tags(src):  # every complete checkpoint failed to load (warnings above)
        raise ConfigError(f"no checkpoint in {src} loads ({', '.join(eng.complete_tags(src))}: see the warnings "
                          "above); refusing to start over and overwrite them: move the folder away to train from "
                          "scratch")
    was = (state or {}).get("tokenizer_hash") or resumed_from.get("tokenizer_hash")
    if state is not None and was and was != run.data.tokenizer_hash:
        raise ConfigError(f"cannot resume: the checkpoint was trained with another tokenizer (sha256 {was[:12]}, now "
                          f"{run.data.tokenizer_hash[:12]} from dataset={cfg.dataset!r}); its token ids would mean "
                          "other strings. Use a new output folder")
    if run.rank == 0:
        with saving(os.path.join(out_dir, "run_info.json"), "nothing was trained yet"):
            write_run_info(run)
    if state is not None:
        log.info("resumed at step %d (%d tokens) from %s", state["step"], state.get("tokens_seen", 0), src)
    return state


def schedule(run: Run) -> dict:
    """The run's schedule in optimizer steps and what every eval reports about its size: ``tokens_per_step``
    (across ranks), ``total_steps``, ``eval_every``, ``ckpt_every``, ``sizes`` (parameter counts, FLOPs per token)
    and ``peak`` (the device's peak FLOP/s, MFU's denominator)."""
    from tinylm.machine import peak_flops

    cfg = run.cfg
    tokens_per_step = cfg.tokens_per_step * run.world
    eval_every = max(1, round(cfg.eval_every_tokens / tokens_per_step))
    ckpt_every = max(1, round(cfg.ckpt_every_tokens / tokens_per_step)) if cfg.ckpt_every_tokens else eval_every
    counts = param_counts(cfg)
    sizes = {"params_total": counts["total"], "params_nonembed": counts["nonembed"],
             "params_embed": counts["embedding"], "embed_share": counts["embedding"] / counts["total"],
             "flops_per_token": flops_per_token(cfg)}
    return dict(tokens_per_step=tokens_per_step, total_steps=max(1, math.ceil(cfg.train_tokens / tokens_per_step)),
                eval_every=eval_every, ckpt_every=ckpt_every, sizes=sizes, peak=peak_flops(run.device, cfg.precision))


def check_resume(cfg: Config, saved: dict) -> None:
    """Only execution settings may change when resuming; an architecture change is refused."""
    changed = {k: (saved[k], getattr(cfg, k)) for k in ARCH_FIELDS if k in saved and saved[k] != getattr(cfg, k)}
    if changed:
        raise ConfigError(f"cannot resume: architecture fields changed since the checkpoint (saved -> now): "
                          f"{changed}; only execution settings (precision, compile, attention, "
                          "activation_checkpointing, batch_size/grad_accum, zero_stage) may change on resume. "
                          "Use a new output folder to train the new architecture.")


def gather_rng(rng: np.random.Generator, world: int) -> list:
    """Every rank's data RNG state (so a resumed run draws the same batches), gathered to all ranks."""
    import torch.distributed as dist

    states = [None] * world
    if world > 1:
        dist.all_gather_object(states, rng.bit_generator.state)
    else:
        states = [rng.bit_generator.state]
    return states
