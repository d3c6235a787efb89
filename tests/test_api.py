"""The notebook API (tinylm.api, re-exported lazily by ``import tinylm``): run_experiment, run_sweep, compare."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import tinylm
from tinylm.api import COMPARE, Result, compare, run_experiment, run_sweep
from tinylm.config import Config, ConfigError
from tinylm.sweep import Experiment, Space
from tinylm.sweep.cli import main

pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")


def test_import_tinylm_is_lazy():
    code = ("import sys, tinylm; heavy = {'torch', 'ray', 'mlflow', 'pandas', 'deepspeed'} & set(sys.modules); "
            "assert not heavy, heavy; f = tinylm.run_experiment; assert 'tinylm.api' in sys.modules; "
            "assert set(tinylm.__all__) >= {'run_experiment', 'run_sweep', 'compare', 'Result'}; "
            "assert 'torch' not in sys.modules  # training is imported on the first run, not by the API")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert tinylm.compare is compare
    with pytest.raises(AttributeError):
        tinylm.nope  # noqa: B018


def test_compare_columns_and_efficiency_score():
    cfg = Config.from_name("debug")
    r = Result(cfg, {"final_val_loss": math.log(50.0), "final_val_ppl": 50.0, "params_total": 2_000_000,
                     "train_time_s": 3.0, "peak_mem_mb": 500.0, "infer_tokens_per_s": 9000.0,
                     "status": "completed"}, "/tmp/runs/a")
    sweep = pd.DataFrame([{**cfg.to_dict(), "n_layer": 4, "trial_id": "t1", "sweep": "depth", "status": "completed",
                           "val_loss": math.log(40.0), "val_ppl": 40.0, "params_total": 4_000_000,
                           "elapsed_s": 5.0, "peak_mem_mb": 700.0}])
    df = compare([r, sweep])
    assert list(df.columns) == ["source", "run", "status", "n_layer", *COMPARE]  # only varying Config fields
    assert list(df["run"]) == ["t1", "a"]  # best (lowest val loss) first
    assert df["ppl_per_mparam"].tolist() == pytest.approx([40.0 / 4.0, 50.0 / 2.0])
    assert df.loc[0, "final_val_ppl"] == 40.0 and df.loc[0, "train_time_s"] == 5.0  # fallbacks: val_ppl, elapsed
    assert math.isnan(df.loc[0, "infer_tokens_per_s"])
    with pytest.raises(TypeError, match="compare"):
        compare([1.5])


# --- run_sweep: the same function the CLI calls, without Ray here ------------------------------------------
@pytest.fixture
def fake_tune(monkeypatch):
    tune = pytest.importorskip("tinylm.tune")
    calls = []

    def run_sweep_(sweep, base, space, refine_space=None):
        calls.append((sweep, base, space))
        return pd.DataFrame([{"trial_id": "t", "status": "completed", "val_loss": 1.0}])

    monkeypatch.setattr(tune, "run_sweep", run_sweep_)
    monkeypatch.setattr(tune, "print_results", lambda *a, **k: "")
    monkeypatch.setattr(tune, "shutdown", lambda: None)
    return calls


def test_analyze_reports_through_the_analysis_library(fake_tune, tmp_path, monkeypatch):
    """--analyze (analyze=True) builds the report with analysis.report.report_sweep, as the analysis CLI does for
    `python -m tinylm.analysis toy --out <results>/analysis --baseline lr=0.001`."""
    import tinylm.analysis.report as report

    seen = []
    monkeypatch.setattr(report, "report_sweep", lambda *a, **k: seen.append((a, k)) or tmp_path / "REPORT.md")
    exp = Experiment(name="toy", preset="debug", space={"lr": [1e-3, 2e-3]}, baseline={"lr": 1e-3})
    run_sweep(exp, analyze=True, results=str(tmp_path))
    (_uri, sweep, out, baseline, prices), kw = seen[0]
    assert sweep == "toy" and out == tmp_path / "analysis" and baseline == {"lr": 1e-3} and kw == {"n_boot": 200, "also": [], "sections": []}
    assert prices and len(seen) == 1


def test_run_sweep_equals_cli(fake_tune, tmp_path):
    seen = []
    exp = Experiment(name="toy", preset="debug", space={"lr": [1e-3, 2e-3]}, baseline={"lr": 1e-3},
                     options={"max_concurrent": 1}, after=lambda table, **kw: seen.append(kw))
    main(exp, ["--seeds", "2", "--set", "n_layer=3", "--results", str(tmp_path)])
    run_sweep(exp, seeds=2, set={"n_layer": 3}, results=str(tmp_path))
    (s1, b1, sp1), (s2, b2, sp2) = fake_tune
    assert s1 == s2 and b1 == b2 and sp1 == sp2
    assert s1.seeds == 2 and s1.max_concurrent == 1 and b1.n_layer == 3 and b1.scale == "smoke"
    assert seen[0]["base"] == b1 and seen[0]["sweep"] == s1 and seen[0]["space"] == sp1 and len(seen) == 2
    run_sweep(exp, max_concurrent=2, results=str(tmp_path))  # a keyword beats the Experiment's option
    assert fake_tune[-1][0].max_concurrent == 2


def test_every_sweep_flag_is_declared_once_on_the_sweep(fake_tune, tmp_path, monkeypatch):
    """A Sweep field declared with ``flag(...)`` is a CLI option and a ``run()`` option by the same dest, with the
    field's default, and it reaches the Sweep the run builds: adding a sweep flag is that one field."""
    from dataclasses import fields

    # the flags' plumbing, not their servers: "ray://head:10001" reaches no store or cluster (test_input_checks.py)
    monkeypatch.setattr("tinylm.sweep.experiment.check_services", lambda args: None)

    from tinylm.sweep.cli import parser
    from tinylm.sweep.settings import Sweep, flags

    exp = Experiment(name="toy", preset="debug", space={"lr": [1e-3, 2e-3]})
    declared = {f.name for f in fields(Sweep) if "flag" in f.metadata}
    assert {f.field for f in flags()} == declared and len(declared) >= 14
    options = {a.dest: a for a in parser(exp)._actions}
    for f in flags():
        field = Sweep.__dataclass_fields__[f.field]
        assert f.dest in options and options[f.dest].option_strings == [f.option]
        if f.field == "results_dir":
            assert options[f.dest].default == "results"  # $TINYLM_RESULTS or results, as the help says
        else:
            assert options[f.dest].default == (not field.default if f.negate else field.default), f.dest
        if f.negate:
            argv, want = [f.option], not field.default
        elif f.field == "results_dir":
            argv, want = [f.option, str(tmp_path / "r")], str(tmp_path / "r")
        else:
            kind = type(field.default)
            choices = options[f.dest].choices
            want = field.default + 3 if kind is int else 0.5 if kind is float else \
                [c for c in choices if c != field.default][0] if choices else "ray://head:10001"
            argv = [f.option, str(want)]
        main(exp, argv + ([] if f.field == "results_dir" else ["--results", str(tmp_path)]))
        assert getattr(fake_tune[-1][0], f.field) == want, (argv, fake_tune[-1][0])
    # what each trial's driver gets: the fields marked trial=True and the root, never the tracking URI
    sweep = Sweep.from_flags("toy", {"results": str(tmp_path), "tracking_uri": "postgresql://u:secret@db/x"})
    assert sweep.for_trials() == {"name": "toy", "baseline": {}, "max_failures": 2, "root": str(tmp_path)}


