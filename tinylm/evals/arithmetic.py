"""Simple arithmetic: every addition a + b with a, b in 1..20 (400 problems, generated, no download).

Prompt in the format of lm-eval's ``arithmetic`` tasks (GPT-3 paper, Brown et al. 2020, sec. 3.9.1):
"Question: What is {a} plus {b}?\\nAnswer:" -> " {a+b}".

- ``acc`` / ``acc_norm``: multiple choice over every possible sum (2..40, 39 choices), so a tiny model gets graded
  credit for ranking the right number first; random baseline = mean(1 / 39), computed from the choices.
- ``greedy_acc``: lm-eval's metric for its arithmetic tasks (the answer is the greedy continuation), reported
  for comparability.
"""

from __future__ import annotations

import functools

from tinylm.evals.scorer import MC, evaluate_mc

LOW, HIGH = 1, 20


@functools.cache
def load() -> list[MC]:
    sums = tuple(str(s) for s in range(2 * LOW, 2 * HIGH + 1))
    return [MC(f"Question: What is {a} plus {b}?\nAnswer:", sums, sums.index(str(a + b)))
            for a in range(LOW, HIGH + 1) for b in range(LOW, HIGH + 1)]


def evaluate(model, tokenizer, docs, batch_size: int = 16) -> dict[str, float]:
    return evaluate_mc(model, tokenizer, docs, batch_size=batch_size, greedy=True)
