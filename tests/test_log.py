"""python -m tinylm.log: the master experiment log over a real (sqlite) MLflow store."""

from __future__ import annotations

import json

import pytest

from tinylm.config import Config
from tinylm.log import format_log, main, master_log
from tinylm.tracking import Tracker

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    """Two sweeps as tinylm.tune writes them: parent with hypothesis/description/git, trials with metrics."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    uri = f"sqlite:///{path}"
    t = Tracker(uri, "glu")
    parent = t.start_sweep("glu@/r", params={}, tags={"tinylm.sweep": "glu", "git_sha": "deadbeef" * 5,
                                                       "git_dirty": "false"},
                           hypothesis="2.66x matches 4x", description="GLU factor at fixed params")
    for tid, glu, loss, base in (("a", 4.0, 5.0, 1), ("b", 2.66, 4.9, 0), ("c", 2.0, 5.5, 0)):
        cfg = Config.from_name("debug", glu_factor=glu).to_dict()
        rid = t.trial_run(parent, tid, cfg, tags={"is_baseline": str(bool(base)).lower()})
        t.log_metrics(rid, {"is_baseline": base, "val_loss": loss + 0.1}, step=1000)
        t.set_tags(rid, {"device": "cpu:x86_64x2"})
        t.finish_run(rid, "completed", "", {"final_val_loss": loss, "final_val_ppl": 2.718 ** loss,
                                            "params_total": 1e6, "tokens": 2000})
    t.finish_run(parent, "completed")
    t2 = Tracker(uri, "empty")
    t2.start_sweep("empty@/r", params={}, tags={"tinylm.sweep": "empty"}, hypothesis="nothing ran")
    return uri


def test_master_log(uri):
    log = master_log(uri)
    glu, empty = log["sweeps"]
    assert glu["sweep"] == "glu" and glu["hypothesis"] == "2.66x matches 4x" and glu["n_trials"] == 3
    assert glu["best"]["trial_id"] == "b" and glu["best"]["config"] == {"glu_factor": 2.66}
    assert glu["device"] == "cpu:x86_64x2" and glu["trial_status"] == {"completed": 3}
    assert empty["best"] is None and empty["status"] == "running"
    assert list(log["baselines"]["trial_id"]) == ["a"]
    text = format_log(log)
    for s in ("glu  [completed]  3 trials (completed 3)", "hypothesis: 2.66x matches 4x",
              "description: GLU factor at fixed", "git deadbeefde", "best: b val_loss 4.9000", "glu_factor=2.66",
              "(no finished trial)", "Established baselines", "glu  a  [completed]",
              "final_val_loss 5  final_val_ppl 148.3  params_total 1,000,000"):
        assert s in text, s


def test_cli_json(uri, tmp_path, capsys):
    out = tmp_path / "log.json"
    main(["--uri", uri, "--json", str(out)])
    assert "Established baselines" in capsys.readouterr().out
    data = json.loads(out.read_text())
    glu = next(s for s in data["sweeps"] if s["sweep"] == "glu")
    assert glu["hypothesis"] == "2.66x matches 4x" and glu["git_sha"].startswith("deadbeef")
    assert glu["device"] == "cpu:x86_64x2" and glu["best"]["trial_id"] == "b" and glu["start_time"]
    assert [b["trial_id"] for b in data["baselines"]] == ["a"]
    assert data["baselines"][0]["final_val_loss"] == 5.0 and data["baselines"][0]["config"]["glu_factor"] == 4.0
