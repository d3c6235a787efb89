"""tinylm.regime: count unigram / bigram references on the val windows a run's evaluation scores.

On a stream drawn from a known first-order Markov chain the bigram reference reaches the chain's conditional
entropy and the unigram reference its marginal entropy (both known exactly), and the windows are the ones
``tinylm.train.evaluate`` draws."""

from __future__ import annotations

import numpy as np
import pytest

from tinylm.data import get_batch
from tinylm.regime import EVAL_SEED, Bigram, eval_windows, past_bigram, reference_losses, regime_metrics


def markov_stream(n: int, v: int, seed: int) -> tuple[np.ndarray, float, float]:
    """n tokens of a random sparse-ish Markov chain over v states; (stream, H(next | current), H(marginal))."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(v, 0.3), size=v)  # peaked rows: a bigram model helps a lot
    # stationary distribution: the left eigenvector of P for eigenvalue 1
    w, vecs = np.linalg.eig(P.T)
    pi = np.real(vecs[:, np.argmin(abs(w - 1))])
    pi /= pi.sum()
    u = rng.random(n)
    cum = np.cumsum(P, axis=1)
    out = np.empty(n, dtype=np.int64)
    s = rng.choice(v, p=pi)
    for i in range(n):
        s = min(int(np.searchsorted(cum[s], u[i])), v - 1)
        out[i] = s
    h_cond = float(-(pi[:, None] * P * np.log(P)).sum())
    h_marg = float(-(pi * np.log(pi)).sum())
    return out, h_cond, h_marg


def test_references_reach_the_chains_entropies():
    v = 20
    stream, h_cond, h_marg = markov_stream(300_000, v, seed=0)
    train, val = stream[:250_000].astype(np.uint16), stream[250_000:].astype(np.uint16)
    refs = reference_losses(train, val, v, batch_size=8, block_size=64, eval_tokens=32_768)
    # 4,096 scored val tokens: the sample mean of -log p has s.e. ~ 1/sqrt(4096) of its s.d. (~1 nat): 0.05 is 3 s.e.
    assert refs["ref_bigram_loss"] == pytest.approx(h_cond, abs=0.05)
    assert refs["ref_unigram_loss"] == pytest.approx(h_marg, abs=0.05)
    assert refs["ref_bigram_loss"] < refs["ref_unigram_loss"] - 0.3  # the chain is far from i.i.d.
    assert refs["ref_unigram_k"] in (1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0)


def test_windows_are_the_ones_evaluate_scores():
    val = np.arange(5_000, dtype=np.uint16) % 97
    x, y = eval_windows(val, batch_size=4, block_size=16, eval_tokens=4 * 16 * 3)
    rng = np.random.default_rng(EVAL_SEED)  # tinylm.train.evaluate: this seed, eval_tokens // (B * T) batches
    for i in range(3):
        bx, by = get_batch(val, 4, 16, rng)
        assert np.array_equal(x[4 * i: 4 * i + 4], bx.numpy()) and np.array_equal(y[4 * i: 4 * i + 4], by.numpy())
    assert x.shape == (12, 16)


def test_unseen_pairs_and_a_vocabulary_larger_than_the_stream():
    counts = Bigram(np.array([1, 2, 1, 2, 1], dtype=np.uint16), n_vocab=50_000)  # sparse: no 50k x 50k table
    p12 = np.exp(counts.bigram_logp(np.array([1]), np.array([2]), k=0.0))
    assert p12 == pytest.approx(1.0)  # 1 is always followed by 2
    unseen = counts.bigram_logp(np.array([2]), np.array([7]), k=1.0)
    assert np.isfinite(unseen).all() and unseen[0] < np.log(1e-4)


def test_past_bigram():
    assert past_bigram(4.0, 4.29) is True and past_bigram(5.07, 4.29) is False
    assert past_bigram(float("nan"), 4.29) is None


def test_regime_metrics_are_numeric():
    refs = {"ref_unigram_loss": 6.3, "ref_bigram_loss": 4.3}
    assert regime_metrics(4.0, refs) == {"ref_unigram_loss": 6.3, "ref_bigram_loss": 4.3, "past_bigram": 1.0}
    assert regime_metrics(5.1, refs)["past_bigram"] == 0.0
    assert np.isnan(regime_metrics(float("nan"), refs)["past_bigram"])


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_every_eval_of_a_run_reports_the_references(tmp_path):
    """train() scores the references once on its data and every eval carries them beside its own val loss."""
    from tinylm.config import Config
    from tinylm.data import load_data
    from tinylm.train import train

    cfg = Config.from_name("debug", train_tokens=2_048, eval_every_tokens=1_024, eval_tokens=1_024)
    reports: list[dict] = []
    final = train(cfg, str(tmp_path / "run"), report=lambda m, _ckpt: reports.append(dict(m)))
    data = load_data(cfg)
    want = reference_losses(data.train, data.val, data.tokenizer.n_vocab, cfg.batch_size, cfg.block_size,
                            cfg.eval_tokens)
    assert len(reports) >= 2 and all(r["ref_bigram_loss"] == want["ref_bigram_loss"] for r in reports)
    assert final["ref_unigram_loss"] == want["ref_unigram_loss"] > final["ref_bigram_loss"]
    # 2,048 tokens of training: far above a bigram of the whole train split
    assert final["past_bigram"] == float(final["val_loss"] < final["ref_bigram_loss"]) == 0.0


def test_references_are_counted_once_per_shards_and_window_shape(tmp_path, monkeypatch):
    """The trials of a sweep share their token shards: the second asks the file beside them, not the counts."""
    from types import SimpleNamespace

    import tinylm.regime as regime

    v = 20
    stream, _, _ = markov_stream(20_000, v, seed=1)
    data = SimpleNamespace(train=stream[:15_000], val=stream[15_000:], tokenizer=SimpleNamespace(n_vocab=v),
                           meta={"cache_dir": str(tmp_path)})
    first = regime.cached_reference_losses(data, 4, 32, 1024)
    monkeypatch.setattr(regime, "reference_losses", lambda *a, **k: pytest.fail("counted again"))
    assert regime.cached_reference_losses(data, 4, 32, 1024) == first
    assert (tmp_path / "refs-4x32-1024.json").exists()
