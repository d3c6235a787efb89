# syntax=docker/dockerfile:1
#
# MLflow tracking server for docker/compose.yaml: runs/metrics in Postgres (psycopg2), artifacts proxied by the
# server (--artifacts-destination) to a volume or to S3 (boto3), so clients need neither DB nor bucket access.
# Built from the repository root (compose.yaml: context ..) so it installs under requirements.lock, the one lock of
# every install: the ARG pins must equal the lock (tests/test_deploy.py; scripts/lock.sh rewrites them) and the
# lock constrains everything they pull in.
# BASE: scripts/cluster-image.sh builds on a local stand-in instead (docker/compose.local.yaml).
ARG BASE=python:3.11-slim-bookworm
FROM ${BASE}

ARG MLFLOW_VERSION=3.17.2

ARG PSYCOPG2_BINARY_VERSION=2.9.13

ARG BOTO3_VERSION=1.44.8


SHELL ["/bin/bash", "-o", "pipefail", "-c"]

COPY requirements.lock /tmp/requirements.lock

# A named volume mounted on /mlartifacts starts with that directory's owner, so the server can write artifacts.
RUN pip install --no-cache-dir -c /tmp/requirements.lock \
        "mlflow==${MLFLOW_VERSION}" \
        "psycopg2-binary==${PSYCOPG2_BINARY_VERSION}" \
        "boto3==${BOTO3_VERSION}" \
    && useradd --create-home --uid 1000 --user-group mlflow \
    && mkdir -p /mlartifacts \
    && chown 1000:1000 /mlartifacts

USER 1000:1000
WORKDIR /home/mlflow
EXPOSE 5000

HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=5 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]

# compose.yaml passes the store URIs; 0.0.0.0 is inside the container only, the host publishes on 127.0.0.1.
CMD ["mlflow", "server", "--host", "0.0.0.0", "--port", "5000"]
