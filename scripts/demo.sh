#!/usr/bin/env bash
# make demo: walferry end to end on a throwaway PostgreSQL 15 and a local
# filesystem repository. Everything lives in one temporary directory that is
# removed at the end, and the server is stopped even when a step fails.
#
# What it shows grows with walferry: today repository creation, checks and
# the wrong-cluster guard. Archiving, backups, restore and streaming join as
# those commands land.
set -euo pipefail

PGBIN=${WALFERRY_PGBIN:-/usr/lib/postgresql/15/bin}
root=$(cd "$(dirname "$0")/.." && pwd)

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

if [ ! -x "$PGBIN/initdb" ]; then
  echo "PostgreSQL 15 is missing ($PGBIN/initdb); installing it with apt-get..." >&2
  sudo=""; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-15 >&2
fi

work=$(mktemp -d /tmp/walferry-demo.XXXXXX)
chmod 755 "$work"
# PostgreSQL refuses to run as root: run it (and the hooks it calls) as postgres.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
[ "$(id -u)" = 0 ] && chown postgres: "$work"

cleanup() {
  as_pg "$PGBIN/pg_ctl" -D "$work/primary" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$work/other" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step "Build walferry"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -o "$work/walferry" ./cmd/walferry)
chmod 755 "$work/walferry"
wf() { as_pg "$work/walferry" "$@"; }
run "$work/walferry" version

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
step "Start a throwaway PostgreSQL 15 on 127.0.0.1:$port"
as_pg "$PGBIN/initdb" -D "$work/primary" -A trust --no-sync >/dev/null
cat >>"$work/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$work'
CONF
as_pg "$PGBIN/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w start >/dev/null
as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -qc \
  "CREATE TABLE accounts AS SELECT g AS id, 100 AS balance FROM generate_series(1, 10000) g"
echo "primary is up: $(as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -Atc 'SELECT version()')"

repo="file://$work/repo"
step "Create a repository for it"
run wf repo init --repo "$repo" --pgdata "$work/primary"

step "Running repo init again changes nothing"
run wf repo init --repo "$repo" --pgdata "$work/primary"

step "Check it: reachable, writable, belongs to this cluster (asked over a connection this time)"
run wf repo check --repo "$repo" --pg-conn "host=127.0.0.1 port=$port user=postgres dbname=postgres"

step "What it holds"
run wf repo info --repo "$repo"

step "Another cluster is refused (the split-brain / wrong-repository guard)"
as_pg "$PGBIN/initdb" -D "$work/other" -A trust --no-sync >/dev/null
set +e
wf repo check --repo "$repo" --pgdata "$work/other"
code=$?
set -e
echo "exit code $code (5: repository belongs to another cluster)"
[ "$code" = 5 ] || { echo "demo: expected exit code 5" >&2; exit 1; }

step "Scripts read JSON"
run wf repo info --repo "$repo" --json

step "Done"
echo "The demo's PostgreSQL is stopped and $work is removed on exit."
