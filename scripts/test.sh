#!/usr/bin/env bash
# The test command (README, CI): start the services the tests need where this machine allows it, then pytest, then
# the numerics tests under the other CPU kernel families (scripts/kernel-families.sh).
#   - PostgreSQL on 127.0.0.1 (Debian's package, a throwaway cluster under /tmp) for the tracking/Optuna DB tests
# Everything else (moto for the `ray up` test, hadolint) comes from the project's dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

# shellcheck source=scripts/pg.sh
source scripts/pg.sh
start_postgres "$PY"

export PYTHONUNBUFFERED=1
export PATH="$PWD/.venv/bin:$PATH"  # CLIs the dev extra ships (hadolint, moto_server, mlflow) for subprocess tests
"$PY" -m pytest -q --durations=25 "$@"
# the numerically sensitive tests again under the CPU kernel families this machine can emulate (native ran above)
FAMILIES="ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=default" bash scripts/kernel-families.sh
