"""Reaching a tracking store: the client, the fail-fast check, run searches and the UI link.

``check_tracking(uri)`` runs before any compute and raises ``TrackingError`` (URI masked, with a hint how to fix
it); ``check_storage(url)`` does the same for an Optuna storage; ``connect(uri)`` is the one way to get an
``MlflowClient`` (it names the psycopg2 driver for postgres URIs and bounds MLflow's own HTTP retries);
``search_runs`` pages through every matching run; ``ui_url`` links the experiment in the model training view.

One timeout policy: every check that reaches a server before compute (tracking server or database, Optuna storage,
Ray cluster: ``tinylm.tune.resources.check_address``) gives up after ``REACH_TIMEOUT_S`` and says so, and MLflow's
own HTTP requests time out after as long, with ``MLFLOW_HTTP_MAX_RETRIES`` retries (unless the environment sets
``MLFLOW_HTTP_REQUEST_TIMEOUT`` / ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``): its defaults (120 s, 7 retries with
backoff) kept a dead server silent for minutes.
"""

from __future__ import annotations

import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

from tinylm.layout import mask_uri, unwritable_parent

REACH_TIMEOUT_S = 10.0  # seconds any server (tracking, Optuna storage, Ray cluster) gets to answer a check
MLFLOW_HTTP_MAX_RETRIES = 2
DATABASES = ("postgresql", "postgres", "mysql", "mssql")  # URI schemes checked with a connection and `select 1`


class TrackingError(RuntimeError):
    """The tracking store is unreachable or a lookup matched nothing; the message says what to do."""


def _driver_uri(uri: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; the stack ships psycopg2-binary, so name it."""
    if uri.startswith("postgres://"):
        uri = "postgresql://" + uri[len("postgres://"):]
    if uri.startswith("postgresql://"):
        import importlib.util

        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            uri = "postgresql+psycopg2://" + uri[len("postgresql://"):]
    return uri


def bound_mlflow_http() -> None:
    """MLflow's REST calls time out after ``REACH_TIMEOUT_S`` with ``MLFLOW_HTTP_MAX_RETRIES`` retries, unless the
    environment says otherwise (MLflow reads these variables at each request)."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(REACH_TIMEOUT_S)))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", str(MLFLOW_HTTP_MAX_RETRIES))


def connect(uri: str) -> MlflowClient:
    """An ``MlflowClient`` for ``uri``: explicit, so no process-wide tracking state is set."""
    bound_mlflow_http()
    return MlflowClient(tracking_uri=_driver_uri(uri))


def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite://`` URI (relative or absolute); None for an in-memory store."""
    rest = uri.split("?", 1)[0][len("sqlite://"):]
    if rest in ("", "/:memory:"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest)


def check_tracking(uri: str, timeout_s: float | None = None, create: bool = True) -> None:
    """Fail fast, before any compute, when the store cannot be written.

    http(s): ``GET /health`` then one experiments search (catches auth errors); sqlite: the directory exists
    or can be made (``create=False``, a dry run: is not made) and is writable; postgresql/mysql/mssql: a
    connection with ``select 1``. A server gets ``timeout_s`` (default ``REACH_TIMEOUT_S``) in all. Raises
    ``TrackingError`` with the URI masked, the timeout and a hint how to fix it.
    """
    timeout_s = REACH_TIMEOUT_S if timeout_s is None else timeout_s
    scheme = uri.split(":", 1)[0].lower()
    where = mask_uri(uri)
    try:
        if scheme == "sqlite":
            _check_sqlite(uri, create)
        else:
            within(timeout_s, _reach, uri, scheme, timeout_s)
    except TrackingError:
        raise
    except Exception as e:  # any failure means "not usable"; `from None` keeps secrets out of tracebacks
        if scheme in ("http", "https"):
            port = re.search(r":(\d+)(?:/|$)", uri.split("@")[-1])
            hint = ("start it with `mlflow server --backend-store-uri sqlite:///results/mlflow.db --host 127.0.0.1 "
                    f"--port {port.group(1) if port else 5000}`, or unset MLFLOW_TRACKING_URI to use the local "
                    "sqlite store")
        elif scheme == "sqlite":
            hint = "choose a writable --results folder, or set MLFLOW_TRACKING_URI to a tracking server"
        elif scheme.split("+")[0] in DATABASES:
            hint = "start the database and check host, port and credentials, or unset MLFLOW_TRACKING_URI"
        else:
            hint = "check the URI (use sqlite:///<path> or http://host:port), or unset MLFLOW_TRACKING_URI"
        within_s = "" if scheme == "sqlite" else f" within {timeout_s:g} s"
        raise TrackingError(f"MLflow tracking server at {where} is not reachable{within_s}: {_why(e)}; {hint}") \
            from None


