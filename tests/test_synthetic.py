"""tinylm.data's synthetic tasks (``dataset="synthetic:copy"``): the copy stream the recall eval's format is trained
on, generated from fixed seeds into the same token cache as a corpus. Everything here takes well under a second
except the one end-to-end ``train()`` run (a few seconds)."""

from __future__ import annotations

import numpy as np
import pytest

from tinylm import data
from tinylm.config import Config, ConfigError


def copy_cfg(**kw) -> Config:
    return Config(**{"dataset": "synthetic:copy", "tokenizer": "char", "vocab_size": 64, "block_size": 64,
                     "batch_size": 8, "train_tokens": 50_000, **kw})


def stream(n: int = 20_000, vocab: int = 64, block: int = 64, seed: int = 0) -> np.ndarray:
    return np.concatenate(list(data.synthetic_stream("copy", n, vocab, block, seed)))


def examples(tokens: np.ndarray, eot: int) -> list[np.ndarray]:
    """The examples of a stream: the spans between EOTs (every stream ends with one)."""
    assert tokens[-1] == eot
    ends = np.flatnonzero(tokens == eot)
    return [tokens[a + 1:b] for a, b in zip(np.r_[-1, ends[:-1]], ends, strict=True)]


def test_each_example_is_a_sequence_then_its_copy_that_fits_the_context():
    vocab, block = 64, 64
    tokens = stream(vocab=vocab, block=block)
    exs = examples(tokens, vocab - 1)
    assert len(exs) > 300
    lengths = []
    for ex in exs:
        n = len(ex) // 2
        assert len(ex) == 2 * n and n >= 1 and 2 * n <= block, "whole copies that fit the context"
        assert np.array_equal(ex[:n], ex[n:]), "the second half is the first"
        lengths.append(n)
    assert set(lengths) == set(range(1, block // 2 + 1)), "every length that fits, 1 .. block_size // 2"
    symbols = stream(200_000, vocab=vocab, block=block)
    symbols = symbols[symbols != vocab - 1]
    assert symbols.min() == 0 and symbols.max() == vocab - 2, "every id but EOT, as the recall eval draws them"
    counts = np.bincount(symbols, minlength=vocab - 1)
    assert counts.min() > 0.8 * counts.mean(), "uniform over the symbols"


def test_the_stream_is_deterministic_and_a_smaller_budget_is_a_prefix():
    a = stream(30_000)
    assert np.array_equal(a, stream(30_000))
    assert 30_000 <= len(a) <= 30_000 + 64, "at least the budget, cut after a whole example"
    b = stream(7_000)
    assert np.array_equal(a[:len(b)], b)
    assert not np.array_equal(a[:len(b)], stream(7_000, seed=1)[:len(b)])


def test_load_data_builds_train_and_val_from_different_seeds(tmp_path):
    cfg = copy_cfg()
    d = data.load_data(cfg, tmp_path / "a")
    tok = d.tokenizer
    assert tok.n_vocab == cfg.vocab_size and tok.eot_token == cfg.vocab_size - 1
    assert len(d.train) >= cfg.train_tokens and len(d.val) >= data.SYNTHETIC_VAL_TOKENS
    train, val = np.asarray(d.train), np.asarray(d.val)
    assert not np.array_equal(train[:1000], val[:1000]), "val is generated with another seed than train"
    train_ex = {ex.tobytes() for ex in examples(train, tok.eot_token) if len(ex) >= 20}
    assert not train_ex & {ex.tobytes() for ex in examples(val, tok.eot_token)}, "no val example is a train one"
    assert np.array_equal(train, np.concatenate(list(data.synthetic_stream("copy", cfg.train_tokens, 64, 64, 0))))
    again = data.load_data(cfg, tmp_path / "b")  # a fresh cache builds the same streams
    assert again.fingerprint == d.fingerprint and again.tokenizer_hash == d.tokenizer_hash
    assert d.meta["n_train_tokens_available"] is None and d.meta["n_vocab"] == 64
    assert data.load_data(cfg, tmp_path / "a").meta["cache_dir"] == d.meta["cache_dir"], "the cache is reused"


def test_the_streams_follow_what_they_depend_on(tmp_path):
    """The lengths follow block_size and, without max_tokens, the size follows train_tokens: both are in the
    cache key and the fingerprint; what a synthetic task does not read (tokenizer, val_fraction) is not."""
    base = copy_cfg()
    fp = data.load_data(base, tmp_path).fingerprint
    assert data.load_data(base.replace(block_size=32), tmp_path).fingerprint != fp
    longer = data.load_data(base.replace(train_tokens=80_000), tmp_path)
    assert longer.fingerprint != fp and len(longer.train) >= 80_000
    capped = data.load_data(base.replace(max_tokens=20_000, data_scale=2.0), tmp_path)
    assert 40_000 <= len(capped.train) <= 40_064, "max_tokens * data_scale, as for a corpus"
    assert data.data_settings(base.replace(val_fraction=0.1, tokenizer="bpe")) == data.data_settings(base)
    lengths = {len(ex) // 2 for ex in examples(np.asarray(data.load_data(base.replace(block_size=32), tmp_path).train),
                                                63)}
    assert max(lengths) == 16


def test_corpora_keep_their_data_settings():
    """Adding synthetic tasks changed no corpus's cache key (no rebuilt shards, no changed fingerprints)."""
    cfg = Config(dataset="wiki-offline")
    assert set(data.data_settings(cfg)) == {"dataset", "num_documents", "val_fraction", "tokenizer", "vocab_size",
                                            "max_tokens", "data_scale", "format"}


def test_check_dataset_accepts_the_copy_task_and_refuses_an_unknown_one_in_one_line():
    data.check_dataset("synthetic:copy")
    copy_cfg()  # a valid Config
    for bad in ("synthetic:nope", "synthetic:", "synthetic:Copy"):
        with pytest.raises(ConfigError) as e:
            data.check_dataset(bad)
        msg = str(e.value)
        assert "\n" not in msg and repr(bad) in msg and "synthetic:copy" in msg, msg
    with pytest.raises(ConfigError, match="synthetic:copy"):  # an unknown corpus name lists the tasks too
        data.check_dataset("nope")
    with pytest.raises(ConfigError, match="synthetic token stream, not documents"):
        data.load_documents("synthetic:copy")


def test_a_vocabulary_or_context_too_small_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="vocab_size=2 is too small for a synthetic task"):
        data.load_data(copy_cfg(vocab_size=2), tmp_path)
    with pytest.raises(ConfigError, match="block_size=1 is too small for synthetic:copy"):
        data.synthetic_stream("copy", 100, 64, 1, 0).__next__()


