"""Ray and the machine: start or attach to Ray, and how a sweep's trials split the cluster (``plan_resources``,
pure arithmetic)."""

from __future__ import annotations

import logging
import os
import socket
from typing import TYPE_CHECKING

import ray

from tinylm.config import ConfigError
from tinylm.machine import free_port

if TYPE_CHECKING:  # a sweep's settings and grid, handed in by tinylm.sweep (which calls this package)
    from tinylm.sweep.settings import Sweep


def connect(sweep: Sweep) -> dict:
    """Start or attach to Ray and size trials from its resources. Returns the per-trial settings."""
    address = sweep.address or os.environ.get("RAY_ADDRESS")
    if address and not ray.is_initialized():
        check_address(sweep.address)
    env = {"env_vars": {k: v for k, v in os.environ.items() if k.startswith(("TINYLM_", "HF_", "DS_"))}
           | {"RAY_TRAIN_V2_ENABLED": "1",
              # trial processes write unbuffered, so Ray forwards their lines while the sweep's Console still sends
              # them to the log file (buffered, they surfaced on the terminal when the reused actors exited)
              "PYTHONUNBUFFERED": "1"}}
    if not ray.is_initialized():
        if address:
            ray.init(address=address, runtime_env=env, log_to_driver=True)
        else:
            # A fixed GCS port, announced to every worker as RAY_ADDRESS: Train V2's placement-group cleaner
            # looks the cluster up through the State API, and with two Ray instances on one machine (two sweeps)
            # an unaddressed lookup fails, so a stopped trial's placement group would never be released.
            port = free_port()
            env["env_vars"]["RAY_ADDRESS"] = f"127.0.0.1:{port}"
            cpus = os.cpu_count() or 1
            os.environ["RAY_GCS_SERVER_PORT"] = str(port)
            try:
                # the dashboard serves that State API (without it ASHA-stopped trials leak their
                # placement groups); it binds 127.0.0.1
                ray.init(address="local", num_cpus=cpus, resources={"tune_driver": cpus * 2}, runtime_env=env,
                         dashboard_host="127.0.0.1", logging_level=logging.WARNING)
            finally:
                os.environ.pop("RAY_GCS_SERVER_PORT", None)
    res = ray.cluster_resources()
    local_mode = sweep.local_mode
    if local_mode is None and os.environ.get("TINYLM_LOCAL_MODE") in ("0", "1"):
        local_mode = os.environ["TINYLM_LOCAL_MODE"] == "1"
    plan = plan_resources(cpus=int(res.get("CPU", 1)), gpus=int(res.get("GPU", 0)), workers=sweep.workers,
                          gpus_per_trial=sweep.gpus_per_trial, trials_per_gpu=sweep.trials_per_gpu,
                          max_concurrent=sweep.max_concurrent, local_mode=local_mode,
                          driver_slots=int(res.get("tune_driver", 0)))
    if not plan["local"] and "tune_driver" not in res:
        raise ConfigError("the Ray cluster has no 'tune_driver' resource for trial drivers; start the head with "
                          "ray start --head --resources='{\"tune_driver\": 8}' (cluster/aws.yaml does)")
    return plan


def check_address(address: str | None) -> None:
    """Fail fast, before any compute, when ``address`` (or ``$RAY_ADDRESS``) names no reachable Ray head:
    ``ray.init`` retried a wrong one for minutes. ``host:port`` (the head's GCS) and ``ray://host:port`` (Ray
    Client) must accept a TCP connection within ``REACH_TIMEOUT_S`` (the one timeout of every up-front check);
    ``auto`` and ``local`` are Ray's own. Raises ConfigError in one line."""
    from tinylm.tracking import REACH_TIMEOUT_S as timeout_s
    from tinylm.tracking import within

    name = "--address" if address else "RAY_ADDRESS"
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    if not address or address in ("auto", "local"):
        return
    host_port = address.removeprefix("ray://")
    host, sep, port = host_port.rpartition(":")
    host = host.strip("[]")  # [::1]:6379
    if "://" in host_port or not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise ConfigError(f"{name}={address!r} is not a Ray address; use host:port (the head's GCS, e.g. "
                          "10.0.0.5:6379), ray://host:10001 (Ray Client), auto, or leave it unset for a local Ray")
    try:
        within(timeout_s, lambda: socket.create_connection((host, int(port)), timeout=timeout_s).close())
    except Exception as e:  # noqa: BLE001 - refused, unknown host, timeout: all mean "no cluster there"
        raise ConfigError(f"{name}={address!r}: no Ray cluster answers at {host}:{port} within {timeout_s:g} s "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); start its head with "
                          f"`ray start --head --port {port}`, or leave --address and RAY_ADDRESS unset for a local "
                          "Ray") from None


def plan_resources(cpus: int, gpus: int, workers: int = 0, gpus_per_trial: int = 1, trials_per_gpu: int = 0,
                   max_concurrent: int = 0, local_mode: bool | None = None, driver_slots: int = 0) -> dict:
    """How a sweep's trials split the cluster (a pure function: no Ray).

    GPUs: each Train worker gets 1/K of a GPU (K = ``trials_per_gpu``, default 1), so K trials share one GPU;
    ``concurrent`` = whole GPUs x K / workers per trial; CPUs are split evenly among the workers that run at
    once (at most 8 threads each). Each trial also caps its CUDA memory at 1/K of the GPU.
    CPU only: K trials at once per machine (default: one per core), the cores split evenly as threads.
    1-worker trials run in Train's local mode (in the Tune trial's process, reused) unless ``local_mode`` is
    False; multi-worker trials run a TorchTrainer from a driver that holds one ``tune_driver`` slot (the
    cluster head's custom resource), so their concurrency is also capped by ``driver_slots``.
    """
    if trials_per_gpu < 0 or max_concurrent < 0 or workers < 0:
        raise ConfigError(f"trials_per_gpu={trials_per_gpu}, max_concurrent={max_concurrent}, workers={workers}: "
                          "each must be >= 0 (0 = auto)")
    k = trials_per_gpu or 1
    if gpus:
        workers = workers or gpus_per_trial
        gpu_per_worker = 1.0 / k
        concurrent = max_concurrent or max(1, (gpus * k) // workers)
        cpus_per_worker = max(1, min(8, cpus // max(1, concurrent * workers)))
    else:
        workers = workers or 1
        gpu_per_worker = 0.0
        concurrent = max_concurrent or max(1, (trials_per_gpu or cpus // workers))
        cpus_per_worker = max(1, cpus // (concurrent * workers))
    local = workers == 1 if local_mode is None else bool(local_mode)
    if local and workers != 1:
        raise ConfigError(f"local_mode needs 1 worker per trial, got workers={workers}")
    if not local:
        concurrent = min(concurrent, driver_slots) if driver_slots else concurrent
    return {"use_gpu": bool(gpus), "workers": workers, "cpus_per_worker": cpus_per_worker, "concurrent": concurrent,
            "gpu_per_worker": gpu_per_worker, "local": local,
            # what one trial asks Tune for: local mode trains in the trial itself; a TorchTrainer driver needs none
            "trial_resources": ({"cpu": cpus_per_worker} | ({"gpu": gpu_per_worker} if gpus else {})) if local
            else {"cpu": 0, "tune_driver": 1}}


__all__ = ["check_address", "connect", "plan_resources"]
