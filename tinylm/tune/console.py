"""The sweep's terminal view: our progress lines only; Ray's, DeepSpeed's and MLflow's output goes to a log file."""

from __future__ import annotations

import logging
import os
import sys
import time

import ray


class Console:
    """While a sweep runs, everything written to this process's stdout/stderr (Ray's driver logs, the output of
    trial processes that Ray forwards, DeepSpeed, MLflow) goes to a log file at the file-descriptor level; our
    progress lines (``say``) go to the terminal, and so do warnings and errors logged by tinylm and errors logged
    by Ray (a failed trial). Off in notebooks and with TINYLM_VERBOSE=1 (everything on the terminal, as before)."""

    active: Console | None = None

    def __init__(self, log_path: str):
        self.log_path, self.term, self._saved, self._handler, self._dedup = log_path, None, None, None, None

    @staticmethod
    def wanted() -> bool:
        return os.environ.get("TINYLM_VERBOSE", "") in ("", "0") and "ipykernel" not in sys.modules

    def __enter__(self):
        sys.stdout.flush()
        sys.stderr.flush()
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        self._saved = (os.dup(1), os.dup(2))
        self.term = open(os.dup(self._saved[0]), "w", buffering=1)  # noqa: SIM115 - closed in __exit__
        log_fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        self._handler = _TerminalHandler(self)
        self._handler.setLevel(logging.WARNING)  # tinylm: warnings and up; ray: errors (see emit)
        for name in ("tinylm", "ray"):
            logging.getLogger(name).addHandler(self._handler)
        Console.active = self
        # Ray groups repeated lines from trial processes into "[repeated Nx]" summaries that it prints seconds
        # later, after this Console has closed (on the terminal): forward every line as it comes instead, to the log
        self._dedup = _set_ray_log_dedup(False)
        self.say(f"Ray / DeepSpeed / MLflow output: {self.log_path}")
        return self

    def say(self, line: str) -> None:
        print(line, flush=True)  # the log keeps our lines too, in context
        if self.term is not None:
            self.term.write(line + "\n")

    def __exit__(self, *exc):
        if ray.is_initialized():
            time.sleep(1.0)  # lines Ray is still forwarding from trial processes that just ended go to the log too
        _set_ray_log_dedup(self._dedup)
        Console.active = None
        for name in ("tinylm", "ray"):
            logging.getLogger(name).removeHandler(self._handler)
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self.term.close()
        self.term = None
        return False


def _set_ray_log_dedup(on: bool | None) -> bool | None:
    """Switch Ray's driver-side deduplication of forwarded worker lines (RAY_DEDUP_LOGS, read once at import);
    returns the previous setting (None: this Ray has no such switch, nothing changed)."""
    import ray._private.ray_logging as ray_logging

    previous = getattr(ray_logging, "RAY_DEDUP_LOGS", None)
    if previous is not None and on is not None:
        ray_logging.RAY_DEDUP_LOGS = on
    return previous


class _TerminalHandler(logging.Handler):
    def __init__(self, console: Console):
        super().__init__()
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < (logging.WARNING if record.name.startswith("tinylm") else logging.ERROR):
            return
        if record.name.startswith("tinylm"):  # Ray's loggers write their records to the log themselves
            print(f"{record.levelname} {record.name}: {record.getMessage()}", file=sys.stderr, flush=True)
        msg = record.getMessage().strip().splitlines()
        if msg and self.console.term is not None:
            self.console.term.write(f"{record.levelname.lower()}: {msg[0]} (details: {self.console.log_path})\n")


def say(line: str) -> None:
    """One line of our progress view: on the terminal (and in the log) while a Console is active, else printed."""
    if Console.active is not None:
        Console.active.say(line)
    else:
        print(line, flush=True)


def bar(frac: float, width: int = 10) -> str:
    n = int(round(max(0.0, min(1.0, frac)) * width))
    return f"[{'#' * n}{'.' * (width - n)}] {100 * frac:3.0f}%"


__all__ = ["Console", "bar", "say"]
