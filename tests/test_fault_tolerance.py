"""Failures injected for real: kill -9 of the sweep driver, kill -9 of a training worker, a diverging trial,
a corrupt checkpoint, and a tracking server that is down at start."""

import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "tiny_sweep.py")


def sweep_cmd(results, *args):
    # no ASHA, no kill rule: these tests are about surviving failures, every trial must run to its end
    return [sys.executable, SCRIPT, "--results", str(results), "--no-asha", "--kill-margin", "1e9", "--max-concurrent", "1",
            *args]


def children(results):
    from tinylm.tracking import load_runs

    return load_runs(f"sqlite:///{results}/mlflow.db", sweep="tiny")


def wait_for(proc, pattern, timeout=600):
    lines, deadline = [], time.time() + timeout
    for line in proc.stdout:
        lines.append(line)
        if pattern(line):
            return lines
        assert time.time() < deadline, "".join(lines[-60:])
    raise AssertionError("process ended before the event:\n" + "".join(lines[-60:]))


def kill_tree(pid, sig=signal.SIGKILL):
    for p in psutil.Process(pid).children(recursive=True):
        p.send_signal(sig)


@pytest.mark.slow
def test_driver_killed_then_resumed_and_a_diverging_trial(tmp_path):
    """kill -9 of the driver after the first trial finished; the same command takes over its stale lock and
    finishes the rest exactly once. One trial diverges (lr=1e8): it is recorded as diverged with its reason while
    the others finish, and the sweep exits 1 naming it."""
    import optuna

    env = {**os.environ, "TINY_SPACE": json.dumps({"lr": [3e-3, 1e8, 2e-3]})}
    proc = subprocess.Popen(sweep_cmd(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env=env, start_new_session=True)
    wait_for(proc, lambda line: "[tiny]" in line and ("completed" in line or "diverged" in line))
    time.sleep(3)  # let Tune write its experiment state
    proc.send_signal(signal.SIGKILL)  # the driver dies without any cleanup
    proc.wait(timeout=60)
    kill_tree_group = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    for p in kill_tree_group:  # orphaned Ray workers of the dead driver (a real user would have them too)
        p.kill()
    t0 = time.time()
    again = subprocess.run(sweep_cmd(tmp_path), capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    # the diverged trial is kept and reported: exit 1 after the table, one line naming it and where to look
    assert again.returncode == 1, again.stdout[-3000:] + again.stderr[-3000:]
    assert "results CSV" in again.stdout
    assert "1 of 3 trials of sweep tiny did not end as planned (1 diverged)" in again.stderr, again.stderr[-3000:]
    assert "taking over the stale sweep lock" in again.stderr  # the killed driver's lock
    resume_s = time.time() - t0
    df = children(tmp_path)
    assert len(df) == 3 and df["trial_id"].is_unique, "every trial exactly once, no duplicate MLflow runs"
    assert df["parent_run_id"].nunique() == 1
    by_lr = {round(float(r.lr), 6): r for r in df.itertuples()}
    assert by_lr[1e8].status == "diverged" and "non-finite" in by_lr[1e8].stop_reason
    assert by_lr[0.003].status == "completed" and by_lr[0.002].status == "completed"
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path}/optuna.db")
    assert len(study.trials) == 3 and len({t.user_attrs["ray_trial_id"] for t in study.trials}) == 3
    print(f"resume after kill -9 of the driver: {resume_s:.0f} s")


@pytest.mark.slow
@pytest.mark.parametrize("path", ["local", "trainer"])
def test_worker_killed_mid_trial_restarts_from_checkpoint(tmp_path, path):
    """kill -9 of the process that trains, after a checkpoint. 1-worker trials train in the Tune trial's own
    process (Train's local mode): Tune retries the trial (its FailureConfig). Trials on the TorchTrainer path
    (multi-worker; forced here for one worker): Train's FailureConfig restarts the worker group. Both resume from
    the last checkpoint (at most one checkpoint interval lost) and finish the trial, recorded once."""
    env = {**os.environ, "TINY_SPACE": json.dumps({"lr": [3e-3]}), "TINYLM_LOCAL_MODE": str(int(path == "local"))}
    proc = subprocess.Popen(sweep_cmd(tmp_path, "--set", "train_tokens=40960"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT, env=env, start_new_session=True)
    wait_for(proc, lambda line: "[tiny]" in line and "tokens" in line and "8,192" in line)
    marks = ("RayTrainWorker",) if path == "trainer" else ("ImplicitFunc", "trial_driver")
    # this sweep's own processes only (Ray's are descendants of its driver): another sweep running on the same
    # machine, a user's, must survive the test (matching every process by name once killed one)
    def marked(p: psutil.Process) -> bool:
        try:
            return any(m in " ".join(p.cmdline()) + p.name() for m in marks)
        except psutil.Error:  # gone between the listing and the look
            return False

    workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if marked(p)]
    assert workers, "found the training process"
    for w in workers:
        w.kill()
    rest, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, rest[-3000:]
    with open(os.path.join(tmp_path, "tiny", "output.log")) as f:  # Ray's and the trials' own output
        log = f.read()
    assert "resumed at step" in log, log[-3000:]
    df = children(tmp_path)
    assert len(df) == 1 and df.iloc[0]["status"] == "completed" and df.iloc[0]["tokens"] == 40960


@pytest.mark.slow
def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    code = f"""
import glob, logging, os, sys
logging.basicConfig(level=logging.INFO)
from tinylm.config import Config
from tinylm.train import train
cfg = Config.from_name("debug", train_tokens=8192, eval_every_tokens=2048, eval_tokens=1024)
out = {str(tmp_path)!r}
if sys.argv[1] == "first":
    train(cfg.replace(train_tokens=6144), out)
else:
    tags = sorted(glob.glob(os.path.join(out, "ckpt", "step*")))
    newest = max(glob.glob(os.path.join(tags[-1], "*model_states.pt")))
    open(newest, "wb").write(b"truncated")  # a partial write
    m = train(cfg, out)
    print("FINAL", m["status"], m["tokens"])
"""
    first = subprocess.run([sys.executable, "-c", code, "first"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert first.returncode == 0, first.stderr[-2000:]
    second = subprocess.run([sys.executable, "-c", code, "second"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    log = second.stdout + second.stderr
    assert "unreadable" in log and "trying the previous one" in log
    assert "resumed at step 8" in log  # the previous checkpoint (step 8 = 4096 tokens), not a fresh start
    assert "FINAL completed 8192" in log


def test_tracking_server_down_fails_before_any_compute(tmp_path):
    with socketserver_port() as port:
        pass  # the port is closed again: nothing listens there
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://user:secret@127.0.0.1:{port}"}
    t0 = time.time()
    p = subprocess.run(sweep_cmd(tmp_path), capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert p.returncode != 0
    err = p.stdout + p.stderr
    assert "not reachable" in err and "secret" not in err
    assert not os.path.exists(os.path.join(tmp_path, "ray")), "no Ray started, no trial scheduled"
    assert time.time() - t0 < 60


class socketserver_port:
    def __enter__(self):
        import socket

        self.s = socket.socket()
        self.s.bind(("127.0.0.1", 0))
        return self.s.getsockname()[1]

    def __exit__(self, *exc):
        self.s.close()