def check_storage(url: str, timeout_s: float | None = None) -> None:
    """Fail fast, before any compute, when an Optuna storage cannot be used (the sweep records its grid there at the
    end, so a bad one used to fail only after every trial had trained): an SQLAlchemy database URL; sqlite: its
    folder is writable (checked, not made); another database answers ``select 1`` within ``timeout_s`` (default
    ``REACH_TIMEOUT_S``)."""
    from sqlalchemy.engine import make_url  # an mlflow dependency

    timeout_s = REACH_TIMEOUT_S if timeout_s is None else timeout_s
    where = mask_uri(url)
    try:
        make_url(url)
        if url.split(":", 1)[0].lower() == "sqlite":
            _check_sqlite(url, create=False)
        else:
            within(timeout_s, _check_db, url, timeout_s)
    except Exception as e:  # noqa: BLE001 - any failure means "not usable"; the user needs the storage's name
        raise TrackingError(f"Optuna storage {where} is not usable (checked within {timeout_s:g} s): {_why(e)}; use "
                            "sqlite:///<path> or a reachable database URL (postgresql://user@host/db), or leave "
                            "--optuna-storage and TINYLM_OPTUNA_STORAGE unset (sqlite under --results)") from None


def within(timeout_s: float, fn: Callable, *args):
    """``fn(*args)``, or ``TimeoutError`` once ``timeout_s`` has passed: a DNS lookup, a server that accepts TCP but
    never answers or a driver without a connect timeout cannot hold a check longer (the call is left to end in a
    daemon thread)."""
    out: dict = {}

    def call() -> None:
        try:
            out["value"] = fn(*args)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out["error"] = e

    thread = threading.Thread(target=call, daemon=True, name="tinylm-reach-check")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise TimeoutError(f"no answer within {timeout_s:g} s")
    if "error" in out:
        raise out["error"]
    return out.get("value")


def _why(e: BaseException) -> str:
    """``Type: first line of the message`` with secrets masked (drivers append multi-line background)."""
    text = mask_uri(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:400] if text else ''}"


def _reach(uri: str, scheme: str, timeout_s: float) -> None:
    if scheme in ("http", "https"):
        _check_http(uri, timeout_s)
    elif scheme.split("+")[0] in DATABASES:
        _check_db(uri, timeout_s)
    else:
        connect(uri).search_experiments(max_results=1)


def _check_http(uri: str, timeout_s: float) -> None:
    import requests  # an mlflow dependency

    deadline = time.monotonic() + timeout_s
    auth, headers = None, {}
    if os.environ.get("MLFLOW_TRACKING_USERNAME"):
        auth = (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ.get("MLFLOW_TRACKING_PASSWORD", ""))
    if os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    base = uri.rstrip("/")
    r = requests.get(f"{base}/health", timeout=max(0.5, deadline - time.monotonic()), auth=auth, headers=headers)
    r.raise_for_status()
    r = requests.post(f"{base}/api/2.0/mlflow/experiments/search", json={"max_results": 1}, auth=auth,
                      headers=headers, timeout=max(0.5, deadline - time.monotonic()))
    if r.status_code in (401, 403):
        raise TrackingError(f"MLflow tracking server at {mask_uri(uri)} refused the credentials (HTTP "
                            f"{r.status_code}); set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or "
                            "MLFLOW_TRACKING_TOKEN")
    r.raise_for_status()


