"""The command line every sweep script shares: ``python sweeps/<name>.py [flags]`` calls ``main(EXPERIMENT)``.

    python sweeps/glu.py --dry-run                 # a sweep script (its last lines: main(EXPERIMENT))
    python -m tinylm.sweep sweeps/glu.py --dry-run # the same, for a script without those lines (or a sweep's name)

The parser is built from the flag declarations (``tinylm.sweep.experiment.flags``: the run's own and the Sweep's
fields) and calls ``tinylm.sweep.pipeline``, the call ``tinylm.api.run_sweep`` makes too. Every tinylm command line is
a ``cli.py`` like this one (parser and ``main``), run by its package's two-line ``__main__.py``; nothing in the
library imports a ``cli`` module (tests/test_layering.py).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from tinylm.config import ConfigError
from tinylm.sweep.experiment import RUN_FLAGS, Experiment, defaults, load
from tinylm.sweep.pipeline import run
from tinylm.sweep.settings import flags as sweep_flags


def parser(exp: Experiment) -> argparse.ArgumentParser:
    """The run's options, then the Sweep's settings; defaults as ``run()`` takes them (``exp.options`` applied)."""
    p = argparse.ArgumentParser(prog=f"python sweeps/{exp.name}.py", description=exp.hypothesis or exp.name)
    for f in RUN_FLAGS:
        p.add_argument(f.option, **f.argparse_kwargs())
    group = p.add_argument_group("sweep settings (tinylm.sweep.settings.Sweep)")
    for f in sweep_flags():
        group.add_argument(f.option, **f.argparse_kwargs())
    p.set_defaults(**defaults(exp))
    return p


def main(exp: Experiment, argv: list[str] | None = None, command: str | None = None):
    """Parse the shared flags, run the sweep (or the two-phase pipeline) and print the ranked table.
    ``command``: what the user typed, for the resume hint (default: this process's command line). Exits 0 only
    when every trial ended as planned (completed, or stopped early by ASHA / the kill rule); trials that diverged
    or failed exit 1 after the table, with the one-line summary ``run`` printed."""
    from tinylm.tracking import TrackingError

    args = parser(exp).parse_args(argv)
    try:
        table = run(exp, **vars(args))
    except (ConfigError, TrackingError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt:
        sys.exit(f"\ninterrupted; finished trials are kept. Resume with the same command:\n"
                 f"  {command or 'python ' + shlex.join(sys.argv)}\n(sweep {exp.name}; results in {args.results})")
    if getattr(table, "attrs", {}).get("unplanned"):
        sys.exit(1)
    return table


def run_script(argv: list[str] | None = None):
    """``python -m tinylm.sweep SCRIPT.py [flags]``: the ``EXPERIMENT`` a sweep script (or a sweep's name) declares,
    run by ``main``."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: python -m tinylm.sweep SCRIPT.py [flags]   (e.g. sweeps/glu.py --dry-run, or glu --dry-run; "
                 "SCRIPT.py --help lists the flags)")
    try:
        exp = load(argv[0])
    except ConfigError as e:
        sys.exit(f"error: {e}")
    return main(exp, argv[1:], command=f"python -m tinylm.sweep {shlex.join(argv)}")
