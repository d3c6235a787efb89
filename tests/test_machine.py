"""Machine facts the sweeps rely on: a cached MFU peak, a per-run peak-memory window, and DeepSpeed's op build
(one ninja whatever PATH says, no hang on a lock a killed build left behind)."""

import json
import os
import shutil
import subprocess
import sys
import time

import torch

from tinylm import machine

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cpu_peak_is_measured_once_and_cached_per_threads_and_dtype(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_PEAK_CACHE", str(tmp_path / "peak.json"))
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # a quiet machine
    calls = []

    def fake(value):
        return lambda: calls.append(value) or value

    first = machine.cpu_peak(torch.float32, measure=fake(100.0), reps=3)
    again = machine.cpu_peak(torch.float32, measure=fake(1.0), reps=3)  # e.g. a later trial under load
    assert first == again == 100.0 and calls == [100.0] * 3
    assert machine.cpu_peak(torch.bfloat16, measure=fake(7.0), reps=1) == 7.0  # its own key
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if n != 1 else 2)
        assert machine.cpu_peak(torch.float32, measure=fake(3.0), reps=1) == 3.0
    finally:
        torch.set_num_threads(n)
    cache = json.loads((tmp_path / "peak.json").read_text())
    assert len(cache) == 3 and all("measured_at" in v for v in cache.values())


def test_a_peak_measured_under_load_is_provisional(tmp_path, monkeypatch):
    monkeypatch.setenv("TINYLM_PEAK_CACHE", str(tmp_path / "peak.json"))
    busy = 4.0 * (os.cpu_count() or 1)
    monkeypatch.setattr(os, "getloadavg", lambda: (busy, busy, busy))
    assert machine.cpu_peak(torch.float32, measure=lambda: 50.0, reps=1) == 50.0
    assert machine.cpu_peak(torch.float32, measure=lambda: 90.0, reps=1) == 50.0  # still busy: keep the cached one
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert machine.cpu_peak(torch.float32, measure=lambda: 40.0, reps=1) == 50.0  # quiet but lower: keep the higher
    assert machine.cpu_peak(torch.float32, measure=lambda: 200.0, reps=1) == 200.0  # still provisional: re-measured
    assert machine.cpu_peak(torch.float32, measure=lambda: 999.0, reps=1) == 200.0  # measured quiet: final


def test_peak_memory_window_resets_between_runs():
    cpu = torch.device("cpu")
    machine.reset_peak_memory(cpu)
    before = machine.peak_memory_mb(cpu)
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    grown = machine.peak_memory_mb(cpu)
    del big
    machine.reset_peak_memory(cpu)
    after = machine.peak_memory_mb(cpu)
    assert grown > before + 40 and after < grown - 40


def _engine_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR",
                                                             "MASTER_PORT", "TORCH_EXTENSIONS_DIR")}
    return env | {"DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"} | extra


def test_op_build_uses_one_ninja_and_one_cache_whatever_the_path():
    code = ("import os, shutil, sys; import tinylm.engine; "
            "print(shutil.which('ninja')); print(os.environ['TORCH_EXTENSIONS_DIR'])")
    bindir = os.path.dirname(sys.executable)
    system_path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != bindir)
    outs = []
    for path in (system_path, bindir + os.pathsep + system_path):
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120,
                           env=_engine_env(PATH=path))
        assert p.returncode == 0, p.stderr[-2000:]
        outs.append(p.stdout.split())
    assert outs[0] == outs[1]
    if os.path.exists(os.path.join(bindir, "ninja")):
        assert outs[0][0] == os.path.join(bindir, "ninja")


def test_stale_build_lock_is_removed_and_a_live_one_kept(tmp_path):
    from tinylm.engine import clear_stale_build_locks

    stale, live = tmp_path / "deepspeed_shm_comm" / "lock", tmp_path / "cpu_adam" / "lock"
    for lock in (stale, live):
        lock.parent.mkdir()
        lock.touch()
    fd = os.open(live, os.O_RDONLY)  # what torch's FileBaton does while it builds
    try:
        assert clear_stale_build_locks(str(tmp_path), recheck_s=0.01) == [str(stale)]
    finally:
        os.close(fd)
    assert not stale.exists() and live.exists()
    assert clear_stale_build_locks(str(tmp_path / "missing")) == []


def test_a_killed_op_build_does_not_hang_later_runs(tmp_path):
    """issue 13.9: a run killed during the op build leaves ``lock``; the next run used to wait on it forever."""
    code = "import tinylm.engine as e; e.init_distributed(); import os; print(os.environ['TORCH_EXTENSIONS_DIR'])"
    # the machine's op (built once per install; what every DeepSpeed test uses anyway)
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600,
                           env=_engine_env())
    assert first.returncode == 0, first.stderr[-2000:]
    built = os.path.join(first.stdout.split()[-1], "deepspeed_shm_comm")
    ext = tmp_path / "ext"
    shutil.copytree(built, ext / "deepspeed_shm_comm", ignore=shutil.ignore_patterns("lock"))
    lock = ext / "deepspeed_shm_comm" / "lock"
    lock.touch()  # left by a build that was killed
    t0 = time.time()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env=_engine_env(TORCH_EXTENSIONS_DIR=str(ext)))
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"removed a stale DeepSpeed op build lock {lock}" in p.stderr and not lock.exists()
    print(f"started past a stale lock in {time.time() - t0:.1f} s")
