# Local stand-in for postgres:16 (the official image) in docker/compose.yaml, for hosts that reach no container
# registry: Debian bookworm's PostgreSQL 15 on the debootstrapped localhost/debian:bookworm, built through
# docker/compose.local.yaml (scripts/cluster-image.sh). It does what compose.yaml asks of the official image:
#   POSTGRES_USER (default postgres), POSTGRES_PASSWORD (required on the first start), POSTGRES_DB (default: the user)
#   /docker-entrypoint-initdb.d: *.sh (run if executable, else sourced) and *.sql, once, on an empty data directory,
#       while the server listens on its Unix socket only
#   data in /var/lib/postgresql/data ($PGDATA); then it listens on 0.0.0.0:5432; pg_isready is on PATH
# Not the same: PostgreSQL 15, not 16 (MLflow and Optuna are fine with both; a data directory of one does not start
# under the other), TCP from 127.0.0.1 needs the password too (the official image trusts it), and none of
# POSTGRES_INITDB_ARGS, POSTGRES_HOST_AUTH_METHOD, *.sql.gz or running as an arbitrary --user.
# Build context: any (nothing is copied); compose.local.yaml gives it docker/, an empty context.
FROM localhost/debian:bookworm

# The official image's postgres user, uid/gid 999, made before the package would pick one. No "main" cluster at
# install time (postgresql-common would make one under /var/lib/postgresql/15): the entrypoint makes the only one,
# in $PGDATA. Package revisions follow the bookworm security updates, so they are not pinned.
# hadolint ignore=DL3008
RUN groupadd --system --gid 999 postgres \
    && useradd --system --uid 999 --gid postgres --home-dir /var/lib/postgresql --shell /bin/bash postgres \
    && mkdir -p /etc/postgresql-common/createcluster.d \
    && echo 'create_main_cluster = false' >/etc/postgresql-common/createcluster.d/no-main-cluster.conf \
    && apt-get update \
    && apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && install -d -o postgres -g postgres -m 700 /var/lib/postgresql/data \
    && install -d -o postgres -g postgres -m 2775 /var/run/postgresql \
    && install -d -m 755 /docker-entrypoint-initdb.d

# initdb, pg_ctl, postgres and pg_isready of this one version, without Debian's pg_wrapper and cluster config.
ENV PATH=/usr/lib/postgresql/15/bin:${PATH} \
    PGDATA=/var/lib/postgresql/data \
    LANG=C.UTF-8

# The entrypoint, one printf argument per line: podman 4.3 (bookworm) has no heredocs in Dockerfiles, and a script
# file would have to be COPYed from a build context, which every .dockerignore here keeps docker/ out of.
# First start: initdb (password from a pipe, never argv), a socket-only server for POSTGRES_DB and the init scripts,
# stop. Every start: postgres on all addresses; a named volume takes this image's 0700 postgres-owned directory.
# hadolint ignore=SC2016
RUN printf '%s\n' \
    '#!/bin/bash' \
    'set -euo pipefail' \
    ': "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"' \
    'export POSTGRES_USER POSTGRES_DB' \
    'if [ ! -s "$PGDATA/PG_VERSION" ]; then' \
    '    : "${POSTGRES_PASSWORD:?is required to initialise an empty data directory}"' \
    '    initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile=<(printf "%s\n" "$POSTGRES_PASSWORD") -E UTF8 --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256' \
    '    echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"' \
    '    pg_ctl -D "$PGDATA" -w -o "-c listen_addresses=" start' \
    '    [ "$POSTGRES_DB" = postgres ] || createdb -U "$POSTGRES_USER" "$POSTGRES_DB"' \
    '    for f in /docker-entrypoint-initdb.d/*; do' \
    '        case "$f" in' \
    '            *.sh) echo "running $f"; if [ -x "$f" ]; then "$f"; else . "$f"; fi ;;' \
    '            *.sql) echo "running $f"; psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f "$f" ;;' \
    '        esac' \
    '    done' \
    '    pg_ctl -D "$PGDATA" -m fast -w stop' \
    'fi' \
    '[ "${1:-}" != postgres ] || shift' \
    'exec postgres -D "$PGDATA" -c "listen_addresses=*" "$@"' \
    >/usr/local/bin/docker-entrypoint.sh \
    && chmod 755 /usr/local/bin/docker-entrypoint.sh

USER 999:999
EXPOSE 5432
# SIGINT: PostgreSQL's fast shutdown (SIGTERM would wait for every client to disconnect).
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