def test_the_tokenizer_round_trips_and_its_symbols_are_distinct():
    tok = data.synthetic_tokenizer(8192)
    assert tok.n_vocab == 8192 and tok.eot_token == 8191 and len(set(tok.chars)) == 8190
    ids = list(range(8191))
    assert tok.encode_ordinary(tok.decode(ids)) == ids[:-1] + [tok.unk_token]  # unk decodes to U+FFFD
    assert data.synthetic_tokenizer(64).decode(range(3)) == "!\"#"


@pytest.mark.usefixtures("one_thread", "inprocess_dist")
def test_train_runs_on_the_copy_task_with_the_recall_eval(tmp_path, monkeypatch):
    """The trainer reads the stream as any corpus (bytes per token, reference losses, evals): a few hundred steps
    of a tiny model, the recall eval at the end, a loss near ln(V - 1) (nothing is copied yet at this length)."""
    import math

    from tinylm.train import train

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    cfg = copy_cfg(n_layer=1, n_head=2, n_embd=32, train_tokens=16_384, eval_every_tokens=8_192, eval_tokens=4_096,
                   evals="recall", eval_n=224, lr=3e-3)
    m = train(cfg, str(tmp_path / "run"))
    assert m["status"] == "completed"
    assert abs(m["final_val_loss"] - math.log(63)) < 0.2
    assert {"eval_recall_acc_L8", "eval_recall_acc_L16", "eval_recall_acc_L32"} <= set(m)
    assert "eval_recall_acc_L64" not in m, "2 L <= block_size: L = 64 does not fit a context of 64"


def test_the_recall_sweep_compares_mixers_at_equal_params_on_the_copy_task():
    """sweeps/recall.py: every mixer at every scale within 1 % of the same total parameters, trained on
    synthetic:copy with the recall eval over all its sequences; laptop heads of 16 (its shapes fixed from the
    solver's dims), a context axis whose batches hold the same tokens."""
    from pathlib import Path

    from tinylm.budget import num_params
    from tinylm.evals.recall import LENGTHS, PER_LENGTH
    from tinylm.sweep.experiment import load

    exp = load(Path(__file__).resolve().parents[1] / "sweeps" / "recall.py")
    for scale in ("smoke", "laptop", "full"):
        base = exp.base(scale)
        cfgs = [base.replace(**p) for p in exp.space_at(scale).points()]
        sizes = [num_params(c) for c in cfgs]
        assert max(sizes) / min(sizes) - 1 <= 0.02, (scale, sizes)
        assert {c.mixer for c in cfgs} == {"attention", "mamba", "hybrid"} and len({c.block_size for c in cfgs}) == 2
        assert len({c.tokens_per_step for c in cfgs}) == 1 and len({c.train_tokens for c in cfgs}) == 1
        for c in cfgs:
            assert c.dataset == "synthetic:copy" and c.evals == "recall"
            assert c.eval_n >= len(LENGTHS) * PER_LENGTH, "every recall sequence, not a sample"
            if scale == "laptop":
                assert c.head_dim == 16 and c.vocab_size == 256
