"""A sweep never lies about its state (issue 18): after any exit every store (MLflow parent and children,
results.csv, Optuna) agrees on each trial, and the exit status says whether every trial ended as planned.

One test (table-driven where it fits) per class:
  endings .................. completed / stopped early exit 0; diverged / failed exit 1 with a one-line summary
  stopped sweeps ........... an interrupt or an error after the parent run started leaves nothing RUNNING
  one sweep per folder ..... a lock with the holder's PID and host; a live holder refused, a stale one taken over
  corrupt stores ........... mlflow.db / optuna.db / Ray's storage refused in one line before any compute
  changed grids ............ a resumed sweep whose grid changed is refused naming the difference
  the real thing ........... SIGINT while the last trials run: "interrupted", every store agrees, the superset
                             grid refused (no loop), the same command finishes the sweep

Most cases are unit calls; the CLI runs in a subprocess where the exit code and stderr matter, and one real
sweep (tests/tiny_sweep.py at --scale smoke) shows the interrupt.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "tiny_sweep.py")


def one_line(msg: str) -> str:
    assert "\n" not in msg.strip(), f"not one line: {msg!r}"
    assert "Traceback" not in msg, msg
    return msg


def tiny(results, *args):
    return [sys.executable, SCRIPT, "--scale", "smoke", "--results", str(results), *args]


# --- endings -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("statuses, bad", [
    (["completed", "completed"], None),
    (["completed", "stopped_asha", "killed_rule"], None),
    (["diverged", "diverged"], "2 of 2 trials of sweep tiny did not end as planned (2 diverged)"),
    (["completed", "failed", "diverged"], "2 of 3 trials of sweep tiny did not end as planned (1 failed, 1 diverged)"),
    (["completed", "interrupted"], "1 of 2 trials of sweep tiny did not end as planned (1 interrupted)"),
])
def test_unplanned_endings_exit_1_with_one_line(monkeypatch, tmp_path, capsys, statuses, bad):
    """The sweep script exits 0 only when every trial completed or was stopped early by ASHA / the kill rule;
    otherwise after the table, with one line naming how many and where to look. Two-phase counts phase 1 too."""
    from tinylm import tune
    from tinylm.sweep.cli import main

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    try:
        from tiny_sweep import EXPERIMENT
    finally:
        sys.path.pop(0)
    table = pd.DataFrame({"trial_id": [f"t{i}" for i in range(len(statuses))], "lr": 3e-3,
                          "val_loss": 5.0, "status": statuses})
    monkeypatch.setattr(tune, "run_sweep", lambda sweep, base, space, refine_space=None: table.copy())
    monkeypatch.setattr(tune, "print_results", lambda *a, **k: "")
    monkeypatch.setattr(tune, "shutdown", lambda: None)
    if bad is None:
        assert len(main(EXPERIMENT, ["--scale", "smoke", "--results", str(tmp_path)])) == len(statuses)
        assert "did not end as planned" not in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as e:
        main(EXPERIMENT, ["--scale", "smoke", "--results", str(tmp_path)])
    assert e.value.code == 1
    err = one_line(capsys.readouterr().err)
    assert bad in err and os.path.join(str(tmp_path), "tiny", "results.csv") in err
    # two-phase: phase 1's failures count as well (its table is another sweep's)
    with pytest.raises(SystemExit):
        main(EXPERIMENT, ["--scale", "smoke", "--results", str(tmp_path), "--two-phase"])
    err = one_line(capsys.readouterr().err)
    assert "trials of sweep tiny-rank did not end as planned" in err and "sweep tiny-final" in err


# --- stopped sweeps ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("error, parent_status", [(KeyboardInterrupt(), "interrupted"),
                                                  (RuntimeError("storage vanished\nsecond line"), "failed"),
                                                  (OSError("disk full"), "failed")])
def test_a_stopped_sweep_leaves_no_run_running(tmp_path, error, parent_status):
    """Whatever ends a sweep after its MLflow parent started: children still running become "interrupted" (the
    same command resumes them), the parent "interrupted" / "failed", results.csv says the same, and the grid
    trials that did end are in Optuna (the unfinished ones are not)."""
    import optuna

    from tinylm.config import Config
    from tinylm.sweep import Space, Sweep
    from tinylm.tracking import Tracker, load_runs
    from tinylm.tune import grid_space
    from tinylm.tune.runner import _close_stopped_sweep

    sweep = Sweep("tiny", results_dir=str(tmp_path), refine=2)
    refine = optuna.create_study(study_name="tiny-refine", storage=sweep.storage())
    refine.ask()  # a refinement trial the searcher had started: RUNNING in Optuna
    tracker = Tracker(sweep.uri(), "tiny", artifact_root=str(tmp_path / "mlartifacts"))
    parent = tracker.start_sweep("tiny@x", {}, {"tinylm.sweep": "tiny"})
    base = Config.from_name("debug")
    runs = {}
    for tid, lr in (("a", 3e-3), ("b", 2e-3), ("c", 1e-3)):
        runs[tid] = tracker.trial_run(parent, tid, base.replace(lr=lr).to_dict(), tags={"tinylm.phase": "grid"})
    tracker.log_metrics(runs["a"], {"val_loss": 5.0, "tokens": 100}, step=100)
    tracker.finish_run(runs["a"], "completed", "", {"val_loss": 5.0, "tokens": 100})
    tracker.finish_run(runs["b"], "diverged", "non-finite loss")
    _close_stopped_sweep(sweep, tracker, parent, error, grid_space(base, Space(lr=[3e-3, 2e-3, 1e-3]), 1))
    df = load_runs(sweep.uri(), sweep="tiny").set_index("trial_id")
    assert dict(df["status"]) == {"a": "completed", "b": "diverged", "c": "interrupted"}
    assert "run the same command to resume" in df.loc["c", "stop_reason"]
    p = tracker.client.get_run(parent)
    assert p.data.tags["tinylm.status"] == parent_status and p.info.status != "RUNNING"
    assert "second line" not in p.data.tags["tinylm.stop_reason"]
    assert all(tracker.client.get_run(r).info.status != "RUNNING" for r in runs.values())
    csv = pd.read_csv(tmp_path / "tiny" / "results.csv").set_index("trial_id")
    assert dict(csv["status"]) == dict(df["status"])
    study = optuna.load_study(study_name="tiny", storage=sweep.storage())
    assert {t.user_attrs["ray_trial_id"]: t.state.name for t in study.trials} == {"a": "COMPLETE", "b": "FAIL"}
    assert [t.user_attrs.get("tinylm_status") for t in refine.trials] == ["interrupted"]


def test_unfinished_trials_are_read_from_the_tracking_store():
    """Tune marks the trials an interrupt stopped TERMINATED: the tracking store's record decides. A trial that
    reported its end but was never recorded is recorded now (else every rerun would say "interrupted")."""
    from types import SimpleNamespace

    from tinylm.tune.runner import unfinished_trials

    recorded = []
    callback = SimpleNamespace(on_trial_complete=lambda it, trials, trial: recorded.append(trial.trial_id))
    trials = [SimpleNamespace(trial_id=tid, status="TERMINATED", last_result=last) for tid, last in (
        ("done", {"status": "completed"}), ("stopped", {"val_loss": 5.0}), ("mid", {"val_loss": 5.0}),
        ("new", None), ("ended-unrecorded", {"status": "diverged"}), ("asha", {"val_loss": 6.0}))]
    statuses = {"done": "completed", "stopped": "interrupted", "mid": "running", "ended-unrecorded": "running",
                "asha": "stopped_asha"}
    assert [t.trial_id for t in unfinished_trials(trials, statuses, callback)] == ["stopped", "mid", "new"]
    assert recorded == ["ended-unrecorded"]


# --- one sweep per results folder ----------------------------------------------------------------------------
HOLD = """import sys, time
from tinylm.tune.state import SweepLock
with SweepLock(sys.argv[1], "a sweep"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A process that holds the sweep lock of ``tmp_path`` (as a running sweep does) until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout.readline().strip() == "held"
    yield p
    p.kill()
    p.wait()


def test_one_sweep_per_results_folder(tmp_path, holder, caplog):
    """A live holder is refused in one line naming its PID and the lock, and its lock is left alone; once it is
    killed (kill -9: no cleanup) its record is taken over with a warning; a record from another host is refused
    (whether it runs cannot be checked from here); a broken file is taken over. The lock is reentrant in one
    process (two-phase) and gone after the sweep."""
    from tinylm.tune.state import SweepLock, SweepStateError

    lock = tmp_path / "sweep.lock"
    before = lock.read_text()
    with pytest.raises(SweepStateError) as e:
        SweepLock(str(tmp_path)).__enter__()
    msg = one_line(str(e.value))
    assert f"PID {holder.pid} on {socket.gethostname()}" in msg and str(lock) in msg
    assert lock.read_text() == before and json.loads(before)["pid"] == holder.pid
    holder.kill()
    holder.wait()
    cases = [  # (lock file left behind, refused?, warned?)
        (before, False, True),  # the killed holder's record
        (json.dumps({"pid": os.getpid(), "host": "another-host", "started": time.time()}), True, False),
        ("{half a json", False, False),
    ]
    for content, refused, warned in cases:
        lock.write_text(content)
        caplog.clear()
        if refused:
            with pytest.raises(SweepStateError) as e:
                SweepLock(str(tmp_path)).__enter__()
            assert "on another-host" in one_line(str(e.value)) and "remove the lock" in str(e.value)
            assert lock.read_text() == content
            continue
        with SweepLock(str(tmp_path), command="python x.py"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
            with SweepLock(str(tmp_path)):  # reentrant
                pass
            assert lock.exists()
        assert ("stale sweep lock" in caplog.text) == warned and not lock.exists()


def test_second_sweep_on_one_results_folder_is_refused_by_the_cli(tmp_path, holder):
    """The second copy exits 1 within seconds, one line naming the holder's PID and the lock, before Ray."""
    t0 = time.time()
    p = subprocess.run(tiny(tmp_path), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert p.returncode == 1 and time.time() - t0 < 60
    err = one_line(p.stderr.strip())
    assert f"PID {holder.pid}" in err and str(tmp_path / "sweep.lock") in err
    assert not (tmp_path / "ray").exists() and (tmp_path / "sweep.lock").exists()


# --- corrupt stores, before any compute ----------------------------------------------------------------------
def _real_db(path):
    with sqlite3.connect(path) as conn:
        conn.execute("create table t (x)")
        conn.executemany("insert into t values (?)", [(os.urandom(512),) for _ in range(200)])
    conn.close()


@pytest.mark.parametrize("name, make, problem", [
    ("mlflow.db", lambda p: p.write_bytes(os.urandom(4096)), "not an SQLite database"),
    ("optuna.db", lambda p: p.write_text("hello, I am a text file\n" * 100), "not an SQLite database"),
    ("optuna.db", lambda p: (_real_db(p), p.write_bytes(p.read_bytes()[:5000])), "database disk image is malformed"),
    ("mlflow.db", lambda p: (_real_db(p), p.write_bytes(p.read_bytes()[:100] + b"\0" * 4000 +
                                                        p.read_bytes()[4100:])), "mlflow.db is"),
    ("mlflow.db", lambda p: _real_db(p), None),
    ("optuna.db", lambda p: p.write_bytes(b""), None),  # an empty file: sqlite makes it a database
])
def test_corrupt_sqlite_store_refused_naming_the_file(tmp_path, name, make, problem):
    from tinylm.sweep import Sweep
    from tinylm.tune.state import SweepStateError, check_sqlite_stores

    sweep = Sweep("tiny", results_dir=str(tmp_path))
    make(tmp_path / name)
    if problem is None:
        check_sqlite_stores(sweep.uri(), sweep.storage())
        return
    with pytest.raises(SweepStateError) as e:
        check_sqlite_stores(sweep.uri(), sweep.storage())
    msg = one_line(str(e.value))
    assert str(tmp_path / name) in msg and problem in msg
    assert ("MLFLOW_TRACKING_URI" if name == "mlflow.db" else "TINYLM_OPTUNA_STORAGE") in msg


@pytest.mark.parametrize("what", ["mlflow.db", "optuna.db", "TINYLM_STORAGE"])
def test_bad_store_refused_by_the_cli_before_any_compute(tmp_path, what):
    """Through the sweep script: one line naming the file, exit 1, no Ray, no MLflow parent left RUNNING."""
    env = dict(os.environ)
    if what == "TINYLM_STORAGE":
        env["TINYLM_STORAGE"] = "/dev/null/ray"
    else:
        (tmp_path / what).write_bytes(os.urandom(4096))
    p = subprocess.run(tiny(tmp_path), capture_output=True, text=True, cwd=ROOT, timeout=120, env=env)
    assert p.returncode == 1, p.stderr[-2000:]
    err = one_line(p.stderr.strip())
    assert (str(tmp_path / what) if what != "TINYLM_STORAGE" else "/dev/null") in err
    assert not (tmp_path / "ray").exists() and not (tmp_path / "sweep.lock").exists()
    if what != "mlflow.db":
        assert not (tmp_path / "mlflow.db").exists() or "RUNNING" not in str(
            sqlite3.connect(tmp_path / "mlflow.db").execute("select status from runs").fetchall())


@pytest.mark.parametrize("root, ok", [("{tmp}/ray", True), ("/dev/null/ray", False), ("nope://bucket/x", False)])
def test_ray_storage_checked_before_the_sweep_starts(tmp_path, root, ok):
    from tinylm.tune.state import SweepStateError, check_ray_storage

    root = root.format(tmp=tmp_path)
    if ok:
        check_ray_storage(root)
        return
    with pytest.raises(SweepStateError) as e:
        check_ray_storage(root, timeout_s=20)
    assert "TINYLM_STORAGE" in one_line(str(e.value))


# --- changed grids -------------------------------------------------------------------------------------------
def test_a_resumed_sweep_with_a_changed_grid_is_refused_naming_the_difference(tmp_path):
    """Tune restores the trials a sweep was created with and never runs a new point, so a changed grid (a superset
    used to read as "interrupted" on every rerun) is refused naming what changed; the same points in another
    order are the same grid; a new sweep (nothing to resume) records its grid."""
    from tinylm.config import Config
    from tinylm.sweep import Space
    from tinylm.tune import grid_space
    from tinylm.tune.state import SweepStateError, check_grid, grid_spec

    base = Config.from_name("debug")
    created = {"lr": [3e-3, 1e-3], "__variant": [{"n_layer": 2}, {"n_layer": 3}]}
    spec_file, exp_dir = str(tmp_path / "tiny" / "grid.json"), str(tmp_path / "ray" / "tiny")

    def spec(space, seeds=1, samples=1, **fields):
        return grid_spec(grid_space(base.replace(**fields), Space.of(space), seeds), samples)

    check_grid("tiny", spec_file, spec(created), exp_dir, resuming=False)
    cases = [  # (the rerun's grid, what the refusal names; None: accepted)
        (dict(space=created), None),
        (dict(space={"lr": [1e-3, 3e-3], "__variant": [{"n_layer": 3}, {"n_layer": 2}]}), None),
        (dict(space={**created, "lr": [3e-3, 1e-3, 5e-3]}), "added lr=0.005"),
        (dict(space={**created, "lr": [3e-3]}), "removed lr=0.001"),
        (dict(space={**created, "__variant": [{"n_layer": 2}, {"n_layer": 4}]}),
         'added variant={"n_layer": 4}; removed variant={"n_layer": 3}'),
        (dict(space=created, warmup_tokens=100), "changed warmup_tokens 2000 -> 100"),
        (dict(space=created, seeds=2), "changed seed 0 -> [0, 1]"),
        (dict(space=created, samples=4), "changed samples 1 -> 4"),
    ]
    for kw, named in cases:
        if named is None:
            check_grid("tiny", spec_file, spec(**kw), exp_dir, resuming=True)
            continue
        with pytest.raises(SweepStateError) as e:
            check_grid("tiny", spec_file, spec(**kw), exp_dir, resuming=True)
        msg = one_line(str(e.value))
        assert f"grid of sweep tiny changed since {exp_dir} was created: {named}" in msg, msg
        assert "--results" in msg and "move" in msg
    # a refused rerun leaves the record as it was; a new sweep (the experiment moved away) records its own
    assert json.loads(open(spec_file).read()) == spec(created)
    # a Config field added since the sweep was created (its grid.json lacks it) is the same grid at its default
    older = {k: v for k, v in spec(created).items() if k != "seeds_per_trial"}
    (tmp_path / "older.json").write_text(json.dumps(older))
    check_grid("tiny", str(tmp_path / "older.json"), spec(created), exp_dir, resuming=True)
    with pytest.raises(SweepStateError, match="seeds_per_trial unset -> 2"):
        check_grid("tiny", str(tmp_path / "older.json"), spec(created, seeds=4, seeds_per_trial=2), exp_dir,
                   resuming=True)
    check_grid("tiny", spec_file, spec({"lr": [5e-3]}), exp_dir, resuming=False)
    check_grid("tiny", spec_file, spec({"lr": [5e-3]}), exp_dir, resuming=True)
    # ``only``: the refinement's number of trials is checked before the sweep starts, nothing is written
    check_grid("tiny", spec_file, {"samples": 1}, exp_dir, resuming=True, only=("samples",))
    with pytest.raises(SweepStateError, match="changed samples 1 -> 3"):
        check_grid("tiny", spec_file, {"samples": 3}, exp_dir, resuming=True, only=("samples",))


# --- the real thing ------------------------------------------------------------------------------------------
def stores(results):
    """Each trial's state in every store: MLflow children, the parent, results.csv, Optuna."""
    import optuna

    from tinylm.tracking import load_runs
    from tinylm.tracking.store import connect, search_runs

    df = load_runs(f"sqlite:///{results}/mlflow.db", sweep="tiny")
    client = connect(f"sqlite:///{results}/mlflow.db")
    runs = search_runs(client, [e.experiment_id for e in client.search_experiments()])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    csv = pd.read_csv(os.path.join(results, "tiny", "results.csv"))
    try:
        study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{results}/optuna.db").trials
    except KeyError:
        study = []
    return (df, [(p.info.status, p.data.tags["tinylm.status"]) for p in parents], csv,
            {t.user_attrs["ray_trial_id"]: t.state.name for t in study}, runs)


@pytest.mark.slow
def test_sigint_while_the_last_trials_run_says_interrupted_and_every_store_agrees(tmp_path):
    """The reported moment: SIGINT once every trial has been created (the last two running). Tune then returns
    normally with them marked TERMINATED in memory; the sweep used to exit 0 with the final table, the parent
    FINISHED and two children RUNNING. Now: "interrupted" with the resume command, exit 1; the unfinished trials'
    children and the parent are "interrupted" (no run RUNNING), results.csv says the same, Optuna holds just the
    finished trial. A superset grid is then refused in one line (no "interrupted" loop), and the same command
    finishes the sweep with exit 0 and every store "completed"."""
    grid = {"lr": [3e-3, 2e-3, 1e-3]}
    env = {**os.environ, "TINY_SPACE": json.dumps(grid)}
    cmd = tiny(tmp_path, "--no-asha", "--kill-margin", "1e9", "--max-concurrent", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env,
                            start_new_session=True)
    seen, started, deadline = [], 0, time.time() + 600
    for line in proc.stdout:
        seen.append(line)
        started += "| started" in line
        if started == len(grid["lr"]) and "| running" in line:
            break
        assert time.time() < deadline, "".join(seen[-40:])
    os.kill(proc.pid, signal.SIGINT)  # the driver only, as a tester did
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out[-3000:]
    assert "interrupted" in out and "Resume with the same command" in out and "results CSV" not in out, out[-3000:]
    df, parents, csv, optuna_states, runs = stores(tmp_path)
    assert parents == [("KILLED", "interrupted")]
    assert all(r.info.status != "RUNNING" for r in runs), [(r.info.run_name, r.info.status) for r in runs]
    assert set(df["status"]) <= {"completed", "interrupted"} and (df["status"] == "interrupted").sum() >= 1
    assert dict(zip(csv["trial_id"], csv["status"])) == dict(zip(df["trial_id"], df["status"]))
    assert optuna_states == {t: "COMPLETE" for t in df.loc[df["status"] == "completed", "trial_id"]}
    assert not (tmp_path / "sweep.lock").exists()

    bigger = {**os.environ, "TINY_SPACE": json.dumps({"lr": [*grid["lr"], 5e-4]})}
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=bigger, timeout=300)
    assert p.returncode == 1 and "added lr=0.0005" in one_line(p.stderr.strip()), p.stderr[-2000:]
    assert "interrupted" not in p.stdout + p.stderr

    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    df, parents, csv, optuna_states, runs = stores(tmp_path)
    assert len(df) == 3 and df["trial_id"].is_unique and (df["status"] == "completed").all()
    assert parents == [("FINISHED", "completed")] and (csv["status"] == "completed").all()
    assert sorted(optuna_states.values()) == ["COMPLETE"] * 3
