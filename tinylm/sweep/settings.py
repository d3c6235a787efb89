"""The settings of one sweep (``Sweep``): every knob that is not a Config field, declared once.

A field that is also a flag of the sweep scripts says so in its declaration (``flag(...)``: option, help text,
the check of its value; the type is the default's). Everything else is derived from that one declaration:

- ``flags()``: the sweep scripts' options (``tinylm.sweep.cli`` builds the argparse parser from them, and
  ``tinylm.sweep.pipeline`` takes the same options by dest name, with the same defaults and checks);
- ``Sweep.from_flags``: the Sweep a parsed command line asks for;
- ``Sweep.for_trials``: what each trial's driver receives (the ``__sweep`` entry of Tune's param space): the
  fields declared with ``trial=True`` and nothing else (no tracking URI and its password in Ray's trial state).

Adding a sweep flag is one field here. No ray, no mlflow: parsing and checking flags must not start them.

    python sweeps/glu.py --kill-window 200000        # Sweep.kill_window, from its field below
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any

from tinylm import layout
from tinylm.config import MAX_MEMBERS
from tinylm.kill_rule import DEFAULT_MARGIN

# The searchers of the refinement (--search); tinylm.tune.search.SEARCHERS builds each (it imports ray, this does not)
SEARCHERS = ("optuna", "random")

# Caps on one sweep, checked before anything starts (a mistyped --seeds 1000000 planned for minutes in silence):
# a seeded verdict needs 3-10 seeds, and the largest grid of sweeps/ has 15 points
MAX_SEEDS = 100
MAX_TRIALS = 2_000  # grid points x seeds + refinement trials (two-phase: ranking runs + finalists x seeds)


def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and v == v  # not NaN


def int_at_least(lo: int) -> Callable[[Any], bool]:
    return lambda v: is_int(v) and v >= lo


@dataclass(frozen=True)
class Flag:
    """One command-line option of the sweep scripts (``--kill-margin``; dest ``kill_margin``)."""

    option: str
    default: Any = None  # a callable is called when the parser is built (--results: $TINYLM_RESULTS)
    help: str | None = None
    type: type | None = None  # argparse's type; None: a string, or a switch (``action``)
    action: str | None = None
    choices: tuple | None = None
    nargs: str | None = None
    metavar: str | None = None
    check: tuple[Callable[[Any], bool], str] | None = None  # (valid?, what is allowed), checked before any work
    field: str = ""  # the Sweep field it sets ("" = an option of the run, not of the Sweep)
    negate: bool = False  # a switch that turns its field off (--no-asha: asha = not no_asha)

    @property
    def dest(self) -> str:
        return self.option.lstrip("-").replace("-", "_")

    def default_value(self) -> Any:
        value = self.default() if callable(self.default) else self.default
        return list(value) if isinstance(value, list) else value  # never one list shared by two parses

    def argparse_kwargs(self) -> dict:
        kw = {"default": self.default_value(), "help": self.help, "type": self.type, "action": self.action,
              "choices": self.choices, "nargs": self.nargs, "metavar": self.metavar}
        return {k: v for k, v in kw.items() if v is not None}

    def refusal(self, value) -> str | None:
        """The one-line error for a value this flag does not take; None when it is fine."""
        if self.check is None or self.check[0](value):
            return None
        return f"{self.option}={value!r} must be {self.check[1]}"


def flag(default, help: str | None = None, *, option: str = "", cli_default=None, check=None, trial: bool = False,
         **argparse_kw) -> Any:
    """A Sweep field that is also a sweep-script flag: ``option`` defaults to the field's name (``--kill-window``);
    ``cli_default`` replaces the field's default on the command line (a callable: evaluated per parser);
    ``trial``: the trial driver needs it (see ``Sweep.for_trials``)."""
    return field(default=default, metadata={"flag": dict(option=option, help=help, cli_default=cli_default,
                                                         check=check, **argparse_kw), "trial": trial})


def trial_field(default=MISSING, **kw) -> Any:
    """A Sweep field that is no flag but that each trial's driver needs (``Sweep.for_trials``)."""
    return field(default=default, metadata={"trial": True}, **kw)


