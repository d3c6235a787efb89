"""Every input checked before compute (issue 18, part 2): a mistake that used to run (or hang) is refused in ONE
line naming the field or flag and what is allowed, before any data, model, store or Ray, within seconds.

One test (table-driven) per class of input:
  inert axes ........... an axis whose values all build the same run after the budget solver and the derivations
  --set ................ a field the sweep sweeps (an axis, a variant's field, a fixed value) or sets (scale, name)
  run_experiment ....... a preset name (or anything else) instead of a Config
  sweep size ........... --seeds and the trial count are capped; the dry run describes each grid point once
  vocabulary ........... a BPE size the corpus cannot reach; a char vocabulary mostly UNK or mostly empty rows
  token cache .......... a budget-cut cache no longer crashes the dry run; a damaged one is rebuilt; temp dirs ignored
  stores and cluster ... --tracking-uri, --optuna-storage, --address (and their env vars) checked up front
  silent servers ....... every entry point that reaches a tracking server: the same check, the same bounded timeout
  '%' in paths ......... refused (SQLAlchemy decodes sqlite paths, so another file would be opened)
  prices ............... finite and >= 0
"""

from __future__ import annotations

import glob
import json
import os
import re
import runpy
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tinylm.config import Config, ConfigError
from tinylm.sweep import Space
from tinylm.sweep.experiment import Experiment, check_space
from tinylm.sweep.pipeline import run
from tinylm.tracking import TrackingError

ROOT = Path(__file__).resolve().parents[1]
GLU = runpy.run_path(str(ROOT / "sweeps" / "glu.py"), run_name="glu_sweep")["EXPERIMENT"]


def one_line(msg: str) -> str:
    assert "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert "Traceback" not in msg, msg
    return msg


@pytest.fixture
def no_ray(monkeypatch):
    """Importing Ray (or tinylm.tune) fails the test: the refusal must come before it."""
    monkeypatch.setitem(sys.modules, "tinylm.tune", None)
    monkeypatch.setitem(sys.modules, "ray", None)


def refused(exp: Experiment, pattern: str, exc: type[Exception] = ConfigError, **options) -> str:
    """``run(exp, dry_run=True, ...)`` raises ``exc`` matching ``pattern`` in one line; returns the message."""
    with pytest.raises(exc, match=pattern) as e:
        run(exp, dry_run=True, **options)
    return one_line(str(e.value))


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- inert axes -----------------------------------------------------------------------------------------------------
DIMS = ["target_params=0", "n_embd=64", "n_layer=2", "n_head=4"]
INERT = [  # (experiment, scale, --set, message)
    (GLU, "laptop", DIMS, r"axis glu_factor \(2.0, 2.66, 3.0, 4.0\) changes nothing here: every value builds the same "
                          r"model .*d_ff=\d+ is fixed .*add --set d_ff=0"),  # the error message's own advice
    (GLU, "smoke", DIMS, "axis glu_factor"),
    (Experiment(name="e", preset="budget-10m", space={"embed_share": [0.25, 0.35, 0.45]}), "smoke", [*DIMS, "d_ff=0"],
     r"axis embed_share .* only acts through the budget solver"),
    (Experiment(name="m", preset="debug", space={"muon_lr": [0.01, 0.02]}), "smoke", [], "axis muon_lr"),
    (Experiment(name="r", preset="debug", space={"rope_theta": [1e4, 5e5]}), "smoke", [], "axis rope_theta"),
    (Experiment(name="c", preset="debug", space={"min_lr_ratio": [0.0, 0.1]}), "smoke", ["schedule=constant"],
     "axis min_lr_ratio"),
    (Experiment(name="w", preset="debug", space={"warmup_tokens": [0, 1_200]}), "smoke", [],  # 0 = 2 % of 60k
     "axis warmup_tokens"),
    (Experiment(name="v", preset="debug", space=Space(variants=[{"decay_frac": 0.1}, {"decay_frac": 0.3}])), "smoke", [],
     r"the variants \(\{'decay_frac': 0.1\}, \{'decay_frac': 0.3\}\) change nothing"),
]
LIVE = [  # the same axes where they do act: no refusal
    (GLU, "laptop", []), (GLU, "smoke", [*DIMS, "d_ff=0"]),
    (INERT[2][0], "smoke", []), (INERT[3][0], "smoke", ["optimizer=muon"]), (INERT[4][0], "smoke", ["pos=rope"]),
    (INERT[5][0], "smoke", ["schedule=cosine"]), (INERT[7][0], "smoke", ["schedule=wsd"]),
]


