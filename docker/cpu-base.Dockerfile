# Local stand-in for rayproject/ray:2.60.0-py311-cpu, as far as the root Dockerfile needs it, for hosts that reach
# no container registry: built by scripts/cluster-image.sh on top of a debootstrapped Debian bookworm
# (localhost/debian:bookworm), then used as `--build-arg BASE=localhost/tinylm-cpu-base`.
# What the root Dockerfile relies on: apt as root (it adds g++), a Python 3.11 whose pip is on PATH and writable by
# 1000:100 (all its installs run as that user), HOME /home/ray, and USER 1000:100 when it starts.
# Build context: the repository root (for requirements.lock).
FROM localhost/debian:bookworm

# python3 is 3.11 on bookworm, the Python of the lock and of the local torch wheel (cp311).
# python3-venv: Debian's python3 refuses pip installs into the system (PEP 668), so Python lives in a venv.
# python3-dev: Python.h, which DeepSpeed's CPU ops are compiled against.
# ca-certificates: TLS roots for pip and for the corpus downloads at run time (scripts/cluster-image.sh puts it in the
# debootstrapped tree already, so here it is a no-op there).
# Package revisions follow the bookworm security updates, so they are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv python3-dev ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# rayproject/ray's user: `ray`, uid 1000, in group `users` (gid 100), home /home/ray.
RUN useradd --create-home --home-dir /home/ray --uid 1000 --gid 100 --shell /bin/bash ray

USER 1000:100
WORKDIR /home/ray
# The venv first on PATH plays the part of the Ray image's conda Python: `python` and `pip` are the venv's.
# PIP_CERT: the OS bundle instead of pip's own CA list, so that a bundle with site CAs (scripts/cluster-image.sh
# bind-mounts the host's over it) is honoured by every pip, bookworm's bundled one included.
ENV VIRTUAL_ENV=/home/ray/venv \
    PATH=/home/ray/venv/bin:${PATH} \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt

# bookworm's bundled pip (23.0) and setuptools (66) cannot build DeepSpeed's sdist with --no-build-isolation (no
# `wheel` package, so no bdist_wheel): a current pip, and setuptools at the lock's pin like every other install.
ARG PIP_VERSION=26.3
COPY --chown=1000:100 requirements.lock /tmp/requirements.lock
RUN python3 -m venv "${VIRTUAL_ENV}" \
    && pip install --no-cache-dir "pip==${PIP_VERSION}" \
    && pip install --no-cache-dir -c /tmp/requirements.lock setuptools \
    && rm /tmp/requirements.lock
