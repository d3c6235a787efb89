"""The grid: Tune's param space for a sweep's ``Space``, and a sampled point back to a Config.

Tune's param space holds every Config field (plus, for a Space with variants, the ``VARIANT`` key: fields changed
together); a trial builds ``Config(**base, **sampled)``. Every grid point is checked before anything is scheduled.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray import tune

from tinylm.config import FIELDS, Config, ConfigError, check_keys
from tinylm.layout import VARIANT  # Tune's key for the variants axis: its values are dicts of Config fields

if TYPE_CHECKING:  # a sweep's settings and grid, handed in by tinylm.sweep (which calls this package)
    from tinylm.sweep.space import Space


def build_config(sampled: dict) -> Config:
    """``Config(**base, **sampled)``: Tune's param space holds every Config field plus an optional variant."""
    values = {k: v for k, v in sampled.items() if k in FIELDS}
    values.update(sampled.get(VARIANT) or {})
    return Config.from_dict(values)


def is_baseline(cfg: Config, baseline: dict) -> bool:
    return bool(baseline) and all(getattr(cfg, k) == v for k, v in baseline.items())


def grid_order(key: str, values: list, baseline: dict) -> list:
    """The order Tune walks a grid axis in when trials can be stopped early: the baseline's value first, then the
    rest in a fixed shuffled order. Tune runs a grid in list order, and asynchronous ASHA promotes whatever reaches
    a rung while it holds too few results to compare against, so a grid written worst-first (say, LRs ascending)
    ran its worst trials to the end; and the kill rule can stop nobody until the baseline has results
    (bench/asha.py). Deterministic, so a resumed sweep sees the same order."""
    import random

    def is_base(v) -> bool:
        if key == VARIANT:
            return bool(baseline) and isinstance(v, dict) and all(v.get(k) == b for k, b in baseline.items() if k in v)
        return key in baseline and v == baseline[key]

    first = [v for v in values if is_base(v)][:1]
    rest = [v for v in values if not (first and v is first[0])]
    random.Random(f"tinylm-grid-{key}").shuffle(rest)
    return first + rest


def grid_space(base: Config, space: Space, seeds: int, baseline: dict | None = None,
               shuffle: bool = False) -> dict:
    """Tune's param_space for a grid over ``space`` (× ``seeds``) on ``base``; every point is checked first.
    ``shuffle``: walk each axis baseline-first, the rest shuffled (``grid_order``), for sweeps that stop early."""
    space = space
    check_keys(space.axes)
    for k, values in space.items():  # fail fast: every grid point must build a valid Config
        for v in values if isinstance(values, list) else []:
            build_config(base.to_dict() | ({k: v} if k != VARIANT else {VARIANT: v}))
    out = {k: v for k, v in base.to_dict().items()}
    for k, values in space.items():
        if isinstance(values, list) and shuffle:
            values = grid_order(k, values, baseline or {})
        out[k] = tune.grid_search(values) if isinstance(values, list) else values
    # K seeds per trial (seeds_per_trial): a trial per K consecutive seeds, its members the rest; a phase of one
    # seed (an LR-tuning run, an --until-conclusive round) trains one model
    members = base.seeds_per_trial if seeds > 1 else 1
    if seeds % members:
        raise ConfigError(f"seeds_per_trial={members} does not divide --seeds={seeds}: every trial trains the same "
                          f"number of seeds; use --seeds a multiple of {members}, or seeds_per_trial dividing {seeds}")
    out["seeds_per_trial"] = members
    if seeds > members:
        out["seed"] = tune.grid_search(list(range(base.seed, base.seed + seeds, members)))
    return out


__all__ = ["build_config", "grid_order", "grid_space", "is_baseline"]
