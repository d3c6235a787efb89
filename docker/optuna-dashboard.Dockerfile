# syntax=docker/dockerfile:1
#
# optuna-dashboard for docker/compose.yaml, reading the `optuna` Postgres database the sweeps write to.
# Built from the repository root (compose.yaml: context ..) so it installs under requirements.lock, the one lock of
# every install: the ARG pins must equal the lock (tests/test_deploy.py; scripts/lock.sh rewrites them) and the
# lock constrains everything they pull in.
# BASE: scripts/cluster-image.sh builds on a local stand-in instead (docker/compose.local.yaml).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG OPTUNA_VERSION=5.0.0

ARG OPTUNA_DASHBOARD_VERSION=0.21.0

ARG PSYCOPG2_BINARY_VERSION=2.9.13

ARG GUNICORN_VERSION=26.2.0


SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY requirements.lock /tmp/requirements.lock

RUN pip install --no-cache-dir -c /tmp/requirements.lock \
        "optuna==${OPTUNA_VERSION}" \
        "optuna-dashboard==${OPTUNA_DASHBOARD_VERSION}" \
        "psycopg2-binary==${PSYCOPG2_BINARY_VERSION}" \
        "gunicorn==${GUNICORN_VERSION}" \
    && useradd --create-home --uid 1000 --user-group optuna

USER 1000:1000
WORKDIR /home/optuna
EXPOSE 8080

HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/api/studies', timeout=4)"]

# compose.yaml passes the storage URL as the first argument. optuna-dashboard opens it with skip_table_creation, so
# on a new stack, whose `optuna` database stays empty until the first sweep, it exits and restarts in a loop and
# never turns healthy: Optuna's own RDBStorage first creates the tables (or checks their schema version), as a
# sweep would.
ENTRYPOINT ["/bin/sh", "-c", "python -c 'import sys, optuna; optuna.storages.RDBStorage(sys.argv[1])' \"$1\" && exec optuna-dashboard --host 0.0.0.0 --port 8080 --server gunicorn \"$@\"", "optuna-dashboard"]
