#!/usr/bin/env bash
# The cluster-in-a-box check (README "Run on a cluster"): the multi-node path and the image, on one machine, as root.
#   1. PostgreSQL on 127.0.0.1 (scripts/pg.sh), then scripts/cluster_box.py: moto's S3, an MLflow server
#      (PostgreSQL + S3 artifacts), Optuna on PostgreSQL, a Ray head + 2 worker nodes with private disks, the GLU
#      sweep across them with one worker killed mid-trial, every store checked on the head.
#   2. scripts/cluster-image.sh: the Dockerfile built with podman on a local Debian base, the sweep run inside it.
# Prints a JSON summary of each part; exits non-zero when a check fails. ~15-25 min on 2 cores (RESULTS.md).
#   bash scripts/cluster-test.sh            # both parts
#   bash scripts/cluster-test.sh --no-image # the cluster part only
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ "$(id -u)" = 0 ] || { echo "cluster-test: needs root (mount namespaces for the worker nodes, podman)"; exit 2; }
command -v unshare >/dev/null || apt-get install -y -qq util-linux >/dev/null

# shellcheck source=scripts/pg.sh
source scripts/pg.sh
start_postgres "$PY"
[ -n "${TINYLM_POSTGRES_URI:-}" ] || { echo "cluster-test: no PostgreSQL (set TINYLM_POSTGRES_URI)"; exit 2; }
export PATH="$PWD/.venv/bin:$PATH"
"$PY" scripts/cluster_box.py
if [ "${1:-}" != "--no-image" ]; then
  bash scripts/cluster-image.sh
fi