@dataclass(frozen=True)
class Sweep:
    """Settings of one sweep invocation (everything that is not a Config field)."""

    name: str = trial_field()
    results_dir: str = flag("results", "results folder (default $TINYLM_RESULTS or results)", option="--results",
                            cli_default=layout.results_dir)
    seeds: int = flag(1, f"repeat every grid point with this many seeds (at most {MAX_SEEDS}; {MAX_TRIALS:,} trials "
                      "in all)", check=(int_at_least(1), "an int >= 1"))
    seeds_per_trial: int = flag(1, "train this many of a grid point's seeds as one batched model per trial "
                                "(tinylm.ensemble; each seed stays its own run, row and Optuna value; it must "
                                "divide --seeds; phases of one seed train one model). Pays where a step is "
                                "overhead-bound (a GPU); on this CPU it does not (RESULTS.md)",
                                check=(lambda v: isinstance(v, int) and not isinstance(v, bool)
                                       and 1 <= v <= MAX_MEMBERS, f"an int from 1 to {MAX_MEMBERS}"))
    refine: int = flag(0, "refinement trials after the grid, chosen by --search (0 = none)",
                       check=(int_at_least(0), "an int >= 0 (0 = no refinement)"))
    search: str = flag("optuna", "the searcher of the refinement: optuna (TPE; its study in --optuna-storage, told "
                       "the grid's results first) or random (samples the same space uniformly, log-uniform where "
                       "declared)", choices=SEARCHERS)
    asha: bool = flag(True, option="--no-asha")
    # ASHA's grace period in tokens (0 = 1/8 of train_tokens) and reduction factor. Chosen by bench/asha.py on a
    # 16-trial glu_factor x embed_share grid: 1/8 + 3 spent 32 % of the full grid's tokens in the sweep's order
    # (median 39 % over 200 random orders, the winner kept in 196 of them); the old 1/4 + 2 spent 47-56 %
    # (RESULTS.md, 2026-11-30). Across an LR axis no setting is safe below 1/4 (tune.stopping.early_stop_warnings).
    grace_tokens: int = flag(0, "ASHA: tokens before a trial can be stopped (0 = 1/8 of train_tokens)",
                             check=(int_at_least(0), "an int >= 0 (0 = 1/8 of train_tokens)"))
    reduction_factor: int = flag(3, "ASHA: keep 1 in this many trials at each rung",
                                 check=(int_at_least(2), "an int >= 2 (ASHA keeps 1/reduction_factor per rung)"))
    brackets: int = 1  # ASHA brackets (1 = plain successive halving with one grace period)
    # PRD kill rule: perplexity relative to the baseline's (tinylm.kill_rule) ...
    kill_margin: float = flag(DEFAULT_MARGIN, "PRD kill rule margin, RELATIVE to the baseline's perplexity (0.02 = "
                              "2 %%, the PRD's 0.5 points at its expected perplexity ~25; tinylm.kill_rule); inf "
                              "disables the rule",
                              check=(lambda v: is_number(v) and v >= 0, "a number >= 0 (inf disables the kill rule)"))
    # ... for this many consecutive tokens (0 = 1M at full scale, 1/6 of the run at smoke)
    kill_window: int = flag(0, check=(int_at_least(0), "an int >= 0 (0 = the default window)"))
    baseline: dict = trial_field(default_factory=dict)  # Config fields that identify the baseline trial
    address: str | None = flag(None, "Ray cluster address (or RAY_ADDRESS); default: local Ray")
    # Train workers per trial (0 = 1 on CPU, gpus_per_trial on GPUs)
    workers: int = flag(0, "Train workers per trial (0 = auto)", check=(int_at_least(0), "an int >= 0 (0 = auto)"))
    gpus_per_trial: int = 1
    trials_per_gpu: int = flag(0, "K trials share each GPU (1/K of it each); on CPU: K trials at once, cores split "
                               "(0 = auto)", check=(int_at_least(0), "an int >= 0 (0 = auto)"))
    local_mode: bool | None = None  # 1-worker trials train in the Tune trial's process (None = when workers == 1,
    # unless TINYLM_LOCAL_MODE=0)
    console: bool = True  # our lines on the terminal, Ray's and DeepSpeed's output in <results>/<name>/output.log
    max_concurrent: int = flag(0, check=(int_at_least(0), "an int >= 0 (0 = from the resources)"))
    max_failures: int = trial_field(2)  # worker failures survived per trial (restarts from the last checkpoint)
    tracking_uri: str = flag("")  # "" = $MLFLOW_TRACKING_URI or sqlite under results_dir
    optuna_storage: str = flag("")  # "" = $TINYLM_OPTUNA_STORAGE or sqlite under results_dir
    hypothesis: str = ""
    description: str = ""
    axes: tuple = ()  # the grid's axes, for progress lines

    @property
    def root(self) -> str:
        return os.path.abspath(self.results_dir)

    def uri(self) -> str:
        return layout.resolve_uri(self.tracking_uri or None, self.root)

    def storage(self) -> str:
        return (self.optuna_storage or os.environ.get("TINYLM_OPTUNA_STORAGE")
                or f"sqlite:///{os.path.join(self.root, 'optuna.db')}")

    def for_trials(self) -> dict:
        """What every trial's driver gets from the sweep (Tune's ``__sweep`` entry): the ``trial`` fields and the
        absolute results root; plain data, since Ray stores it with each trial's config."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.metadata.get("trial")} | {"root": self.root}

    @classmethod
    def from_flags(cls, name: str, values: dict, **fixed) -> Sweep:
        """The Sweep that parsed flags (by dest, as ``flags()`` names them) ask for; ``fixed`` fields win."""
        kw = {}
        for f in flags():
            if f.dest in values:
                kw[f.field] = (not values[f.dest]) if f.negate else values[f.dest]
        return replace(cls(name=name, **kw), **fixed)


def _flag_of(f) -> Flag:
    spec = dict(f.metadata["flag"])
    option = spec.pop("option") or f"--{f.name.replace('_', '-')}"
    cli_default = spec.pop("cli_default")
    negate = isinstance(f.default, bool)  # a switch: --no-asha turns a True field off
    if negate and f.default is not True:
        raise TypeError(f"Sweep.{f.name}: a switch flag turns a True field off ({option})")
    default = False if negate else (f.default if cli_default is None else cli_default)
    kind = None if negate or isinstance(f.default, str) or f.default is None else type(f.default)
    return Flag(option=option, default=default, type=spec.pop("type", kind),
                action="store_true" if negate else spec.pop("action", None), field=f.name, negate=negate, **spec)


def flags() -> list[Flag]:
    """The sweep-script flags that set Sweep fields, in field order."""
    return [_flag_of(f) for f in fields(Sweep) if "flag" in f.metadata]


__all__ = ["MAX_SEEDS", "MAX_TRIALS", "Flag", "Sweep", "flag", "flags", "int_at_least", "is_int", "is_number",
           "trial_field"]
