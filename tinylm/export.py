"""Export a trained model: ``python -m tinylm.export SOURCE [--out DIR] [--hf]``.

SOURCE is a trial / run folder (holding ``model/``), a model folder (``config.json`` + ``model.safetensors``) or an
MLflow run id (a sweep trial, or a ``python -m tinylm.train --track`` run) whose folder is on this machine, or, for
a trial that ran on another node of a cluster, whose model is on the sweep's shared storage (``$TINYLM_STORAGE``).

    python -m tinylm.export results/glu/trials/<trial_id>               # -> results/exports/<trial_id>
    python -m tinylm.export 3f2a...c9 --out exported/best --hf          # + exported/best/hf for transformers

DIR gets the tinylm format (``model.safetensors`` + ``config.json`` + ``tokenizer.json``, what
``tinylm.checkpoint.load_pretrained`` and ``python -m tinylm.evals`` read). With ``--hf`` and a GPT-2-shaped model
(layernorm, learned positions, GELU MLP) ``DIR/hf`` gets a ``GPT2LMHeadModel`` folder: HF's ``config.json`` and
``model.safetensors`` with HF names (``transformers.GPT2LMHeadModel.from_pretrained(DIR/hf)`` gives the same
logits). The mapping is exact: HF's ``Conv1D`` stores ``Linear`` weights transposed; tinylm's ``bias=False``
becomes zero biases; tinylm's exact-erf ``F.gelu`` is HF's ``activation_function="gelu"`` (GPT-2's own
``gelu_new`` is the tanh approximation, which would not match). The tokenizer is not converted to HF's format:
``DIR/hf/tinylm_tokenizer.json`` is tinylm's (``tinylm.tokenizer.load_tokenizer``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch

from tinylm import layout
from tinylm.checkpoint import load_pretrained, save_pretrained
from tinylm.config import Config, ConfigError
from tinylm.model import GPT


def resolve(source: str, uri: str | None = None, results_dir: str | None = None) -> str:
    """The model folder for a model folder, a run folder (``<run>/model``) or an MLflow run id."""
    if os.path.isfile(os.path.join(source, "config.json")):
        return source
    if os.path.isfile(os.path.join(source, "model", "config.json")):
        return os.path.join(source, "model")
    if os.path.isdir(source):
        raise FileNotFoundError(f"{source} holds no model (no config.json, no model/config.json): the run did not "
                                "complete, or pass its model folder")
    from tinylm.tracking import load_runs

    uri = layout.resolve_uri(uri, results_dir)
    try:
        df = load_runs(uri, all_sweeps=True)
    except Exception as e:  # noqa: BLE001 - no store / unreachable: say what SOURCE was taken for
        raise FileNotFoundError(f"{source!r} is not a folder, and looking it up as an MLflow run id failed: {e}") \
            from None
    row = df[df["run_id"] == source]
    if row.empty:
        raise FileNotFoundError(f"{source!r} is not a folder nor an MLflow run id in the tracking store")
    r = row.iloc[0]
    # a sweep trial's folder, or the folder of a run tracked by python -m tinylm.train --track / run_experiment
    run_dir = layout.run_dir(str(r.get("sweep_key") or ""), str(r["trial_id"]))
    if run_dir is None:
        raise FileNotFoundError(f"run {source} has no sweep key to locate its folder")
    model = os.path.join(run_dir, "model")
    storage = os.environ.get("TINYLM_STORAGE", "")
    if not os.path.isfile(os.path.join(model, "config.json")) and layout.is_shared_storage(storage):
        # it ran on another node of a cluster, which published its model to Ray's shared storage: copy it here
        name = (layout.parse_key(str(r.get("sweep_key") or "")) or ("", "", ""))[1]
        layout.fetch_model(storage, name, str(r["trial_id"]), model)
    if not os.path.isfile(os.path.join(model, "config.json")):
        where = f" nor in {layout.mask_uri(storage)}" if layout.is_shared_storage(storage) else ""
        raise FileNotFoundError(f"run {source} (status {r.get('status')}) has no model at {model}{where}; it did "
                                "not complete, or ran on another machine (on a cluster set TINYLM_STORAGE to the "
                                "sweep's shared storage, or copy its trial folder here)")
    return model


def hf_unsupported(cfg: Config) -> list[str]:
    """Why ``cfg`` is not GPT-2-shaped (empty when ``GPT2LMHeadModel`` can hold it exactly)."""
    want = {"norm": "layernorm", "pos": "learned", "mlp": "gelu", "mixer": "attention", "n_experts": 0}
    return [f"{k}={getattr(cfg, k)} (GPT-2 has {v})" for k, v in want.items() if getattr(cfg, k) != v]


def hf_config(cfg: Config, eot: int | None = None) -> dict:
    """``transformers.GPT2Config`` fields for ``cfg`` (as HF's config.json holds them)."""
    out = {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": cfg.vocab_size,
           "n_positions": cfg.block_size, "n_embd": cfg.n_embd, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
           "n_inner": cfg.ffn_hidden, "activation_function": "gelu",  # exact erf GELU = torch F.gelu default
           "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,  # inference export
           "layer_norm_epsilon": 1e-5,  # torch.nn.LayerNorm's default, which tinylm uses
           "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
           "reorder_and_upcast_attn": False, "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
           "torch_dtype": "float32", "tinylm_config": cfg.to_dict()}
    if eot is not None:
        out.update(bos_token_id=eot, eos_token_id=eot)
    return out


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """tinylm GPT -> GPT2LMHeadModel tensors: Linear -> Conv1D (transposed), absent biases -> zeros."""
    cfg = model.cfg
    problems = hf_unsupported(cfg)
    if problems:
        raise ConfigError("--hf needs a GPT-2-shaped model; this one has " + ", ".join(problems) + ". Export "
                          "without --hf and load it with tinylm.checkpoint.load_pretrained")
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {"transformer.wte.weight": sd["transformer.wte.weight"],
                                    "transformer.wpe.weight": sd["transformer.wpe.weight"]}

    def norm(src: str, dst: str) -> None:
        out[f"{dst}.weight"] = sd[f"{src}.weight"]
        out[f"{dst}.bias"] = sd.get(f"{src}.bias", torch.zeros(cfg.n_embd))

    def conv1d(src: str, dst: str) -> None:
        w = sd[f"{src}.weight"]  # Linear: (out, in); Conv1D: (in, out)
        out[f"{dst}.weight"] = w.t()
        out[f"{dst}.bias"] = sd.get(f"{src}.bias", torch.zeros(w.size(0)))

    for i in range(cfg.n_layer):
        p = f"transformer.h.{i}"
        norm(f"{p}.ln_1", f"{p}.ln_1")
        norm(f"{p}.ln_2", f"{p}.ln_2")
        for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            conv1d(f"{p}.{name}", f"{p}.{name}")
    norm("transformer.ln_f", "transformer.ln_f")
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def save_hf(path: str, model: GPT, tokenizer=None) -> str:
    """Write a ``GPT2LMHeadModel`` folder (config.json + model.safetensors); raises ConfigError if not GPT-2-shaped."""
    from safetensors.torch import save_file

    tensors = hf_state_dict(model)
    os.makedirs(path, exist_ok=True)
    save_file(tensors, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    eot = getattr(tokenizer, "eot_token", None)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_config(model.cfg, eot), f, indent=2, sort_keys=True)
    if tokenizer is not None:
        from tinylm.data import save_tokenizer

        save_tokenizer(tokenizer, os.path.join(path, "tinylm_tokenizer.json"))
    return path


def check_out(out: str, src: str, force: bool = False) -> None:
    """Refuse to write into a folder that holds anything but an earlier export of the same source (re-exporting
    one model is idempotent; another model's files are never overwritten unless ``force``)."""
    if force or not os.path.isdir(out) or not os.listdir(out):
        return
    try:
        with open(os.path.join(out, "meta.json")) as f:
            same = json.load(f).get("exported_from") == os.path.abspath(src)
    except (OSError, ValueError, AttributeError):
        same = False
    if not same:
        raise ValueError(f"--out {out} already holds files that are not an export of {src}; choose an empty or new "
                         "folder, or pass --force to overwrite them")


def export(source: str, out: str | None = None, hf: bool = False, uri: str | None = None,
           results_dir: str | None = None, force: bool = False) -> dict[str, str]:
    """Export ``source`` (see ``resolve``) to ``out`` (default ``<results_dir>/exports/<name>``; ``results_dir``
    defaults to ``$TINYLM_RESULTS`` or ``results``).

    Returns:
        ``{"tinylm": out}`` plus ``{"hf": out/hf}`` with ``hf``. Raises ConfigError for ``hf`` on a model that is
        not GPT-2-shaped, ValueError for an ``out`` holding other files unless ``force`` (before writing anything).
    """
    src = resolve(source, uri, results_dir)
    model, cfg, tok = load_pretrained(src)
    if hf and hf_unsupported(cfg):
        hf_state_dict(model)  # raises the explanation
    if out is None:
        name = os.path.basename(os.path.dirname(os.path.abspath(src))) if os.path.basename(src) == "model" \
            else os.path.basename(os.path.abspath(src))
        out = os.path.join(layout.results_dir(results_dir), "exports", name if os.path.isdir(source) else source)
    if os.path.abspath(out) == os.path.abspath(src):
        raise ValueError(f"--out {out} is the source folder; choose another")
    check_out(out, src, force)
    meta = {}
    if os.path.isfile(os.path.join(src, "meta.json")):
        with open(os.path.join(src, "meta.json")) as f:
            meta = json.load(f)
    save_pretrained(out, model, cfg, tok, extra={**meta, "exported_from": os.path.abspath(src)})
    paths = {"tinylm": out}
    if hf:
        hf_dir = os.path.join(out, "hf")
        shutil.rmtree(hf_dir, ignore_errors=True)
        paths["hf"] = save_hf(hf_dir, model, tok)
    return paths


def main(argv: list[str] | None = None) -> dict[str, str]:
    p = argparse.ArgumentParser(prog="python -m tinylm.export", description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("source", help="run folder, model folder or MLflow run id")
    p.add_argument("--out", default=None, help="output folder (default RESULTS/exports/<name>)")
    p.add_argument("--hf", action="store_true", help="also write a transformers GPT2LMHeadModel folder to OUT/hf")
    p.add_argument("--force", action="store_true", help="overwrite an --out folder that holds other files")
    p.add_argument("--uri", default=None, help="tracking URI for run ids (default $MLFLOW_TRACKING_URI or sqlite)")
    p.add_argument("--results", default=layout.results_dir(),
                   help="results folder (default $TINYLM_RESULTS or results)")
    args = p.parse_args(argv)
    try:
        paths = export(args.source, args.out, args.hf, args.uri, args.results, force=args.force)
    except (ConfigError, FileNotFoundError, ValueError) as e:  # ModelFolderError is a ValueError
        sys.exit(f"error: {e}")
    except OSError as e:  # an unwritable --out
        sys.exit(f"error: cannot write the export ({type(e).__name__}: {e})")
    for kind, path in paths.items():
        print(f"{kind:7s}: {path}")
    if "hf" in paths:
        print(f"load with: transformers.GPT2LMHeadModel.from_pretrained({paths['hf']!r})")
    return paths


if __name__ == "__main__":
    main()
