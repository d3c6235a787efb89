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


# --- one definition of the best trial (tinylm.ranking) ----------------------------------------------------------------
def test_trial_loss_is_the_final_eval_else_the_latest():
    from tinylm.ranking import best_trial, loss_metric, trial_loss, varied

    assert trial_loss({"final_val_loss": 4.5, "val_loss": 4.0}) == 4.5
    assert trial_loss({"val_loss": 4.0}) == 4.0 and loss_metric({"val_loss": 4.0}) == "val_loss"
    assert trial_loss({"final_val_loss": float("nan"), "val_loss": "4.25"}) == 4.25  # diverged at the end
    assert trial_loss({"final_val_loss": None}) != trial_loss({})  # NaN: no loss at all
    assert best_trial([{"val_loss": 5.0}, {"final_val_loss": 4.5}, {"val_loss": 4.0}, {"val_loss": 4.0}]) == 2
    assert best_trial([{}, {"final_val_loss": float("nan")}]) is None and best_trial([]) is None
    assert varied([{"name": "a", "lr": "0.1", "seed": "0"}, {"name": "b", "lr": "0.2", "seed": "0"}]) == ["lr"]
    assert varied([{"lr": "0.1"}, {}]) == ["lr"]  # a trial without the field counts as another value


def test_text_and_json_log_name_the_same_best_trial(tmp_path):
    """A trial stopped before its final eval ranks on its latest val loss in the text log AND in the JSON (they
    used to disagree: the JSON ignored every trial without a final val loss), and both list the same varied
    fields (the JSON used to count the run name)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    t = Tracker(uri, "lr")
    parent = t.start_sweep("lr@/r", params={}, tags={"tinylm.sweep": "lr"})
    for tid, lr, final, latest in (("done", 1e-3, 4.5, 4.6), ("stopped", 3e-3, None, 4.0)):
        rid = t.trial_run(parent, tid, Config.from_name("debug", lr=lr).replace(name=f"lr-{tid}").to_dict())
        t.log_metrics(rid, {"val_loss": latest}, step=1000)
        t.finish_run(rid, "completed" if final else "stopped_asha", "",
                     {"final_val_loss": final} if final else {})
    t.finish_run(parent, "completed")
    out = tmp_path / "log.json"
    main(["--uri", uri, "--json", str(out)])
    text_best = master_log(uri)["sweeps"][0]
    json_best = json.loads(out.read_text())["sweeps"][0]
    assert text_best["best"]["trial_id"] == json_best["best"]["trial_id"] == "stopped"
    assert text_best["best"]["final_val_loss"] == json_best["best"]["value"] == 4.0
    assert json_best["best"]["metric"] == "val_loss"
    assert text_best["varied"] == json_best["varied"] == ["lr"]
