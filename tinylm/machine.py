"""What machine and code a run ran on: the hardware's peak FLOP/s (the MFU denominator) and peak memory, the
device's name, a run's provenance (git commit and diff, host, device, torch), a free local port (for a process
group or a local Ray), and the start-up phase marks bench/overhead.py reads."""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import resource
import socket
import subprocess
import time

import torch

# Dense peak FLOP/s per GPU from vendor datasheets (bf16 tensor cores, no sparsity; fp32 = TF32 where it applies).
GPU_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L40S": 362e12, "L4": 121e12,
            "A10": 125e12, "V100": 125e12, "T4": 65e12}


def measured_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 8) -> float:
    """Measured matmul FLOP/s on this CPU (measured here: ~264 GFLOP/s fp32 with 2 threads at 2048^2)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def peak_flops(device: torch.device, precision: str = "fp32") -> float:
    """The MFU denominator: the vendor figure on a GPU; on CPU the matmul peak measured once per machine (host,
    CPU model, threads, dtype) and cached, so every trial of a sweep divides by the same number (issue 12: a peak
    re-measured at each trial start under load swung MFU from 25 % to 65 % within one sweep)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK.items():
            if key in name:
                return val if precision != "fp32" else val / 2  # TF32 is half the bf16 rate on these parts
        return 100e12
    return cpu_peak(torch.bfloat16 if precision == "bf16" else torch.float32)


def peak_cache_path() -> str:
    return os.environ.get("TINYLM_PEAK_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "tinylm",
                                                                "peak.json")


def peak_key(dtype: torch.dtype) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{socket.gethostname()}|{cpu}|threads={torch.get_num_threads()}|{str(dtype).split('.')[-1]}"


def cpu_peak(dtype: torch.dtype = torch.float32, measure=None, reps: int = 5) -> float:
    """This machine's matmul peak for ``dtype`` at the current thread count, from the cache or measured now
    (best of ``reps``, the least disturbed by other load) and cached. A value measured while the machine was busy
    (1-min load average above half the cores) is provisional: a later process re-measures when the machine is
    quiet and keeps the higher value. Delete the cache file to re-measure."""
    import json

    path, key = peak_cache_path(), peak_key(dtype)
    try:
        with open(path) as f:
            cache = json.load(f)
    except (OSError, ValueError):
        cache = {}
    busy = 0.5 * (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    old = cache.get(key)
    if old is not None and ((old.get("load_avg_1m") or 0) <= busy or load > busy):
        return float(old["flops"])
    measure = measure or (lambda: measured_matmul_peak(dtype))
    value = max(measure() for _ in range(reps))
    if old is not None and float(old["flops"]) >= value:
        return float(old["flops"])
    cache[key] = {"flops": value, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "load_avg_1m": load}
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(cache, f, indent=1)
        os.replace(tmp, path)  # atomic: concurrent trials never read half a file
    except OSError:
        pass  # a read-only home: measured per process, as before
    return value


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (a reused process, e.g. a Tune actor running its next trial)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # Linux: reset VmHWM (the peak RSS) to the current RSS
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated, or the process's peak RSS on CPU (since reset_peak_memory)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}x{torch.get_num_threads()}"


@functools.lru_cache(maxsize=1)
def git_info() -> dict[str, str]:
    """git SHA, dirty flag and a hash of the dirty diff of the tinylm checkout (empty when not a checkout)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10).stdout

    try:
        sha = git("rev-parse", "HEAD").strip()
        diff = git("diff", "HEAD")
    except (OSError, subprocess.SubprocessError):
        return {"git_sha": "", "git_dirty": "unknown", "git_diff_sha": ""}
    return {"git_sha": sha, "git_dirty": str(bool(diff)).lower(),
            "git_diff_sha": hashlib.sha256(diff.encode()).hexdigest()[:16] if diff else ""}


def provenance(device: torch.device) -> dict[str, str]:
    return {**git_info(), "hostname": socket.gethostname(), "device": device_name(device),
            "torch": torch.__version__}


def cxx_compiler() -> str | None:
    """The C++ compiler torch.compile's inductor backend builds CPU kernels with (``$CXX``, else g++, c++ or
    clang++ on PATH), or None when there is none here."""
    import shutil

    names = ([os.environ["CXX"]] if os.environ.get("CXX") else []) + ["g++", "c++", "clang++"]
    return next((path for path in map(shutil.which, names) if path), None)


def check_compile(on_gpu: bool) -> None:
    """ConfigError in one line when ``compile=True`` cannot work here: on CPU, inductor needs a C++ compiler."""
    from tinylm.errors import ConfigError

    if not on_gpu and cxx_compiler() is None:
        raise ConfigError("compile=True on CPU needs a C++ compiler for torch.compile's inductor backend (g++, c++ or "
                          "clang++ on PATH, or $CXX) and there is none here: install one (apt install g++) or set "
                          "compile=false")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- start-up phases (bench/overhead.py): wall-clock marks from trial start to the first optimizer step --------
_MARKS: dict[str, float] = {}


def reset_marks(**given: float) -> None:
    """Start a new trial's marks (a reused process keeps none of the previous trial's)."""
    _MARKS.clear()
    _MARKS.update(given)


def mark(phase: str) -> None:
    """Record when ``phase`` ended (first time only, per trial)."""
    _MARKS.setdefault(phase, time.time())


def write_marks(out_dir: str) -> None:
    """Save the marks (plus this process's start time) as ``out_dir/startup.json``."""
    import json

    import psutil

    with open(os.path.join(out_dir, "startup.json"), "w") as f:
        json.dump({"process_start": psutil.Process().create_time(), "pid": os.getpid(), **_MARKS}, f)
