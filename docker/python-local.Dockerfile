# Local stand-in for python:3.11-slim-bookworm, the base of docker/mlflow.Dockerfile and
# docker/optuna-dashboard.Dockerfile, for hosts that reach no container registry: built by scripts/cluster-image.sh
# on the debootstrapped localhost/debian:bookworm as localhost/tinylm-python:3.11, then used through
# docker/compose.local.yaml (build arg BASE).
# What those Dockerfiles rely on: root at the start, bash, useradd, and a Python 3.11 whose `python` and `pip` are on
# PATH and install where every user can import from.
FROM localhost/debian:bookworm

# python3 is 3.11 on bookworm. Package revisions follow the bookworm security updates, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*

# Debian's python3 refuses pip installs into the system (PEP 668, "externally-managed-environment"), so Python
# lives in a venv first on PATH: `python` and `pip` are the venv's, as they are python:3.11-slim's own. Owned by
# root and world-readable, like /usr/local there: the images install as root, then run as uid 1000.
# PIP_CERT: the OS bundle instead of pip's own CA list, so that a bundle with site CAs (scripts/cluster-image.sh
# bind-mounts the host's over it during builds) is honoured.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    LANG=C.UTF-8

# bookworm's bundled pip is 23.0; the same current pip as docker/cpu-base.Dockerfile.
ARG PIP_VERSION=26.3
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir "pip==${PIP_VERSION}"