def test_sweep_cli_runs_a_script(fake_tune, tmp_path, capsys):
    """``python -m tinylm.sweep SCRIPT.py [flags]`` is ``python SCRIPT.py [flags]``; a bad flag value is one line."""
    from tinylm.sweep.cli import run_script

    script = str(Path(__file__).parent / "tiny_sweep.py")
    run_script([script, "--seeds", "2", "--no-asha", "--results", str(tmp_path)])
    sweep, base, space = fake_tune[-1]
    assert sweep.name == "tiny" and sweep.seeds == 2 and not sweep.asha and sweep.root == str(tmp_path)
    assert space == Space(lr=[3e-3, 1e-6, 2e-6, 3e-6]) and sweep.baseline == {"lr": 3e-3}
    with pytest.raises(SystemExit, match="--workers=-1 must be an int >= 0"):
        run_script([script, "--workers", "-1", "--results", str(tmp_path)])
    with pytest.raises(SystemExit, match="usage: python -m tinylm.sweep SCRIPT.py"):
        run_script([])


def test_run_sweep_by_name_loads_the_script(fake_tune, tmp_path):
    run_sweep("glu", scale="smoke", results=str(tmp_path))
    sweep, base, space = fake_tune[-1]
    assert sweep.name == "glu" and space == Space(glu_factor=[2.0, 2.66, 3.0, 4.0]) and base.scale == "smoke"
    run_sweep("glu", results=str(tmp_path / "laptop"))  # no scale: the CLI's default, a laptop replica
    sweep, base, space = fake_tune[-1]  # the seed runs, each variant at its tuned LR
    assert base.scale == "laptop" and [v["glu_factor"] for v in space.variants] == [2.0, 2.66, 3.0, 4.0]
    with pytest.raises(ConfigError, match="no sweep 'nope'.*known sweeps: .*glu"):
        run_sweep("nope")
    with pytest.raises(ConfigError, match="unknown sweep option"):
        run_sweep("glu", seedz=2)
    with pytest.raises(ConfigError, match="scale"):
        run_sweep("glu", scale="huge")


# --- one real model, end to end ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.usefixtures("inprocess_dist", "one_thread")
def test_run_experiment_tracked_end_to_end(tmp_path):
    from tinylm.export import resolve
    from tinylm.tracking import default_uri, load_runs

    cfg = Config.from_name("debug", train_tokens=8192, eval_every_tokens=4096, eval_tokens=2048)
    r = run_experiment(cfg, out_dir=str(tmp_path / "run"), track=True, results_dir=str(tmp_path / "results"))
    assert r.metrics["status"] == "completed" and r.metrics["tokens"] == 8192 and "info" not in r.metrics
    assert r.info["git_sha"] is not None and r.cfg == cfg
    model = r.model()
    assert model.cfg == cfg and not model.training and r.model() is model  # loaded once
    text = r.generate("The history of", max_new_tokens=8)
    assert text.startswith("The history of") and len(text) > len("The history of")
    assert r.generate("", 4) == r.generate("", 4)  # greedy is deterministic
    again = Result.load(r.out_dir)
    assert again.cfg == cfg and again.metrics["final_val_loss"] == r.metrics["final_val_loss"]
    row = compare(r).iloc[0]
    assert row["ppl_per_mparam"] == pytest.approx(r.metrics["final_val_ppl"] / (r.metrics["params_total"] / 1e6))
    assert row["infer_tokens_per_s"] > 0
    uri = default_uri(str(tmp_path / "results"), env=False)
    runs = load_runs(uri, sweep="single-runs")
    assert len(runs) == 1 and runs.loc[0, "status"] == "completed"
    assert runs.loc[0, "final_val_loss"] == pytest.approx(r.metrics["final_val_loss"])
    assert resolve(runs.loc[0, "run_id"], uri) == str(tmp_path / "run" / "model")  # export by run id
    by_name = compare("single-runs", uri=uri)
    assert by_name.loc[0, "ppl_per_mparam"] == pytest.approx(row["ppl_per_mparam"])
