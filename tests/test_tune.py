"""Real sweeps on a local Ray: ASHA, the kill rule's bookkeeping, MLflow nesting, Optuna, interrupt + resume.

Slow (a Ray start and a Train worker group per trial), but they are the product's main path, so CI runs them.
"""

import os
import signal
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "tiny_sweep.py")


def run_script(results, *args, timeout=900, env=None):
    return subprocess.run([sys.executable, SCRIPT, "--results", str(results), *args], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=env)


def children(results, sweep="tiny"):
    from tinylm.tracking import load_runs

    return load_runs(f"sqlite:///{results}/mlflow.db", sweep=sweep)


@pytest.mark.slow
def test_grid_sweep_with_asha_mlflow_and_optuna(tmp_path):
    import optuna

    t0 = time.time()
    p = run_script(tmp_path, "--refine", "2", "--grace-tokens", "4096")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    wall = time.time() - t0
    everything = children(tmp_path)
    assert len(everything) == 6 and everything["trial_id"].is_unique  # 4 grid + 2 refine, one parent
    assert sorted(everything["phase"]) == ["grid"] * 4 + ["refine"] * 2
    df = everything[everything["phase"] == "grid"]
    assert set(df["status"]) <= {"completed", "stopped_asha", "killed_rule"}
    assert (df["status"] != "completed").sum() >= 1, "ASHA (or the kill rule) stopped at least one bad LR"
    best = df.sort_values("val_loss").iloc[0]
    assert best["lr"] == pytest.approx(3e-3) and best["status"] == "completed"
    assert df["parent_run_id"].nunique() == 1  # nested under one parent
    assert best["params_total"] > 0 and isinstance(best["data_fingerprint"], str) and len(best["data_fingerprint"]) == 64
    # Optuna: the grid trials are in the study named after the sweep; early stops are PRUNED
    storage = f"sqlite:///{tmp_path}/optuna.db"
    grid = optuna.load_study(study_name="tiny", storage=storage).trials
    assert len(grid) == 4
    states = {t.user_attrs["ray_trial_id"]: t.state.name for t in grid}
    for _, row in df.iterrows():
        assert states[row["trial_id"]] == ("COMPLETE" if row["status"] == "completed" else "PRUNED")
    # refinement: its own study, told the grid's completed results; both refinement trials are new points
    refine = optuna.load_study(study_name="tiny-refine", storage=storage).trials
    told = [t for t in refine if t.user_attrs.get("source") == "grid"]
    new = [t for t in refine if t.user_attrs.get("source") != "grid"]
    completed = df[df["status"] == "completed"]
    assert len(told) == len(completed) and len(new) == 2
    assert {t.user_attrs["ray_trial_id"]: t.value for t in told} == pytest.approx(
        dict(zip(completed["trial_id"], completed["val_loss"])))
    grid_lrs = set(df["lr"].round(12))
    assert all(round(t.params["lr"], 12) not in grid_lrs for t in new)
    assert "results CSV" in p.stdout and "optuna-dashboard" in p.stdout
    print(f"tiny sweep (4 grid + 2 refine trials): {wall:.0f} s")


@pytest.mark.slow
def test_interrupt_then_resume_finishes_each_trial_once(tmp_path):
    cmd = [sys.executable, SCRIPT, "--results", str(tmp_path), "--no-asha", "--max-concurrent", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)
    seen = []
    deadline = time.time() + 600
    for line in proc.stdout:  # interrupt as soon as the first trial has finished
        seen.append(line)
        if "completed" in line and "[tiny]" in line:
            break
        assert time.time() < deadline, "".join(seen[-50:])
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C (SIGINT, not SIGTERM: SIGTERM left gcs_server/raylet running)
    out, _ = proc.communicate(timeout=300)
    assert "interrupted" in out or proc.returncode != 0, out[-2000:]
    before = children(tmp_path)
    assert (before["status"] == "completed").sum() >= 1 and len(before) < 4 or (before["status"] != "completed").any()
    t0 = time.time()
    p = run_script(tmp_path, "--no-asha", "--max-concurrent", "1")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    after = children(tmp_path)
    assert len(after) == 4 and after["trial_id"].is_unique, "no duplicate MLflow runs"
    assert (after["status"] == "completed").all()
    done_first = set(before.loc[before["status"] == "completed", "trial_id"])
    # a trial finished before the interrupt was not trained again: its run kept its end time
    for tid in done_first:
        assert after.loc[after["trial_id"] == tid, "end_time"].iloc[0] == before.loc[before["trial_id"] == tid, "end_time"].iloc[0]
    print(f"resume wall time: {time.time() - t0:.0f} s")


