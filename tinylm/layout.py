"""One home for the formats several modules write and read: where a sweep's files live and how they are named.

- ``sweep_key(name, root)`` = ``<name>@<absolute results root>``: tinylm.tune tags the sweep's parent run with it,
  ``tinylm.export`` and the sweep scripts find the parent (and the trial folders) by it; ``single_key(out_dir)``
  = ``single:<absolute run folder>`` for a run tracked outside a sweep (``tinylm.api.run_experiment``).
- ``trial_dir(root, sweep, trial_id)`` = ``<root>/<sweep>/trials/<trial id>``: a sweep trial's output folder. A
  trial of K seeds trained as one batched model (``seeds_per_trial``) has a run per member, whose id is
  ``member_id(trial_id, seed)`` = ``<trial id>.seed<seed>`` and whose folder is ``<trial folder>/members/seed<seed>``
  (``member_dir``); ``MEMBERS`` is the report key holding the members' metrics (a JSON list).
- ``stored_model(storage_root, sweep, trial_id)`` = ``<storage>/models/<sweep>/<trial id>``: where a trial that ran
  on a cluster (Ray storage a URI: every node has its own disk) publishes its trained model, so the head (export,
  evals) reads it from shared storage; ``publish_model`` / ``fetch_model`` copy it there and back (pyarrow's
  filesystems, the ones Ray's storage uses: ``s3://``, ``gs://``, ``abfs://``, local paths).
- ``COMPLETE``: the marker file a checkpoint tag holds once every rank finished saving it.
- ``VARIANT``: the search-space key whose values are dicts of Config fields changed together.
- The tracking URI: an explicit URI, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<absolute results dir>/mlflow.db``
  with the results dir ``$TINYLM_RESULTS`` or ``./results`` (``results_dir``, ``default_uri``, ``resolve_uri``);
  ``mask_uri`` hides passwords in anything printed.
- Overwriting: ``overwrite_refusal`` is the one rule every command that writes a file a user named follows (never a
  database nor a run's own files; another existing file only with ``--force``); ``write_failure`` turns a failed
  save (a full disk) into one line naming the path.

Standard library only at import (pyarrow is imported inside the two storage copies), so the driver, the CLIs and
the tests read it for free.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

VARIANT = "__variant"
COMPLETE = "tinylm_complete.json"  # written after every rank finished saving a tag
RESULTS_ENV = "TINYLM_RESULTS"  # the default results folder of every command
MEMBERS = "members_json"  # in a batched trial's reports: each member's metrics, seed and status (a JSON list)
_MEMBER = ".seed"  # member_id's separator (a Tune trial id holds no dot)


# --- sweep keys and folders ----------------------------------------------------------------------------------
def sweep_key(name: str, root: str) -> str:
    """The key of a sweep's parent run: its name and the absolute results root (two roots, two sweeps)."""
    return f"{name}@{os.path.abspath(root)}"


def single_key(out_dir: str) -> str:
    """The key of a run tracked outside a sweep: its absolute folder."""
    return f"single:{os.path.abspath(out_dir)}"


def parse_key(key: str) -> tuple[str, str, str] | None:
    """``("sweep", name, root)`` or ``("single", "", run folder)``; None for a key of neither form."""
    if key.startswith("single:"):
        return "single", "", key[len("single:"):]
    name, at, root = key.partition("@")
    return ("sweep", name, root) if at and name and root else None


def member_id(trial_id: str, seed: int) -> str:
    """The run id of the member of seed ``seed`` in a batched trial: ``<trial id>.seed<seed>``."""
    return f"{trial_id}{_MEMBER}{seed}"


def member_dir(trial_folder: str, seed: int) -> str:
    """Where the member of seed ``seed`` of a batched trial writes its metrics.json and model/."""
    return os.path.join(trial_folder, "members", f"seed{seed}")


def trial_dir(root: str, sweep: str, trial_id: str) -> str:
    """A sweep trial's output folder: ``<root>/<sweep>/trials/<trial id>``; for a member id, the member's folder."""
    trial, sep, seed = str(trial_id).partition(_MEMBER)
    if sep and seed.isdigit():
        return member_dir(os.path.join(root, sweep, "trials", trial), int(seed))
    return os.path.join(root, sweep, "trials", str(trial_id))


def stored_model(storage_root: str, sweep: str, trial_id: str) -> str:
    """Where a cluster trial's model lives on shared storage: ``<storage>/models/<sweep>/<trial id>``."""
    return f"{storage_root.rstrip('/')}/models/{sweep}/{trial_id}"


def is_shared_storage(storage_root: str) -> bool:
    """A URI (``s3://``, ``gs://``...): storage every node reaches, unlike a node's local folder."""
    return "://" in storage_root and not storage_root.startswith("file://")


def publish_model(model_dir: str, storage_root: str, sweep: str, trial_id: str) -> str:
    """Copy a trial's ``model/`` folder to ``stored_model(...)`` (pyarrow filesystems); returns the URI."""
    import pyarrow.fs as pafs  # Ray's dependency: only trials on a cluster come here

    dest = stored_model(storage_root, sweep, trial_id)
    pafs.copy_files(model_dir, dest)
    return dest


def fetch_model(storage_root: str, sweep: str, trial_id: str, dest: str) -> str | None:
    """Copy a trial's stored model into ``dest``; None when storage holds no model of that trial."""
    import pyarrow.fs as pafs

    src = stored_model(storage_root, sweep, trial_id)
    fs, path = pafs.FileSystem.from_uri(src)
    if fs.get_file_info(f"{path}/config.json").type != pafs.FileType.File:
        return None
    os.makedirs(dest, exist_ok=True)
    pafs.copy_files(path, dest, source_filesystem=fs)
    return dest


