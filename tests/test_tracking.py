"""tinylm.tracking against real MLflow stores: sqlite files in tmp_path, and one real `mlflow server`.

Creating an MLflow 3 sqlite store runs ~40 schema migrations (2-10 s on a loaded 2-core box), so the session
migrates one template database and every test copies it: each test still owns a fresh, real store.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tinylm.config import Config
from tinylm.tracking import (
    STATUS,
    Tracker,
    TrackingError,
    check_tracking,
    default_uri,
    export_log,
    list_sweeps,
    load_curves,
    load_runs,
    mask_uri,
    parent_run_name,
    resolve_uri,
    ui_url,
)

# MLflow's own sqlalchemy mappers use a deprecated loader; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(scope="session")
def template_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("template") / "mlflow.db"
    Tracker(f"sqlite:///{path}", "template")  # runs the migrations once
    return path


@pytest.fixture
def results(tmp_path, template_db) -> Path:
    """A results dir holding a fresh (copied, already migrated) store."""
    shutil.copy(template_db, tmp_path / "mlflow.db")
    return tmp_path


@pytest.fixture
def uri(results) -> str:
    return default_uri(str(results), env=False)


def _sweep(uri: str, key: str = "glu-abc123", sweep: str = "glu", n: int = 3, experiment: str = "tinylm"):
    """A parent with n children varying glu_factor; returns (tracker, parent id, child ids, configs)."""
    tr = Tracker(uri, experiment)
    parent = tr.start_sweep(key, {"space": {"glu_factor": [2.0, 3.0, 4.0]}},
                            {"tinylm.sweep": sweep, "git_sha": "0123abc", "git_dirty": "false",
                             "device": "cpu-test", "hostname": "box"},
                            description="GLU width sweep", hypothesis="2.66x matches 4x at equal params")
    cfgs = [Config.from_name("debug", glu_factor=g, seed=i, tie_embeddings=i % 2 == 0)
            for i, g in enumerate([2.0, 3.0, 4.0][:n])]
    children = [tr.trial_run(parent, f"t_{i:05d}", c.to_dict(), {"tokenizer_hash": f"tok{i}"})
                for i, c in enumerate(cfgs)]
    return tr, parent, children, cfgs


def test_default_uri_env_and_masking(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    u = default_uri("rel/results")
    assert u.startswith("sqlite:////") and u.endswith("/rel/results/mlflow.db") and os.path.isabs(u[10:])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5055")
    assert default_uri("x") == "http://127.0.0.1:5055" == resolve_uri(None, "x")
    assert resolve_uri("postgresql://h/db", "x") == "postgresql://h/db"
    assert default_uri("x", env=False).startswith("sqlite:///")
    assert mask_uri("postgresql://user:s3cr:et@db:5432/mlflow") == "postgresql://user:***@db:5432/mlflow"
    assert mask_uri("see https://u:tok@h/x and mysql://a:b@c") == "see https://u:***@h/x and mysql://a:***@c"
    assert mask_uri("postgresql://h/db?password=hunter2&sslmode=require") == \
        "postgresql://h/db?password=***&sslmode=require"
    assert mask_uri("http://127.0.0.1:5000/path") == "http://127.0.0.1:5000/path"


def test_the_package_exports_every_name_its_callers_import():
    """tinylm.tracking is a package (schema, store, writer, readers); callers import from the package, often
    lazily inside a function, where a missing re-export would only fail when that code path runs."""
    import ast

    import tinylm.tracking as tracking

    root = Path(__file__).resolve().parents[1]
    used: dict[str, set[str]] = {}
    for path in [p for d in ("tinylm", "sweeps", "bench", "tests", "scripts") for p in (root / d).rglob("*.py")]:
        if path.is_relative_to(root / "tinylm" / "tracking"):
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        aliases = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                   and n.module == "tinylm" for a in n.names if a.name == "tracking"}
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module == "tinylm.tracking":
                names = {a.name for a in n.names}
            elif isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases:
                names = {n.attr}
            else:
                continue
            for name in names:
                used.setdefault(name, set()).add(path.relative_to(root).as_posix())
    assert {"Tracker", "load_runs", "check_tracking", "TrackingError"} <= set(used)  # the scan sees the callers
    missing = {n: sorted(f) for n, f in used.items() if n not in tracking.__all__ or not hasattr(tracking, n)}
    assert not missing, f"add these to tinylm/tracking/__init__.py (imported from the package): {missing}"


def test_parent_and_children_are_nested(uri, results):
    tr, parent, children, _ = _sweep(uri)
    assert len(set(children)) == 3
    kids = tr.child_runs(parent)
    assert sorted(r.info.run_id for r in kids) == sorted(children)
    for i, run in enumerate(kids):
        t = run.data.tags
        assert t["mlflow.parentRunId"] == parent and t["tinylm.trial_id"] == f"t_{i:05d}"
        assert t["tinylm.sweep"] == "glu" and t["tinylm.sweep_key"] == "glu-abc123"
        assert t["git_sha"] == "0123abc" and t["hypothesis"].startswith("2.66x")  # inherited from the parent
        assert t["mlflow.runName"] == f"glu-t_{i:05d}" and run.info.status == "RUNNING"
        assert run.info.artifact_uri.startswith(str(results / "mlartifacts"))
    p = tr.client.get_run(parent)
    assert p.data.tags["mlflow.note.content"] == "GLU width sweep"
    assert p.data.tags["mlflow.source.git.commit"] == "0123abc"
    assert "mlflow.parentRunId" not in p.data.tags


def test_restart_reuses_parent_and_children(uri):
    tr, parent, children, cfgs = _sweep(uri)
    tr.finish_run(children[0], "completed")
    tr.finish_run(parent, "interrupted")
    # a fresh driver process resumes the sweep: same key, same Ray trial ids
    tr2 = Tracker(uri, "tinylm")
    assert tr2.start_sweep("glu-abc123", {"space": {"glu_factor": [2.0, 3.0, 4.0]}}, {"tinylm.sweep": "glu"}) \
        == parent
    again = [tr2.trial_run(parent, f"t_{i:05d}", c.to_dict()) for i, c in enumerate(cfgs)]
    assert again == children
    assert len(tr2.child_runs(parent)) == 3
    assert len(list_sweeps(uri)) == 1
    p, c0 = tr2.client.get_run(parent), tr2.client.get_run(children[0])
    assert p.info.status == "RUNNING" and p.data.tags["tinylm.status"] == "running"
    assert c0.info.status == "RUNNING" and c0.data.tags["tinylm.restarts"] == "1"
    assert len(c0.data.params) == len(cfgs[0].to_dict())
    # a changed value cannot overwrite an MLflow param: the first is kept, the change is recorded as a tag
    with pytest.warns(UserWarning, match="params already logged"):
        assert tr2.trial_run(parent, "t_00000", cfgs[0].replace(lr=0.5).to_dict()) == children[0]
    c0 = tr2.client.get_run(children[0])
    assert c0.data.params["lr"] == "0.003" and c0.data.tags["tinylm.param_changed.lr"] == "0.5"
    # another sweep key is another parent
    assert tr2.start_sweep("glu-other", {}, {"tinylm.sweep": "glu"}) != parent


def test_experiment_opens_in_the_model_training_view(uri):
    # MLflow 3's UI shows an untagged experiment as GenAI (traces); this tag selects runs and metrics
    tr = Tracker(uri, "fresh")
    assert tr.client.get_experiment(tr.experiment_id).tags["mlflow.experimentKind"] == "custom_model_development"
    old = tr.client.create_experiment("made-before-the-tag")  # a store written by an older tinylm: tagged on use
    assert "mlflow.experimentKind" not in tr.client.get_experiment(old).tags
    assert Tracker(uri, "made-before-the-tag").experiment_id == old
    assert tr.client.get_experiment(old).tags["mlflow.experimentKind"] == "custom_model_development"
    chosen = tr.client.create_experiment("chosen", tags={"mlflow.experimentKind": "genai_development"})
    Tracker(uri, "chosen")  # a kind someone chose is left alone
    assert tr.client.get_experiment(chosen).tags["mlflow.experimentKind"] == "genai_development"


def test_ui_url_opens_the_model_training_view():
    assert ui_url("sqlite:////r/mlflow.db", "3") == "http://127.0.0.1:5000/#/experiments/3?workflowType=machine_learning"
    assert ui_url("https://me:pw@mlflow.example/", "7") == \
        "https://me:***@mlflow.example/#/experiments/7?workflowType=machine_learning"


def test_parent_run_names_carry_no_results_path(uri):
    assert parent_run_name("glu@/home/me/results") == "glu"
    assert parent_run_name("single:/home/me/results/runs/a") == parent_run_name("single:/x/a/") == "single:a"
    assert parent_run_name("glu-abc123") == "glu-abc123"
    tr = Tracker(uri, "tinylm")
    root = "/home/someone/tinylm/results"
    parent = tr.start_sweep(f"glu@{root}", {}, {"tinylm.sweep": "glu"})
    run = tr.client.get_run(parent)
    assert run.info.run_name == "glu" and run.data.tags["tinylm.sweep_key"] == f"glu@{root}"  # the key keeps it
    single = tr.client.get_run(tr.start_sweep(f"single:{root}/runs/one", {}, {"tinylm.sweep": "single-runs"}))
    assert single.info.run_name == "single:one" and root not in single.info.run_name
    # a parent named with the path by an older tinylm is renamed when the sweep resumes
    tr.client.set_tag(parent, "mlflow.runName", f"glu@{root}")
    assert tr.start_sweep(f"glu@{root}", {}, {"tinylm.sweep": "glu"}) == parent
    assert tr.client.get_run(parent).info.run_name == "glu"
    named = tr.start_sweep("k-1", {}, {"tinylm.sweep": "k", "mlflow.runName": "my name"})  # an explicit name wins
    assert tr.client.get_run(named).info.run_name == "my name"


def test_load_runs_round_trips_config_with_types(uri):
    tr, parent, children, cfgs = _sweep(uri)
    for i, c in enumerate(children):
        tr.log_metrics(c, {"val_loss": 3.0 - i, "lr": 1e-3, "params_total": 123456}, step=1000)
        tr.finish_run(c, "completed", final_metrics={"final_val_loss": 2.5 - i, "latency_ms_b1_l128": 1.5})
    df = load_runs(uri, sweep="glu")
    assert len(df) == 3 and list(df.trial_id) == ["t_00000", "t_00001", "t_00002"]
    assert set(df.parent_run_id) == {parent} and set(df.status) == {"completed"}
    assert set(df.sweep) == {"glu"} and set(df.experiment) == {"tinylm"}
    for (_, row), cfg in zip(df.iterrows(), cfgs, strict=True):
        assert Config.from_dict({k: row[k] for k in cfg.to_dict()}) == cfg
    assert df.n_layer.dtype == "int64" and df.train_tokens.dtype == "int64"
    assert df.glu_factor.dtype == "float64" and df.lr.dtype == "float64"
    assert df.tie_embeddings.dtype == bool and list(df.tie_embeddings) == [True, False, True]
    assert df.norm.iloc[0] == "layernorm" and df.device.iloc[0] == "auto"  # the Config field
    assert list(df.final_val_loss) == [2.5, 1.5, 0.5] and df.params_total.iloc[0] == 123456
    assert df.latency_ms_b1_l128.iloc[0] == 1.5 and df["metric.lr"].iloc[0] == 1e-3  # metric named like a field
    assert df.git_sha.iloc[0] == "0123abc" and df.hostname.iloc[0] == "box"
    assert df.git_dirty.dtype == bool and not df.git_dirty.any()
    assert df["tag.device"].iloc[0] == "cpu-test" and list(df.tokenizer_hash) == ["tok0", "tok1", "tok2"]
    assert df.hypothesis.iloc[0].startswith("2.66x")
    assert isinstance(df.start_time.iloc[0], pd.Timestamp) and df.end_time.notna().all()
    # selection: by sweep key, by experiment name, default = latest sweep, all sweeps
    assert len(load_runs(uri, sweep="glu-abc123")) == 3 and len(load_runs(uri, sweep="tinylm")) == 3
    _sweep(uri, key="embed-1", sweep="embed", n=2)
    assert len(load_runs(uri)) == 2 and set(load_runs(uri).sweep) == {"embed"}
    assert len(load_runs(uri, all_sweeps=True)) == 5 and len(load_runs(uri, experiment="tinylm")) == 5


def test_load_runs_error_lists_available_sweeps(uri):
    _sweep(uri, n=1)
    with pytest.raises(TrackingError, match=r"no sweep 'nope'.*available sweeps: glu \(key glu-abc123, "
                                            r"experiment tinylm, 1 trials"):
        load_runs(uri, sweep="nope")
    with pytest.raises(TrackingError, match="available experiments: .*tinylm"):
        load_runs(uri, experiment="missing")
    tr = Tracker(uri, "tinylm")
    tr.start_sweep("empty-1", {}, {"tinylm.sweep": "empty"})
    assert load_runs(uri, sweep="empty").empty  # exists, no trials yet: empty, not an error


def test_curves_keyed_by_tokens_round_trip(uri):
    tr, _, (a, b), _ = _sweep(uri, n=2)
    for tokens in (1000, 2000, 3000):
        tr.log_metrics(a, {"val_loss": 10_000 / tokens, "train_loss": 1.0}, step=tokens)
    tr.log_metrics(b, {"val_loss": 4.0}, step=500)
    time.sleep(0.01)
    tr.log_metrics(a, {"val_loss": 9.0}, step=3000)  # a restarted trial re-logs a step: latest value wins
    df = load_curves(uri, [a, b])
    assert list(df.columns) == ["run_id", "tokens", "value"]
    assert df.tokens.dtype == "int64" and df.value.dtype == "float64"
    assert df.values.tolist() == [[a, 1000, 10.0], [a, 2000, 5.0], [a, 3000, 9.0], [b, 500, 4.0]]
    assert load_curves(uri, [b, a], metric="train_loss").run_id.tolist() == [a, a, a]


def test_log_metrics_drops_non_finite_and_non_numeric(uri):
    np = pytest.importorskip("numpy")
    tr, _, (c,), _ = _sweep(uri, n=1)
    tr.log_metrics(c, {"ok": 1, "np": np.float32(2.5), "nan": math.nan, "inf": -math.inf, "s": "x", "none": None,
                       "arr": np.ones(3), "bad/../name": 3.0, "flag": True}, step=7)
    m = tr.client.get_run(c).data.metrics
    assert m == {"ok": 1.0, "np": 2.5, "_bad_.._name": 3.0, "flag": 1.0}
    assert tr.client.get_metric_history(c, "ok")[0].step == 7


def test_finish_statuses_map_to_mlflow(uri):
    tr = Tracker(uri, "tinylm")
    parent = tr.start_sweep("status-1", {}, {})
    expected = {"completed": "FINISHED", "stopped_asha": "FINISHED", "killed_rule": "FINISHED",
                "failed": "FAILED", "diverged": "FAILED", "interrupted": "KILLED"}
    assert STATUS == expected
    for status, mlflow_status in expected.items():
        run_id = tr.trial_run(parent, status, {"seed": 1})
        tr.finish_run(run_id, status, stop_reason=f"because {status}",
                      final_metrics={"final_val_loss": math.nan if status == "diverged" else 2.0})
        run = tr.client.get_run(run_id)
        assert run.info.status == mlflow_status and run.info.end_time
        assert run.data.tags["tinylm.status"] == status
        assert run.data.tags["tinylm.stop_reason"] == f"because {status}"
    df = load_runs(uri, sweep="status-1").set_index("trial_id")
    assert df.loc["killed_rule", "status"] == "killed_rule" and df.loc["interrupted", "mlflow_status"] == "KILLED"
    assert math.isnan(df.loc["diverged", "final_val_loss"]) and df.loc["failed", "final_val_loss"] == 2.0
    with pytest.raises(ValueError, match="choose one of completed"):
        tr.finish_run(run_id, "done")


def test_finish_run_writes_the_status_into_final_metrics_and_logs_metrics_once(uri, tmp_path):
    """The sweep callback logged a trial's last result already (Tune hands it to on_trial_result first):
    ``log_metrics=False`` writes only the artifact, which carries the status and its reason."""
    tr = Tracker(uri, "tinylm")
    parent = tr.start_sweep("final-1", {}, {})
    run_id = tr.trial_run(parent, "t0", {"seed": 1})
    tr.log_metrics(run_id, {"val_loss": 2.0, "tokens": 100}, step=100)
    tr.finish_run(run_id, "killed_rule", "worse than the baseline", {"val_loss": 2.0, "tokens": 100},
                  log_metrics=False)
    assert [m.value for m in tr.client.get_metric_history(run_id, "val_loss")] == [2.0]
    path = tr.client.download_artifacts(run_id, "final_metrics.json", str(tmp_path))
    with open(path) as f:
        assert json.load(f) == {"val_loss": 2.0, "tokens": 100, "status": "killed_rule",
                                "stop_reason": "worse than the baseline"}


def test_artifacts_params_truncation_and_masking(uri, results, tmp_path):
    tr = Tracker(uri, "tinylm")
    parent = tr.start_sweep("art-1", {"long": "x" * 10_000, "store": "postgresql://me:pw@db/x"},
                            {"tracking": "http://me:pw@host:5000"})
    p = tr.client.get_run(parent).data
    assert len(p.params["long"]) == 6000 and p.params["long"].endswith("...[truncated]")
    assert p.params["store"] == "postgresql://me:***@db/x" and p.tags["tracking"] == "http://me:***@host:5000"
    tr.log_dict(parent, {"loss": math.nan, "zero": {"stage": 2}, "path": Path("/x")}, "deepspeed.json")
    f = tmp_path / "note.txt"
    f.write_text("hello")
    tr.log_artifact(parent, str(f), "notes")
    art = results / "mlartifacts" / "tinylm" / parent / "artifacts"
    assert json.loads((art / "deepspeed.json").read_text()) == {"loss": None, "path": "/x", "zero": {"stage": 2}}
    assert (art / "notes" / "note.txt").read_text() == "hello"


def test_check_tracking_fails_fast_and_masks(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(TrackingError) as e:
        check_tracking(f"http://user:secret@127.0.0.1:{port}", timeout_s=5)
    assert time.monotonic() - t0 < 12
    msg = str(e.value)
    assert "secret" not in msg and f"http://user:***@127.0.0.1:{port}" in msg
    assert "is not reachable" in msg and "mlflow server" in msg and "MLFLOW_TRACKING_URI" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__
    with pytest.raises(TrackingError) as e:
        check_tracking(f"postgresql://user:secret@127.0.0.1:{port}/mlflow", timeout_s=3)
    assert "secret" not in str(e.value) and "user:***@" in str(e.value)
    check_tracking(default_uri(str(tmp_path / "new" / "results"), env=False))  # creates the dir
    assert (tmp_path / "new" / "results").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(TrackingError, match="writable"):
        check_tracking(f"sqlite:///{tmp_path}/file/mlflow.db")


def test_list_sweeps_and_export_log(uri, tmp_path):
    tr, parent, children, _ = _sweep(uri)
    for i, c in enumerate(children):
        tr.log_metrics(c, {"val_loss": 3.0 + i}, step=1000)
        tr.finish_run(c, ["completed", "stopped_asha", "diverged"][i],
                      final_metrics={"final_val_loss": [3.5, 3.2, math.nan][i]})
    tr.finish_run(parent, "completed")
    sweeps = list_sweeps(uri)
    assert sweeps[["sweep", "sweep_key", "run_id", "status", "n_trials", "git_sha"]].values.tolist() == \
        [["glu", "glu-abc123", parent, "completed", 3, "0123abc"]]
    assert sweeps.hypothesis.iloc[0].startswith("2.66x") and sweeps.description.iloc[0] == "GLU width sweep"
    export_log(uri, str(tmp_path / "log" / "experiments.json"))
    log = json.loads((tmp_path / "log" / "experiments.json").read_text())
    assert log["tracking_uri"] == uri and len(log["sweeps"]) == 1
    s = log["sweeps"][0]
    assert s["hypothesis"].startswith("2.66x") and s["description"] == "GLU width sweep"
    assert s["git_sha"] == "0123abc" and s["device"] == "cpu-test" and s["start_time"] and s["end_time"]
    assert s["trial_status"] == {"completed": 1, "stopped_asha": 1, "diverged": 1} and s["n_trials"] == 3
    assert "glu_factor" in s["varied"] and "n_layer" not in s["varied"]
    best = s["best"]
    assert best["run_id"] == children[1] and best["metric"] == "final_val_loss" and best["value"] == 3.2
    assert best["config"]["glu_factor"] == 3.0


@pytest.mark.slow
def test_real_mlflow_server(tmp_path, template_db):
    shutil.copy(template_db, tmp_path / "server.db")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
           "--artifacts-destination", str(tmp_path / "art"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]
    with open(tmp_path / "server.log", "w") as log:
        # Job execution (GenAI judges, trace rollups) would spawn 7 huey consumer processes: not needed here.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                check_tracking(uri, timeout_s=2)
                break
            except TrackingError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"mlflow server did not come up:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
                time.sleep(0.5)
        tr = Tracker(uri, "served")
        parent = tr.start_sweep("srv-1", {"space": "lr"}, {"tinylm.sweep": "srv"}, hypothesis="served")
        child = tr.trial_run(parent, "t_00000", Config.from_name("debug").to_dict())
        tr.log_metrics(child, {"val_loss": 4.0}, step=100)
        tr.log_metrics(child, {"val_loss": 3.0}, step=200)
        tr.log_dict(child, {"a": 1}, "final_metrics.json")
        tr.finish_run(child, "completed")
        assert Tracker(uri, "served").trial_run(parent, "t_00000", {}) == child  # no duplicate over http
        tr.finish_run(child, "completed")
        df = load_runs(uri, sweep="srv")
        assert df.run_id.tolist() == [child] and df.parent_run_id.iloc[0] == parent
        assert df.n_layer.iloc[0] == 2 and df.val_loss.iloc[0] == 3.0 and df.hypothesis.iloc[0] == "served"
        assert load_curves(uri, [child]).value.tolist() == [4.0, 3.0]
        assert list((tmp_path / "art").rglob("final_metrics.json"))  # proxied to --artifacts-destination
        # a sweep passes its results folder as artifact_root: with a server it must not pin the experiment's
        # artifacts to this machine's disk (on a cluster the server sends them to S3, for every client)
        tr2 = Tracker(uri, "served-2", artifact_root=str(tmp_path / "client-side"))
        run2 = tr2.trial_run(tr2.start_sweep("srv-2", {}, {"tinylm.sweep": "srv2"}), "t_00000", {})
        tr2.log_dict(run2, {"b": 2}, "config.json")
        assert not (tmp_path / "client-side").exists() and list((tmp_path / "art").rglob("config.json"))
        assert tr2.client.get_experiment(tr2.experiment_id).artifact_location.startswith("mlflow-artifacts:")
    finally:
        proc.terminate()  # SIGTERM to the server's PID; it stops its workers
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group this test started
            proc.wait()
    with pytest.raises(TrackingError):
        check_tracking(uri, timeout_s=2)  # the workers are gone too


@pytest.mark.postgres
def test_postgres_store(tmp_path):
    """A direct PostgreSQL backend (the cluster setup). URI from $TINYLM_POSTGRES_URI."""
    uri = os.environ.get("TINYLM_POSTGRES_URI", "postgresql://postgres:postgres@127.0.0.1:5432/postgres")
    try:
        check_tracking(uri, timeout_s=5)
    except TrackingError as e:
        pytest.skip(str(e))
    name = f"pg-{os.getpid()}-{time.time_ns()}"  # the database outlives the test: unique names
    tr = Tracker(uri, name, artifact_root=str(tmp_path / "art"))
    parent = tr.start_sweep(name, {}, {"tinylm.sweep": name}, hypothesis="pg")
    child = tr.trial_run(parent, "t_00000", Config.from_name("debug").to_dict())
    assert Tracker(uri, name).trial_run(parent, "t_00000", {}) == child
    tr.log_metrics(child, {"val_loss": 3.0}, step=100)
    tr.log_dict(child, {"a": 1}, "final_metrics.json")
    tr.finish_run(child, "stopped_asha", "asha rung 1")
    df = load_runs(uri, sweep=name)
    assert df.run_id.tolist() == [child] and df.status.iloc[0] == "stopped_asha" and df.n_embd.iloc[0] == 64
    assert list((tmp_path / "art").rglob("final_metrics.json"))
    export_log(uri, str(tmp_path / "log.json"))
    assert ":***@" in json.loads((tmp_path / "log.json").read_text())["tracking_uri"] or "@" not in uri
