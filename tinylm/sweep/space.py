"""A sweep's grid (``Space``): the Config fields its trials change, and the one place the grid is expanded.

    Space(glu_factor=[2.0, 2.66, 3.0, 4.0])                       # an axis: one trial per value
    Space(lr=[1e-3, 3e-3], block_size=[64, 128])                  # two axes: their product
    Space(variants=[dict(n_layer=4, lr=2e-3), dict(n_layer=8, lr=1e-3)])  # fields changed together
    Space(variants=[...], tokenizer="bpe")                        # + a field every trial sets (not an axis)

``points()`` is the grid in the order Tune walks it (the variants first, then each axis in the order written);
the dry-run plan, the LR phase and ``tinylm.tune`` all read it, so what the plan shows is what runs. No ray here:
``tinylm.tune.grid`` turns a Space into Tune's param space.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from typing import Any

from tinylm.config import ConfigError
from tinylm.layout import VARIANT  # how Tune's param space (and a sweep's saved state) spells the variants axis


class Space:
    """``axes``: Config field -> list of values (an axis) or one value (set on every trial); ``variants``: dicts
    of Config fields changed together, one axis (``None``: no variants axis)."""

    __slots__ = ("axes", "variants")

    def __init__(self, variants: Iterable[Mapping[str, Any]] | None = None, **axes: Any):
        if variants is not None:
            variants = [dict(v) for v in variants]
            if not variants or not all(variants):
                raise ConfigError("Space(variants=...): give a non-empty list of non-empty dicts of Config fields")
        object.__setattr__(self, "variants", variants)
        object.__setattr__(self, "axes", {k: list(v) if isinstance(v, list | tuple) else v for k, v in axes.items()})

    def __setattr__(self, *_):
        raise AttributeError("a Space is immutable")

    def __reduce__(self):  # pickled with the sweep's Tune state: rebuilt through __init__'s checks
        return _restore, (self.variants, self.axes)

    @classmethod
    def of(cls, space: Space | Mapping[str, Any]) -> Space:
        """``space`` as a Space: a Space as it is, or a dict of Config field -> values (the form Tune's grid takes;
        the variants axis under ``tinylm.layout.VARIANT``)."""
        if isinstance(space, Space):
            return space
        if not isinstance(space, Mapping):
            raise ConfigError(f"a sweep's space is a tinylm.sweep.Space (or a dict of field -> values), not "
                              f"{type(space).__name__}")
        axes = {k: v for k, v in space.items() if k != VARIANT}
        return cls(variants=space.get(VARIANT), **axes)

    def items(self) -> list[tuple[str, Any]]:
        """(key, values) per axis and fixed field, the variants axis first under ``VARIANT``: Tune's param space."""
        return ([(VARIANT, self.variants)] if self.variants is not None else []) + list(self.axes.items())

    def lists(self) -> list[tuple[str, list]]:
        """The axes only (several values each, the variants axis first), in the order Tune walks them."""
        return [(k, v) for k, v in self.items() if isinstance(v, list)]

    def fixed(self) -> dict[str, Any]:
        """Fields every trial sets to one value."""
        return {k: v for k, v in self.axes.items() if not isinstance(v, list)}

    def points(self) -> list[dict[str, Any]]:
        """Every grid point as the Config fields it sets (the product of the axes), in Tune's order."""
        keys = [k for k, _ in self.items()]
        lists = [v if isinstance(v, list) else [v] for _, v in self.items()]
        out = []
        for combo in itertools.product(*lists):
            point: dict[str, Any] = {}
            for k, v in zip(keys, combo, strict=True):
                point.update(v if k == VARIANT else {k: v})
            out.append(point)
        return out

    def swept(self) -> dict[str, list]:
        """Every Config field the space sets per trial (an axis, a fixed value, or a field of a variant) -> the values
        it takes, in order."""
        out: dict[str, list] = {}
        for variant in self.variants or []:
            for f, v in variant.items():
                out.setdefault(f, []).append(v)
        for k, values in self.axes.items():
            out[k] = list(values) if isinstance(values, list) else [values]
        return out

    def fields(self) -> list[str]:
        """The Config fields any trial of the space sets, in order."""
        return list(self.swept())

    def axis_names(self) -> list[str]:
        """The names of the axes as a sweep reports them: each field axis, and ``variant`` for the variants axis."""
        return ["variant" if k == VARIANT else k for k, _ in self.lists()]

    def __len__(self) -> int:
        n = 1
        for _, values in self.lists():
            n *= len(values)
        return n

    def __eq__(self, other) -> bool:
        return isinstance(other, Space) and self.items() == other.items()

    def __repr__(self) -> str:
        parts = ([f"variants={self.variants!r}"] if self.variants is not None else []) + \
            [f"{k}={v!r}" for k, v in self.axes.items()]
        return f"Space({', '.join(parts)})"


def _restore(variants, axes) -> Space:
    return Space(variants, **axes)


__all__ = ["Space"]
