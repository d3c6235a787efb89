"""A trained model on disk: ``model.safetensors`` + ``config.json`` + ``tokenizer.json`` in one folder.

This is what a trial leaves in its output folder (``<trial dir>/model``), what ``python -m tinylm.export`` writes
and what ``python -m tinylm.evals`` reads. Training-state checkpoints (optimizer, step, RNG) are DeepSpeed's
and live in engine.py; this format holds only what inference needs.
"""

from __future__ import annotations

import json
import os

import torch

from tinylm.config import Config
from tinylm.model import GPT


def save_pretrained(path: str, model: GPT, cfg: Config, tokenizer=None, extra: dict | None = None) -> str:
    """Write the model (fp32, tied weights stored once), its Config, tokenizer and ``extra`` metadata."""
    from safetensors.torch import save_model

    os.makedirs(path, exist_ok=True)
    # A fresh fp32 copy: under ZeRO 1/2 DeepSpeed flattens parameters into one buffer (and bf16 casts them),
    # which safetensors refuses; the copy also re-ties the head so save_model stores it once.
    fresh = GPT(cfg)
    fresh.load_state_dict({k: v.detach().float().cpu().clone() for k, v in unwrap(model).state_dict().items()})
    save_model(fresh, os.path.join(path, "model.safetensors"))
    with open(os.path.join(path, "config.json"), "w") as f:
        f.write(cfg.to_json())
    if tokenizer is not None:
        from tinylm.data import save_tokenizer

        save_tokenizer(tokenizer, os.path.join(path, "tokenizer.json"))
    if extra:
        with open(os.path.join(path, "meta.json"), "w") as f:
            json.dump(extra, f, indent=2, sort_keys=True, default=str)
    return path


def load_pretrained(path: str, device: str = "cpu") -> tuple[GPT, Config, object]:
    """Load a folder written by ``save_pretrained``: returns (model in eval mode, Config, tokenizer or None)."""
    from safetensors.torch import load_model

    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise FileNotFoundError(f"{path} is not a tinylm model folder (no config.json); expected the output of "
                                "save_pretrained / python -m tinylm.export")
    with open(cfg_path) as f:
        cfg = Config.from_dict(json.load(f))
    model = GPT(cfg)
    load_model(model, os.path.join(path, "model.safetensors"), device=device)
    model.to(device).eval()
    tok = None
    tok_path = os.path.join(path, "tokenizer.json")
    if os.path.exists(tok_path):
        from tinylm.data import load_tokenizer

        tok = load_tokenizer(tok_path)
    return model, cfg, tok


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain GPT inside a DeepSpeed engine / torch.compile / DDP wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model
