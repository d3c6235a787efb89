# Sourced by scripts/test.sh and scripts/cluster-test.sh: a throwaway PostgreSQL on 127.0.0.1 (Debian's package,
# installed when missing and this is root with apt), with real password auth; exports TINYLM_POSTGRES_URI (a
# superuser URI) and stops the server and removes its folder on exit. Does nothing where it cannot (not root, no
# package) or when TINYLM_POSTGRES_URI is already set.
pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }

start_postgres() {
  local py=$1 pgbin pgdata pgport pgpass
  pgbin=$(pg_bin)
  if [ -z "$pgbin" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing PostgreSQL (Debian package)..."
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null) || true
    pgbin=$(pg_bin)
  fi
  if [ -z "$pgbin" ] || [ -n "${TINYLM_POSTGRES_URI:-}" ] || ! id postgres >/dev/null 2>&1; then
    return 0
  fi
  pgdata=$(mktemp -d /tmp/tinylm-pg.XXXXXX)
  chown postgres "$pgdata"
  pgport=$("$py" -c "import socket; s=socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
  pgpass="tinylm-$RANDOM$RANDOM"  # real password auth, so the tests also check credentials never leak
  echo "$pgpass" > "$pgdata.pw" && chown postgres "$pgdata.pw"
  su postgres -c "$pgbin/initdb -D $pgdata -A scram-sha-256 --pwfile=$pgdata.pw -U postgres" >/dev/null
  rm -f "$pgdata.pw"
  su postgres -c "$pgbin/pg_ctl -D $pgdata -o '-h 127.0.0.1 -p $pgport -k $pgdata' -l $pgdata/log -w start" >/dev/null
  # shellcheck disable=SC2064  # expand now: the trap must stop this server
  trap "su postgres -c '$pgbin/pg_ctl -D $pgdata -m fast stop' >/dev/null 2>&1; rm -rf '$pgdata'" EXIT
  export TINYLM_POSTGRES_URI="postgresql://postgres:$pgpass@127.0.0.1:$pgport/postgres"
  echo "PostgreSQL on 127.0.0.1:$pgport"
}
