"""Exact recall over a context: a random token sequence of length L, then the same sequence again; the model must
predict each token of the second copy from the first (the "repeat after me" / induction probe of the attention-vs-
state-space literature, e.g. Jelassi et al. 2024, arXiv:2402.01032). Known difficulty: the tokens are uniform over
the vocabulary (EOT excluded), so nothing but the copy in the context helps; chance is 1 / (vocab - 1). An
attention layer can look the earlier token up at any L; a fixed-size state must hold L tokens at once, so its
accuracy falls as L grows. Each sequence starts with the tokenizer's EOT when it has one, as every document of a
packed training stream does (a model trained on EOT-separated copies scored 0.35-0.4 at L = 8 without it and 0.96
with it; RESULTS.md), and the last token of the second copy, which predicts nothing, is left out, so 2 L tokens
fit. Reported per length (``acc_L<L>``), for the lengths that fit in the model's context
(2 L <= block_size), with ``acc`` their mean.

Examples: ``PER_LENGTH`` sequences per length in ``LENGTHS``, drawn from ``random.Random(0)`` at evaluation time
from the model's own vocabulary (so the pool is the same for every model of one vocabulary).
"""

from __future__ import annotations

import math
import random

import torch

LENGTHS = (8, 16, 32, 64, 128, 256, 512)
PER_LENGTH = 32


def load() -> list[dict]:
    """The example pool: (length, index) pairs; the tokens are drawn in ``evaluate`` from the model's vocabulary."""
    return [{"length": n, "index": i} for n in LENGTHS for i in range(PER_LENGTH)]


@torch.no_grad()
def evaluate(model, tokenizer, docs: list[dict], batch_size: int = 16) -> dict[str, float]:
    """Copy accuracy and loss of the second half, per length: ``acc``, ``acc_L<L>``, ``loss_L<L>``, ``random``."""
    cfg = model.cfg
    eot = getattr(tokenizer, "eot_token", None)
    vocab = [t for t in range(cfg.vocab_size) if t != eot]
    prefix = [] if eot is None else [eot]  # a model trained on packed documents sees EOT before each one
    p = len(prefix)
    device = next(model.parameters()).device
    out: dict[str, float] = {}
    accs = []
    for n in sorted({d["length"] for d in docs}):
        if 2 * n > cfg.block_size:
            continue
        rows = [d for d in docs if d["length"] == n]
        hits = total = 0
        loss_sum = 0.0
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            seqs = [random.Random(f"recall/{n}/{d['index']}").choices(vocab, k=n) for d in chunk]
            # [EOT] s s[:-1]: the document start every packed stream puts before a document, in the 2 L positions
            # the context holds; positions p+n-1 .. p+2n-2 predict the copy's n tokens
            x = torch.tensor([(prefix + s + s)[:2 * n] for s in seqs], dtype=torch.long, device=device)
            logits, _ = model(x)
            pred = logits[:, p + n - 1:p + 2 * n - 1].float()
            want = torch.tensor(seqs, dtype=torch.long, device=device)
            hits += int((pred.argmax(-1) == want).sum())
            total += want.numel()
            loss_sum += float(torch.nn.functional.cross_entropy(pred.reshape(-1, pred.size(-1)), want.reshape(-1),
                                                                reduction="sum"))
        out[f"acc_L{n}"], out[f"loss_L{n}"] = hits / total, loss_sum / total
        accs.append(hits / total)
    out["acc"] = sum(accs) / len(accs) if accs else math.nan
    out["random"] = 1.0 / len(vocab)
    return out
