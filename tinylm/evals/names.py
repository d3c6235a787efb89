"""The eval task names and the parser of a task list, without torch: ``Config`` validates ``evals`` with it before
any data or model exists (``tinylm.evals.suite.TASKS`` holds the tasks themselves, in this order)."""

from __future__ import annotations

from collections.abc import Sequence

TASK_NAMES = ("lambada", "hellaswag", "piqa", "siqa", "squad", "arithmetic", "completion", "association", "qa",
              "recall")


def parse_tasks(tasks: Sequence[str] | str) -> list[str]:
    """``"all"`` -> every task; ``"lambada, piqa"`` or a list -> those, in order, without duplicates.

    Raises:
        ValueError: an empty list or an unknown name (the message lists the allowed names).
    """
    if isinstance(tasks, str):
        if tasks.strip() == "all":
            return list(TASK_NAMES)
        tasks = tasks.split(",")
    if isinstance(tasks, (bytes, bytearray)) or not isinstance(tasks, Sequence):
        raise ValueError(f"tasks={tasks!r}: expected 'all', a comma-separated string or a list of task names")
    names = [str(t).strip() for t in tasks]
    if not any(names):
        raise ValueError(f"no eval task named; choose from {', '.join(TASK_NAMES)}, or 'all'")
    unknown = [t for t in names if t not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown eval task(s) {unknown}; choose from {', '.join(TASK_NAMES)}, or 'all'")
    return list(dict.fromkeys(names))
