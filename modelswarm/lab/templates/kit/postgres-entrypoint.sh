#!/bin/sh
# Initialise the cluster on first start (password from a file, e.g. a docker secret), then run postgres as
# the postgres user. Mirrors the upstream image's POSTGRES_* interface.
set -eu
: "${POSTGRES_USER:=postgres}" "${POSTGRES_DB:=$POSTGRES_USER}"
if [ "$(id -u)" = "0" ]; then
  mkdir -p "$PGDATA" && chown -R postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
  # The socket directory may be a fresh tmpfs (read-only root filesystem): give it to postgres, as upstream does.
  mkdir -p /var/run/postgresql && chown postgres:postgres /var/run/postgresql && chmod 2775 /var/run/postgresql
  exec setpriv --reuid=postgres --regid=postgres --init-groups "$0" "$@"
fi
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  [ -n "${POSTGRES_PASSWORD_FILE:-}" ] && [ -s "$POSTGRES_PASSWORD_FILE" ] || {
    echo "postgres-entrypoint: POSTGRES_PASSWORD_FILE must name a non-empty file" >&2; exit 1; }
  initdb --username="$POSTGRES_USER" --pwfile="$POSTGRES_PASSWORD_FILE" --auth-local=scram-sha-256 \
         --auth-host=scram-sha-256 --encoding=UTF8 -D "$PGDATA" >/dev/null
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  PGPASSWORD=$(cat "$POSTGRES_PASSWORD_FILE") psql -v ON_ERROR_STOP=1 --username="$POSTGRES_USER" \
    --dbname=postgres -c "CREATE DATABASE \"$POSTGRES_DB\"" >/dev/null 2>&1 || true
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
  echo "postgres-entrypoint: initialised $PGDATA (database $POSTGRES_DB)"
fi
exec postgres -D "$PGDATA" -c listen_addresses='*' -c jit=off "$@"
