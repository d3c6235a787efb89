"""Shared test fixtures. Tests run with CWD = repo root on a shared 2-core CPU machine."""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# What engine.init_distributed sets (setdefault) in os.environ for its one-process group.
DIST_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def one_thread():
    """Tiny matmuls on a shared 2-core machine: one intra-op thread is faster and leaves the other core free."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def inprocess_dist():
    """For modules that call ``tinylm.train.train`` in the pytest process.

    The first call makes a one-process gloo group that later calls reuse (it cannot be destroyed and made
    again: DeepSpeed caches its groups). The RANK/WORLD_SIZE/MASTER_PORT variables it puts in os.environ are
    removed afterwards so that subprocesses started by later tests do not inherit a port this process holds.
    """
    before = {k: os.environ.get(k) for k in DIST_ENV}
    yield
    for k, v in before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def child_env() -> dict[str, str]:
    """Environment for a ``python -m tinylm...`` subprocess: no inherited process-group variables, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", PYTHONUNBUFFERED="1")
    return env


# --- moto: AWS APIs (EC2/IAM for `ray up`, S3 for cluster storage) on 127.0.0.1 ----------------------------------
def _moto_server_cmd() -> list[str] | None:
    if importlib.util.find_spec("moto") and importlib.util.find_spec("flask"):
        return [sys.executable, "-m", "moto.server"]
    exe = shutil.which("moto_server")
    return [exe] if exe else None


@pytest.fixture
def moto_endpoint(tmp_path):
    cmd = _moto_server_cmd()
    if cmd is None:
        pytest.skip("no moto server: pip install 'moto[server]' (in the dev extra)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = open(tmp_path / "moto.log", "wb")
    env = {**os.environ, "MOTO_IAM_LOAD_MANAGED_POLICIES": "true"}
    proc = subprocess.Popen(
        [*cmd, "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/moto-api/", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError((tmp_path / "moto.log").read_text()) from None
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
