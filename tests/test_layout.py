"""tinylm.layout: each shared format is built and read by one function (issue 14, item 4)."""

from __future__ import annotations

import os

import pytest

from tinylm import layout


def test_sweep_key_round_trips(tmp_path):
    key = layout.sweep_key("glu", str(tmp_path / "results"))
    assert key == f"glu@{tmp_path / 'results'}"
    assert layout.parse_key(key) == ("sweep", "glu", str(tmp_path / "results"))
    assert layout.sweep_key("glu", "results") == f"glu@{os.path.abspath('results')}"  # always absolute
    single = layout.single_key(str(tmp_path / "runs" / "a"))
    assert layout.parse_key(single) == ("single", "", str(tmp_path / "runs" / "a"))
    assert layout.parse_key("glu") is None and layout.parse_key("@/x") is None


def test_trial_and_run_folders(tmp_path):
    root = str(tmp_path)
    assert layout.trial_dir(root, "glu", "abc_00001") == os.path.join(root, "glu", "trials", "abc_00001")
    assert layout.run_dir(layout.sweep_key("glu", root), "abc_00001") == layout.trial_dir(root, "glu", "abc_00001")
    assert layout.run_dir(layout.single_key(root + "/runs/a"), "a") == root + "/runs/a"
    assert layout.run_dir("no key", "x") is None


@pytest.mark.parametrize("uri,masked", [
    ("postgresql://me:s3cret@db:5432/mlflow", "postgresql://me:***@db:5432/mlflow"),
    ("postgresql://db/mlflow?user=me&password=s3cret&sslmode=require",
     "postgresql://db/mlflow?user=me&password=***&sslmode=require"),
    ("http://127.0.0.1:5000", "http://127.0.0.1:5000"),
])
def test_mask_uri_hides_every_password(uri, masked):
    assert layout.mask_uri(uri) == masked and "s3cret" not in layout.mask_uri(f"store {uri} failed")


def test_tracking_uri_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TINYLM_RESULTS", str(tmp_path / "res"))
    assert layout.default_uri() == f"sqlite:///{tmp_path / 'res' / 'mlflow.db'}"  # TINYLM_RESULTS counts
    assert layout.default_uri(str(tmp_path / "x")) == f"sqlite:///{tmp_path / 'x' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert layout.resolve_uri(None, str(tmp_path)) == "http://127.0.0.1:5000"
    assert layout.resolve_uri("sqlite:///a.db", str(tmp_path)) == "sqlite:///a.db"
    assert layout.default_uri(str(tmp_path), env=False) == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_sweep_summary_masks_every_password_and_links_the_training_view(tmp_path):
    """The sweep summary prints URIs through layout.mask_uri (tune's own mask missed ?password=) and the MLflow UI
    link that opens the model training view (tracking.ui_url)."""
    import pandas as pd

    from tinylm.sweep import Space, Sweep
    from tinylm.tune import print_results

    sweep = Sweep("x", results_dir=str(tmp_path), tracking_uri="postgresql://me:s3cret@db/mlflow",
                  optuna_storage="postgresql://db/optuna?user=me&password=s3cret")
    table = pd.DataFrame({"trial_id": ["a"], "lr": [1e-3], "val_loss": [4.0], "status": ["completed"]})
    msg = print_results(sweep, table, Space(lr=[1e-3]))
    assert "s3cret" not in msg and "me:***@db" in msg and "password=***" in msg
    assert "/#/experiments?workflowType=machine_learning" in msg
    assert (tmp_path / "x" / "results.csv").exists()


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("spelling", ['"__variant"', '"tinylm_complete.json"', 'environ.get("MLFLOW_TRACKING_URI"',
                                      '"TINYLM_RESULTS"'])
def test_each_format_is_spelled_in_one_place(spelling):
    """The package and the sweep scripts name the formats through tinylm.layout, never by a copy of the literal."""
    import glob

    files = sorted(glob.glob(os.path.join(ROOT, "tinylm", "**", "*.py"), recursive=True)
                   + glob.glob(os.path.join(ROOT, "sweeps", "*.py")))
    holders = [os.path.relpath(f, ROOT) for f in files if spelling in open(f).read()]
    assert holders == [os.path.join("tinylm", "layout.py")]


def test_results_footer_points_at_a_tracking_server_rather_than_mlflow_ui(tmp_path):
    """With an MLflow server the footer says to open it (``mlflow ui --backend-store-uri http://…`` would be wrong)."""
    import pandas as pd

    from tinylm.sweep import Space, Sweep
    from tinylm.tune import print_results

    table = pd.DataFrame([{"trial_id": "t_00000", "lr": 1e-3, "val_loss": 3.0, "status": "completed"}])
    sweep = Sweep("srv", results_dir=str(tmp_path), tracking_uri="http://user:secret@10.0.0.5:5000")
    msg = print_results(sweep, table, Space(lr=[1e-3]))
    assert "MLflow        : open http://user:***@10.0.0.5:5000/#/experiments" in msg
    assert "mlflow ui" not in msg and "secret" not in msg
