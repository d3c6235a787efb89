"""The Python API for notebooks: train one model, run a sweep, compare results.

    import tinylm
    from tinylm.config import Config

    r = tinylm.run_experiment(Config.from_name("debug", train_tokens=16_384))   # one model, no Ray
    r.metrics["final_val_ppl"], r.generate("The history of", 30)
    table = tinylm.run_sweep("glu")                   # sweeps/glu.py at smoke scale, exactly as the CLI runs it
    tinylm.compare([r, "glu"])                        # params, loss/ppl, time, memory, inference speed, efficiency

Efficiency score: ``ppl_per_mparam = final_val_ppl / (params_total / 1e6)``, validation perplexity per million
parameters (lower is better). It is a rough size-normalised number for ranking tiny models against each other, not
a law: perplexity does not fall linearly in parameters, so compare it between models of similar size and data.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tinylm.config import PRESETS, Config, ConfigError

# compare() columns, in order; the rest of a sweep's columns (Config fields that vary) go before them
COMPARE = ("params_total", "final_val_loss", "final_val_ppl", "train_time_s", "peak_mem_mb", "infer_tokens_per_s",
           "ppl_per_mparam")


@dataclass
class Result:
    """One trained model: its Config, final metrics, provenance and the folder it lives in."""

    cfg: Config
    metrics: dict
    out_dir: str
    info: dict = field(default_factory=dict)
    _loaded: tuple | None = field(default=None, repr=False, compare=False)

    @classmethod
    def load(cls, out_dir: str) -> Result:
        """A finished run's folder (``metrics.json`` + ``model/``), e.g. a sweep trial's."""
        def read(name: str) -> dict:
            path = os.path.join(out_dir, name)
            try:
                with open(path) as f:
                    data = json.load(f)
            except FileNotFoundError:
                raise FileNotFoundError(f"{out_dir} is not a finished run folder: no {name}") from None
            except (OSError, ValueError) as e:
                raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from None
            if not isinstance(data, dict):
                raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object")
            return data

        metrics = read("metrics.json")
        run_info = read("run_info.json")  # written at setup, also for diverged runs
        try:
            cfg = Config.from_dict(run_info["config"])
        except (KeyError, TypeError, ConfigError) as e:
            raise ValueError(f"{os.path.join(out_dir, 'run_info.json')} holds no valid config ({e})") from None
        return cls(cfg, metrics, out_dir, run_info.get("info", {}))

    @property
    def model_dir(self) -> str:
        return os.path.join(self.out_dir, "model")

    def model(self, device: str = "cpu"):
        """The trained GPT in eval mode, loaded (once per device) from ``out_dir/model``."""
        if self._loaded is None or self._loaded[0] != device:
            from tinylm.checkpoint import load_pretrained

            if not os.path.exists(os.path.join(self.model_dir, "config.json")):
                raise FileNotFoundError(f"{self.model_dir} holds no model: the run did not complete "
                                        f"(status {self.metrics.get('status')!r})")
            self._loaded = (device, *load_pretrained(self.model_dir, device=device))
        return self._loaded[1]

    def tokenizer(self):
        self.model()
        return self._loaded[3]

    def generate(self, prompt: str, max_new_tokens: int = 50, temperature: float = 0.0, top_k: int | None = None,
                 device: str = "cpu") -> str:
        """``prompt`` plus ``max_new_tokens`` generated tokens, decoded (greedy at temperature 0).

        The prompt is cropped to the last ``block_size`` tokens; an empty prompt starts from the EOT token.
        """
        import torch

        if not isinstance(prompt, str):
            raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
        model, tok = self.model(device), self.tokenizer()
        if tok is None:
            raise FileNotFoundError(f"{self.model_dir} has no tokenizer.json")
        ids = tok.encode_ordinary(prompt) if prompt else [tok.eot_token]
        x = torch.tensor([ids[-self.cfg.block_size:]], dtype=torch.long, device=device)
        torch.manual_seed(self.cfg.seed)
        out = model.generate(x, max_new_tokens, temperature=temperature, top_k=top_k)
        new = out[0, x.size(1):].tolist()
        return prompt + tok.decode(new)


def run_experiment(cfg: Config, out_dir: str | None = None, track: bool = False,
                   results_dir: str | None = None, force: bool = False) -> Result:
    """Train one model in this process (no Ray): ``tinylm.train.train`` plus, with ``track``, an MLflow run.

    Args:
        cfg: the run's Config, e.g. ``Config.from_name("debug", train_tokens=16_384)``.
        out_dir: where the model and metrics go (default ``<results_dir>/runs/<name>-<time>``).
        track: log params, metrics and provenance to MLflow (experiment "single-runs" of
            ``$MLFLOW_TRACKING_URI`` or the sqlite store in ``results_dir``), as ``python -m tinylm.train --track``.
        results_dir: the results folder for the default out_dir and tracking store (default ``$TINYLM_RESULTS``
            or ``results``, ``tinylm.layout.results_dir``).
        force: start from scratch in an out_dir that holds other files (refused otherwise).
    """
    if not isinstance(cfg, Config):
        hint = f"Config.from_name({cfg!r})" if isinstance(cfg, str) else 'Config.from_name("debug", lr=3e-3)'
        raise TypeError(f"run_experiment() takes a Config, got {type(cfg).__name__} {cfg!r:.60}; build one with "
                        f"{hint} (from tinylm import Config; presets: {', '.join(PRESETS)})")
    from tinylm.layout import results_dir as default_results
    from tinylm.train import train

    results_dir = default_results(results_dir)
    out = os.path.abspath(out_dir or os.path.join(results_dir, "runs", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"))
    if track:
        from tinylm.train.tracked import train_tracked

        final = train_tracked(cfg, out, results_dir, force=force)
    else:
        final = train(cfg, out, force=force)
    info = final.pop("info", {})
    return Result(cfg, final, out, info)


def run_sweep(experiment_or_name, scale: str | None = None, **sweep_kwargs) -> pd.DataFrame:
    """Run a sweep exactly as ``python sweeps/<name>.py`` does (``tinylm.sweep.pipeline``), from Python.

    Args:
        experiment_or_name: an ``Experiment``, a sweep name (``"glu"`` -> ``sweeps/glu.py``) or a script path.
        scale: as ``--scale``: "laptop" (the default, as the CLI: a replica that can answer the question here),
            "smoke" (mechanics only, seconds per trial) or "full" (the experiment's own sizes, a cluster).
        **sweep_kwargs: the CLI flags by dest name: ``seeds=3``, ``no_asha=True``, ``results="results"``,
            ``max_concurrent=1``, ``set={"lr": 2e-3}``, ``two_phase=True``, ``address="ray://..."``, ...

    Returns:
        The sweep's results table (one row per trial, ranked by val loss), as the CLI prints it.
    """
    from tinylm.sweep import Experiment, load, run

    exp = experiment_or_name if isinstance(experiment_or_name, Experiment) else load(experiment_or_name)
    return run(exp, scale=scale, **sweep_kwargs)


def _rows(item: Any, uri: str | None) -> pd.DataFrame:
    if isinstance(item, Result):
        row = {**item.metrics, **item.cfg.to_dict(), "run": os.path.basename(item.out_dir), "source": item.out_dir}
        return pd.DataFrame([row])
    if isinstance(item, pd.DataFrame):
        df = item.copy()
        df["source"] = df["sweep"] if "sweep" in df.columns else "table"
    elif isinstance(item, (str, os.PathLike)) and os.path.isfile(os.path.join(item, "metrics.json")):
        return _rows(Result.load(str(item)), uri)
    elif isinstance(item, os.PathLike) or (isinstance(item, str) and (os.path.isdir(item) or os.sep in item)):
        raise FileNotFoundError(f"compare(): {str(item)!r} is not a finished run folder (no metrics.json there); "
                                "pass a run folder, a sweep name, a Result or a results table")
    elif isinstance(item, str):
        from tinylm.layout import resolve_uri
        from tinylm.tracking import load_runs

        df = load_runs(resolve_uri(uri), sweep=item)  # $MLFLOW_TRACKING_URI, else $TINYLM_RESULTS or ./results
        df["source"] = item
    else:
        raise TypeError(f"compare() takes Results, run folders, sweep names or results tables; got "
                        f"{type(item).__name__} {item!r:.80}")
    if "trial_id" in df.columns:
        df["run"] = df["trial_id"].astype(str)
    return df


def compare(results_or_sweep_names, uri: str | None = None) -> pd.DataFrame:
    """One row per model: params, final val loss / ppl, train time, peak memory, inference tokens/s and
    ``ppl_per_mparam = final_val_ppl / (params_total / 1e6)`` (perplexity per million parameters, lower is better).

    Args:
        results_or_sweep_names: one or a list of: ``Result``, a run folder (with ``metrics.json``), a sweep name
            (all its trials, from the tracking store) or a results table (``run_sweep``'s return value).
        uri: tracking URI for sweep names (default ``$MLFLOW_TRACKING_URI`` or ``results/mlflow.db``).

    Returns:
        Columns ``source, run, status``, the Config fields that differ between rows, then ``COMPARE``; sorted by
        final val loss.
    """
    from tinylm.ranking import trial_loss, varied

    items = results_or_sweep_names
    if isinstance(items, (Result, str, os.PathLike, pd.DataFrame)):
        items = [items]
    if not isinstance(items, list | tuple):
        raise TypeError(f"compare() takes a Result, run folder, sweep name or results table, or a list of them; got "
                        f"{type(items).__name__} {items!r:.80}")
    if not items:
        raise ValueError("compare() needs at least one Result, run folder, sweep name or results table; got none")
    df = pd.concat([_rows(i, uri) for i in items], ignore_index=True)
    df["final_val_loss"] = [trial_loss(r) for r in df.to_dict("records")]  # the one rule (tinylm.ranking)
    for col, fallback in (("final_val_ppl", "val_ppl"), ("train_time_s", "elapsed_s")):
        if fallback in df.columns:
            df[col] = pd.to_numeric(df.get(col), errors="coerce").fillna(pd.to_numeric(df[fallback], errors="coerce"))
    for col in COMPARE:
        df[col] = pd.to_numeric(df[col], errors="coerce") if col in df.columns else math.nan
    df["ppl_per_mparam"] = df["final_val_ppl"] / (df["params_total"] / 1e6)
    differ = [k for k in varied(df.to_dict("records"), exclude=("name", "seed")) if k in df.columns]
    for col in ("run", "status"):
        if col not in df.columns:
            df[col] = None
    out = df[["source", "run", "status", *differ, *COMPARE]]
    return out.sort_values("final_val_loss", na_position="last", kind="stable").reset_index(drop=True)


__all__ = ["COMPARE", "Result", "compare", "run_experiment", "run_sweep"]
