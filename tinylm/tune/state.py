"""What keeps a sweep's stores honest across runs: one sweep per results folder (a lock), the sqlite stores
checked before any compute, and the grid a resumed sweep was created with.

    with SweepLock(sweep.root):                    # refused in one line while another sweep holds it
        check_sqlite_stores(sweep.uri(), sweep.storage())
        check_ray_storage(storage_root)
        check_grid(sweep.name, spec_file, grid_spec(param_space), experiment_dir, resuming=True)

No ray, no mlflow: the checks run before Ray starts and before the sweep's MLflow parent run exists
(``tinylm.tune.runner.run_sweep``).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sqlite3
import time
from pathlib import Path

from tinylm.errors import ConfigError
from tinylm.layout import VARIANT, mask_uri, unwritable_parent

log = logging.getLogger("tinylm.tune")

LOCK_FILE = "sweep.lock"  # in the results folder: the holder's PID, host, start time and command
SQLITE_MAGIC = b"SQLite format 3\0"


class SweepStateError(ConfigError):
    """A sweep that may not start: its results folder is in use, a store is corrupt, or its grid changed."""


# --- one sweep per results folder ----------------------------------------------------------------------------
def _alive(pid: int, started: float) -> bool:
    """True when ``pid`` runs on this host and is the process that took the lock (not a reused PID)."""
    import psutil  # a ray dependency

    try:
        return psutil.Process(pid).create_time() <= started + 1
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def _record(fd: int) -> dict:
    """The holder's record in an open lock file ({} when empty or not ours)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        record = json.loads(os.read(fd, 65536) or b"{}")
        return record if isinstance(record, dict) else {}
    except ValueError:
        return {}


class SweepLock:
    """Hold ``<root>/sweep.lock`` while a sweep runs: two sweeps on one results folder would train the same Tune
    trials at once and delete each other's checkpoints. The file holds the holder's PID, host, start time and
    command under a kernel lock (``flock``), which dies with its process: a record left by a killed sweep is taken
    over with a warning, a live holder is refused in one line naming its PID and the lock. A record from another
    host is refused too (whether it still runs cannot be checked from here). Reentrant in one process (two-phase
    runs two sweeps)."""

    _held: dict[str, tuple[int, int]] = {}  # lock path -> (fd, depth), for this process

    def __init__(self, root: str, command: str = ""):
        self.path = os.path.join(os.path.abspath(root), LOCK_FILE)
        self.command = command

    def __enter__(self) -> SweepLock:
        if self.path in self._held:
            fd, depth = self._held[self.path]
            self._held[self.path] = (fd, depth + 1)
            return self
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                self._acquire(fd)
                if os.path.exists(self.path) and os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break  # else its holder removed the file as we took it: take the new one
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "command": self.command}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(me).encode())
        self._held[self.path] = (fd, 1)
        return self

    def _acquire(self, fd: int) -> None:
        import fcntl

        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            kernel = True
        except BlockingIOError:
            self._refuse(_record(fd))
        except OSError:  # a file system without flock: the record decides alone
            kernel = False
        holder = _record(fd)
        if not holder:
            return
        here = holder.get("host") == socket.gethostname()
        pid, started = int(holder.get("pid", 0) or 0), float(holder.get("started", 0) or 0)
        if not here or (not kernel and _alive(pid, started)):
            self._refuse(holder)
        log.warning("taking over the stale sweep lock %s (PID %s on %s is gone)", self.path, pid or "?",
                    holder.get("host", "?"))

    def _refuse(self, holder: dict) -> None:
        host = holder.get("host", "?")
        elsewhere = "" if host == socket.gethostname() else " (another host: remove the lock if it runs no sweep)"
        raise SweepStateError(
            f"results folder {os.path.dirname(self.path)} is in use by another sweep (PID {holder.get('pid', '?')} on "
            f"{host}, lock {self.path}); wait for it to finish or stop it, or use another --results{elsewhere}")

    def __exit__(self, *exc) -> None:
        fd, depth = self._held[self.path]
        if depth > 1:
            self._held[self.path] = (fd, depth - 1)
            return
        del self._held[self.path]
        try:
            os.remove(self.path)  # while still holding it: a waiting sweep sees the file gone and opens a new one
        except FileNotFoundError:
            pass
        os.close(fd)


# --- corrupt stores, before any compute ----------------------------------------------------------------------
def _sqlite_problem(path: Path) -> str | None:
    """None for a readable SQLite database, else what is wrong with it."""
    with open(path, "rb") as f:
        if f.read(len(SQLITE_MAGIC)) != SQLITE_MAGIC:
            return "not an SQLite database"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            row = conn.execute("pragma quick_check(1)").fetchone()
        finally:
            conn.close()
    except sqlite3.Error as e:
        return f"unreadable ({e})"
    return None if row and row[0] == "ok" else f"corrupt ({row[0] if row else 'no answer'})"


def check_sqlite_stores(tracking_uri: str, optuna_storage: str) -> None:
    """Refuse a sqlite store (MLflow's or Optuna's) that exists but is not a readable SQLite database, naming the
    file: opened later, it fails mid-sweep with a long traceback after trials trained."""
    for uri, setting in ((tracking_uri, "MLFLOW_TRACKING_URI"), (optuna_storage, "TINYLM_OPTUNA_STORAGE")):
        if not uri.startswith("sqlite:"):
            continue
        rest = uri.split("?", 1)[0][len("sqlite://"):]
        path = Path(rest[1:] if rest.startswith("/") else rest)
        if rest in ("", "/:memory:") or not path.is_file() or path.stat().st_size == 0:
            continue
        problem = _sqlite_problem(path)
        if problem:
            raise SweepStateError(f"{path} is {problem}; move it away (a new one is made) or set {setting} to "
                                  "another store")