@pytest.mark.postgres
def test_sweep_on_postgres_tracking_and_optuna(tmp_path):
    """The cluster setup in miniature: MLflow and Optuna on a real PostgreSQL, two trials writing at once."""
    import uuid

    import optuna
    import psycopg
    import sqlalchemy

    from tinylm.tracking import load_runs

    admin = os.environ.get("TINYLM_POSTGRES_URI")
    if not admin:
        pytest.skip("TINYLM_POSTGRES_URI is not set (scripts/test.sh starts PostgreSQL and sets it)")
    suffix = uuid.uuid4().hex[:8]
    url = sqlalchemy.engine.make_url(admin)
    with psycopg.connect(host=url.host, port=url.port, user=url.username, password=url.password or None,
                         dbname=url.database, autocommit=True) as conn:
        for db in (f"mlflow_{suffix}", f"optuna_{suffix}"):
            conn.execute(f"CREATE DATABASE {db}")
    mlflow_uri = url.set(database=f"mlflow_{suffix}").render_as_string(hide_password=False)
    optuna_uri = url.set(database=f"optuna_{suffix}").render_as_string(hide_password=False)
    # credentials travel in the environment, never on a command line (argv is visible to every user in ps)
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "TINYLM_OPTUNA_STORAGE": optuna_uri}
    p = run_script(tmp_path, "--max-concurrent", "2", "--no-asha", "--kill-margin", "1e9", "--set",
                   "train_tokens=8192", env=env)
    assert not url.password or url.password not in p.stdout + p.stderr, "the password never reaches the output"
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    df = load_runs(mlflow_uri, sweep="tiny")
    assert len(df) == 4 and df["trial_id"].is_unique and (df["status"] == "completed").all()
    overlap = (df["start_time"].max() < df["end_time"].min()) or any(
        (a.start_time < b.end_time) and (b.start_time < a.end_time)
        for a in df.itertuples() for b in df.itertuples() if a.run_id != b.run_id)
    assert overlap, "two trials wrote at the same time"
    study = optuna.load_study(study_name="tiny", storage=optuna_uri)
    assert len(study.trials) == 4


def test_refine_study_is_told_the_grid_results_once(tmp_path):
    """--refine adds the grid's completed trials to the refine study with their losses (no re-training), skips
    what it cannot place in the refine space, and adds nothing twice when the sweep is run again."""
    import math

    import optuna
    import pandas as pd
    from ray import tune as rtune

    from tinylm.tune.search import tell_grid_results

    grid = pd.DataFrame({"trial_id": ["a", "b", "c", "d", "e"], "lr": [3e-3, 1e-3, 1e-2, 3e-3, 5.0],
                         "n_layer": [2, 2, 3, 4, 2], "val_loss": [5.0, 5.5, math.nan, 6.0, 4.0],
                         "status": ["completed", "completed", "diverged", "stopped_asha", "completed"]})
    space = {"lr": rtune.loguniform(5e-4, 2e-2), "n_layer": rtune.randint(1, 6)}
    storage = f"sqlite:///{tmp_path}/optuna.db"
    assert tell_grid_results(storage, "s-refine", space, grid) == 2  # e: lr outside the space; c, d: not completed
    assert tell_grid_results(storage, "s-refine", space, grid) == 2
    trials = optuna.load_study(study_name="s-refine", storage=storage).trials
    assert sorted((t.user_attrs["ray_trial_id"], t.value, t.params["n_layer"]) for t in trials) == [
        ("a", 5.0, 2), ("b", 5.5, 2)]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_results_table_ranks_trials_by_the_one_trial_loss(monkeypatch, tmp_path):
    """The sweep's table is ordered by tinylm.ranking (final val loss, else the latest; none last): a trial whose
    final eval beats its last periodic one ranks on the final, and row 0 is ranking.best_trial's pick."""
    import math

    import pandas as pd

    import tinylm.tracking
    from tinylm import tune
    from tinylm.ranking import best_trial

    runs = pd.DataFrame({"trial_id": list("abcde"), "val_loss": [3.0, 2.0, math.nan, 1.0, 2.0],
                         "final_val_loss": [1.5, math.nan, math.nan, math.nan, math.nan]})
    monkeypatch.setattr(tinylm.tracking, "load_runs", lambda uri, sweep: runs)
    from tinylm.sweep import Sweep

    table = tune.results_table(Sweep("s", results_dir=str(tmp_path)))
    assert list(table["trial_id"]) == ["d", "a", "b", "e", "c"] and list(table.index) == [0, 1, 2, 3, 4]
    assert table.iloc[0]["trial_id"] == runs.iloc[best_trial(runs.to_dict("records"))]["trial_id"]


def test_the_refinement_searcher_is_chosen_by_name(tmp_path):
    """``--search`` picks the refinement's searcher from tinylm.tune.search.SEARCHERS: optuna takes the domains
    out of Tune's param space and into its study (told the grid's results), random leaves them for Tune to
    sample; the flag's choices (checked before Ray starts) are exactly the factory's names."""
    import pandas as pd
    from ray import tune as ray_tune

    from tinylm.sweep.settings import SEARCHERS as CHOICES
    from tinylm.sweep.settings import Sweep
    from tinylm.tune.search import SEARCHERS, PruningOptunaSearch, make_searcher

    assert tuple(SEARCHERS) == CHOICES
    space = {"lr": ray_tune.loguniform(1e-4, 1e-2), "n_layer": 2}
    grid = pd.DataFrame([{"trial_id": "a", "status": "completed", "val_loss": 3.0, "lr": 1e-3}])
    opt, rest = make_searcher(Sweep(name="s", results_dir=str(tmp_path)), "s-refine", dict(space), grid)
    assert isinstance(opt, PruningOptunaSearch) and rest == {"n_layer": 2}
    import optuna

    study = optuna.load_study(study_name="s-refine", storage=Sweep(name="s", results_dir=str(tmp_path)).storage())
    assert [t.value for t in study.trials] == [3.0]  # the grid's result, told before the first refinement trial
    rnd, kept = make_searcher(Sweep(name="s", results_dir=str(tmp_path), search="random"), "s-refine", dict(space),
                              grid)
    assert rnd is None and kept == space  # Tune samples the domains itself
