"""Hardware numbers: peak FLOP/s for MFU, peak memory, and run provenance (git, host, device)."""

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


@functools.lru_cache(maxsize=4)
def measured_matmul_peak(dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 8) -> float:
    """Measured matmul FLOP/s on this CPU (STACK.md: ~264 GFLOP/s fp32 with 2 threads at 2048^2)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t)


def peak_flops(device: torch.device, precision: str = "fp32") -> float:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, val in GPU_PEAK.items():
            if key in name:
                return val if precision != "fp32" else val / 2  # TF32 is half the bf16 rate on these parts
        return 100e12
    return measured_matmul_peak(torch.bfloat16 if precision == "bf16" else torch.float32)


def peak_memory_mb(device: torch.device) -> float:
    """Peak accelerator memory allocated, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
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
