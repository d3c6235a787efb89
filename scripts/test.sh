#!/usr/bin/env bash
# The test command (README, CI): start the services the tests need where this machine allows it, then pytest, then
# the numerics tests under the other CPU kernel families (scripts/kernel-families.sh).
#   - PostgreSQL on 127.0.0.1 (Debian's package, a throwaway cluster under /tmp) for the tracking/Optuna DB tests
# Everything else (moto for the `ray up` test, hadolint) comes from the project's dev extra.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
PGBIN=$(pg_bin)
if [ -z "$PGBIN" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "installing PostgreSQL (Debian package) for the database tests..."
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || true
  PGBIN=$(pg_bin)
fi
if [ -n "$PGBIN" ] && [ -z "${TINYLM_POSTGRES_URI:-}" ] && id postgres >/dev/null 2>&1; then
  PGDATA=$(mktemp -d /tmp/tinylm-pg.XXXXXX)
  chown postgres "$PGDATA"
  PGPORT=$($PY -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  PGPASS="tinylm-$RANDOM$RANDOM"  # real password auth, so the tests also check credentials never leak
  echo "$PGPASS" > "$PGDATA.pw" && chown postgres "$PGDATA.pw"
  su postgres -c "$PGBIN/initdb -D $PGDATA -A scram-sha-256 --pwfile=$PGDATA.pw -U postgres" >/dev/null
  rm -f "$PGDATA.pw"
  su postgres -c "$PGBIN/pg_ctl -D $PGDATA -o '-h 127.0.0.1 -p $PGPORT -k $PGDATA' -l $PGDATA/log -w start" >/dev/null
  trap 'su postgres -c "$PGBIN/pg_ctl -D $PGDATA -m fast stop" >/dev/null 2>&1; rm -rf "$PGDATA"' EXIT
  export TINYLM_POSTGRES_URI="postgresql://postgres:$PGPASS@127.0.0.1:$PGPORT/postgres"
  echo "PostgreSQL on 127.0.0.1:$PGPORT"
fi

export PYTHONUNBUFFERED=1
export PATH="$PWD/.venv/bin:$PATH"  # CLIs the dev extra ships (hadolint, moto_server, mlflow) for subprocess tests
"$PY" -m pytest -q --durations=25 "$@"
# the numerically sensitive tests again under the CPU kernel families this machine can emulate (native ran above)
FAMILIES="ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 ATEN_CPU_CAPABILITY=default" bash scripts/kernel-families.sh