def check_ray_storage(storage_root: str, timeout_s: float | None = None) -> None:
    """Refuse Ray's storage (``TINYLM_STORAGE``, default ``<results>/ray``) when it cannot be used: a local folder
    that cannot be made or written, or a remote URI (``s3://...``) that does not answer within ``timeout_s``
    (default: ``REACH_TIMEOUT_S``, every pre-flight check's). Found by Tune only after the sweep's parent run
    started."""
    if "://" not in storage_root or storage_root.startswith("file://"):
        path = storage_root.removeprefix("file://")
        bad = unwritable_parent(path)
        if bad:
            raise SweepStateError(f"Ray storage {path} (TINYLM_STORAGE) cannot be written: {bad} is not a writable "
                                  "folder")
        return
    import pyarrow.fs  # a ray dependency

    from tinylm.tracking import REACH_TIMEOUT_S, within

    def probe() -> None:
        fs, path = pyarrow.fs.FileSystem.from_uri(storage_root)
        fs.get_file_info(path)

    try:
        within(REACH_TIMEOUT_S if timeout_s is None else timeout_s, probe)  # the pre-flight checks' one bound
    except Exception as e:  # noqa: BLE001 - any failure (a timeout included) means "not usable"
        why = str(e) if isinstance(e, TimeoutError) else f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        raise SweepStateError(f"Ray storage {mask_uri(storage_root)} (TINYLM_STORAGE) is not reachable: {why}") \
            from None


# --- the grid a resumed sweep was created with ---------------------------------------------------------------
def grid_spec(param_space: dict, samples: int = 1) -> dict:
    """What decides a sweep's trials, as plain JSON: every axis with its values, every fixed entry, and how many
    samples of the space are drawn. Entries starting with ``__`` other than the variant axis (the sweep's own
    settings) are not part of the grid."""
    out: dict = {"samples": samples}
    for k, v in sorted(param_space.items()):
        if k.startswith("__") and k != VARIANT:
            continue
        if isinstance(v, dict) and "grid_search" in v:
            values = [json.loads(json.dumps(x, sort_keys=True, default=str)) for x in v["grid_search"]]
            out[k] = {"grid": sorted(values, key=lambda x: json.dumps(x, sort_keys=True))}  # the points, not the order
        elif hasattr(v, "domain_str"):  # a Tune search domain (the refinement's space)
            out[k] = {"domain": f"{type(v).__name__}{v.domain_str}"}
        else:
            out[k] = json.loads(json.dumps(v, sort_keys=True, default=str))
    return out


def _show(k: str, v) -> str:
    if isinstance(v, dict) and len(v) == 1 and ("grid" in v or "domain" in v):  # an axis: its values
        v = v.get("grid", v.get("domain"))
    return "unset" if v is None else json.dumps(v, sort_keys=True) if k == VARIANT or isinstance(
        v, (dict, list)) else f"{v}"


def grid_changes(old: dict, new: dict) -> list[str]:
    """The difference between two ``grid_spec``s, in words: added / removed axis values, changed fixed values."""
    added, removed, changed = [], [], []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        name = "variant" if k == VARIANT else k
        if isinstance(a, dict) and isinstance(b, dict) and "grid" in a and "grid" in b:
            added += [f"{name}={_show(k, v)}" for v in b["grid"] if v not in a["grid"]]
            removed += [f"{name}={_show(k, v)}" for v in a["grid"] if v not in b["grid"]]
        else:
            changed.append(f"{name} {_show(k, a)} -> {_show(k, b)}")
    return ([f"added {', '.join(added)}"] if added else []) + ([f"removed {', '.join(removed)}"] if removed else []) \
        + ([f"changed {', '.join(changed)}"] if changed else [])


def check_grid(name: str, spec_file: str, spec: dict, experiment_dir: str, resuming: bool,
               only: tuple[str, ...] = ()) -> None:
    """A new sweep records its grid in ``spec_file``; a resumed one must have the same grid: Tune restores the
    trials it created and never runs a new point (and one more point than it holds would read as "interrupted"
    on every rerun). Refused naming the difference; a sweep made before this record existed is trusted.
    ``only``: compare just these keys and write nothing (a check ahead of the phase that records the spec)."""
    if resuming and os.path.isfile(spec_file):
        try:
            with open(spec_file) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old is not None:  # a Config field added since the sweep was created, at its default: the same trials
            from tinylm.config import FIELDS

            old = {**{k: v for k, v in spec.items() if k not in old and k in FIELDS and v == FIELDS[k].default},
                   **old}
        if old is not None and only:
            old, spec = {k: old.get(k) for k in only}, {k: spec.get(k) for k in only}
        if old is not None and old != spec:
            raise SweepStateError(
                f"grid of sweep {name} changed since {experiment_dir} was created: {'; '.join(grid_changes(old, spec))}"
                f"; rerun with another --results, or move {experiment_dir} away to start this sweep over")
        if old is not None:
            return
    if only:
        return
    os.makedirs(os.path.dirname(spec_file), exist_ok=True)
    tmp = spec_file + ".tmp"
    with open(tmp, "w") as f:
        json.dump(spec, f, indent=1, sort_keys=True)
    os.replace(tmp, spec_file)


__all__ = ["LOCK_FILE", "SweepLock", "SweepStateError", "check_grid", "check_ray_storage", "check_sqlite_stores",
           "grid_changes", "grid_spec"]
