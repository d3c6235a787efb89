# syntax=docker/dockerfile:1
#
# tinylm node image: Ray 2.60.0 + torch 2.13.0 + DeepSpeed 0.19.8 (ops prebuilt) + MLflow + Optuna + tinylm.
# The same image runs the Ray head and the GPU workers of cluster/aws.yaml.
#
#   GPU (default):  docker build -t tinylm:0.1.0-cu130 .
#   CPU (laptops):  docker build -t tinylm:0.1.0-cpu \
#                     --build-arg BASE=rayproject/ray:2.60.0-py311-cpu \
#                     --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu \
#                     --build-arg DS_ACCELERATOR=cpu .
#   CPU, no registry:  scripts/cluster-image.sh (a debootstrapped stand-in base, torch from a local wheel folder).
#
# Why CUDA 13.0: torch 2.12+ publishes CUDA 12.6 / 13.0 / 13.2 wheels (12.8 and 12.9 were dropped), and Ray
# publishes rayproject/ray:<ver>-py3xx-cu130 (CUDA 13.0.0 devel, so nvcc is there for DeepSpeed's ops).
# cu130 is the one CUDA line both have; it needs an NVIDIA driver >= 580 on the host (the AWS "Deep Learning Base
# OSS Nvidia Driver" AMIs used in cluster/aws.yaml ship 580+) and a Turing-or-newer GPU (sm_75+).
# The old rayproject/ray-ml images are no longer published, so torch and DeepSpeed are installed here.
#
# One lock for every install: requirements.lock (scripts/lock.sh) pins the whole environment, and every pip install
# below runs under it (-c/-r requirements.lock). The ARG pins name the packages installed before the project and
# must equal the lock; tests/test_deploy.py checks that, and scripts/lock.sh rewrites them with the lock.
ARG BASE=rayproject/ray:2.60.0-py311-cu130
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
# Optional extra wheel folder for every pip install below (pip reads PIP_FIND_LINKS from the environment), for
# hosts that cannot reach TORCH_INDEX but hold the torch wheel locally: scripts/cluster-image.sh bind-mounts one
# into the build. No default: unset, pip's find-links stay empty and the default builds are unchanged.
ARG PIP_FIND_LINKS
ARG RAY_VERSION=2.60.0

ARG TORCH_VERSION=2.13.0

ARG DEEPSPEED_VERSION=0.19.8

ARG MLFLOW_VERSION=3.17.2

ARG OPTUNA_VERSION=5.0.0

ARG OPTUNA_DASHBOARD_VERSION=0.21.0

ARG NINJA_VERSION=1.13.2

# cuda: prebuild the GPU ops below; cpu: prebuild the CPU ops (the laptop variant).
ARG DS_ACCELERATOR=cuda
# Nothing is visible to nvcc at build time, so name the GPUs of cluster/aws.yaml explicitly:
# A100 (p4d) 8.0, A10G (g5) 8.6, L4 (g6) 8.9, H100 (p5) 9.0.
ARG TORCH_CUDA_ARCH_LIST="8.0;8.6;8.9;9.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# g++ is already in the CUDA (devel) images; the cpu image drops it, and DeepSpeed needs it both to prebuild the
# CPU ops below and to JIT-compile any op that is not prebuilt. Ubuntu package revisions follow the base image's
# release, so pinning them would break the build on every security update.
USER 0
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
# 1000:100 is the image's `ray` user and `users` group; numeric so runtimes can verify it is not root.
USER 1000:100

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

COPY --chown=1000:100 requirements.lock /home/ray/requirements.lock

# torch first, from the index that matches the base image's CUDA (plain PyPI torch would be whatever CUDA line
# PyPI carries for that release).
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}" \
    && python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"

# DeepSpeed with its ops compiled now instead of at first use on every fresh node (~100 s each, and a node
# without a compiler cannot do it at all). Prebuilt:
#   cuda: FUSED_ADAM, FUSED_LAMB, FUSED_LION (GPU optimizers), CPU_ADAM, CPU_LION (ZeRO-Offload), UTILS
#         (flatten/unflatten used by ZeRO); everything else (transformer kernels, AIO, inference, ...) stays JIT.
#   cpu:  CPU_ADAM, CPU_LION, SHM_COMM (the gloo shared-memory collectives that init_distributed loads on CPU).
# --no-build-isolation: setup.py must see the torch installed above to compile against it.
RUN pip install --no-cache-dir -c /home/ray/requirements.lock "ninja==${NINJA_VERSION}" \
    && if [ "${DS_ACCELERATOR}" = "cuda" ]; then \
         export DS_BUILD_FUSED_ADAM=1 DS_BUILD_FUSED_LAMB=1 DS_BUILD_FUSED_LION=1 \
                DS_BUILD_CPU_ADAM=1 DS_BUILD_CPU_LION=1 DS_BUILD_UTILS=1; \
       else \
         export DS_BUILD_CPU_ADAM=1 DS_BUILD_CPU_LION=1 DS_BUILD_SHM_COMM=1; \
       fi \
    && DS_ACCELERATOR="${DS_ACCELERATOR}" MAX_JOBS=4 \
       pip install --no-cache-dir --no-build-isolation -c /home/ray/requirements.lock "deepspeed==${DEEPSPEED_VERSION}" \
    && DS_ACCELERATOR="${DS_ACCELERATOR}" ds_report

# The project.
WORKDIR /home/ray/tinylm
COPY --chown=1000:100 pyproject.toml README* ./
COPY --chown=1000:100 tinylm/ tinylm/
# The whole lock (a no-op for what is already at its pin), then the project without resolving anything again.
# The check compares every installed distribution to its pin (torch's local label, +cu130, aside).
RUN pip install --no-cache-dir -r /home/ray/requirements.lock \
    && pip install --no-cache-dir --no-deps . \
    && python -c "import importlib.metadata as m, re; \
pins = dict(re.findall(r'(?m)^([A-Za-z0-9_.-]+)==([^\s;]+)', open('/home/ray/requirements.lock').read())); \
bad = {k: (v, m.version(k)) for k, v in pins.items() if m.version(k).split('+')[0] != v}; \
assert not bad, f'installed != requirements.lock: {bad}'; import tinylm; print('tinylm ok', len(pins), 'pins')"
COPY --chown=1000:100 sweeps/ sweeps/

# Healthy = the Ray node in this container answers (head or worker started by `ray up`, or the local cluster a
# sweep started with ray.init()). A container that only runs a one-off command reports unhealthy after the
# start period, which is informational: nothing restarts on it.
# `ray health-check` exits 0 when healthy and 1 otherwise, which is what HEALTHCHECK expects.
HEALTHCHECK --interval=60s --timeout=30s --start-period=180s --retries=3 \
    CMD ["ray", "health-check", "--skip-version-check"]

USER 1000:100
