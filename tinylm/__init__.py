"""tinylm: the science of tiny language models — sweeps, early stopping, tracking, scaling fits, Pareto fronts.

``import tinylm`` is cheap (no torch / ray / mlflow): the notebook API is loaded on first use.

    import tinylm
    r = tinylm.run_experiment(tinylm.Config.from_name("debug"))    # one model, no Ray -> tinylm.Result
    tinylm.run_sweep("glu")                                        # sweeps/glu.py, as the CLI runs it
    tinylm.compare([r, "glu"])                                     # params, ppl, time, memory, ppl per M params
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it (imported on first access, PEP 562)
_LAZY = {"run_experiment": "tinylm.api", "run_sweep": "tinylm.api", "compare": "tinylm.api",
         "Result": "tinylm.api", "Config": "tinylm.config", "Experiment": "tinylm.sweep", "Space": "tinylm.sweep"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # cache: later lookups skip __getattr__
        return value
    raise AttributeError(f"module 'tinylm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
