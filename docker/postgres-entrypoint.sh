#!/bin/sh
# Initialises the cluster on first start (the official image's variables), then runs postgres in the foreground.
# POSTGRES_USER owns POSTGRES_DB but is not a superuser (an injected statement cannot run programs); the
# superuser `postgres` gets a random password that is thrown away. Every login needs its scram-sha-256 password.
set -eu
user="${POSTGRES_USER:-postgres}"
db="${POSTGRES_DB:-$user}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    [ -r "$POSTGRES_PASSWORD_FILE" ] || { echo "postgres: cannot read POSTGRES_PASSWORD_FILE $POSTGRES_PASSWORD_FILE" >&2; exit 1; }
    password=$(cat "$POSTGRES_PASSWORD_FILE")
  else
    password="${POSTGRES_PASSWORD:-}"
  fi
  [ -n "$password" ] || { echo "postgres: set POSTGRES_PASSWORD or POSTGRES_PASSWORD_FILE" >&2; exit 1; }
  pwfile=$(mktemp)
  trap 'rm -f "$pwfile"' EXIT
  if [ "$user" = postgres ]; then
    superuser_password="$password"
  else
    superuser_password=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
  fi
  printf '%s\n' "$superuser_password" > "$pwfile"
  initdb --username=postgres --pwfile="$pwfile" --auth=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  printf 'host all all 0.0.0.0/0 scram-sha-256\nhost all all ::/0 scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
  postgres -c listen_addresses='' -k /run/postgresql &
  pid=$!
  until pg_isready -h /run/postgresql -q; do sleep 0.2; done
  export PGPASSWORD="$superuser_password"
  if [ "$user" != postgres ]; then
    # psql quotes the variables (:"name" an identifier, :'value' a literal): any name or password is safe.
    printf '%s\n' "CREATE ROLE :\"user\" LOGIN PASSWORD :'password';" \
      | psql -h /run/postgresql -U postgres -d postgres -q -v ON_ERROR_STOP=1 -v user="$user" -v password="$password"
  fi
  if [ "$db" != postgres ]; then
    createdb -h /run/postgresql -U postgres -O "$user" "$db"
  fi
  unset PGPASSWORD
  kill -INT "$pid"
  wait "$pid" || true
  echo "postgres: initialised $PGDATA (database $db owned by $user)"
fi
exec postgres -k /run/postgresql
