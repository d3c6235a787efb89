"""Regime references: what a count model of the training split scores on the run's own val windows.

A tiny run that ends above the **bigram** reference has not yet learned what counting adjacent tokens gives for
free: it is still leaving its early plateau, and differences between its seeds or variants there measure *when*
each escapes the plateau, not the question the sweep asks. Every run reports both references beside its loss
(``ref_unigram_loss``, ``ref_bigram_loss``, nats per token) and whether it beat the bigram one
(``past_bigram``); reports and verdicts read them.

    refs = reference_losses(data.train, data.val, n_vocab, batch_size=16, block_size=128, eval_tokens=65_536)

The val windows are those ``tinylm.train.evaluate`` scores (``eval_windows``: the same generator seed, count and
shapes), so a reference and a run's val loss are the same average over the same targets.

Smoothing is add-k (Lidstone) with k chosen on the last 10 % of the training split (held out from the counts
while choosing, then counted), from a fixed grid: it uses nothing of the val split.
"""

from __future__ import annotations

import math

import numpy as np

EVAL_SEED = 12345  # tinylm.train.evaluate draws its val windows from this seed: the references score the same ones
K_GRID = (1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0)


def eval_windows(val: np.ndarray, batch_size: int, block_size: int, eval_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets), each (n * batch_size, block_size): the val windows ``evaluate`` scores, in its order."""
    from tinylm.data import get_batch

    rng = np.random.default_rng(EVAL_SEED)
    n = max(1, eval_tokens // (batch_size * block_size))
    xs, ys = zip(*(get_batch(val, batch_size, block_size, rng) for _ in range(n)), strict=True)
    return np.concatenate([x.numpy() for x in xs]), np.concatenate([y.numpy() for y in ys])


class Bigram:
    """Add-k bigram and unigram counts of a token stream; sparse (pairs seen), so any vocabulary fits."""

    def __init__(self, tokens: np.ndarray, n_vocab: int):
        t = np.asarray(tokens, dtype=np.int64)
        self.n_vocab = n_vocab
        self.unigram = np.bincount(t, minlength=n_vocab).astype(np.float64)
        self.context = np.bincount(t[:-1], minlength=n_vocab).astype(np.float64)  # count of x as a left token
        self.pairs, self.pair_counts = np.unique(t[:-1] * n_vocab + t[1:], return_counts=True)

    def unigram_logp(self, y: np.ndarray, k: float) -> np.ndarray:
        return np.log((self.unigram[y] + k) / (self.unigram.sum() + k * self.n_vocab))

    def bigram_logp(self, x: np.ndarray, y: np.ndarray, k: float) -> np.ndarray:
        code = x.astype(np.int64) * self.n_vocab + y
        i = np.clip(np.searchsorted(self.pairs, code), 0, len(self.pairs) - 1)
        c = np.where(self.pairs[i] == code, self.pair_counts[i], 0).astype(np.float64)
        return np.log((c + k) / (self.context[x] + k * self.n_vocab))


def choose_k(train: np.ndarray, n_vocab: int, heldout_fraction: float = 0.1) -> tuple[float, float]:
    """(unigram k, bigram k) minimising the loss on the training split's last ``heldout_fraction``."""
    cut = int(len(train) * (1 - heldout_fraction))
    counts, held = Bigram(train[:cut], n_vocab), np.asarray(train[cut:], dtype=np.int64)
    x, y = held[:-1], held[1:]
    uni = min(K_GRID, key=lambda k: -counts.unigram_logp(y, k).mean())
    bi = min(K_GRID, key=lambda k: -counts.bigram_logp(x, y, k).mean())
    return uni, bi


def reference_losses(train: np.ndarray, val: np.ndarray, n_vocab: int, batch_size: int, block_size: int,
                     eval_tokens: int) -> dict[str, float]:
    """Unigram and bigram val losses (nats per token) of add-k count models of ``train`` on the val windows the
    run's own evaluation scores; plus the k each used."""
    k_uni, k_bi = choose_k(train, n_vocab)
    counts = Bigram(train, n_vocab)
    x, y = eval_windows(val, batch_size, block_size, eval_tokens)
    x, y = x.reshape(-1), y.reshape(-1)
    return {"ref_unigram_loss": float(-counts.unigram_logp(y, k_uni).mean()),
            "ref_bigram_loss": float(-counts.bigram_logp(x, y, k_bi).mean()),
            "ref_unigram_k": k_uni, "ref_bigram_k": k_bi}


def regime_metrics(val_loss: float, refs: dict) -> dict[str, float]:
    """What every eval reports beside its val loss: both references and ``past_bigram`` (1.0 when the val loss is
    below the bigram reference, 0.0 when not, NaN when unknown; numeric, so trackers log it as a metric)."""
    past = past_bigram(val_loss, refs.get("ref_bigram_loss", math.nan))
    return {"ref_unigram_loss": refs.get("ref_unigram_loss", math.nan),
            "ref_bigram_loss": refs.get("ref_bigram_loss", math.nan),
            "past_bigram": math.nan if past is None else float(past)}


def cached_reference_losses(data, batch_size: int, block_size: int, eval_tokens: int) -> dict[str, float]:
    """``reference_losses`` for a ``tinylm.data.TokenData``, stored beside its token shards (keyed by the window
    shapes), so the trials of a sweep, which share the shards, count and score once. Written atomically; an
    unreadable file is recomputed."""
    import json
    import os
    from pathlib import Path

    folder = data.meta.get("cache_dir")
    path = Path(folder) / f"refs-{batch_size}x{block_size}-{eval_tokens}.json" if folder else None
    if path is not None and path.exists():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    refs = reference_losses(data.train, data.val, data.tokenizer.n_vocab, batch_size, block_size, eval_tokens)
    if path is not None:
        try:
            tmp = path.with_name(f".{path.name}.{os.getpid()}")
            tmp.write_text(json.dumps(refs))
            os.replace(tmp, path)
        except OSError:  # a read-only cache: the numbers are still right, only not kept
            pass
    return refs


def past_bigram(val_loss: float, ref_bigram_loss: float) -> bool | None:
    """True when a run's val loss beat the bigram reference; None when either is unknown."""
    if not (math.isfinite(val_loss) and math.isfinite(ref_bigram_loss)):
        return None
    return val_loss < ref_bigram_loss


__all__ = ["Bigram", "EVAL_SEED", "cached_reference_losses", "choose_k", "eval_windows", "past_bigram",
           "reference_losses", "regime_metrics"]
