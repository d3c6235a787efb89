"""python -m tinylm.log: the master experiment log over a real (sqlite) MLflow store."""

from __future__ import annotations

import json

import pytest

from tinylm.config import Config
from tinylm.layout import jsonable
from tinylm.log import format_log, main
from tinylm.tracking import Tracker, experiment_log

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


def test_experiment_log_and_its_text(uri):
    log = experiment_log(uri)
    glu, empty = log["sweeps"]
    assert glu["sweep"] == "glu" and glu["hypothesis"] == "2.66x matches 4x" and glu["n_trials"] == 3
    assert glu["best"]["trial_id"] == "b" and glu["best"]["config"] == {"glu_factor": 2.66}
    assert glu["best"]["metric"] == "final_val_loss" and glu["best"]["value"] == 4.9
    assert glu["device"] == "cpu:x86_64x2" and glu["trial_status"] == {"completed": 3}
    assert glu["git_dirty"] == "false" and glu["varied"] == ["glu_factor"]
    assert empty["best"] is None and empty["status"] == "running" and empty["n_trials"] == 0
    [base] = log["baselines"]
    assert base["sweep"] == "glu" and base["trial_id"] == "a" and base["status"] == "completed"
    assert base["config"]["glu_factor"] == 4.0 and base["config"]["n_layer"] == 2
    assert base["metrics"]["final_val_loss"] == 5.0 and base["start_time"]
    text = format_log(log)
    for s in ("glu  [completed]  3 trials (completed 3)", "hypothesis: 2.66x matches 4x",
              "description: GLU factor at fixed", "git deadbeefde", "best: b final_val_loss 4.9000 ppl 134.22",
              "[completed] glu_factor=2.66", "(no finished trial)", "Established baselines", "glu  a  [completed]",
              "final_val_loss 5  final_val_ppl 148.3  params_total 1,000,000  tokens 2,000"):
        assert s in text, s


def test_cli_json(uri, tmp_path, capsys):
    out = tmp_path / "log.json"
    log = main(["--uri", uri, "--json", str(out)])
    assert "Established baselines" in capsys.readouterr().out
    data = json.loads(out.read_text())
    glu = next(s for s in data["sweeps"] if s["sweep"] == "glu")
    assert glu["hypothesis"] == "2.66x matches 4x" and glu["git_sha"].startswith("deadbeef")
    assert glu["device"] == "cpu:x86_64x2" and glu["best"]["trial_id"] == "b" and glu["start_time"]
    assert [b["trial_id"] for b in data["baselines"]] == ["a"]
    assert data["baselines"][0]["metrics"]["final_val_loss"] == 5.0
    assert data["baselines"][0]["config"]["glu_factor"] == 4.0
    assert data == json.loads(json.dumps(jsonable(log)))  # the JSON is the log the text was printed from


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


def test_a_trial_stopped_before_its_final_eval_can_be_the_best(tmp_path, capsys):
    """A trial stopped before its final eval ranks on its latest val loss, in the text log and the JSON alike (one
    summary, ``experiment_log``; the two used to disagree), and the run name is no varied field."""
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
    assert "best: stopped val_loss 4.0000 [stopped_asha] lr=0.003" in capsys.readouterr().out
    lr = json.loads(out.read_text())["sweeps"][0]
    assert lr["best"]["trial_id"] == "stopped" and lr["best"]["metric"] == "val_loss" and lr["best"]["value"] == 4.0
    assert lr["varied"] == ["lr"] and lr["trial_status"] == {"completed": 1, "stopped_asha": 1}