def refuse_percent(uri: str, path: Path) -> None:
    """SQLAlchemy decodes a sqlite URL's path (``r%20x`` is ``r x``): a '%' there opens another file, and MLflow
    retried that for minutes before a long traceback."""
    if "%" in str(path):
        raise TrackingError(f"{mask_uri(uri)}: the path holds '%', which SQLAlchemy reads as a URL escape (%20 is a "
                            "space), so another file would be opened; use a path without '%'")


def _check_sqlite(uri: str, create: bool = True) -> None:
    path = sqlite_path(uri)
    if path is None:
        return
    refuse_percent(uri, path)
    if not create:
        blocked = unwritable_parent(str(path.parent))
        if blocked:
            raise PermissionError(f"{blocked} is not a writable folder")
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tinylm-write-check-"):
            pass
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is read-only")


def _check_db(uri: str, timeout_s: float) -> None:
    import sqlalchemy  # an mlflow dependency

    timeout = {"connect_timeout": max(1, int(timeout_s))}
    args = timeout if uri.startswith(("postgres", "mysql")) else {}
    engine = sqlalchemy.create_engine(_driver_uri(uri), connect_args=args)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("select 1"))
    finally:
        engine.dispose()


def search_experiments(client: MlflowClient) -> dict[str, str]:
    """Every active experiment, id -> name, across all result pages."""
    exps, token = {}, None
    while True:
        page = client.search_experiments(ViewType.ACTIVE_ONLY, 1000, page_token=token)
        exps.update({e.experiment_id: e.name for e in page})
        if not (token := page.token):
            return exps


def require_store(uri: str) -> None:
    """For commands that only read (log, analysis): a sqlite store must already exist and be a database. Opening
    a missing one would create an empty ``mlflow.db`` in a mistyped folder and report "no sweeps". A server gets
    ``check_tracking`` (answers within ``REACH_TIMEOUT_S``), as the sweeps and ``--track`` do."""
    if not uri.startswith("sqlite:"):  # a server: the same bounded check as every other entry point
        check_tracking(uri)
        return
    path = sqlite_path(uri)
    if path is None:
        return
    refuse_percent(uri, path)
    if not path.is_file():
        raise TrackingError(f"no tracking store at {mask_uri(uri)} ({path} does not exist); point --results at the "
                            "folder a sweep wrote (it holds mlflow.db) or pass --uri")
    with open(path, "rb") as f:
        head = f.read(16)
    if head and head != b"SQLite format 3\0":
        raise TrackingError(f"{path} is not an SQLite database (corrupt or another file); point --uri at the "
                            "sweep's mlflow.db")


def read_store(uri: str, what, *args):
    """``what(uri, *args)`` with any store failure (a corrupt database, a server error) as one TrackingError."""
    try:
        return what(uri, *args)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - sqlalchemy / mlflow raise many types; the user needs the store's name
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        raise TrackingError(f"cannot read the tracking store {mask_uri(uri)}: {type(e).__name__}: {first}") from None


def search_runs(client: MlflowClient, experiment_ids: list[str], filter_string: str = "") -> list[Run]:
    """Every active run of the experiments that matches ``filter_string``, across all result pages."""
    runs, token = [], None
    while experiment_ids:
        page = client.search_runs(experiment_ids, filter_string, ViewType.ACTIVE_ONLY, 1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    return runs


def quoted(value: str, what: str) -> str:
    """``value`` as it may stand inside a quoted search filter; ``what`` names it in the error."""
    if "'" in value or "\\" in value:
        raise ValueError(f"{what}={value!r} may not contain quotes or backslashes")
    return value


def ui_url(uri: str, experiment_id: str | None = None) -> str:
    """The MLflow UI page of an experiment in the model training view (runs, metrics, charts).

    MLflow 3.17's UI picks its view from the sidebar's GenAI / Model training switch (remembered per browser,
    default GenAI), not from the experiment's ``mlflow.experimentKind`` tag (read only by earlier 3.x UIs); the
    ``workflowType=machine_learning`` query sets that switch. ``uri``: an ``http(s)://`` tracking server serves
    the UI itself; for a database store, ``mlflow ui``'s default address is meant.
    """
    base = mask_uri(uri).rstrip("/") if uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    page = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"{base}/#/{page}?workflowType=machine_learning"
