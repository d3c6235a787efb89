"""A trial that ran on another node of a cluster: its model reaches the head through Ray's shared storage.

On a cluster every node has its own disk, so a trial's ``model/`` on a worker is not on the head. The worker
publishes it to ``<TINYLM_STORAGE>/models/<sweep>/<trial>`` (``layout.publish_model``) and ``tinylm.export``
fetches it on the head. Checked here against S3 served by moto on 127.0.0.1 (the whole multi-node path runs in
scripts/cluster-test.sh).
"""

from __future__ import annotations

import filecmp

import pytest
import torch

from tinylm import layout
from tinylm.checkpoint import load_pretrained, save_pretrained
from tinylm.config import Config
from tinylm.export import resolve
from tinylm.model import GPT
from tinylm.tracking import Tracker

BUCKET = "tinylm-test"


@pytest.fixture
def s3(moto_endpoint, monkeypatch):
    """Ray's storage on moto's S3: what a cluster node sees (credentials and the endpoint in its environment)."""
    import boto3

    for k, v in {"AWS_ACCESS_KEY_ID": "t", "AWS_SECRET_ACCESS_KEY": "t", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_ENDPOINT_URL": moto_endpoint, "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=BUCKET)
    return f"s3://{BUCKET}/ray"


def _model(tmp_path):
    cfg = Config.from_name("debug")
    model = GPT(cfg)
    return save_pretrained(str(tmp_path / "worker" / "model"), model, cfg), model


def test_storage_kinds():
    assert layout.is_shared_storage("s3://b/ray") and layout.is_shared_storage("gs://b/x")
    assert not layout.is_shared_storage("/home/ray/results/ray") and not layout.is_shared_storage("file:///x")
    assert layout.stored_model("s3://b/ray/", "glu", "t_1") == "s3://b/ray/models/glu/t_1"


def test_publish_then_fetch_is_the_same_model(tmp_path, s3):
    src, _ = _model(tmp_path)
    assert layout.publish_model(src, s3, "glu", "t_00001") == f"{s3}/models/glu/t_00001"
    dest = layout.fetch_model(s3, "glu", "t_00001", str(tmp_path / "head" / "model"))
    same, diff, missing = filecmp.cmpfiles(src, dest, ["model.safetensors", "config.json"], shallow=False)
    assert same == ["model.safetensors", "config.json"] and not diff and not missing
    assert layout.fetch_model(s3, "glu", "t_other", str(tmp_path / "none")) is None  # nothing stored: None


def test_export_on_the_head_fetches_a_worker_model(tmp_path, s3, monkeypatch):
    """A run id whose trial folder is not on this machine: resolve() copies the model from the sweep's storage
    into the trial folder on the head; without shared storage it says where it looked and what to do."""
    _, model = _model(tmp_path)
    head_root = tmp_path / "head-results"
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr = Tracker(uri, "glu", artifact_root=str(tmp_path / "art"))
    parent = tr.start_sweep(layout.sweep_key("glu", str(head_root)), {}, {"tinylm.sweep": "glu"})
    run = tr.trial_run(parent, "t_00007", Config.from_name("debug").to_dict())
    tr.finish_run(run, "completed")

    monkeypatch.delenv("TINYLM_STORAGE", raising=False)
    with pytest.raises(FileNotFoundError, match="TINYLM_STORAGE"):
        resolve(run, uri)
    layout.publish_model(str(tmp_path / "worker" / "model"), s3, "glu", "t_00007")
    monkeypatch.setenv("TINYLM_STORAGE", s3)
    got = resolve(run, uri)
    assert got == layout.trial_dir(str(head_root), "glu", "t_00007") + "/model"
    loaded, _, _ = load_pretrained(got)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_each_trial_is_tagged_with_the_nodes_it_ran_on():
    """``tinylm.nodes``: the Ray nodes a trial reported from, in order, written when it changes; it survives the
    callback's pickling (Tune restores callbacks with a resumed sweep)."""
    import pickle
    from types import SimpleNamespace

    from tinylm.kill_rule import KillRule
    from tinylm.sweep.settings import Sweep
    from tinylm.tune.callbacks import TrackingCallback

    tags = []
    cb = TrackingCallback(Sweep("glu"), KillRule(), "parent")
    cb._tracker, cb._runs = SimpleNamespace(set_tags=lambda run, t: tags.append((run, t))), {"t_1": [(None, "run-1")]}
    trial = SimpleNamespace(trial_id="t_1")
    for node in ("node-a", "node-a", None, "node-b"):
        cb._note_node(trial, node)
    assert tags == [("run-1", {"tinylm.nodes": "node-a"}), ("run-1", {"tinylm.nodes": "node-a,node-b"})]
    again = pickle.loads(pickle.dumps(cb))
    assert again._nodes == {"t_1": ["node-a", "node-b"]} and again._tracker is None
