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
#
# Why CUDA 13.0: torch 2.12+ publishes CUDA 12.6 / 13.0 / 13.2 wheels (12.8 and 12.9 were dropped), and Ray
# publishes rayproject/ray:<ver>-py3xx-cu130 (CUDA 13.0.0 devel, so nvcc is there for DeepSpeed's ops).
# cu130 is the one CUDA line both have; it needs an NVIDIA driver >= 580 on the host (the AWS "Deep Learning Base
# OSS Nvidia Driver" AMIs used in cluster/aws.yaml ship 580+) and a Turing-or-newer GPU (sm_75+).
# The old rayproject/ray-ml images are no longer published, so torch and DeepSpeed are installed here.
#
# Pins below must equal the versions in the project's dev venv; tests/test_deploy.py checks that.
ARG BASE=rayproject/ray:2.60.0-py311-cu130
FROM ${BASE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
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
RUN pip install --no-cache-dir "ninja==${NINJA_VERSION}" \
    && if [ "${DS_ACCELERATOR}" = "cuda" ]; then \
         export DS_BUILD_FUSED_ADAM=1 DS_BUILD_FUSED_LAMB=1 DS_BUILD_FUSED_LION=1 \
                DS_BUILD_CPU_ADAM=1 DS_BUILD_CPU_LION=1 DS_BUILD_UTILS=1; \
       else \
         export DS_BUILD_CPU_ADAM=1 DS_BUILD_CPU_LION=1 DS_BUILD_SHM_COMM=1; \
       fi \
    && DS_ACCELERATOR="${DS_ACCELERATOR}" MAX_JOBS=4 \
       pip install --no-cache-dir --no-build-isolation "deepspeed==${DEEPSPEED_VERSION}" \
    && DS_ACCELERATOR="${DS_ACCELERATOR}" ds_report

# The project. Pinning the stack again on the same command keeps pip from moving anything installed above.
WORKDIR /home/ray/tinylm
COPY --chown=1000:100 pyproject.toml README* ./
COPY --chown=1000:100 tinylm/ tinylm/
RUN pip install --no-cache-dir . \
        "ray[default,tune,train]==${RAY_VERSION}" \
        "torch==${TORCH_VERSION}" \
        "deepspeed==${DEEPSPEED_VERSION}" \
        "mlflow==${MLFLOW_VERSION}" \
        "optuna==${OPTUNA_VERSION}" \
        "optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}" \
    && python -c "import importlib.metadata as m; \
pins = {'ray': '${RAY_VERSION}', 'torch': '${TORCH_VERSION}', 'deepspeed': '${DEEPSPEED_VERSION}', \
'mlflow': '${MLFLOW_VERSION}', 'optuna': '${OPTUNA_VERSION}', 'optuna-dashboard': '${OPTUNA_DASHBOARD_VERSION}'}; \
bad = {k: m.version(k) for k, v in pins.items() if m.version(k).split('+')[0] != v}; \
assert not bad, f'pins moved: {bad}'; import tinylm; print('tinylm ok', pins)"
COPY --chown=1000:100 sweeps/ sweeps/

# Healthy = the Ray node in this container answers (head or worker started by `ray up`, or the local cluster a
# sweep started with ray.init()). A container that only runs a one-off command reports unhealthy after the
# start period, which is informational: nothing restarts on it.
# `ray health-check` exits 0 when healthy and 1 otherwise, which is what HEALTHCHECK expects.
HEALTHCHECK --interval=60s --timeout=30s --start-period=180s --retries=3 \
    CMD ["ray", "health-check", "--skip-version-check"]

USER 1000:100
