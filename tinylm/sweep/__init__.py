"""A sweep: what a sweep script declares, the options it runs with, its grid, its dry-run plan and its command line.

    from tinylm.sweep import Experiment, Space
    from tinylm.sweep.cli import main

    EXPERIMENT = Experiment(name="glu", preset="budget-10m", space=Space(glu_factor=[2.0, 2.66, 3.0, 4.0]),
                            baseline=dict(glu_factor=4.0), hypothesis="...")
    if __name__ == "__main__":
        main(EXPERIMENT)

The modules, from the bottom up (each imports only those above it in this list, and ``tinylm.tune``, which runs
the trials on Ray, imports only the first two):

- ``settings``: ``Sweep``, the settings of one sweep that are not Config fields, each field its own flag
  (``--seeds``, ``--kill-window``, ``--search``, ...);
- ``space``: ``Space``, the grid: the Config fields its trials change, and the one expansion of it (``points``);
- ``plan``: ``--dry-run``: the trials, their cost here and on a GPU, and what they could claim;
- ``experiment``: ``Experiment``, the declaration of a sweep script; the run's own flags; every check before
  anything starts; ``load`` (the EXPERIMENT of a script or a sweep's name);
- ``pipeline``: ``run``, the PRD's phases (per-variant LR, seeds, --until-conclusive, --two-phase) on ``tinylm.tune``;
- ``ladder``: the scaling ladder's model family, sizes and isoFLOP points, and their reports (sweeps/ladder.py,
  sweeps/isoflop.py declare them);
- ``cli``: the command line of every sweep script (``main``) and of ``python -m tinylm.sweep``.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> module that defines it, imported on first use (PEP 562): ``tinylm.tune`` imports ``settings`` and
# ``space``, and must not load ``run`` (which calls tinylm.tune) on the way
_LAZY = {"Experiment": "tinylm.sweep.experiment", "load": "tinylm.sweep.experiment", "run": "tinylm.sweep.pipeline",
         "Sweep": "tinylm.sweep.settings", "Space": "tinylm.sweep.space"}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'tinylm.sweep' has no attribute {name!r}")