@pytest.mark.parametrize("exp,scale,sets,pattern", INERT, ids=[f"{c[0].name}-{c[1]}-{len(c[2])}" for c in INERT])
def test_an_inert_axis_is_refused_before_compute(exp, scale, sets, pattern, tmp_path, no_ray):
    refused(exp, pattern, scale=scale, set=sets, results=str(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


def test_live_axes_and_every_sweep_pass():
    from tinylm.sweep.experiment import parse_sets

    for exp, scale, sets in LIVE:
        check_space(exp.base(scale, **parse_sets(sets)), exp.space_at(scale))
    for path in sorted(glob.glob(str(ROOT / "sweeps" / "*.py"))):
        exp = runpy.run_path(path, run_name="sweep").get("EXPERIMENT")
        for scale in ("smoke", "laptop", "full") if exp else ():
            check_space(exp.base(scale), exp.space_at(scale))  # no real sweep has an inert axis
    cfg = Config.from_name("debug")
    same = cfg.replace(name="x", muon_lr=0.5, glu_factor=2.0, d_ff=cfg.ffn_hidden, warmup_tokens=cfg.warmup)
    assert same.effective() == cfg.effective() and same != cfg
    for change in (dict(lr=1e-2), dict(d_ff=512), dict(seed=1), dict(schedule="wsd"), dict(compile=True)):
        assert cfg.replace(**change).effective() != cfg.effective(), change


# --- --set of a swept or reserved field -----------------------------------------------------------------------------
TOK = Experiment(name="t", preset="debug", space=Space(variants=[{"tokenizer": "bpe", "vocab_size": 512},
                                                                  {"tokenizer": "char", "vocab_size": 128}]))
FIXED = Experiment(name="f", preset="debug", space=Space(lr=[1e-3, 2e-3], mlp="swiglu"))
SET_REFUSED = [  # (experiment, --set as the CLI or as run() gives it, message)
    (GLU, ["glu_factor=3.0"], r"^--set glu_factor=3.0: glu_factor is an axis of this sweep \(values 2.0, 2.66, 3.0, "
                              r"4.0\), which sets it per trial and would ignore --set"),
    (GLU, {"glu_factor": 3.0}, "glu_factor is an axis of this sweep"),
    (TOK, ["vocab_size=256"], r"vocab_size is an axis of this sweep \(values 512, 128\)"),
    (FIXED, ["mlp=gelu"], r"mlp is an axis of this sweep \(values swiglu\)"),
    (GLU, ["scale=full"], r"^--set scale=full: scale is set by the sweep itself; use --scale \(smoke, laptop or full\)"),
    (GLU, {"scale": "full"}, "use --scale"),
    (GLU, ["name=x"], r"^--set name=x: name is set by the sweep itself; use --results DIR"),
    (FIXED, {"name": "x"}, "use --results DIR"),
]


@pytest.mark.parametrize("exp,sets,pattern", SET_REFUSED, ids=[f"{c[0].name}-{c[1]}" for c in SET_REFUSED])
def test_set_of_a_swept_or_reserved_field_is_refused(exp, sets, pattern, tmp_path, no_ray):
    refused(exp, pattern, scale="smoke", set=sets, results=str(tmp_path))


def test_sweep_cli_refuses_set_and_inert_axes_in_one_line(tmp_path, child_env):
    """Was a TypeError traceback (--set scale=full) and a sweep of four identical models (the dims advice)."""
    for argv, expected in ((["--set", "scale=full"], "error: --set scale=full: scale is set by the sweep itself"),
                           (["--set", *DIMS], "error: axis glu_factor (2.0, 2.66, 3.0, 4.0) changes nothing here")):
        proc = subprocess.run([sys.executable, "sweeps/glu.py", "--dry-run", *argv, "--results", str(tmp_path)],
                              capture_output=True, text=True, cwd=ROOT, env=child_env, timeout=120)
        assert proc.returncode == 1 and proc.stderr.startswith(expected), proc.stderr[-2000:]
        assert len(proc.stderr.strip().splitlines()) == 1 and "DRY RUN" not in proc.stdout
    assert not os.listdir(tmp_path)


# --- run_experiment takes a Config ----------------------------------------------------------------------------------
@pytest.mark.parametrize("arg,pattern", [
    ("debug", r"run_experiment\(\) takes a Config, got str 'debug'; build one with Config.from_name\('debug'\)"),
    ("medium", r"Config.from_name\('medium'\) .*presets: debug, small"),
    (None, r"got NoneType None; build one with Config.from_name\(\"debug\""),
    ({"name": "debug"}, "got dict"), (3, "got int 3"),
])
def test_run_experiment_takes_a_config(arg, pattern, tmp_path, monkeypatch):
    import tinylm

    monkeypatch.chdir(tmp_path)
    with pytest.raises(TypeError, match=pattern) as e:
        tinylm.run_experiment(arg)
    one_line(str(e.value))
    assert not os.listdir(tmp_path)


# --- sweep size -----------------------------------------------------------------------------------------------------
def test_seeds_and_trials_are_capped_and_the_dry_run_is_fast(tmp_path, monkeypatch, capsys):
    from tinylm.sweep import plan
    from tinylm.sweep.settings import MAX_SEEDS, MAX_TRIALS

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "tinylm.tune", None)
        t0 = time.perf_counter()
        refused(GLU, r"^--seeds=1,000,000 is more than 100 \(tinylm.sweep.MAX_SEEDS", seeds=1_000_000,
                results=str(tmp_path))
        assert time.perf_counter() - t0 < 5
        refused(GLU, f"--seeds={MAX_SEEDS + 1} is more than", seeds=MAX_SEEDS + 1, results=str(tmp_path))
        refused(GLU, rf"^2,001 trials \(4 grid points x 1 seeds \+ {MAX_TRIALS - 3} refined\) is more than 2,000 "
                     r"\(tinylm.sweep.MAX_TRIALS\)", seeds=1, refine=MAX_TRIALS - 3, results=str(tmp_path),
                lr_grid=[])
        refused(GLU, rf"^2,005 trials \(4 grid points x \(3 LR-tuning runs \+ 1 seeds\) \+ {MAX_TRIALS - 11} refined\)",
                seeds=1, refine=MAX_TRIALS - 11, results=str(tmp_path))  # the LR phase's runs count too
        refused(GLU, r"trials \(4 ranking runs \+ finalists x seeds\) is more than", two_phase=True, seeds=MAX_SEEDS,
                finalists=19, results=str(tmp_path))
    calls = []
    real = plan.describe
    monkeypatch.setattr(plan, "describe", lambda cfg, point: calls.append(point) or real(cfg, point))
    table = run(GLU, dry_run=True, seeds=MAX_SEEDS, refine=MAX_TRIALS - 4 * MAX_SEEDS, results=str(tmp_path),
                lr_grid=[])
    assert len(table) == 4 * MAX_SEEDS and table["seed"].nunique() == MAX_SEEDS
    assert len(calls) == 4, "each grid point is described once, not once per seed"
    assert "DRY RUN" in capsys.readouterr().out


# --- vocabulary the corpus cannot fill ------------------------------------------------------------------------------
def _words_corpus(path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = ["".join(w) for w in rng.choice(list("abcdefghijklmnop"), size=(300, 5))]
    path.write_text("\n\n".join(" ".join(rng.choice(words, size=40)) for _ in range(120)))
    return path


def _letters_corpus(path: Path) -> Path:
    """Ten characters, a-j, equally frequent: 10 distinct characters, no spaces."""
    rng = np.random.default_rng(0)
    path.write_text("\n\n".join("".join(rng.choice(list("abcdefghij"), size=400)) for _ in range(60)))
    return path


def test_vocab_the_corpus_cannot_fill_is_refused_before_the_model(tmp_path):
    from tinylm.data import load_data

    cache = tmp_path / "cache"
    words = f"text:{_words_corpus(tmp_path / 'words.txt')}"
    letters = f"text:{_letters_corpus(tmp_path / 'letters.txt')}"

    def load(dataset: str, tokenizer: str, vocab: int):
        return load_data(Config(dataset=dataset, tokenizer=tokenizer, vocab_size=vocab, num_documents=0), cache)

    with pytest.raises(ConfigError, match=r"vocab_size=200,000 is more than dataset='text:.*words.txt' can fill: its "
                                          r"BPE runs out of merges at ([\d,]+) tokens \(the largest reachable size\)"
                       ) as e:
        load(words, "bpe", 200_000)
    reachable = int(re.search(r"at ([\d,]+) tokens", one_line(str(e.value))).group(1).replace(",", ""))
    assert 257 < reachable < 200_000
    assert load(words, "bpe", reachable).tokenizer.n_vocab == reachable  # the boundary itself is fine
    with pytest.raises(ConfigError, match=f"set vocab_size <= {reachable:,}"):
        load(words, "bpe", reachable + 1)
    for vocab, pattern in [  # char: 10 distinct characters -> n_vocab 12 (+ UNK + EOT)
        (5, r"vocab_size=5 with tokenizer='char' keeps 3 of the 10 distinct characters .*: 6\d% of the training text "
            r"becomes UNK \(at most 1%.*set vocab_size >= 12 \(99% of the text\) or 12 \(every character\)"),
        (11, r"keeps 9 of the 10 distinct characters .*: (9|10)% of the training text becomes UNK"),
        (25, r"vocab_size=25 is more than twice what .* can fill with tokenizer='char': it has 10 distinct characters "
             r"\(\+ UNK \+ EOT = 12\)"),
    ]:
        with pytest.raises(ConfigError, match=pattern) as e:
            load(letters, "char", vocab)
        one_line(str(e.value))
    assert load(letters, "char", 12).tokenizer.n_vocab == 12 and load(letters, "char", 24).meta["unk_fraction"] == 0
    kept = sorted(json.loads(Path(m).read_text())["settings"]["vocab_size"]
                  for m in glob.glob(str(cache / "tokens" / "*" / "meta.json")))
    assert kept == sorted([reachable, 12, 24])  # a refused vocabulary left no shards
    assert not glob.glob(str(cache / "tokens" / ".tmp-*"))


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_a_mostly_unk_vocab_stops_train_before_the_model(tmp_path, monkeypatch):
    import tinylm.train as tr

    def no_model(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tr.run, "GPT", no_model)  # setup builds it (tinylm/train/run.py)
    cfg = Config.from_name("debug", dataset=f"text:{_letters_corpus(tmp_path / 'l.txt')}", tokenizer="char",
                           vocab_size=5, num_documents=0, train_tokens=2_048, eval_every_tokens=1_024)
    with pytest.raises(ConfigError, match=r"6\d% of the training text becomes UNK") as e:
        tr.train(cfg, str(tmp_path / "run"))
    one_line(str(e.value))


# --- the token cache ------------------------------------------------------------------------------------------------
def test_token_cache_is_read_only_when_whole(tmp_path, monkeypatch, capsys, caplog):
    """A failed --max_tokens 10 run left a complete but budget-cut cache whose corpus size is unknown (null): every
    later dry run on that corpus crashed reading it. Now it is skipped; a damaged cache folder is rebuilt; a
    temp folder a crash left behind is never read."""
    from tinylm.data import load_data
    from tinylm.sweep.plan import corpus_tokens

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    corpus = f"text:{_words_corpus(tmp_path / 'words.txt')}"
    cfg = Config.from_name("debug", dataset=corpus, vocab_size=300, num_documents=0)
    load_data(cfg.replace(max_tokens=10))  # what the failed run left
    load_data(cfg.replace(val_fraction=0.2))  # another split: another corpus size
    assert corpus_tokens(cfg)[1] is False
    exp = Experiment(name="c", preset="debug", space={"lr": [1e-3, 2e-3]},
                     overrides=dict(dataset=corpus, vocab_size=300, num_documents=0))
    assert len(run(exp, dry_run=True, results=str(tmp_path / "r"))) == 2  # crashed with a TypeError
    assert "DRY RUN" in capsys.readouterr().out
    n = len(load_data(cfg).train)
    assert corpus_tokens(cfg) == (n, True)
    crash = tmp_path / "cache" / "tokens" / ".tmp-crashed"
    crash.mkdir()
    (crash / "meta.json").write_text(json.dumps({"settings": {k: getattr(cfg, k) for k in (
        "dataset", "tokenizer", "vocab_size", "num_documents", "val_fraction")}, "n_train_tokens_available": 7}))
    assert corpus_tokens(cfg) == (n, True)
    out = Path(load_data(cfg).meta["cache_dir"])
    for damage in (lambda: os.truncate(out / "train.bin", 100), lambda: (out / "meta.json").unlink(),
                   lambda: (out / "meta.json").write_text("{trunc"), lambda: (out / "tokenizer.json").unlink()):
        damage()
        caplog.clear()
        assert len(load_data(cfg).train) == n
        assert "is incomplete; rebuilding it" in caplog.text


# --- stores and cluster, checked up front ---------------------------------------------------------------------------
def test_stores_and_cluster_are_checked_before_anything(tmp_path, monkeypatch):
    import tinylm.tune.resources  # noqa: F401 - imported once here, so the timings below are the checks' own

    port = dead_port()
    (tmp_path / "file").write_text("")
    cases = [  # (options, env, message); all with --dry-run
        (dict(optuna_storage="nonsense"), {}, r"^--optuna-storage: Optuna storage nonsense is not usable \(checked "
                                              r"within 10 s\): ArgumentError"),
        (dict(optuna_storage=f"postgresql://u:pw@127.0.0.1:{port}/db"), {},
         r"^--optuna-storage: Optuna storage postgresql://u:\*\*\*@127.0.0.1:\d+/db is not usable"),
        (dict(optuna_storage=f"sqlite:///{tmp_path}/file/optuna.db"), {}, "file is not a writable folder"),
        ({}, {"TINYLM_OPTUNA_STORAGE": "nonsense"}, r"^Optuna storage nonsense is not usable"),
        (dict(tracking_uri=f"http://u:pw@127.0.0.1:{port}"), {},
         r"^--tracking-uri: MLflow tracking server at http://u:\*\*\*@127.0.0.1:\d+ is not reachable within 10 s"),
        (dict(tracking_uri="foo://bar"), {}, "is not reachable within 10 s: .*check the URI"),
        ({}, {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"}, r"^MLflow tracking server at .* not reachable"),
        (dict(address=f"127.0.0.1:{port}"), {}, r"^--address='127.0.0.1:\d+': no Ray cluster answers at "
                                                r"127.0.0.1:\d+ within 10 s \(ConnectionRefusedError"),
        (dict(address=f"ray://127.0.0.1:{port}"), {}, "no Ray cluster answers"),
        ({}, {"RAY_ADDRESS": f"127.0.0.1:{port}"}, r"^RAY_ADDRESS='127.0.0.1:\d+': no Ray cluster answers"),
        (dict(address="nohostport"), {}, r"^--address='nohostport' is not a Ray address; use host:port"),
        (dict(address="http://127.0.0.1:8265"), {}, "is not a Ray address"),
        (dict(address="10.0.0.1:port"), {}, "is not a Ray address"),
    ]
    for options, env, pattern in cases:
        with monkeypatch.context() as m:
            for k, v in env.items():
                m.setenv(k, v)
            if "address" not in options and "RAY_ADDRESS" not in env:
                m.setitem(sys.modules, "tinylm.tune", None)  # nothing Ray-related is needed to refuse these
            t0 = time.perf_counter()
            msg = refused(GLU, pattern, exc=(ConfigError, TrackingError), results=str(tmp_path / "r"), **options)
            assert time.perf_counter() - t0 < 10 and "pw" not in msg, msg
    assert not (tmp_path / "r").exists()  # the dry run creates nothing, refused or not


# --- silent servers: one check, one timeout, every entry point ------------------------------------------------------
@pytest.fixture
def silent_server():
    """A server that accepts TCP connections and never answers (the kernel completes the handshake)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


def test_every_entry_point_gives_a_silent_tracking_server_the_same_bounded_time(silent_server, tmp_path,
                                                                              monkeypatch):
    import tinylm.tracking.store as store
    import tinylm.train
    from tinylm.analysis.cli import main as analysis
    from tinylm.api import run_experiment
    from tinylm.log import main as log

    monkeypatch.setattr(store, "REACH_TIMEOUT_S", 1.0)  # read at each check
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tinylm.train, "train", lambda *a, **k: pytest.fail("trained before the store answered"))
    within = re.escape(f"at {silent_server} is not reachable within 1 s")

    def sweep():
        run(GLU, dry_run=True, tracking_uri=silent_server, results=str(tmp_path / "r"))

    def track():
        monkeypatch.setenv("MLFLOW_TRACKING_URI", silent_server)
        try:
            run_experiment(Config.from_name("debug"), track=True, results_dir=str(tmp_path / "r"))
        finally:
            monkeypatch.delenv("MLFLOW_TRACKING_URI")

    for name, call, exc in (("sweep", sweep, TrackingError), ("--track", track, TrackingError),
                            ("analysis", lambda: analysis(["glu", "--uri", silent_server]), SystemExit),
                            ("log", lambda: log(["--uri", silent_server]), SystemExit)):
        t0 = time.perf_counter()
        with pytest.raises(exc) as e:
            call()
        took = time.perf_counter() - t0
        msg = one_line(str(e.value.code if exc is SystemExit else e.value))
        assert re.search(within, msg) and took < 6, (name, took, msg)


def test_mlflow_own_http_retries_are_bounded(monkeypatch, tmp_path):
    from tinylm.tracking.store import MLFLOW_HTTP_MAX_RETRIES, REACH_TIMEOUT_S, connect

    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    connect(f"sqlite:///{tmp_path}/mlflow.db")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == str(int(REACH_TIMEOUT_S))
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == str(MLFLOW_HTTP_MAX_RETRIES)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "77")
    connect(f"sqlite:///{tmp_path}/mlflow.db")
    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "77"  # the user's setting wins


# --- '%' in a store path --------------------------------------------------------------------------------------------
def test_percent_in_a_store_path_is_refused(tmp_path, monkeypatch, no_ray):
    from sqlalchemy.engine import make_url

    from tinylm.tracking import check_tracking, require_store

    # why: SQLAlchemy decodes a sqlite URL's path, so MLflow opened "a b" for "a%20b" (and retried for minutes)
    assert make_url("sqlite:////tmp/a%20b/mlflow.db").database == "/tmp/a b/mlflow.db"
    refused(GLU, r"^--results='.*a%20b': its path holds '%'", results=str(tmp_path / "a%20b"))
    (tmp_path / "50%").mkdir()
    monkeypatch.chdir(tmp_path / "50%")
    refused(GLU, r"^--results='results': its path holds '%'", results="results")  # the cwd's '%' counts too
    assert os.listdir(tmp_path / "50%") == []
    for uri in (f"sqlite:///{tmp_path}/x%41y/mlflow.db", f"sqlite:///{tmp_path}/100%/mlflow.db"):
        for check in (check_tracking, require_store):
            with pytest.raises(TrackingError, match="the path holds '%'") as e:
                check(uri)
            one_line(str(e.value))


# --- prices ---------------------------------------------------------------------------------------------------------
BAD_PRICES = ['{"cpu": -5}', '{"cpu": NaN}', '{"H100": Infinity}', '{"cpu": "cheap"}', '{"cpu": true}',
              '{"cpu": null}', '{"H100": -0.01}']


@pytest.mark.parametrize("text", BAD_PRICES)
def test_prices_must_be_finite_and_non_negative(text, tmp_path, monkeypatch):
    from tinylm.analysis.cli import main as analysis
    from tinylm.analysis.cost import load_prices

    device = next(iter(json.loads(text)))
    (tmp_path / "p.json").write_text(text)
    for source in (text, tmp_path / "p.json"):
        with pytest.raises(ValueError, match=f"the price of '{device}' is .*finite numbers >= 0") as e:
            load_prices(source)
        one_line(str(e.value))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match=r"^error: --prices .*the price of") as e:
        analysis(["glu", "--prices", text])
    one_line(str(e.value.code))


def test_valid_prices_still_load():
    from tinylm.analysis.cost import load_prices

    prices = load_prices('{"H100": 2.5, "cpu": 0}', overrides={"A100": 3})
    assert prices["H100"] == 2.5 and prices["cpu"] == 0.0 and prices["A100"] == 3.0 and prices["L4"] == 0.80
    with pytest.raises(ValueError, match="the price of 'x' is -1"):
        load_prices(None, overrides={"x": -1})
