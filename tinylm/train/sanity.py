"""PRD phase-0 sanity checks, on the same setup/step code as training.

- ``overfit``: memorise ~1k tokens (one fixed batch); the loss must fall to ~0, else the model, the optimizer
  or the data pipeline is broken.
- ``lr_range``: Smith's LR range test (arXiv:1506.01186): raise the LR exponentially over a few hundred steps,
  record the loss, suggest the LR at the steepest descent (and a conservative max = min-loss LR / 10).
"""

from __future__ import annotations

import csv
import math
import os

import numpy as np

from tinylm.config import Config


def overfit(cfg: Config, out_dir: str, n_tokens: int = 1024, max_steps: int = 400, target: float = 0.1,
            force: bool = False) -> dict:
    from tinylm.optim import set_lr_factor
    from tinylm.train import preflight, sample_batch, setup, train_step

    # one fixed batch of ~n_tokens, constant LR, no weight decay/dropout: pure memorisation
    bs = max(1, n_tokens // cfg.block_size)
    cfg = cfg.replace(batch_size=bs, grad_accum=1, dropout=0.0, weight_decay=0.0, schedule="constant",
                      warmup_tokens=1, optimizer="adamw")
    preflight(cfg, out_dir, resume=False, force=force)  # force: into a folder holding other files
    run = setup(cfg, out_dir)
    x, y = sample_batch(run, run.data.train, np.random.default_rng(cfg.seed))
    losses = []
    set_lr_factor(run.optimizer, cfg, 1.0)  # constant: no warmup, no decay
    for _ in range(max_steps):
        losses.append(train_step(run, lambda: (x, y)))
        if losses[-1] < target / 2:
            break
    ok = losses[-1] < target
    print(f"overfit {x.numel():,} tokens: loss {losses[0]:.3f} -> {losses[-1]:.4f} in {len(losses)} steps "
          f"({'PASS' if ok else 'FAIL'}: target < {target})")
    return {"status": "pass" if ok else "fail", "first_loss": losses[0], "final_loss": losses[-1],
            "steps": len(losses), "tokens": x.numel()}


def lr_range(cfg: Config, out_dir: str, lr_min: float = 1e-6, lr_max: float = 1.0, steps: int = 150,
             force: bool = False) -> dict:
    from tinylm.optim import set_lr_factor
    from tinylm.train import preflight, sample_batch, setup, train_step

    cfg = cfg.replace(schedule="constant", warmup_tokens=1)
    preflight(cfg, out_dir, resume=False, force=force)  # force: into a folder holding other files
    run = setup(cfg, out_dir)
    rng = np.random.default_rng(cfg.seed)
    lrs, losses, smooth = [], [], None
    for i in range(steps):
        lr = lr_min * (lr_max / lr_min) ** (i / (steps - 1))
        set_lr_factor(run.optimizer, cfg, lr / cfg.lr)
        loss = train_step(run, lambda: sample_batch(run, run.data.train, rng))
        if not math.isfinite(loss):
            break
        smooth = loss if smooth is None else 0.9 * smooth + 0.1 * loss  # EMA as in fastai's lr_find
        lrs.append(lr)
        losses.append(smooth)
        if smooth > 4 * min(losses):  # diverged: the rest of the range tells nothing
            break
    lr_arr, loss_arr = np.log10(lrs), np.array(losses)
    i_min = int(loss_arr.argmin())
    grad = np.gradient(loss_arr[: i_min + 1], lr_arr[: i_min + 1]) if i_min > 2 else np.array([0.0])
    steepest = lrs[int(grad.argmin())]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "lr_range.csv"), "w", newline="") as f:
        csv.writer(f).writerows([("lr", "loss"), *zip(lrs, losses)])
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(lrs, losses)
    ax.axvline(steepest, ls="--", c="g", label=f"steepest {steepest:.2g}")
    ax.axvline(lrs[i_min] / 10, ls=":", c="r", label=f"min/10 {lrs[i_min] / 10:.2g}")
    ax.set(xlabel="learning rate", ylabel="smoothed train loss", title=f"LR range test ({cfg.name})")
    ax.legend()
    fig.savefig(os.path.join(out_dir, "lr_range.png"), dpi=100, bbox_inches="tight")
    print(f"{'lr':>10} {'loss':>8}")
    for lr, loss in list(zip(lrs, losses))[:: max(1, len(lrs) // 15)]:
        print(f"{lr:10.2e} {loss:8.4f}")
    print(f"suggested lr (steepest descent): {steepest:.3g}; min-loss lr / 10: {lrs[i_min] / 10:.3g}; "
          f"plot and CSV in {out_dir}")
    return {"suggested_lr": steepest, "min_loss_lr": lrs[i_min], "lrs": lrs, "losses": losses}
