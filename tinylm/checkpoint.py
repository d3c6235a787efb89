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


class ModelFolderError(ValueError):
    """A model folder that is missing, incomplete or corrupt; the message names the path and what is expected."""


def load_pretrained(path: str, device: str = "cpu") -> tuple[GPT, Config, object]:
    """Load a folder written by ``save_pretrained``: returns (model in eval mode, Config, tokenizer or None).

    Raises:
        ModelFolderError: no such folder, no ``config.json`` / ``model.safetensors``, or a file that does not
            parse (e.g. a truncated copy); the message names the file.
    """
    from safetensors.torch import load_model

    expected = "expected a folder written by save_pretrained / python -m tinylm.export (a run's model/)"
    if not os.path.isdir(path):
        raise ModelFolderError(f"{path}: no such folder; {expected}")
    cfg_path = os.path.join(path, "config.json")
    if not os.path.exists(cfg_path):
        raise ModelFolderError(f"{path} is not a tinylm model folder (no config.json); {expected}")
    try:
        with open(cfg_path) as f:
            cfg = Config.from_dict(json.load(f))
    except (OSError, ValueError, TypeError) as e:  # ConfigError is a ValueError
        raise ModelFolderError(f"{cfg_path} is unreadable ({type(e).__name__}: {e})") from None
    weights = os.path.join(path, "model.safetensors")
    if not os.path.isfile(weights):
        raise ModelFolderError(f"{path} has config.json but no model.safetensors; {expected}")
    model = GPT(cfg)
    try:
        load_model(model, weights, device=device)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types; the path is what matters
        raise ModelFolderError(f"{weights} is unreadable or does not match {cfg_path} ({type(e).__name__}: "
                               f"{str(e)[:300]}); a truncated or partial copy? copy the folder again") from None
    model.to(device).eval()
    tok = None
    tok_path = os.path.join(path, "tokenizer.json")
    if os.path.exists(tok_path):
        from tinylm.data import load_tokenizer

        try:
            tok = load_tokenizer(tok_path)
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ModelFolderError(f"{tok_path} is unreadable ({type(e).__name__}: {e})") from None
    return model, cfg, tok


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain GPT inside a DeepSpeed engine / torch.compile / DDP wrapper."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or model._orig_mod
    return model


def resume_point(ckpt_dir: str) -> dict | None:
    """The newest checkpoint in ``ckpt_dir`` that a run would continue from: its completion marker (``tag``,
    ``tokens``, ``config``), read before any data, model or process group exists; None when there is none.

    A marker that exists but cannot be read is corruption, not a partial save: it is named in a warning, and when
    no readable one is left this raises ConfigError instead of letting a new run start over and overwrite the
    checkpoints (a tag folder without a marker is a save that never finished, and is ignored as before)."""
    import logging

    from tinylm.config import ConfigError
    from tinylm.engine import COMPLETE, scan_markers

    good, corrupt = scan_markers(ckpt_dir)
    for tag, why in corrupt.items():
        logging.getLogger(__name__).warning("checkpoint marker %s is unreadable (%s)",
                                            os.path.join(ckpt_dir, tag, COMPLETE), why)
    if not good:
        if corrupt:
            raise ConfigError(f"every checkpoint in {ckpt_dir} has a corrupt completion marker ({COMPLETE} in "
                              f"{', '.join(corrupt)}); refusing to start over and overwrite them. Restore the "
                              f"markers, or move {ckpt_dir} away to train from scratch")
        return None
    return {"ckpt_dir": ckpt_dir, **good[-1][1]}
