"""Shared test fixtures. Tests run with CWD = repo root on a shared 2-core CPU machine."""

from __future__ import annotations

import os
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
