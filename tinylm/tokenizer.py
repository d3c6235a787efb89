"""Tokenizers: byte-level BPE trained at a chosen vocabulary, character-level, and GPT-2 from offline ranks.

Every tokenizer answers one protocol, the subset of ``tiktoken.Encoding`` that the rest of tinylm uses:
``encode_ordinary(text)``, ``encode_ordinary_batch(texts)``, ``encode(text, allowed_special=...)``,
``decode(ids)``, ``n_vocab``, ``eot_token`` and ``name``. BPE and GPT-2 *are* ``tiktoken.Encoding`` objects
(tiktoken encodes ~10x faster than HF ``tokenizers``); char-level is the small ``CharTokenizer`` below.

A tokenizer is saved as one JSON file whose content (ranks or characters, pattern, special tokens; not the
display name) has a SHA-256, ``tokenizer_hash``, that is the same in every process and recorded with every run.
This module does no downloading; ``tinylm.data`` fetches the GPT-2 ranks and the corpora.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import tiktoken

EOT = "<|endoftext|>"
FORMAT = "tinylm-tokenizer/1"

# GPT-2's pre-tokenizer regex, as tiktoken writes it (tiktoken_ext/openai_public.py, r50k_pat_str); equivalent to
# HF ByteLevel's regex. Copied, not imported, so a tiktoken release cannot change our tokenizer hashes.
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
# SHA-256 of the GPT-2 / r50k_base ranks in tiktoken's file format (tiktoken_ext.openai_public.r50k_base):
# decoding js-tiktoken's copy must reproduce it exactly.
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# Cap on the text a BPE/char tokenizer is trained on, to bound HF training time and memory on hub corpora
# (TinyStories is ~1.9 GB); 20x the offline corpora, which are always used whole.
TRAIN_MAX_CHARS = 100_000_000


class CharTokenizer:
    """Character-level tokenizer: ids ``0..k-1`` are characters (most frequent first), ``k`` is the unknown
    character, ``k+1`` is ``<|endoftext|>``; ``n_vocab = k + 2``."""

    def __init__(self, chars: Sequence[str], name: str = "char"):
        self.chars = list(chars)
        self.name = name
        self.unk_token = len(self.chars)
        self.eot_token = len(self.chars) + 1
        self.n_vocab = len(self.chars) + 2
        self._ids = {c: i for i, c in enumerate(self.chars)}
        self.special_tokens_set = {EOT}

    def encode_ordinary(self, text: str) -> list[int]:
        get, unk = self._ids.get, self.unk_token
        return [get(c, unk) for c in text]

    def encode_ordinary_batch(self, texts: Iterable[str], num_threads: int = 0) -> list[list[int]]:
        return [self.encode_ordinary(t) for t in texts]

    def encode(self, text: str, *, allowed_special: Any = frozenset(), disallowed_special: Any = "all") -> list[int]:
        """tiktoken-compatible: ``<|endoftext|>`` in the text is the EOT id only when allowed, and an error
        when disallowed (the default), as in ``tiktoken.Encoding.encode``."""
        allowed = allowed_special == "all" or EOT in allowed_special
        if not allowed and EOT in text and (disallowed_special == "all" or EOT in disallowed_special):
            raise ValueError(f"text contains the special token {EOT!r}; pass allowed_special={{{EOT!r}}}")
        if not allowed:
            return self.encode_ordinary(text)
        out: list[int] = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                out.append(self.eot_token)
            out.extend(self.encode_ordinary(part))
        return out

    def decode(self, ids: Iterable[int]) -> str:
        extra = {self.unk_token: "\ufffd", self.eot_token: EOT}
        return "".join(self.chars[i] if i < self.unk_token else extra[i] for i in map(int, ids))

    def __repr__(self) -> str:
        return f"CharTokenizer(name={self.name!r}, n_vocab={self.n_vocab})"


Tokenizer = tiktoken.Encoding | CharTokenizer


def train_char(docs: Iterable[str], vocab_size: int, name: str = "char") -> CharTokenizer:
    """The ``vocab_size - 2`` most frequent characters of ``docs`` (ties broken by code point, so the result
    does not depend on document order), plus unknown and EOT.

    Args:
        docs: training text.
        vocab_size: upper bound on ``n_vocab`` (at least 3).
        name: display name.
    """
    counts: collections.Counter[str] = collections.Counter()
    for doc in docs:
        counts.update(doc)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return CharTokenizer([c for c, _ in ranked[: max(1, vocab_size - 2)]], name=name)


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's ``bytes_to_unicode``: HF byte-level tokens are strings over this 256-char alphabet."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    printable = set(bs)
    extra = [b for b in range(256) if b not in printable]  # mapped to code points 256, 257, ... in byte order
    cs = bs + [256 + n for n in range(len(extra))]
    bs = bs + extra
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


def train_bpe(docs: Iterable[str], vocab_size: int, name: str = "bpe") -> tiktoken.Encoding:
    """Train a byte-level BPE with HF ``tokenizers`` and return it as a ``tiktoken.Encoding``.

    ``vocab_size - 1`` BPE tokens (the 256 bytes, then merges in order, so HF id == tiktoken rank) plus
    ``<|endoftext|>`` as the last id: ``n_vocab == vocab_size`` unless the corpus runs out of merges first.
    With the GPT-2 regex tiktoken then yields the same ids as HF (checked in tests/test_data.py).

    Args:
        docs: training documents (each pre-tokenized on its own; no merge crosses a document boundary).
        vocab_size: total vocabulary including EOT (at least 257).
        name: the Encoding's name.
    """
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size}: byte-level BPE needs at least 257 (256 bytes + EOT)")
    hf = HFTokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 1, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    hf.train_from_iterator(docs, trainer)
    dec = _byte_decoder()
    ranks = {bytes(dec[ch] for ch in tok): i for tok, i in hf.get_vocab().items()}
    return _encoding(name, GPT2_PAT, ranks)


def _encoding(name: str, pat_str: str, ranks: dict[bytes, int]) -> tiktoken.Encoding:
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"tokenizer {name!r}: ranks must be exactly 0..{len(ranks) - 1}")
    return tiktoken.Encoding(name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens={EOT: len(ranks)})


def gpt2_from_js_tiktoken(js_text: str) -> tiktoken.Encoding:
    """GPT-2 from npm ``js-tiktoken``'s ``dist/ranks/gpt2.js``: ``export default {..., "bpe_ranks": "..."}``
    where ``bpe_ranks`` holds lines ``"<anything> <first rank> <b64 token> <b64 token> ..."`` (consecutive
    ranks). The decoded ranks must hash to tiktoken's published r50k_base SHA-256.

    Args:
        js_text: the file's content.
    """
    obj = json.loads(js_text[js_text.index("{"): js_text.rindex("}") + 1])
    ranks: dict[bytes, int] = {}
    for line in obj["bpe_ranks"].split("\n"):
        if line:
            _, first, *tokens = line.split(" ")
            ranks.update((base64.b64decode(t), int(first) + i) for i, t in enumerate(tokens))
    lines = "".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda kv: kv[1]))
    got = hashlib.sha256(lines.encode()).hexdigest()
    if got != GPT2_RANKS_SHA256:
        raise ValueError(f"GPT-2 ranks from js-tiktoken hash to {got}, expected {GPT2_RANKS_SHA256}")
    enc = _encoding("gpt2", GPT2_PAT, ranks)
    assert enc.n_vocab == 50257 and enc.eot_token == 50256
    return enc


# --- serialisation and content hash ---------------------------------------------------------------------
def tokenizer_to_dict(tok: Tokenizer) -> dict[str, Any]:
    """Everything that defines the tokenizer, JSON-ready (bytes as base64, ranks in order)."""
    if isinstance(tok, CharTokenizer):
        return {"format": FORMAT, "kind": "char", "name": tok.name, "chars": tok.chars}
    special = {s: tok.encode_single_token(s) for s in sorted(tok.special_tokens_set)}
    n_ranks = tok.n_vocab - len(special)
    if sorted(special.values()) != list(range(n_ranks, tok.n_vocab)):
        raise ValueError(f"{tok.name}: special tokens must follow the ranks")
    ranks = [base64.b64encode(tok.decode_single_token_bytes(i)).decode() for i in range(n_ranks)]
    # tiktoken keeps the pattern only in the private _pat_str; it is part of what defines the ids.
    return {"format": FORMAT, "kind": "tiktoken", "name": tok.name, "pat_str": tok._pat_str, "ranks": ranks,
            "special_tokens": special}


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    if d.get("format") != FORMAT:
        raise ValueError(f"not a tinylm tokenizer file (format {d.get('format')!r}, expected {FORMAT!r})")
    if d["kind"] == "char":
        return CharTokenizer(d["chars"], name=d["name"])
    ranks = {base64.b64decode(t): i for i, t in enumerate(d["ranks"])}
    return tiktoken.Encoding(d["name"], pat_str=d["pat_str"], mergeable_ranks=ranks, special_tokens=d["special_tokens"])


def _content_hash(d: dict[str, Any]) -> str:
    content = {k: v for k, v in d.items() if k not in ("name", "sha256")}
    return hashlib.sha256(json.dumps(content, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def tokenizer_hash(tok: Tokenizer) -> str:
    """SHA-256 of the tokenizer's content (not its display name): equal hashes mean identical ids."""
    return _content_hash(tokenizer_to_dict(tok))


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> str:
    """Write ``tok`` to one JSON file (atomically: temp file, then ``os.replace``) and return its hash.

    Args:
        tok: a tokenizer from this module.
        path: destination file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    d = tokenizer_to_dict(tok)
    d["sha256"] = _content_hash(d)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(d, f, ensure_ascii=True)
    os.replace(tmp, path)
    return d["sha256"]


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a file written by ``save_tokenizer``; raises if its content no longer matches the stored hash.

    Args:
        path: the JSON file.
    """
    d = json.loads(Path(path).read_text())
    if "sha256" in d and _content_hash(d) != d["sha256"]:  # hashing the file is ~10x cheaper than the Encoding
        raise ValueError(f"{path}: tokenizer content does not match its recorded sha256 (corrupt file?)")
    return tokenizer_from_dict(d)
