"""Bad input and faults (issue 13): every mistake a user can make gets ONE line naming the field or file and what is
allowed, a non-zero exit, before any data, model or Ray start where it can be checked then, and nothing already
computed is lost (a run that fails at its end keeps its model and metrics; nothing valid is overwritten).

One test (table-driven where it fits) per class of input:
  config ranges .............. Config fields out of range, non-finite, bools for numbers (and boundaries that pass)
  divergence ................. a non-finite loss: non-zero exit, no "model and metrics in" claim, strict JSON metrics
  up-front ................... checks before data (and before the model, once the data exists); one line from the CLI
  data files ................. text:/jsonl: corpora that are empty, binary, not UTF-8, records without "text"
  resume / checkpoints ....... corrupt markers, a shorter re-run, another tokenizer, a model with no checkpoint
  end-of-run evals ........... a failing eval task keeps the model and metrics
  budget ..................... the solver's input ranges, an unbounded search, dims the solver would replace
  sweep flags ................ refused before any Config, store or Ray
  tools ...................... evals / export / log / analysis CLIs, compare(), generate()

Most cases are unit calls. train() runs in this process on the debug preset with a few thousand tokens (see
conftest.inprocess_dist); three cases run the real CLI in a subprocess, where the exit code and stderr matter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from tinylm.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]


def one_line(msg: str) -> str:
    assert "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert "Traceback" not in msg, msg
    return msg


def debug(**kw) -> Config:
    """The debug preset, a few thousand tokens (512 tokens per step)."""
    return Config.from_name("debug", **{"train_tokens": 2_048, "eval_every_tokens": 1_024, "eval_tokens": 1_024,
                                        **kw})


def strict_json(path: Path) -> dict:
    def refuse(token):
        raise AssertionError(f"{path} holds {token}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- config ranges -------------------------------------------------------------------------------------------------
BAD_CONFIG = [  # (field values, what the message must say)
    (dict(lr=float("nan")), "lr=nan is not a finite number"),
    (dict(lr=float("inf")), "lr=inf is not a finite number"),
    (dict(lr="-inf"), "lr='-inf' is not a finite number"),
    (dict(lr=0.0), "lr=0.0"),
    (dict(lr=-1e-3), "lr=-0.001"),
    (dict(muon_lr=float("nan")), "muon_lr=nan"),
    (dict(beta1=5.0), r"beta1=5.0 must be in \[0, 1\)"),
    (dict(beta1=-0.1), "beta1=-0.1"),
    (dict(beta2=1.0), r"beta2=1.0 must be in \[0, 1\)"),
    (dict(grad_clip=-1.0), "grad_clip=-1.0 must be >= 0"),
    (dict(weight_decay=-3.0), "weight_decay=-3.0 must be >= 0"),
    (dict(rope_theta=-1.0), "rope_theta=-1.0 must be > 0"),
    (dict(rope_theta=0.0), "rope_theta=0.0 must be > 0"),
    (dict(embed_share=1.2), r"embed_share=1.2 must be in \(0, 1\)"),
    (dict(dropout=float("nan")), "dropout=nan"),
    (dict(data_scale=float("inf")), "data_scale=inf"),
    (dict(glu_factor=float("nan")), "glu_factor=nan"),
    (dict(min_lr_ratio=-0.5), "min_lr_ratio=-0.5"),
    (dict(n_layer=True), "n_layer=True is a bool; n_layer takes an int"),
    (dict(batch_size=False), "batch_size=False is a bool"),
    (dict(lr=True), "lr=True is a bool"),
    (dict(n_layer=2.5), "n_layer=2.5 is not a valid int"),
    (dict(n_layer=float("inf")), "n_layer=inf is not a finite number"),
    (dict(train_tokens="1e400"), "train_tokens='1e400' is not a finite number"),
    (dict(seed=2**64), r"seed=\d+ must be < 2\*\*63"),
    (dict(tie_embeddings=2), "tie_embeddings=2 is not a valid bool"),
    (dict(bias="maybe"), "bias='maybe' is not a valid bool"),
    (dict(dataset=None), "dataset=None is not a valid str"),
    (dict(norm=["rmsnorm"]), r"norm=\['rmsnorm'\] is not a valid str"),
    (dict(name=""), "name='' must be a non-empty folder name"),
    (dict(name="../x"), "name='../x' must be a non-empty folder name without '/'"),
    (dict(dataset="text:"), "dataset='text:' names no corpus"),
    (dict(dataset="jsonl:  "), "dataset='jsonl:  ' names no corpus"),
    (dict(dataset=""), "dataset='' names no corpus"),
    (dict(evals="nope_task"), r"evals='nope_task': unknown eval task\(s\) \['nope_task'\]; choose from lambada"),
    (dict(evals="lambada,,piqa"), r"unknown eval task\(s\) \[''\]"),
    (dict(evals=","), "no eval task named"),
    (dict(block_size=100_000, train_tokens=60_000), "one optimiser step is batch_size\\*block_size\\*grad_accum = "
                                                    "16\\*100000\\*1 = 1,600,000 tokens, more than train_tokens=60,000"),
    (dict(batch_size=64, grad_accum=16, block_size=128, train_tokens=100_000), "more than train_tokens=100,000"),
]
GOOD_BOUNDARIES = [dict(beta1=0.0, beta2=0.0), dict(grad_clip=0.0), dict(weight_decay=0.0), dict(lr=10.0),
                   dict(tie_embeddings=0), dict(bias="yes"), dict(n_layer=3.0), dict(train_tokens="10e6"),
                   dict(evals="lambada, piqa"), dict(evals="all"), dict(seed=2**62), dict(dataset="text:corpus.txt")]


@pytest.mark.parametrize("kw,pattern", BAD_CONFIG, ids=[str(kw)[:40] for kw, _ in BAD_CONFIG])
def test_config_ranges(kw, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        Config(**kw)
    one_line(str(e.value))
    with pytest.raises(ConfigError, match=pattern):  # the same through replace (presets, --set, Tune's points)
        Config.from_name("medium").replace(**kw)


@pytest.mark.parametrize("kw", GOOD_BOUNDARIES, ids=[str(kw)[:30] for kw in GOOD_BOUNDARIES])
def test_config_boundaries_still_pass(kw):
    Config(**kw)


@pytest.mark.parametrize("argv,pattern", [
    (["--lr", "nan"], "lr='nan' is not a finite number"), (["--lr", "inf"], "lr='inf' is not a finite number"),
    (["--beta1", "5"], "beta1=5.0"), (["--grad_clip", "-1"], "grad_clip=-1.0"), (["--weight_decay", "-3"], "-3.0"),
    (["--rope_theta", "-1"], "rope_theta=-1.0"), (["--n_layer", "True"], "n_layer='True' is not a valid int"),
    (["--evals", "nope_task"], "nope_task"), (["--dataset", "text:"], "names no corpus"),
])
def test_train_cli_refuses_bad_values_in_one_line(argv, pattern, tmp_path, monkeypatch):
    from tinylm.train.cli import main

    monkeypatch.chdir(tmp_path)

    with pytest.raises(SystemExit, match=pattern) as e:
        main(argv)
    assert one_line(str(e.value.code)).startswith("error: ")


# --- divergence: non-zero exit, no false claim, strict JSON ---------------------------------------------------------
@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_divergence_exits_non_zero_with_valid_metrics(tmp_path, monkeypatch, capsys):
    import tinylm.train as tr
    import tinylm.train.cli as cli

    real, calls = tr.train_step, []

    def nan_on_second(run_, batches):  # what --lr 1e6 does within a few steps (the subprocess test does it for real)
        calls.append(1)
        return float("nan") if len(calls) == 2 else real(run_, batches)

    monkeypatch.setattr(tr, "train_step", nan_on_second)
    with pytest.raises(SystemExit) as e:
        cli.main(["--preset", "debug", "--train_tokens", "2048", "--eval_every_tokens", "1024", "--eval_tokens",
                 "1024", "--out", str(tmp_path)])
    msg = one_line(str(e.value.code))
    assert msg.startswith("error: the run diverged: non-finite train loss (nan) at step 2; no model was saved")
    assert "model and metrics in" not in capsys.readouterr().out
    metrics = strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "diverged" and metrics["val_loss"] is None and metrics["val_ppl"] is None
    assert not (tmp_path / "model").exists()


# --- up-front checks ------------------------------------------------------------------------------------------------
def _no_compute(monkeypatch):
    """Fail the test if train() gets as far as the process group, the data or the model."""
    import tinylm.train as tr

    def reached(*a, **k):
        raise AssertionError("setup (process group, data, model) was reached")

    monkeypatch.setattr(tr, "setup", reached)
    return tr


BEFORE_DATA = [  # (Config changes, what the message must say); all refused before setup()
    (dict(dataset="nope-corpus"), "dataset='nope-corpus' is unknown; choose one of wiki-offline"),
    (dict(dataset="text:/nonexistent/*.txt"), "no file matches /nonexistent"),
    (dict(dataset="jsonl:/nonexistent.jsonl"), "no file matches"),
    (dict(vocab_size=100), r"vocab_size=100 is too small for tokenizer='bpe'; it needs >= 257"),
    (dict(tokenizer="char", vocab_size=2), "vocab_size=2 is too small for tokenizer='char'"),
    (dict(precision="fp16", device="cpu"), "precision='fp16' needs a CUDA GPU"),
] + ([] if torch.cuda.is_available() else [
    (dict(device="cuda"), "device='cuda' but CUDA is not available here"),
    (dict(precision="fp16"), "precision='fp16' needs a CUDA GPU"),
])


@pytest.mark.parametrize("kw,pattern", BEFORE_DATA, ids=[str(kw)[:40] for kw, _ in BEFORE_DATA])
def test_refused_before_data(kw, pattern, tmp_path, monkeypatch):
    tr = _no_compute(monkeypatch)
    with pytest.raises(ConfigError, match=pattern) as e:
        tr.train(debug(**kw), str(tmp_path / "run"))
    one_line(str(e.value))


def test_unwritable_output_folder_refused_before_data(tmp_path, monkeypatch):
    tr = _no_compute(monkeypatch)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="output folder .*file/run cannot be created: .*file is not a writable"):
        tr.train(debug(), str(tmp_path / "file" / "run"))


def test_compile_without_a_cxx_compiler_refused_before_data_and_before_ray(tmp_path, monkeypatch):
    """compile=True on CPU: torch inductor builds its kernels with a C++ compiler; with none on PATH (and no $CXX)
    a run and a sweep that compiles stop in one line before data or Ray, and one that does not compile starts."""
    from tinylm.sweep import Experiment, run

    tr = _no_compute(monkeypatch)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.delenv("CXX", raising=False)
    pattern = "compile=True on CPU needs a C\\+\\+ compiler .* or set compile=false"
    with pytest.raises(ConfigError, match=pattern) as e:
        tr.train(debug(compile=True, device="cpu"), str(tmp_path / "run"))
    one_line(str(e.value))
    monkeypatch.setitem(sys.modules, "tinylm.tune", None)  # importing Ray's module would fail the test
    with pytest.raises(ConfigError, match=pattern):
        run(Experiment(name="x", preset="debug", space={"compile": [False, True]}), scale="smoke",
            results=str(tmp_path / "results"))
    monkeypatch.setenv("CXX", sys.executable)  # any executable named by $CXX is what inductor would call
    from tinylm.machine import cxx_compiler

    assert cxx_compiler() == sys.executable


def _corpus(path: Path, n_paras: int, seed: int = 0, words: str = "") -> Path:
    rng = np.random.default_rng(seed)
    words = (words or "the a cat dog sat on mat and ran far away quickly slowly red blue green house tree").split()
    path.write_text("\n\n".join(" ".join(rng.choice(words, size=30)).capitalize() + "." for _ in range(n_paras)))
    return path


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
@pytest.mark.parametrize("paras,kw,pattern", [
    (1, {}, r"only 1 document\(s\): nothing left for training"),
    (40, dict(block_size=1024), r"block_size=1,024 needs more than 1,024 tokens in each split but .* gave val \d+"),
    (40, dict(data_scale=8.0), r"data_scale=8.0 asks for [\d,]+ training tokens but .* has only"),
], ids=["one-document", "block_size-vs-data", "data_scale-beyond-corpus"])
def test_refused_once_the_data_exists_before_the_model(paras, kw, pattern, tmp_path, monkeypatch):
    import tinylm.train as tr

    def no_model(*a, **k):
        raise AssertionError("the model was built")

    monkeypatch.setenv("TINYLM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tr.run, "GPT", no_model)  # setup builds it (tinylm/train/run.py)
    corpus = _corpus(tmp_path / "c.txt", paras)
    cfg = debug(dataset=f"text:{corpus}", tokenizer="char", vocab_size=64, num_documents=0,
                **{"train_tokens": 8 * 1024 * 8, **kw})
    with pytest.raises(ConfigError, match=pattern) as e:
        tr.train(cfg, str(tmp_path / "run"))
    one_line(str(e.value))


def _cli(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tinylm.train", *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=ROOT)


def test_cli_error_inside_train_is_one_line_not_a_rank0_traceback(tmp_path, child_env):
    """A ConfigError raised after the process group exists (here: the data has one document) used to print a
    [rank0]-prefixed traceback; it is one line on stderr and exit status 1."""
    corpus = _corpus(tmp_path / "one.txt", 1)
    proc = _cli(["--preset", "debug", "--dataset", f"text:{corpus}", "--tokenizer", "char", "--vocab_size", "64",
                 "--out", str(tmp_path / "run")], {**child_env, "TINYLM_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if "error" in line.lower() or "Traceback" in line]
    assert errors == ["error: only 1 document(s): nothing left for training after the validation split"], \
        proc.stderr[-2000:]
    assert "[rank0]" not in proc.stderr and "model and metrics in" not in proc.stdout


def test_cli_huge_lr_diverges_with_exit_1_and_strict_json(tmp_path, child_env):
    """Issue item 1 for real: --lr 1e6 diverges within a few steps; exit 1, and metrics.json is strict JSON."""
    proc = _cli(["--preset", "debug", "--lr", "1e6", "--train_tokens", "4096", "--eval_every_tokens", "2048",
                 "--eval_tokens", "1024", "--out", str(tmp_path)], child_env)
    assert proc.returncode == 1, (proc.stdout + proc.stderr)[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the run diverged: non-finite train loss")
    assert "model and metrics in" not in proc.stdout
    assert strict_json(tmp_path / "metrics.json")["status"] == "diverged" and not (tmp_path / "model").exists()


def test_cli_config_error_exits_before_torch_distributed(tmp_path, child_env):
    t0 = time.perf_counter()
    proc = _cli(["--preset", "debug", "--evals", "nope_task", "--out", str(tmp_path)], child_env)
    assert proc.returncode == 1 and proc.stderr.strip().startswith("error: evals='nope_task'"), proc.stderr[-2000:]
    assert len(proc.stderr.strip().splitlines()) == 1 and not os.listdir(tmp_path)
    print(f"--evals nope_task refused in {time.perf_counter() - t0:.1f} s")


# --- data files -----------------------------------------------------------------------------------------------------
BAD_FILES = [  # (file name, content, dataset prefix, what the message must say: the file, and the line if any)
    ("noise.bin", bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "text",
     r"noise.bin is a binary file \(NUL byte at line \d+, byte \d+\)"),
    ("latin1.txt", ("café naïve façade " * 200).encode("latin-1"), "text",
     r"latin1.txt: 600 of 3,600 bytes \(17%\) are not valid UTF-8 \(first at line 1, byte 3\)"),
    ("utf16.txt", "hello world\n\nsecond paragraph\n".encode("utf-16"), "text", "utf16.txt is a binary file"),
    ("notext.jsonl", b'{"text": "a"}\n{"body": "b"}\n', "jsonl",
     r"notext.jsonl, line 2: the record has no 'text' field \(keys: \['body'\]\)"),
    ("number.jsonl", b'{"text": "a"}\n\n{"text": 5}\n', "jsonl", r"number.jsonl, line 3: .*'text' of type int"),
    ("broken.jsonl", b'{"text": "a"}\n{"text": \n', "jsonl", "broken.jsonl, line 2: not valid JSON"),
    ("list.jsonl", b"[1, 2]\n", "jsonl", "list.jsonl, line 1: a JSON list, not an object"),
    ("latin1.jsonl", '{"text": "café"}\n'.encode("latin-1"), "jsonl", "latin1.jsonl, line 1: byte 13 .* not valid UTF-8"),
    ("fake.jsonl.gz", b"not gzip at all", "jsonl", "cannot read .*fake.jsonl.gz"),
]


@pytest.mark.parametrize("name,content,prefix,pattern", BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_bad_corpus_files_name_the_file_and_line(name, content, prefix, pattern, tmp_path):
    from tinylm.data import load_documents

    (tmp_path / name).write_bytes(content)
    with pytest.raises(ConfigError, match=pattern) as e:
        load_documents(f"{prefix}:{tmp_path / name}")
    one_line(str(e.value))


def test_a_binary_file_in_a_directory_is_named_and_hidden_files_are_skipped(tmp_path):
    from tinylm.data import load_documents

    _corpus(tmp_path / "a.txt", 3)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "index").write_bytes(b"\0\1\2binary")  # hidden: not part of the corpus
    assert len(load_documents(f"text:{tmp_path}")[0]) == 1
    (tmp_path / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR")
    with pytest.raises(ConfigError, match="image.png is a binary file"):
        load_documents(f"text:{tmp_path}")


def test_a_few_bad_bytes_are_a_warning_not_an_error(tmp_path, caplog):
    from tinylm.data import load_documents

    path = tmp_path / "mostly.txt"
    path.write_bytes(b"good text here.\n\n" * 200 + b"one bad \xff byte\n\nmore text")
    docs, _ = load_documents(f"text:{path}")
    assert len(docs) == 202 and "\ufffd" in docs[200]
    assert "mostly.txt: 1 byte(s) are not valid UTF-8 (first at line 401" in caplog.text


# --- resume and checkpoints: nothing valid is overwritten -----------------------------------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory, inprocess_dist) -> tuple[Config, Path]:
    from tinylm.train import train

    cfg = debug()
    out = tmp_path_factory.mktemp("finished")
    torch.set_num_threads(1)
    assert train(cfg, str(out))["status"] == "completed"
    return cfg, out


def _copy(finished, tmp_path) -> tuple[Config, Path, dict[str, str]]:
    cfg, done = finished
    out = tmp_path / "run"
    shutil.copytree(done, out)
    kept = {str(p.relative_to(out)): sha(p) for p in out.rglob("*") if p.is_file()}
    return cfg, out, kept


def _unchanged(out: Path, kept: dict[str, str]) -> None:
    now = {str(p.relative_to(out)): sha(p) for p in out.rglob("*") if p.is_file()}
    assert now == kept, "a file of the finished run was changed or removed"


def _corrupt_markers(out: Path, which: slice, text: str = '{"tag": "step0000') -> None:  # truncated JSON
    from tinylm.engine import COMPLETE, complete_tags

    for tag in complete_tags(str(out / "ckpt"))[which]:
        (out / "ckpt" / tag / COMPLETE).write_text(text)


RESUME_REFUSED = [  # (what is done to a copy of a finished run, Config changes, message)
    ("both markers corrupt", lambda out: _corrupt_markers(out, slice(None)), {},
     r"every checkpoint in .*ckpt has a corrupt completion marker .*refusing to start over and overwrite them"),
    ("markers not objects", lambda out: _corrupt_markers(out, slice(None), "[1, 2]"), {},  # was an AttributeError
     r"every checkpoint in .*ckpt has a corrupt completion marker .*refusing to start over and overwrite them"),
    ("shorter re-run", lambda out: None, dict(train_tokens=1_024),
     r"cannot resume: the checkpoint in .* has trained 2,048 tokens and train_tokens changed 2,048 -> 1,024"),
    ("model without checkpoint", lambda out: shutil.rmtree(out / "ckpt"), {},
     r"already holds a trained model \(model/\) and no checkpoint to continue from"),
    ("other architecture", lambda out: None, dict(n_layer=3), r"cannot resume: architecture fields changed.*n_layer"),
]


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
@pytest.mark.parametrize("case", RESUME_REFUSED, ids=[c[0] for c in RESUME_REFUSED])
def test_resume_refused_before_data_and_nothing_overwritten(case, finished, tmp_path, monkeypatch):
    _, damage, change, pattern = case
    cfg, out, _ = _copy(finished, tmp_path)
    damage(out)
    kept = {str(p.relative_to(out)): sha(p) for p in out.rglob("*") if p.is_file()}
    tr = _no_compute(monkeypatch)
    with pytest.raises(ConfigError, match=pattern) as e:
        tr.train(cfg.replace(**change), str(out))
    one_line(str(e.value))
    _unchanged(out, kept)


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_resume_onto_another_tokenizer_is_refused(finished, tmp_path, monkeypatch):
    """Same kind (bpe) and size, another corpus: the tokenizer hash differs, so the token ids mean other strings."""
    cfg, out, kept = _copy(finished, tmp_path)
    letters = np.random.default_rng(1).choice(list("zqjxvkwyfb"), size=(600, 6))  # enough merges for vocab 1024
    corpus = _corpus(tmp_path / "other.txt", 300, words=" ".join(map("".join, letters)))
    with pytest.raises(ConfigError, match=r"cannot resume: the checkpoint was trained with another tokenizer"):
        from tinylm.train import train

        train(cfg.replace(dataset=f"text:{corpus}", num_documents=0), str(out))
    _unchanged(out, kept)  # run_info.json too: it is written only once a resume is accepted


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_unloadable_checkpoints_are_not_replaced_by_a_fresh_run(finished, tmp_path):
    from tinylm.train import train

    cfg, out, _ = _copy(finished, tmp_path)
    for states in (out / "ckpt").rglob("*model_states.pt"):
        states.write_bytes(b"truncated")
    kept = {str(p.relative_to(out)): sha(p) for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match=r"no checkpoint in .*ckpt loads .*refusing to start over"):
        train(cfg, str(out))
    _unchanged(out, kept)


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_one_corrupt_marker_warns_and_the_other_checkpoint_is_used(finished, tmp_path, caplog):
    from tinylm.train import train

    caplog.set_level(logging.INFO)
    cfg, out, _ = _copy(finished, tmp_path)
    _corrupt_markers(out, slice(-1, None))  # the newest
    final = train(cfg.replace(train_tokens=2_560), str(out))
    assert "is unreadable" in caplog.text and "resumed at step 2 " in caplog.text
    assert final["status"] == "completed" and final["tokens"] == 2_560


# --- end-of-run evals: the model and the metrics are kept ----------------------------------------------------------
@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_failing_end_of_run_evals_keep_model_and_metrics(tmp_path, monkeypatch):
    import tinylm.train as tr
    import tinylm.train.cli as cli

    def broken(run_):
        raise RuntimeError("eval data unavailable")

    monkeypatch.setattr(tr, "end_of_run_evals", broken)
    with pytest.raises(SystemExit) as e:
        cli.main(["--preset", "debug", "--train_tokens", "1024", "--eval_every_tokens", "1024", "--eval_tokens", "1024",
                 "--out", str(tmp_path)])
    assert one_line(str(e.value.code)).startswith("error: end-of-run evals failed (RuntimeError: eval data "
                                                  "unavailable); the model and metrics are kept in")
    metrics = strict_json(tmp_path / "metrics.json")
    assert metrics["status"] == "completed" and metrics["evals_error"].startswith("RuntimeError")
    assert metrics["final_val_loss"] > 0 and (tmp_path / "model" / "model.safetensors").exists()


# --- budget ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,pattern", [
    ((float("nan"), 16000, 0.35, 2.66), "total_params=nan must be a finite number >= 1"),
    ((-5, 16000, 0.35, 2.66), "total_params=-5"),
    ((1e7, 0, 0.35, 2.66), "vocab_size=0 must be an int > 0"),
    ((1e7, 16000.5, 0.35, 2.66), "vocab_size=16000.5"),
    ((1e7, 16000, 1.5, 2.66), r"embed_share=1.5 must be in \(0, 1\)"),
    ((1e7, 16000, 0.35, float("inf")), "glu_factor=inf must be > 0"),
    ((1e12, 16000, 0.35, 2.66), r"needs n_embd >= 21,249,999 .* the solver searches n_embd <= 16,384"),
    ((1e15, 50257, 0.25, 4.0), "the solver searches n_embd <= 16,384"),
])
def test_budget_inputs_and_bounded_search(args, pattern):
    from tinylm.budget import solve

    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=pattern) as e:
        solve(*args)
    assert time.perf_counter() - t0 < 5, "the search is unbounded"
    one_line(str(e.value))


def test_budget_cli_1e12_exits_at_once():
    from tinylm.budget import main

    with pytest.raises(SystemExit, match="error: total_params=1,000,000,000,000 .* needs n_embd"):
        main(["--total_params", "1e12"])


@pytest.mark.parametrize("make", [
    lambda: Config.from_name("budget-10m", n_embd=512, n_layer=3),
    lambda: Config.from_name("budget-10m", n_head=4),
    lambda: Config.from_name("budget-10m").replace(d_ff=1024),
    lambda: Config.from_name("debug", target_params=1_000_000, n_layer=3),
], ids=["from_name", "n_head", "replace-d_ff", "target_params-and-dims"])
def test_dims_the_solver_would_replace_are_refused(make):
    with pytest.raises(ConfigError, match=r"with target_params=[\d,]+ the dims are solved from target_params.*"
                                          "set target_params=0 to choose dims yourself") as e:
        make()
    one_line(str(e.value))


def test_dims_are_honoured_with_target_params_0_and_budget_still_resolves():
    cfg = Config.from_name("budget-10m", target_params=0, n_embd=512, n_layer=3, n_head=8)
    assert (cfg.n_embd, cfg.n_layer, cfg.n_head) == (512, 3, 8)
    budget = Config.from_name("budget-10m")
    assert budget.replace(**budget.to_dict()) == budget  # the solver's own values are not "explicit dims"
    assert budget.replace(glu_factor=4.0).n_layer != budget.n_layer  # other inputs re-solve, as before


# --- sweep flags ----------------------------------------------------------------------------------------------------
SWEEP_REFUSED = [
    (dict(seeds=0), "--seeds=0 must be an int >= 1"), (dict(seeds=-2), "--seeds=-2"),
    (dict(seeds="3"), "--seeds='3' must be an int"), (dict(refine=-5), "--refine=-5 must be an int >= 0"),
    (dict(reduction_factor=0), "--reduction-factor=0 must be an int >= 2"), (dict(reduction_factor=1), "=1"),
    (dict(workers=-1), "--workers=-1 must be an int >= 0"), (dict(max_concurrent=-1), "--max-concurrent=-1"),
    (dict(grace_tokens=-1), "--grace-tokens=-1"), (dict(kill_margin=float("nan")), "--kill-margin=nan"),
    (dict(kill_margin=-1.0), "--kill-margin=-1.0"), (dict(kill_window=-3), "--kill-window=-3"),
    (dict(finalists=0), "--finalists=0"), (dict(rank_fraction=0.0), r"--rank-fraction=0.0 must be .* \(0, 1\]"),
    (dict(rank_fraction=1.5), "--rank-fraction=1.5"), (dict(set=["lr"]), "--set expects FIELD=VALUE"),
    (dict(set=["lr=nan"]), "lr='nan' is not a finite number"), (dict(set=["nope=1"]), r"unknown Config field"),
    (dict(set=["n_head=4", "n_embd=128", "n_layer=2"]), "n_head=4, n_embd=128, n_layer=2: with target_params="),
    (dict(seeds=3, seeds_per_trial=2), "--seeds-per-trial=2 does not divide the 3 seeds"),
    (dict(seeds=4, seeds_per_trial=0), "--seeds-per-trial=0 must be an int from 1 to 64"),
    (dict(seeds=2, seeds_per_trial=2, refine=2), "--seeds-per-trial=2 with --refine=2"),
    (dict(seeds=2, seeds_per_trial=2, set=["precision=fp16"]), r"seeds_per_trial=2 needs precision in \('fp32', 'bf16'\)"),
]


@pytest.mark.parametrize("options,pattern", SWEEP_REFUSED, ids=[str(o)[:40] for o, _ in SWEEP_REFUSED])
def test_sweep_flags_refused_before_ray(options, pattern, monkeypatch, tmp_path):
    from tinylm.sweep import Experiment, run

    monkeypatch.setitem(sys.modules, "tinylm.tune", None)  # importing Ray's module would fail the test
    exp = Experiment(name="glu", preset="budget-10m", space={"glu_factor": [2.0, 4.0]})
    with pytest.raises(ConfigError, match=pattern) as e:
        run(exp, scale="smoke", results=str(tmp_path), **options)
    one_line(str(e.value))


def test_sweep_grid_points_checked_before_ray(monkeypatch, tmp_path):
    from tinylm.sweep import Experiment, run

    monkeypatch.setitem(sys.modules, "tinylm.tune", None)
    for space, pattern in (({"n_layer": [2, 3]}, "n_layer=2: with target_params="),
                           ({"dataset": ["wiki-offline", "nope"]}, "dataset='nope' is unknown"),
                           ({"lr": [1e-3, float("nan")]}, "lr=nan is not a finite number")):
        with pytest.raises(ConfigError, match=pattern):
            run(Experiment(name="x", preset="budget-10m", space=space), scale="smoke", results=str(tmp_path))
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is not a writable folder"):
        run(Experiment(name="x", preset="debug", space={"lr": [1e-3]}), results=str(tmp_path / "f" / "results"))


def test_sweep_script_cli_exits_1_in_one_line(tmp_path, child_env):
    proc = subprocess.run([sys.executable, "sweeps/glu.py", "--seeds", "0", "--results", str(tmp_path)],
                          capture_output=True, text=True, cwd=ROOT, env=child_env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: --seeds=0 must be an int >= 1", proc.stderr
    assert not os.listdir(tmp_path)  # no store, no Ray session


# --- tools: evals, export, log, analysis, compare, generate ---------------------------------------------------------
@pytest.fixture
def model_dir(tmp_path) -> Path:
    from tinylm.checkpoint import save_pretrained
    from tinylm.model import GPT
    from tinylm.tokenizer import train_char

    tok = train_char(["hello world, a tiny model."], vocab_size=32)
    cfg = Config(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=32, tokenizer="char")
    torch.manual_seed(0)
    save_pretrained(str(tmp_path / "model"), GPT(cfg), cfg, tok)
    return tmp_path / "model"


def _truncate(model_dir: Path) -> Path:
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    return weights


def test_evals_cli_refuses_before_running_the_suite(model_dir, tmp_path, monkeypatch):
    import tinylm.evals.cli as ev

    def suite(*a, **k):
        raise AssertionError("the suite ran")

    monkeypatch.setattr(ev, "run_suite", suite)
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("")
    m = str(model_dir)
    cases = [
        ([str(tmp_path / "missing")], "missing: no such folder"),
        ([str(tmp_path / "empty")], r"empty is not a tinylm model folder \(no config.json\)"),
        ([m, "--tasks", ""], "no eval task named"), ([m, "--tasks", " , "], "no eval task named"),
        ([m, "--tasks", "nope"], r"unknown eval task\(s\) \['nope'\]"), ([m, "--n", "-5"], "--n=-5 must be >= 0"),
        ([m, "--batch_size", "0"], "--batch_size=0 must be >= 1"), ([m, "--threads", "-1"], "--threads=-1"),
        ([m, "--device", "tpu"], "--device='tpu'; choose auto, cpu or cuda"),
        ([m, "--out", str(tmp_path / "file" / "e.json")], r"--out .*file/e.json cannot be written"),
        ([m, "--out", str(tmp_path)], "is a folder; give a file name"),
    ]
    for argv, pattern in cases:
        with pytest.raises(SystemExit, match=pattern) as e:
            ev.main([*argv, "--device", "cpu"] if "--device" not in argv else argv)
        one_line(str(e.value.code))
    weights = _truncate(model_dir)
    with pytest.raises(SystemExit, match=f"{weights} is unreadable"):
        ev.main([m, "--device", "cpu"])


def test_evals_cli_keeps_its_results_when_out_fails_late(model_dir, tmp_path, monkeypatch, capsys):
    import tinylm.evals.cli as ev

    monkeypatch.setattr(ev, "_check_writable", lambda path: None)  # the folder vanishes after the check
    with pytest.raises(SystemExit, match="cannot write --out .*; the metrics are printed above"):
        ev.main([str(model_dir), "--tasks", "arithmetic", "--n", "2", "--device", "cpu",
                 "--out", str(tmp_path / "gone" / "e.json")])
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.index("{"):])["eval_arithmetic_n"] == 2


def test_export_cli(model_dir, tmp_path):
    from tinylm.export import main

    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match=r"error: .*holds no model|is not a folder"):
        main([str(tmp_path / "missing"), "--results", str(tmp_path / "results")])
    with pytest.raises(SystemExit, match=r"cannot write the export"):
        main([str(model_dir), "--out", str(tmp_path / "file" / "x")])
    # another model's folder (or any other files) as --out: refused, nothing touched; the same export again is fine
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit, match=r"error: --out .*other already holds files .*--force"):
        main([str(model_dir), "--out", str(other)])
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    main([str(model_dir), "--out", str(tmp_path / "again")])
    main([str(model_dir), "--out", str(tmp_path / "again")])  # re-exporting the same source is idempotent
    main([str(model_dir), "--out", str(other), "--force"])
    assert (other / "notes.txt").exists() and (other / "meta.json").exists()
    weights = _truncate(model_dir)
    with pytest.raises(SystemExit, match=f"error: {weights} is unreadable or does not match"):
        main([str(model_dir), "--out", str(tmp_path / "out")])


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    """One glu sweep (glu_factor 2.0 and 4.0) in a real sqlite store."""
    from tinylm.tracking import Tracker

    uri = f"sqlite:///{tmp_path_factory.mktemp('store') / 'mlflow.db'}"
    t = Tracker(uri, "glu")
    parent = t.start_sweep("glu@/r", params={}, tags={"tinylm.sweep": "glu"})
    for i, glu in enumerate((2.0, 4.0)):
        rid = t.trial_run(parent, f"t{i}", Config.from_name("debug", glu_factor=glu).to_dict())
        t.finish_run(rid, "completed", "", {"final_val_loss": 5.0 - i, "params_total": 1e6, "tokens": 2000})
    t.finish_run(parent, "completed")
    return uri


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_log_and_analysis_cli(store, tmp_path, monkeypatch):
    from tinylm.analysis.cli import main as analysis
    from tinylm.log import main as log

    monkeypatch.chdir(tmp_path)  # default folders (results/...) must not appear in the checkout

    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "mlflow.db").write_bytes(os.urandom(4096))
    (tmp_path / "file").write_text("")
    missing, bad = str(tmp_path / "missing"), f"sqlite:///{tmp_path / 'bad' / 'mlflow.db'}"
    cases = [
        (log, ["--results", missing], "no tracking store at .*missing/mlflow.db .*does not exist"),
        (log, ["--uri", bad], r"bad/mlflow.db is not an SQLite database"),
        (log, ["--uri", store, "--json", str(tmp_path / "file" / "x.json")], "--json .* is not writable"),
        (analysis, ["glu", "--uri", f"sqlite:///{missing}/mlflow.db"], "no tracking store"),
        (analysis, ["glu", "--uri", bad], "is not an SQLite database"),
        (analysis, ["glu", "--uri", store, "--baseline", "glu_factor=7.5"],
         r"--baseline glu_factor=7.5 matches no trial of glu; the values there are glu_factor: 2.0, 4.0"),
        (analysis, ["glu", "--uri", store, "--baseline", "glu_factr=4.0"], "glu_factr: not a column of glu's"),
        (analysis, ["glu", "--uri", store, "--baseline", "glu_factor=big"], "glu_factor='big' is not a valid float"),
        (analysis, ["glu", "--uri", store, "--n-boot", "-1"], "--n-boot=-1 must be >= 0"),
        (analysis, ["glu", "--uri", store, "--prices", str(tmp_path / "nope.json")], "--prices .*nope.json"),
        (analysis, ["glu", "--uri", store, "--out", str(tmp_path / "file" / "a")], "--out .* cannot be created"),
        (analysis, ["nosuch", "--uri", store], "nosuch"),
    ]
    for fn, argv, pattern in cases:
        with pytest.raises(SystemExit, match=pattern) as e:
            fn(argv)
        assert e.value.code not in (0, None)
        one_line(str(e.value.code))
    assert not Path(missing).exists()  # a read-only command made no empty store in a mistyped folder
    assert not (tmp_path / "results").exists()  # nor a default --out folder for a refused command
    assert analysis(["glu", "--uri", store, "--baseline", "glu_factor=4", "--out", str(tmp_path / "a"),
                     "--n-boot", "0", "--no-log"]) == 0  # an int for a float field matches


def test_compare_refuses_what_it_cannot_compare(tmp_path):
    from tinylm.api import compare

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.json").write_text("{not json")
    (tmp_path / "run" / "run_info.json").write_text("{}")
    for arg, exc, pattern in [
        (42, TypeError, "got int 42"), ([], ValueError, "needs at least one"), ([42], TypeError, "got int 42"),
        (None, TypeError, "got NoneType"), ({"a": 1}, TypeError, "got dict"), (3.5, TypeError, "got float"),
        (str(tmp_path / "missing"), FileNotFoundError, "is not a finished run folder"),
        (tmp_path / "missing", FileNotFoundError, "is not a finished run folder"),
        (str(tmp_path / "run"), ValueError, r"run/metrics.json is unreadable"),
    ]:
        with pytest.raises(exc, match=pattern) as e:
            compare(arg)
        one_line(str(e.value))


@pytest.mark.parametrize("kw,pattern", [
    (dict(top_k=0), "top_k=0 must be None"), (dict(top_k=-1), "top_k=-1"), (dict(top_k=2.5), "top_k=2.5"),
    (dict(temperature=-1.0), "temperature=-1.0 must be a finite number >= 0"),
    (dict(temperature=float("nan")), "temperature=nan"), (dict(temperature=float("inf")), "temperature=inf"),
    (dict(max_new_tokens=-1), "max_new_tokens=-1"), (dict(idx=torch.tensor([[40]])), "outside \\[0, vocab_size=32"),
    (dict(idx=torch.zeros(1, 0, dtype=torch.long)), "length >= 1"),
    (dict(idx=torch.tensor([[0.5]])), "dtype torch.float32"),
])
def test_generate_arguments(kw, pattern):
    from tinylm.model import GPT

    cfg = Config(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=32, tokenizer="char")
    args = {"idx": torch.tensor([[1, 2]]), "max_new_tokens": 3, "temperature": 1.0, **kw}
    with pytest.raises(ValueError, match=pattern):
        GPT(cfg).generate(**args)


def test_generate_valid_extremes_still_work():
    from tinylm.model import GPT

    torch.manual_seed(0)
    model = GPT(Config(n_layer=1, n_head=2, n_embd=16, block_size=32, vocab_size=32, tokenizer="char")).eval()
    x = torch.tensor([[1, 2]])
    assert model.generate(x, 4, temperature=1.0, top_k=1).shape == (1, 6)
    assert torch.equal(model.generate(x, 4, temperature=1.0, top_k=1), model.generate(x, 4, temperature=0))
    assert model.generate(x, 0).shape == (1, 2) and model.generate(x, 2, top_k=10_000).shape == (1, 4)
    assert math.isfinite(float(model(x)[0].sum()))
