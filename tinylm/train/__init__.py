"""``train(cfg, out_dir) -> metrics``: one training run, a plain function with no import-time side effects.

It runs in one process (the command ``python -m tinylm.train``, in ``tinylm/train/cli.py``, which this
library never imports) and, unchanged, inside a Ray Train worker (tinylm.tune passes ``report`` and
``resume_from``). Run length, evals and checkpoints are counted in tokens.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from tinylm.budget import flops_per_token, param_counts
from tinylm.config import ARCH_FIELDS, Config, ConfigError
from tinylm.layout import jsonable, unwritable_parent, write_failure
from tinylm.model import GPT
from tinylm.regime import EVAL_SEED, cached_reference_losses, regime_metrics

log = logging.getLogger("tinylm.train")
# report(metrics, checkpoint_dir | None): Ray's report on a cluster, a logger or nothing locally
Report = Callable[[dict, "str | None"], None]
# what a run writes into its folder; a run that starts from scratch claims a folder holding nothing else
OWN_ENTRIES = ("run_info.json", "metrics.json", "model", "ckpt", "probe", "startup.json", "lr_range.csv",
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
    model: GPT
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


def train_step(run: Run, batches: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> float:
    """One optimiser step (grad_accum micro-batches); DeepSpeed scales, clips and steps at the boundary."""
    total = 0.0
    for _ in range(run.cfg.grad_accum):
        x, y = batches()
        _, loss = run.engine(x, y)
        run.engine.backward(loss)
        run.engine.step()
        total += loss.item()
    return total / run.cfg.grad_accum


def eval_share(n: int, rank: int, world: int) -> range:
    """The indices of the ``n`` val batches that ``rank`` of ``world`` evaluates: every ``world``-th one from its
    rank, so the ranks cover each batch exactly once and differ by at most one batch."""
    return range(rank, n, world)


@torch.no_grad()
def evaluate(run: Run) -> float:
    """Mean val loss over a fixed set of val batches (same batches every eval, so curves are comparable).

    Every rank draws the same ``n`` batches from the same seed (so the set does not depend on the world size)
    and runs the model on its share (``eval_share``) only; the loss sums are all-reduced. Under ZeRO-3 a forward
    pass is collective (parameters are gathered), so a rank with one batch fewer runs one more, uncounted.
    """
    from tinylm import engine as eng
    from tinylm.data import get_batch

    run.engine.eval()
    rng = np.random.default_rng(EVAL_SEED)  # tinylm.regime scores its references on these same windows
    n = max(1, run.cfg.eval_tokens // (run.cfg.batch_size * run.cfg.block_size))
    mine = eval_share(n, run.rank, run.world)
    losses = []
    for i in range(n):
        if i in mine:
            x, y = sample_batch(run, run.data.val, rng)
            losses.append(run.engine(x, y)[1].item())
        else:  # another rank's batch: drawn all the same, so the generator stays in step
            get_batch(run.data.val, run.cfg.batch_size, run.cfg.block_size, rng)
    if run.cfg.zero_stage == 3 and len(mine) < math.ceil(n / run.world):
        run.engine(*sample_batch(run, run.data.val, rng))
    run.engine.train()
    return eng.all_reduce_sum(float(np.sum(losses)), run.device) / n  # world 1: exactly np.mean(losses)


def train(cfg: Config, out_dir: str, report: Report | None = None, resume_from: str | None = None,
          should_stop: Callable[[], bool] | None = None, force: bool = False) -> dict:
    """Train one model.

    Args:
        cfg: the run's Config (run length in tokens: train_tokens, eval_every_tokens, ckpt_every_tokens).
        out_dir: this run's folder: DeepSpeed checkpoints under ``ckpt/``, the final model under ``model/``.
        report: called on every rank at every eval with (metrics, checkpoint dir or None).
        resume_from: a checkpoint folder to continue from (defaults to ``out_dir/ckpt`` when it holds one).
        should_stop: checked before every step (one-rank runs): True ends the run as "stopped" — a scheduler
            (ASHA, the kill rule) stopped it, and the process should be free for the next trial now.
        force: start from scratch in a folder that holds other files (``claim_folder`` refuses it otherwise).

    Returns:
        Final metrics (val loss/ppl, params, tokens, FLOPs, time, throughput, MFU, memory, latency, evals) plus
        ``status`` (completed | diverged) and ``stop_reason``; provenance strings under ``info``.

    Raises:
        Interrupted: Ctrl-C in the loop; the last checkpoint stays (a partial save is removed).
        SaveError: a full disk while saving; what was saved before stays, and the message says what.
    """
    resumed_from = preflight(cfg, out_dir, resume_from, force=force)
    run = setup(cfg, out_dir, write_info=False)
    p = resume_or_start(run, resume_from, resumed_from)
    run.engine.train()
    try:  # Ctrl-C: the last complete checkpoint stays (a partial save removes itself); the caller says how far
        while p.step < p.total_steps:
            if should_stop is not None and should_stop():
                p.status, p.stop_reason = "stopped", f"stopped by the scheduler at step {p.step}"
                break
            if not step_once(run, p):
                break
            if (p.step % p.eval_every == 0 or p.step == p.total_steps) and not eval_point(run, p, report):
                break
    except KeyboardInterrupt:
        raise Interrupted(p.tokens, p.saved) from None
    return finish(run, p, report)


@dataclass
class Progress:
    """Where a run is between steps: its schedule (in optimizer steps), what it measured and what it saved."""

    tokens_per_step: int  # across every rank
    total_steps: int
    eval_every: int
    ckpt_every: int
    rng: np.random.Generator  # this rank's batches
    sizes: dict  # parameter counts and FLOPs per token: in every eval's metrics and in the final ones
    peak: float  # the device's peak FLOP/s, MFU's denominator
    step: int = 0
    elapsed: float = 0.0  # training seconds (evals and probes not counted)
    history: list = field(default_factory=list)  # (tokens, losses) at every eval: kept in the checkpoints
    metrics: dict = field(default_factory=dict)  # the latest eval's
    saved: int | None = None  # the tokens of the newest checkpoint on disk
    last_ckpt: str | None = None  # saved by this process
    status: str = "completed"
    stop_reason: str = ""
    lr: float = 0.0
    started: bool = False  # the first step is done (the start-up marks are written)
    probed: dict = field(default_factory=dict)  # tokens and seconds spent on wsd cooldown probes
    pending: list = field(default_factory=list)  # the probe points still ahead
    window_loss: float = 0.0  # the train loss summed since the last eval ...
    window_steps: int = 0  # ... over this many steps ...
    window_t: float = field(default_factory=time.perf_counter)  # ... which began then

    @property
    def tokens(self) -> int:
        return self.step * self.tokens_per_step


def resume_or_start(run: Run, resume_from: str | None, resumed_from: dict) -> Progress:
    """The run's schedule, and where it starts: from its checkpoint (``resume_from``, else ``out_dir/ckpt``) when
    one loads and fits (same architecture and tokenizer), else from step 0. ``run_info.json`` is written once the
    resume is accepted. Refuses (ConfigError) to start over when every complete checkpoint fails to load."""
    from tinylm import engine as eng
    from tinylm.machine import peak_flops

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
    tokens_per_step = cfg.tokens_per_step * run.world
    eval_every = max(1, round(cfg.eval_every_tokens / tokens_per_step))
    ckpt_every = max(1, round(cfg.ckpt_every_tokens / tokens_per_step)) if cfg.ckpt_every_tokens else eval_every
    counts = param_counts(cfg)
    sizes = {"params_total": counts["total"], "params_nonembed": counts["nonembed"],
             "params_embed": counts["embedding"], "embed_share": counts["embedding"] / counts["total"],
             "flops_per_token": flops_per_token(cfg)}
    p = Progress(tokens_per_step, max(1, math.ceil(cfg.train_tokens / tokens_per_step)), eval_every, ckpt_every,
                 np.random.default_rng([cfg.seed, run.rank]), sizes, peak_flops(run.device, cfg.precision))
    if state is not None:
        p.step, p.elapsed, p.history = state["step"], state["elapsed_s"], state.get("history", [])
        if run.rank < len(state["rng"]):
            p.rng.bit_generator.state = state["rng"][run.rank]
        p.metrics, p.saved = state.get("metrics", {}), state.get("tokens_seen")
        log.info("resumed at step %d (%d tokens) from %s", p.step, p.tokens, src)
    p.probed = {k: p.metrics.get(k, 0) for k in ("probe_tokens", "probe_time_s")} if cfg.probe_tokens else {}
    p.pending = [t for t in cfg.probe_tokens if t > p.tokens]
    return p


def step_once(run: Run, p: Progress) -> bool:
    """One optimizer step at the scheduled LR; False when the train loss is not finite (the run diverged)."""
    from tinylm.machine import mark, write_marks
    from tinylm.optim import set_lr

    p.lr = set_lr(run.optimizer, run.cfg, p.tokens)
    loss = train_step(run, lambda: sample_batch(run, run.data.train, p.rng))
    p.step += 1
    if run.rank == 0 and not p.started:  # start-up phases, for bench/overhead.py
        p.started = True
        mark("first_step")
        write_marks(run.out_dir)
    if not math.isfinite(loss):  # NaN/inf guard: stop with a recorded reason instead of wasting compute
        p.status, p.stop_reason = "diverged", f"non-finite train loss ({loss}) at step {p.step}"
        log.error(p.stop_reason)
        return False
    p.window_loss, p.window_steps = p.window_loss + loss, p.window_steps + 1
    return True


def eval_point(run: Run, p: Progress, report: Report | None) -> bool:
    """An eval (and a wsd probe when one is due), its metrics logged, a checkpoint when one is due, the report;
    False when the val loss is not finite (the run diverged)."""
    from tinylm.machine import peak_memory_mb
    from tinylm.optim import probe_length

    cfg = run.cfg
    dt = time.perf_counter() - p.window_t
    p.elapsed += dt
    val = evaluate(run)
    tps = p.window_steps * p.tokens_per_step / dt
    probe = {}
    if p.pending and p.tokens >= p.pending[0] and p.step < p.total_steps:
        p.pending = [t for t in p.pending if t > p.tokens]
        if p.tokens <= cfg.stable_tokens:  # an eval past the stable phase is already in the real decay
            t0 = time.perf_counter()
            probe["probe_loss"], spent = cooldown_probe(run, p.tokens, p.tokens_per_step)
            p.probed["probe_tokens"] += spent
            p.probed["probe_time_s"] += time.perf_counter() - t0
    fpt = p.sizes["flops_per_token"]
    p.metrics = {"tokens": p.tokens, "step": p.step, "train_loss": p.window_loss / p.window_steps,
                 "val_loss": val, "val_ppl": math.exp(min(val, 50)),
                 "val_bpb": val / math.log(2) / run.data.meta["val_bytes_per_token"], "lr": p.lr,
                 "tokens_per_s": tps, "mfu": fpt * tps / (p.peak * run.world),
                 "peak_mem_mb": peak_memory_mb(run.device), "elapsed_s": p.elapsed, "train_flops": fpt * p.tokens,
                 **p.sizes, **p.probed, **probe, **regime_metrics(val, run.data.meta["refs"]),
                 **run.model.routing_stats()}  # an MoE's routing balance at the last eval batch
    p.history.append({k: p.metrics[k] for k in ("tokens", "train_loss", "val_loss", "probe_loss") if k in p.metrics})
    if run.rank == 0:
        log.info("step %5d | tokens %s/%s | loss %.4f | val %.4f | ppl %.1f | %s tok/s | mfu %.1f%%",
                 p.step, f"{p.tokens:,}", f"{p.total_steps * p.tokens_per_step:,}", p.metrics["train_loss"], val,
                 p.metrics["val_ppl"], f"{tps:,.0f}", 100 * p.metrics["mfu"])
        if probe:
            log.info("probe at %s tokens: a cooldown of %s tokens reaches val %.4f", f"{p.tokens:,}",
                     f"{probe_length(cfg, p.tokens):,}", probe["probe_loss"])
    ckpt = save_progress(run, p, val) if p.step % p.ckpt_every == 0 or p.step == p.total_steps else None
    if report is not None and p.step < p.total_steps:
        report(p.metrics, ckpt)
    if not math.isfinite(val):
        p.status, p.stop_reason = "diverged", f"non-finite val loss at step {p.step}"
        return False
    p.window_loss, p.window_steps, p.window_t = 0.0, 0, time.perf_counter()
    return True


def save_progress(run: Run, p: Progress, val: float) -> str:
    """A resumable checkpoint of the run at this step (engine state, data RNGs, history, latest metrics)."""
    from tinylm import engine as eng

    ckpt_dir, tag = os.path.join(run.out_dir, "ckpt"), f"step{p.step:08d}"
    with saving(os.path.join(ckpt_dir, tag), f"training stopped at {p.tokens:,} tokens (val loss {val:.4f}); "
                f"{kept(p.saved)}: free space and rerun the same command to go on"):
        ckpt = eng.save_checkpoint(run.engine, ckpt_dir, tag, {
            "step": p.step, "tokens_seen": p.tokens, "elapsed_s": p.elapsed, "history": p.history,
            "config": run.cfg.to_dict(), "rng": gather_rng(p.rng, run.world), "metrics": p.metrics,
            "tokenizer_hash": run.data.tokenizer_hash})
    p.last_ckpt, p.saved = ckpt, p.tokens
    return ckpt


def finish(run: Run, p: Progress, report: Report | None) -> dict:
    """The run's final metrics; a completed run's model, then metrics.json, then the end-of-run evals (a failure
    there loses neither) and metrics.json again with them; the last report."""
    from tinylm.checkpoint import save_pretrained

    cfg, out_dir = run.cfg, run.out_dir
    final = dict(p.metrics)
    # every result carries the scheduler's keys (Tune rejects a result without its metric): a run that diverged
    # before its first eval reports NaN, which ASHA ignores and Optuna records as FAIL
    final.setdefault("tokens", p.tokens)
    for key in ("val_loss", "val_ppl", "val_bpb"):
        final.setdefault(key, float("nan"))
    final.update(status=p.status, stop_reason=p.stop_reason, train_flops=p.sizes["flops_per_token"] * p.tokens,
                 train_time_s=p.elapsed, **p.sizes)
    if p.metrics:
        final.update(final_val_loss=p.metrics["val_loss"], final_val_ppl=p.metrics["val_ppl"],
                     final_val_bpb=p.metrics["val_bpb"])
    # the model and the metrics are on disk before the end-of-run evals: a failure there loses neither
    if run.rank == 0 and p.status == "completed":
        with saving(os.path.join(out_dir, "model"), f"{kept(p.saved)}: free space and rerun the same command to "
                    "write the model from it"):
            save_pretrained(os.path.join(out_dir, "model"), run.model, cfg, run.data.tokenizer, extra=run.info)
    if run.rank == 0:  # one writer: ranks share out_dir on one node
        with saving(os.path.join(out_dir, "metrics.json"), f"the run {p.status} at {final['tokens']:,} tokens "
                    f"(val loss {final['val_loss']:.4f}); {kept(p.saved)}"):
            write_json(os.path.join(out_dir, "metrics.json"), final)
    if p.status == "completed":
        try:
            final.update(end_of_run_evals(run))
        except Exception as e:  # noqa: BLE001 - recorded, and the CLI exits non-zero; the trained model stays
            final["evals_error"] = f"{type(e).__name__}: {str(e)[:500]}"
            log.error("end-of-run evals failed (%s); the model and metrics are kept in %s", final["evals_error"],
                      out_dir)
        if run.rank == 0:
            with saving(os.path.join(out_dir, "metrics.json"), f"the model and the metrics without the evals are "
                        f"kept in {out_dir}"):
                write_json(os.path.join(out_dir, "metrics.json"), final)
    final["info"] = run.info
    if report is not None:
        # the last report carries a checkpoint: Ray Train V2 keeps no metrics for a run that reported none
        report({k: v for k, v in final.items() if k != "info"} | run.info, p.last_ckpt)
    return final


def cooldown_probe(run: Run, tokens: int, tokens_per_step: int) -> tuple[float, int]:
    """The val loss a wsd run cut here would reach: a throw-away branch cools the LR down linearly to
    ``min_lr_ratio`` over ``probe_length`` tokens (so the branch is a complete wsd run of the same ``decay_frac``),
    is evaluated, and is thrown away; the run goes on from the exact state it had (``engine.branch``).

    Under a decaying schedule a mid-run loss favours small LRs (a large LR pays off only once it decays): a
    probe compares every LR as a finished run of this length (Hägele et al. 2024, "Scaling Laws and
    Compute-Optimal Training Beyond Fixed Training Durations"). That removes the schedule's share of the bias, not
    the horizon's: the best LR of a short run is still larger than a long run's (RESULTS.md, 2026-11-30).
    Returns (loss, tokens the branch trained); its batches come from their own generator.
    """
    from tinylm import engine as eng
    from tinylm.optim import cooldown_factor, probe_length, set_lr_factor

    steps = max(1, math.ceil(probe_length(run.cfg, tokens) / tokens_per_step))
    rng = np.random.default_rng([run.cfg.seed, run.rank, tokens, 1])
    with eng.branch(run.engine, os.path.join(run.out_dir, "probe")):
        for i in range(steps):
            set_lr_factor(run.optimizer, run.cfg, cooldown_factor(run.cfg, i * tokens_per_step,
                                                                   steps * tokens_per_step))
            train_step(run, lambda: sample_batch(run, run.data.train, rng))
        loss = evaluate(run)
    return loss, steps * tokens_per_step


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


def end_of_run_evals(run: Run) -> dict:
    """Latency at batch 1 (L=128/512), inference tokens/s, and the eval tasks named in ``cfg.evals``."""
    from tinylm.evals import efficiency, run_suite

    out = {}
    model = run.model
    eff = efficiency(model, run.cfg, device=run.device)
    eff["infer_peak_mem_mb"] = eff.pop("peak_mem_mb", float("nan"))  # training's peak stays peak_mem_mb
    out.update(eff)
    if run.cfg.evals:
        tasks = "all" if run.cfg.evals == "all" else run.cfg.evals.split(",")
        out.update(run_suite(model, run.data.tokenizer, tasks=tasks, n=run.cfg.eval_n, device=run.device,
                             seed=run.cfg.seed))
    model.train()
    return out