def run_dir(key: str, trial_id: str) -> str | None:
    """The folder of a tracked run, from its parent's key and its trial id; None when the key names no folder."""
    parsed = parse_key(key)
    if parsed is None:
        return None
    kind, name, path = parsed
    return path if kind == "single" else trial_dir(path, name, trial_id)


# --- the tracking store ----------------------------------------------------------------------------------------
_USERINFO = re.compile(r"([a-zA-Z][\w+.-]*://[^:/@\s]*):[^@\s]*?@")
_SECRET_QS = re.compile(r"((?:password|passwd|pwd|token|secret|access_key|api_key)=)[^&\s'\"]*", re.IGNORECASE)


def unwritable_parent(path: str) -> str | None:
    """Checked, not created (a refused command leaves no folder behind): None when ``path`` exists as a writable
    folder or can be created; else the nearest existing path above it that is not a writable folder."""
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    return None if os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK) else existing


def results_dir(results: str | None = None) -> str:
    """The results folder: the one given, else ``$TINYLM_RESULTS``, else ``results`` (relative to the cwd). Every
    default below it (runs, exports, analysis, the tracking store) goes through here, so the variable moves all."""
    return results or os.environ.get(RESULTS_ENV) or "results"


def default_uri(results: str | None = None, env: bool = True) -> str:
    """``$MLFLOW_TRACKING_URI`` when set (and ``env``), else ``sqlite:///<absolute results dir>/mlflow.db``."""
    if env and os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return "sqlite:///" + str(Path(results_dir(results)).expanduser().resolve() / "mlflow.db")


def resolve_uri(uri: str | None, results: str | None = None) -> str:
    """An explicit URI wins, then ``$MLFLOW_TRACKING_URI``, then the sqlite store in the results folder."""
    return uri or default_uri(results)


def mask_uri(text: Any) -> str:
    """``scheme://user:secret@host`` -> ``scheme://user:***@host`` (and ``?password=...``) anywhere in text."""
    return _SECRET_QS.sub(r"\1***", _USERINFO.sub(r"\1:***@", str(text)))


def jsonable(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats -> null (a diverged loss), unknown objects -> str, URIs masked."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy / torch scalars
        try:
            return jsonable(obj.item())
        except (TypeError, ValueError):
            pass
    return mask_uri(obj)


# --- never over a user's files -----------------------------------------------------------------------------------
_SQLITE = b"SQLite format 3\x00"


def _is_database(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(_SQLITE)) == _SQLITE
    except OSError:
        return False


def _run_folder(path: str) -> str | None:
    """The training run whose file ``path`` is (its metrics, model/, ckpt/<tag>/): the nearest of its three
    enclosing folders that holds a ``run_info.json``; None for any other file."""
    folder = os.path.dirname(os.path.abspath(path))
    for _ in range(3):
        if os.path.isfile(os.path.join(folder, "run_info.json")):
            return folder
        folder = os.path.dirname(folder)
    return None


def json_with_keys(path: str, keys: set[str], without: set[str] = frozenset()) -> bool:
    """``path`` holds a JSON object with every key of ``keys`` and none of ``without`` (how a command recognises a
    file it wrote before, for ``overwrite_refusal``'s ``ours``)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and keys <= data.keys() and not without & data.keys()


def overwrite_refusal(path: str, flag: str, force: bool = False,
                      ours: Callable[[str], bool] | None = None) -> str | None:
    """None when ``path`` may be written: it does not exist, ``ours(path)`` says this command wrote it before, or
    ``force``; else the one-line refusal. A database or a training run's own file is refused even with ``force``."""
    if not os.path.lexists(path):
        return None
    if os.path.isdir(path):
        return f"{flag} {path} is a folder; give a file name, e.g. {os.path.join(path, 'out.json')}"
    if _is_database(path):
        return f"{flag} {path} is an SQLite database (a tracking or Optuna store?); refusing to overwrite it: give a " \
               "new file name"
    if ours is not None and ours(path):
        return None
    run = _run_folder(path)
    if run:
        return f"{flag} {path} is a file of the training run in {run}; refusing to overwrite it: give a new file name"
    if force:
        return None
    return f"{flag} {path} already exists; refusing to overwrite it: give a new file name, or --force to replace it"


def write_failure(path: str, e: BaseException) -> str | None:
    """One line for a save that failed for lack of room (or of permission), naming ``path``; None for an error
    that is not about writing. torch.save reports a full disk as a RuntimeError from its zip writer, so for that
    the free space decides."""
    code = e.errno if isinstance(e, OSError) else None
    if code == errno.ENOSPC or (isinstance(e, (OSError, RuntimeError)) and _free(path) < 16 * 2**20):
        why = "no space left on device"
    elif code == errno.EDQUOT:
        why = "disk quota exceeded"
    elif isinstance(e, OSError):
        why = f"{type(e).__name__}: {e.strerror or e}"
    else:
        return None
    return f"cannot write {path}: {why}"


def _free(path: str) -> int:
    folder = os.path.abspath(path)
    while not os.path.exists(folder):
        folder = os.path.dirname(folder)
    return shutil.disk_usage(folder).free


__all__ = ["COMPLETE", "RESULTS_ENV", "VARIANT", "default_uri", "jsonable", "mask_uri",
           "overwrite_refusal", "parse_key", "resolve_uri", "results_dir", "run_dir", "single_key", "sweep_key",
           "trial_dir", "unwritable_parent", "write_failure", "stored_model", "is_shared_storage", "publish_model",
           "fetch_model"]
