"""Nothing a user wrote is overwritten, and a plain run fails cleanly (issue 18, part 2).

One test (table-driven where it fits) per class:
  output files ............... --json / --out never replace a database or a run's records, another file only with
                               --force, their own earlier output always (tinylm.log, tinylm.evals)
  the results folder ......... $TINYLM_RESULTS moves every default: runs, the tracking store (--track), log, analysis
  run folders ................ a run from scratch claims only a new, empty or its own folder (tinylm.train, --sanity)
  copied stores .............. analysis of a copy writes into its --out only, never into the original's artifacts
  a full disk ................ a failed save is one line naming the path and "no space left on device"; what was
                               saved before stays and the same command goes on
  Ctrl-C ..................... one line "interrupted at N tokens (...); resume with: <command>", exit 130, and that
                               command continues

Refusals are unit calls (``preflight`` refuses before setup); training runs in this process on the debug preset
(see conftest.inprocess_dist); one case sends a real SIGINT to the CLI in a subprocess.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_bad_input import debug, one_line  # the debug preset at 2,048 tokens; one-line error check

from tinylm.config import Config, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--preset", "debug", "--train_tokens", "2048", "--eval_every_tokens", "1024", "--eval_tokens", "1024"]




def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _store(root: Path) -> str:
    """A glu sweep with two finished trials in ``root/mlflow.db``, artifacts in ``root/mlartifacts``."""
    from tinylm.tracking import Tracker

    uri = f"sqlite:///{root / 'mlflow.db'}"
    t = Tracker(uri, "glu")
    parent = t.start_sweep(f"glu@{root}", params={}, tags={"tinylm.sweep": "glu"})
    for i, glu in enumerate((2.0, 4.0)):
        rid = t.trial_run(parent, f"t{i}", Config.from_name("debug", glu_factor=glu).to_dict())
        t.finish_run(rid, "completed", "", {"final_val_loss": 5.0 - i, "params_total": 1e6, "tokens": 2000})
    t.finish_run(parent, "completed")
    return uri


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("results")
    _store(root)
    return root


# --- output files: never a database or a run's records; another file only with --force ---------------------------
def _output_cases(tmp: Path, results: Path) -> list[tuple[str, str, list[str], str | None]]:
    """(name, path, extra flags, refusal pattern or None = allowed)."""
    run = tmp / "run"
    run.mkdir()
    (run / "run_info.json").write_text('{"config": {}}')
    (run / "metrics.json").write_text('{"status": "completed", "final_val_loss": 3.2}')
    (run / "model").mkdir()
    (run / "model" / "model.safetensors").write_bytes(b"weights")
    (run / "ckpt" / "step00000002").mkdir(parents=True)
    (run / "ckpt" / "step00000002" / "mp_rank_00_model_states.pt").write_bytes(b"state")
    (tmp / "notes.json").write_text('{"mine": 1}')
    db = str(results / "mlflow.db")
    return [
        ("tracking db", db, [], r"is an SQLite database .*refusing to overwrite it: give a new file name"),
        ("tracking db --force", db, ["--force"], "is an SQLite database"),
        ("run metrics", str(run / "metrics.json"), [], f"is a file of the training run in {run}; refusing"),
        ("run metrics --force", str(run / "metrics.json"), ["--force"], "is a file of the training run in"),
        ("run info --force", str(run / "run_info.json"), ["--force"], "is a file of the training run in"),
        ("run model --force", str(run / "model" / "model.safetensors"), ["--force"], "a file of the training run"),
        ("run checkpoint --force", str(run / "ckpt" / "step00000002" / "mp_rank_00_model_states.pt"), ["--force"],
         "a file of the training run"),
        ("another file", str(tmp / "notes.json"), [], r"already exists; refusing to overwrite it: .* or --force"),
        ("a folder", str(tmp), [], "is a folder; give a file name"),
        ("another file --force", str(tmp / "notes.json"), ["--force"], None),
        ("a new file", str(tmp / "new" / "x.json"), [], None),
    ]


@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_log_json_never_replaces_a_database_or_a_run(results, tmp_path, capsys):
    from tinylm.log import main

    uri = f"sqlite:///{results / 'mlflow.db'}"
    (tmp_path / "log").mkdir()
    for name, path, flags, refusal in _output_cases(tmp_path / "log", results):
        before = [snapshot(results), snapshot(tmp_path / "log")]
        if refusal:
            with pytest.raises(SystemExit, match=refusal) as e:
                main(["--uri", uri, "--json", path, *flags])
            assert e.value.code not in (0, None), name
            one_line(str(e.value.code))
            assert [snapshot(results), snapshot(tmp_path / "log")] == before, f"{name}: a file changed"
        else:
            main(["--uri", uri, "--json", path, *flags])
            assert json.loads(Path(path).read_text())["sweeps"][0]["sweep"] == "glu", name
    # the log's own earlier output is replaced without --force (re-running the same command works)
    out = tmp_path / "log" / "new" / "x.json"
    out.write_text("{}")
    with pytest.raises(SystemExit, match="already exists"):
        main(["--uri", uri, "--json", str(out)])
    main(["--uri", uri, "--json", str(tmp_path / "log" / "again.json")])
    main(["--uri", uri, "--json", str(tmp_path / "log" / "again.json")])
    # the tester's command: --results R --json R/mlflow.db leaves the database a database
    with pytest.raises(SystemExit, match="SQLite database"):
        main(["--results", str(results), "--json", str(results / "mlflow.db")])
    assert (results / "mlflow.db").read_bytes()[:15] == b"SQLite format 3"
    capsys.readouterr()


def test_evals_out_never_replaces_a_run_s_metrics(results, tmp_path):
    """Every case is decided before the model loads: an allowed --out gets as far as the (missing) model."""
    from tinylm.evals.cli import main

    tmp = tmp_path / "evals"
    tmp.mkdir()
    cases = [c for c in _output_cases(tmp, results) if c[0] != "a new file"]  # evals makes no folder for --out
    cases.append(("a new file", str(tmp / "x.json"), [], None))
    earlier = tmp / "evals.json"
    earlier.write_text(json.dumps({"eval_score": 0.3, "eval_lambada_acc": 0.1}))
    cases.append(("an earlier --out", str(earlier), [], None))
    for name, path, flags, refusal in cases:
        before = snapshot(tmp)
        with pytest.raises(SystemExit) as e:
            main([str(tmp_path / "no-model"), "--out", path, *flags])
        msg = one_line(str(e.value.code))
        if refusal:
            assert re.search(refusal, msg), (name, msg)
        else:
            assert "no-model: no such folder" in msg, (name, msg)
        assert snapshot(tmp) == before, f"{name}: a file changed"


# --- the results folder: $TINYLM_RESULTS moves every default ----------------------------------------------------
@pytest.mark.slow
@pytest.mark.usefixtures("inprocess_dist", "one_thread")
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_results_env_moves_the_track_store_and_every_reader(tmp_path, monkeypatch, capsys):
    """The tester's pair: ``TINYLM_RESULTS=D python -m tinylm.train --track`` then ``tinylm.log`` with the same
    variable; and the defaults of the other commands name D as well. Nothing appears in ./results."""
    import tinylm.train.cli as cli
    from tinylm import layout
    from tinylm.analysis.cli import main as analysis
    from tinylm.log import main as log

    d = tmp_path / "D"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYLM_RESULTS", str(d))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for call in (lambda: log([]), lambda: analysis(["glu"])):
        with pytest.raises(SystemExit, match=f"no tracking store at sqlite:///{d}/mlflow.db") as e:  # names D
            call()
        one_line(str(e.value.code))
    assert layout.default_uri() == f"sqlite:///{d}/mlflow.db"
    final = cli.main([*TRAIN, "--track"])
    assert final["status"] == "completed"
    assert (d / "mlflow.db").is_file() and not (tmp_path / "results").exists()
    runs = list((d / "runs").iterdir())
    assert len(runs) == 1 and (runs[0] / "metrics.json").is_file()
    capsys.readouterr()
    found = log([])
    assert [s["sweep"] for s in found["sweeps"]] == ["single-runs"]
    assert "single-runs" in capsys.readouterr().out
    assert not (tmp_path / "results").exists()


# --- run folders: a run from scratch claims only a new, empty or its own folder -----------------------------------
@pytest.fixture(scope="module")
def finished(tmp_path_factory, inprocess_dist) -> tuple[Config, Path]:
    import torch

    from tinylm.train import train

    cfg, out = debug(), tmp_path_factory.mktemp("finished")
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    assert train(cfg, str(out))["status"] == "completed"
    torch.set_num_threads(n)
    return cfg, out


def _without_markers(out: Path) -> None:
    from tinylm.engine import COMPLETE

    for marker in (out / "ckpt").glob(f"*/{COMPLETE}"):
        marker.unlink()


FOLDERS = [  # (name, what is in the folder: finished run copy or files, refusal pattern)
    ("someone's metrics.json", {"metrics.json": '{"loss": 1}'}, r"holds a run's metrics.json and no checkpoint"),
    ("someone's run_info.json", {"run_info.json": '{"config": {"n_layer": 9}}'}, r"run_info.json of another run"),
    ("unreadable run_info.json", {"run_info.json": "not json"}, r"run_info.json of another run"),
    ("other files", {"notes.txt": "mine", "data.csv": "1,2"}, r"holds files a run does not write \(data.csv, notes"),
    ("markers removed", _without_markers, r"checkpoints with no completion marker \(step00000002, step00000004 in "),
    ("model, no checkpoint", lambda out: shutil.rmtree(out / "ckpt"), r"already holds a trained model"),
    ("metrics, no checkpoint", lambda out: [shutil.rmtree(out / d) for d in ("ckpt", "model")],
     r"holds a run's metrics.json and no checkpoint"),
]


@pytest.mark.usefixtures("inprocess_dist")
@pytest.mark.parametrize("case", FOLDERS, ids=[c[0] for c in FOLDERS])
def test_a_run_from_scratch_never_takes_over_a_folder(case, finished, tmp_path, monkeypatch):
    import tinylm.train as tr
    import tinylm.train.cli as cli

    name, content, pattern = case
    cfg, done = finished
    out = tmp_path / "out"
    if callable(content):
        shutil.copytree(done, out)
        content(out)
    else:
        out.mkdir()
        for f, text in content.items():
            (out / f).write_text(text)
    kept = snapshot(out)

    def reached(*a, **k):
        raise AssertionError("setup (process group, data, model) was reached")

    monkeypatch.setattr(tr, "setup", reached)
    for resume in (True, False):  # train() and the sanity checks (which never resume)
        with pytest.raises(ConfigError, match=pattern) as e:
            tr.preflight(cfg, str(out), resume=resume)
        assert str(e.value).endswith("use a new output folder (--out), move that one away, or pass --force")
    with pytest.raises(SystemExit) as e:  # the command line: one line, before any data
        cli.main([*TRAIN, "--out", str(out)])
    assert one_line(str(e.value.code)).startswith(f"error: {out} ")
    assert snapshot(out) == kept
    assert tr.preflight(cfg, str(out), force=True) == {}  # --force: the user's call


@pytest.mark.usefixtures("inprocess_dist")
def test_a_run_may_start_in_a_new_empty_or_its_own_folder(finished, tmp_path):
    """Its own: a run killed before its first checkpoint (run_info.json of this config, startup marks, a save that
    never finished) or that diverged before it restarts there, as a Tune trial does after a crash; a resumable one
    continues."""
    from tinylm.train import preflight

    cfg, done = finished
    (tmp_path / "empty").mkdir()
    own = tmp_path / "own"
    own.mkdir()
    shutil.copy(done / "run_info.json", own / "run_info.json")
    (own / "startup.json").write_text("{}")
    (own / "ckpt" / "step00000002").mkdir(parents=True)  # cut short: no marker, no DeepSpeed "latest"
    diverged = tmp_path / "diverged"
    shutil.copytree(own, diverged)
    (diverged / "metrics.json").write_text('{"status": "diverged", "val_loss": null}')
    for folder in (tmp_path / "new", tmp_path / "empty", own, diverged):
        assert preflight(cfg, str(folder)) == {}
    assert preflight(cfg, str(done))["tokenizer_hash"]  # a finished run with checkpoints: continued, not claimed
    with pytest.raises(ConfigError, match="run_info.json of another run"):
        preflight(cfg.replace(lr=cfg.lr * 2), str(own))


# --- copied stores: analysis writes into its --out only -----------------------------------------------------------
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_analysis_of_a_copied_store_never_writes_into_the_original(tmp_path, caplog, capsys):
    from tinylm.analysis.cli import main
    from tinylm.tracking import foreign_artifacts, list_sweeps

    orig = tmp_path / "orig"
    orig.mkdir()
    uri = _store(orig)
    copy = tmp_path / "copy"
    shutil.copytree(orig, copy)
    copy_uri = f"sqlite:///{copy / 'mlflow.db'}"
    parent = list_sweeps(uri)["run_id"][0]
    assert foreign_artifacts(uri, parent) is None  # the store's own artifact folder
    elsewhere = Path(foreign_artifacts(copy_uri, parent))  # the copy's runs point into the original folder
    assert elsewhere.is_relative_to(orig.resolve() / "mlartifacts") and elsewhere.parts[-2:] == (parent, "artifacts")
    assert foreign_artifacts("postgresql://u:p@db/x", parent) is None  # a server store owns its locations
    before = snapshot(orig)
    caplog.set_level(logging.WARNING)
    assert main(["glu", "--uri", copy_uri, "--out", str(tmp_path / "a"), "--n-boot", "0"]) == 0
    assert (tmp_path / "a" / "glu" / "REPORT.md").is_file()
    assert snapshot(orig) == before, "analysis of the copy wrote into the original folder"
    assert "report not logged to the sweep's run: its artifacts live in" in caplog.text
    # the original itself: its report is logged where its store keeps artifacts
    assert main(["glu", "--uri", uri, "--out", str(tmp_path / "b"), "--n-boot", "0"]) == 0
    assert list((orig / "mlartifacts").rglob("report/REPORT.md"))
    capsys.readouterr()


# --- a full disk -------------------------------------------------------------------------------------------------
def test_write_failure_names_the_path_and_the_cause(tmp_path, monkeypatch):
    from tinylm.layout import write_failure

    path = str(tmp_path / "ckpt" / "step00000002")
    cases = [
        (OSError(errno.ENOSPC, "No space left on device"), "no space left on device"),
        (OSError(errno.EDQUOT, "Disk quota exceeded"), "disk quota exceeded"),
        (PermissionError(errno.EACCES, "Permission denied"), "PermissionError: Permission denied"),
        (ValueError("a bug"), None),
        (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), None),  # room left
    ]
    for e, expect in cases:
        got = write_failure(path, e)
        assert got == (None if expect is None else f"cannot write {path}: {expect}"), (e, got)
    # torch's zip writer on a full disk: a RuntimeError, told apart by the free space
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 0))
    assert write_failure(path, RuntimeError("unexpected pos 704 vs 598")) == f"cannot write {path}: no space " \
                                                                               "left on device"


def _enospc(*a, **k):
    raise OSError(errno.ENOSPC, "No space left on device")


def _full_metrics(real):
    """json.dump that fills the disk when it writes metrics.json (through its temporary file)."""
    def dump(obj, f, **kw):
        if os.path.basename(str(getattr(f, "name", ""))).startswith("metrics.json.tmp-"):
            f.write("{\"partial\": ")
            _enospc()
        return real(obj, f, **kw)
    return dump


DISK_FULL = [  # (name, what fails, the path named, what the line says is kept)
    ("checkpoint", lambda mp, tr: mp.setattr("torch.save", _enospc), "ckpt/step00000002",
     "training stopped at 1,024 tokens (val loss "),
    ("model", lambda mp, tr: mp.setattr("safetensors.torch.save_model", _enospc), "model",
     "the checkpoint at 2,048 tokens is kept: free space and rerun the same command to write the model from it"),
    ("metrics", lambda mp, tr: mp.setattr(tr.run.json, "dump", _full_metrics(json.dump)), "metrics.json",
     "the run completed at 2,048 tokens (val loss "),
]


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
@pytest.mark.parametrize("case", DISK_FULL, ids=[c[0] for c in DISK_FULL])
def test_a_full_disk_is_one_line_and_the_same_command_goes_on(case, tmp_path, monkeypatch, capsys):
    import tinylm.train as tr
    import tinylm.train.cli as cli

    name, fill, where, kept = case
    out = tmp_path / "run"
    with monkeypatch.context() as mp:
        fill(mp, tr)
        with pytest.raises(SystemExit) as e:
            cli.main([*TRAIN, "--out", str(out)])
    msg = one_line(str(e.value.code))
    assert msg.startswith(f"error: cannot write {out}/{where}: no space left on device; "), msg
    assert kept in msg, msg
    assert not [p for p in (out / "ckpt").glob("*") if p.is_dir() and not (p / "tinylm_complete.json").exists()], \
        "a partial checkpoint was left behind"
    assert not list(out.glob("*.tmp-*")), "a partial file was left behind"
    final = cli.main([*TRAIN, "--out", str(out)])  # space freed: the same command
    assert final["status"] == "completed" and (out / "model" / "model.safetensors").is_file()
    assert json.loads((out / "metrics.json").read_text())["tokens"] == 2_048
    capsys.readouterr()


# --- Ctrl-C ------------------------------------------------------------------------------------------------------
def _interrupt_at(step_no: int):
    def patch(mp, tr):
        real, calls = tr.train_step, []

        def step(run_, batches):
            calls.append(1)
            if len(calls) == step_no:
                raise KeyboardInterrupt
            return real(run_, batches)

        mp.setattr(tr, "train_step", step)
    return patch


def _interrupt_setup(mp, tr):
    def setup(*a, **k):
        raise KeyboardInterrupt

    mp.setattr(tr, "setup", setup)


INTERRUPTS = [  # (name, where Ctrl-C lands, what the line says)
    ("after a checkpoint", _interrupt_at(4), "interrupted at 1,536 tokens (the checkpoint at 1,024 tokens is kept)"),
    ("before any checkpoint", _interrupt_at(2), "interrupted at 512 tokens (nothing trained is kept: it starts over)"),
    ("in the data build", _interrupt_setup, "interrupted at 0 tokens (nothing trained is kept: it starts over)"),
]


@pytest.mark.usefixtures("inprocess_dist", "one_thread")
@pytest.mark.parametrize("case", INTERRUPTS, ids=[c[0] for c in INTERRUPTS])
def test_ctrl_c_prints_the_command_that_goes_on(case, tmp_path, monkeypatch, capsys, caplog):
    """The default --out is named in the resume command, so the command goes on in the same folder."""
    import tinylm.train as tr
    import tinylm.train.cli as cli

    name, interrupt, says = case
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("TINYLM_RESULTS", str(tmp_path / "R"))
    with monkeypatch.context() as mp:
        interrupt(mp, tr)
        with pytest.raises(SystemExit) as e:
            cli.main(TRAIN)
    assert e.value.code == 130
    err = capsys.readouterr().err.strip()
    line = one_line(err.splitlines()[-1])
    assert line.startswith(says + "; resume with: python -m tinylm.train --preset debug "), line
    command = shlex.split(line.split("; resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "tinylm.train"] and command[-2] == "--out"
    assert command[-1].startswith(str(tmp_path / "R" / "runs"))
    caplog.set_level(logging.INFO)
    final = cli.main(command[3:])
    assert final["status"] == "completed" and final["tokens"] == 2_048
    assert ("resumed at step 2 " in caplog.text) == ("checkpoint at" in says)


@pytest.mark.slow
def test_ctrl_c_on_the_real_command(tmp_path, child_env):
    """A real SIGINT to ``python -m tinylm.train``: exit 130, the last stderr line says how to go on, no traceback."""
    out = tmp_path / "run"
    # a run far longer than the test (20M tokens: minutes even on a fast CPU), so the SIGINT always lands mid-run
    # after a checkpoint (at 400k tokens a quiet machine finished before the signal). Output goes to files, not
    # pipes: an undrained pipe fills with log lines and blocks the run, whatever the signal
    args = ["--preset", "debug", "--train_tokens", "20000000", "--eval_every_tokens", "2048", "--eval_tokens", "1024"]
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "w") as err_file:
        # SIGINT at its default, as a command typed in a terminal has it: a test run started in the background
        # (`cmd &` in a script) ignores SIGINT, and a child would inherit that and never see the Ctrl-C
        proc = subprocess.Popen([sys.executable, "-m", "tinylm.train", *args, "--out", str(out)], cwd=ROOT,
                                env=child_env, stdout=subprocess.DEVNULL, stderr=err_file, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        deadline = time.time() + 240
        while time.time() < deadline and proc.poll() is None and not list(
                (out / "ckpt").glob("*/tinylm_complete.json")):
            time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError("no exit 120 s after SIGINT: " + err_path.read_text()[-3000:]) from None
    err = err_path.read_text()
    assert proc.returncode == 130, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted at ") and "tokens is kept); resume with: python -m tinylm.train " \
        f"{' '.join(args)} --out {out}" in last, last
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-3000:]
