#!/usr/bin/env bash
# make demo: walferry end to end on a throwaway PostgreSQL 15 and a local
# filesystem repository. Everything lives in one temporary directory that is
# removed at the end, and the server is stopped even when a step fails.
#
# What it shows: repository creation, checks, the wrong-cluster guard, WAL
# archiving (archive_command, archive-get, the daemon), WAL streaming
# (wal-receive), full and incremental base backups, a standby built from the
# repository by walferry bootstrap, walferry sidecar beside each server (the
# standby's switches it from archive replay to streaming by itself), and
# walferry status at each step, then a switchover and a switchback
# (walferry demote / promote) with nothing re-cloned.
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

daemon_pid=""
# bg_pids: the background walferry processes this script started (their
# runuser wrapper's pid when run as root), stopped by pid at the end.
bg_pids=""
# descendants PID: the processes PID started, their children, and so on.
descendants() { local c; for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
# stop_bg PID: SIGTERM to PID and every process under it (a background
# as_pg is a subshell running runuser running walferry, and runuser does not
# pass SIGTERM on), then wait up to 10 s for PID to end.
stop_bg() {
  local pid=$1 i
  kill -TERM $(descendants "$pid") "$pid" 2>/dev/null || true
  for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
}
cleanup() {
  [ -n "$daemon_pid" ] && kill "$daemon_pid" 2>/dev/null
  for pid in $bg_pids; do stop_bg "$pid"; done
  as_pg "$PGBIN/pg_ctl" -D "$work/primary" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$work/other" -m immediate stop >/dev/null 2>&1 || true
  as_pg "$PGBIN/pg_ctl" -D "$work/standby" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

step "Build walferry"
bash "$root/scripts/build.sh" "$work"
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

psql() { as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$port" -U postgres -X -q "$@"; }
# wait_archived N: until pg_stat_archiver counts N archived files and no failure.
wait_archived() {
  local want=$1 i got
  for i in $(seq 1 120); do
    got=$(psql -Atc "SELECT archived_count || ' ' || failed_count FROM pg_stat_archiver")
    if [ "${got% *}" -ge "$want" ]; then
      [ "${got#* }" = 0 ] || { echo "demo: archive_command failed ${got#* } times (see $work/primary.log)" >&2; exit 1; }
      return 0
    fi
    sleep 0.5
  done
  echo "demo: only ${got% *} of $want files archived after 60 s; the server log says:" >&2
  tail -20 "$work/primary.log" >&2
  exit 1
}

step "Archive WAL: PostgreSQL calls walferry archive-push"
# The hooks run as postgres, in the data directory; the repository comes
# from a configuration file the server can read.
cat >"$work/walferry.yaml" <<YAML
repos: ["$repo"]
YAML
chmod 644 "$work/walferry.yaml"
cat >>"$work/primary/postgresql.conf" <<CONF
archive_mode = on
archive_command = '$work/walferry archive-push --config $work/walferry.yaml %p'
CONF
grep -E '^archive_(mode|command)' "$work/primary/postgresql.conf"
as_pg "$PGBIN/pg_ctl" -D "$work/primary" -l "$work/primary.log" -w restart >/dev/null
echo "restarted with archive_mode = on"

step "Generate WAL: inserts and four pg_switch_wal()"
for i in 1 2 3 4; do
  psql -c "INSERT INTO accounts SELECT g, $i FROM generate_series(1, 20000) g" \
       -c "SELECT pg_switch_wal()" >/dev/null
done
wait_archived 4
psql -c "SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver"

step "The repository now holds them"
run wf repo info --repo "$repo"

seg=$(psql -Atc "SELECT last_archived_wal FROM pg_stat_archiver")
step "Fetch $seg back with archive-get (restore_command) and compare it with pg_wal's copy"
run wf archive-get --config "$work/walferry.yaml" --pgdata "$work/primary" "$seg" "$work/fetched"
run cmp "$work/fetched" "$work/primary/pg_wal/$seg"
echo "identical: $(stat -c %s "$work/fetched") bytes"

step "A segment that is not archived: exit 1 and not a word (how recovery finds the end)"
set +e
out=$(wf archive-get --config "$work/walferry.yaml" --pgdata "$work/primary" 00000001000000FF000000FF "$work/none" 2>&1)
code=$?
set -e
echo "exit code $code, output: '${out}'"
[ "$code" = 1 ] && [ -z "$out" ] || { echo "demo: expected exit 1 and no output" >&2; exit 1; }

step "The daemon: hooks hand their calls to walferry daemon over a unix socket"
sock="$work/walferry.sock"
as_pg "$work/walferry" daemon --config "$work/walferry.yaml" --socket "$sock" --pgdata "$work/primary" \
  --log-format text 2>"$work/daemon.log" </dev/null >/dev/null &
for i in $(seq 1 100); do [ -S "$sock" ] && break; sleep 0.1; done
[ -S "$sock" ] || { echo "demo: the daemon did not start:" >&2; cat "$work/daemon.log" >&2; exit 1; }
# The daemon writes its process id into its lock file (runuser, in between,
# does not pass SIGTERM on).
daemon_pid=$(cat "$sock.lock")
ls -l "$sock"
before=$(psql -Atc "SELECT archived_count FROM pg_stat_archiver")
psql -c "ALTER SYSTEM SET archive_command = '$work/walferry archive-push --config $work/walferry.yaml --socket $sock %p'" \
     -c "SELECT pg_reload_conf()" >/dev/null
sleep 0.5
for i in 1 2 3; do
  psql -c "INSERT INTO accounts SELECT g, 10 + $i FROM generate_series(1, 20000) g" -c "SELECT pg_switch_wal()" >/dev/null
done
wait_archived $((before + 3))
psql -c "SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver"
echo "the daemon's log:"
sed 's/^/  /' "$work/daemon.log"
grep -q 'msg=archived' "$work/daemon.log" || { echo "demo: the daemon archived nothing" >&2; exit 1; }

step "Stop the daemon (SIGTERM, graceful): the hooks keep archiving standalone"
kill -TERM "$daemon_pid"
for i in $(seq 1 100); do kill -0 "$daemon_pid" 2>/dev/null || break; sleep 0.1; done
daemon_pid=""
tail -2 "$work/daemon.log" | sed 's/^/  /'
[ ! -e "$sock" ] || { echo "demo: the daemon left its socket behind" >&2; exit 1; }
before=$(psql -Atc "SELECT archived_count FROM pg_stat_archiver")
psql -c "INSERT INTO accounts SELECT g, 99 FROM generate_series(1, 20000) g" -c "SELECT pg_switch_wal()" >/dev/null
wait_archived $((before + 1))
psql -c "SELECT archived_count, last_archived_wal, failed_count FROM pg_stat_archiver"

step "Stream WAL: walferry wal-receive trails the primary by seconds, not by a segment"
as_pg "$work/walferry" wal-receive --config "$work/walferry.yaml" --slot demo --partial-interval 1s \
  --spool-dir "$work/receive-spool" --pg-conn "host=127.0.0.1 port=$port user=postgres" \
  --log-format text --log-level info 2>"$work/receive.log" </dev/null >/dev/null &
receive_pid=$!
bg_pids="$bg_pids $receive_pid"
for i in $(seq 1 100); do
  [ "$(psql -Atc "SELECT count(*) FROM pg_stat_replication WHERE application_name = 'walferry'")" = 1 ] && break
  sleep 0.1
done
psql -c "SELECT application_name, state, sent_lsn, flush_lsn FROM pg_stat_replication"
psql -c "INSERT INTO accounts SELECT g, 200 FROM generate_series(1, 5000) g" >/dev/null
echo "rows inserted, no segment switch: the unfinished segment goes up as .partial within a second"
partials=0
for i in $(seq 1 100); do
  partials=$(wf repo info --repo "$repo" --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["partials"])')
  [ "$partials" -ge 1 ] && break
  sleep 0.1
done
[ "$partials" -ge 1 ] || { echo "demo: no .partial uploaded:" >&2; cat "$work/receive.log" >&2; exit 1; }
run wf repo info --repo "$repo"
psql -c "SELECT application_name, state, sent_lsn, flush_lsn FROM pg_stat_replication"
echo "flush_lsn is what is durable in the repository"
stop_bg "$receive_pid"
echo "the receiver's log:"
sed 's/^/  /' "$work/receive.log"

step "Base backup: walferry backup-push (full), while the primary keeps working"
run wf backup-push --config "$work/walferry.yaml" --pgdata "$work/primary" \
  --pg-conn "host=127.0.0.1 port=$port user=postgres dbname=postgres"
psql -c "UPDATE accounts SET balance = balance + 1 WHERE id <= 2000" \
     -c "CREATE TABLE orders AS SELECT g AS id, now() AS at FROM generate_series(1, 5000) g"
step "An incremental backup stores only what changed since"
run wf backup-push --config "$work/walferry.yaml" --pgdata "$work/primary" --incremental \
  --pg-conn "host=127.0.0.1 port=$port user=postgres dbname=postgres"
run wf backup-list --config "$work/walferry.yaml"

step "Bootstrap a standby from the repository: walferry bootstrap (the init container)"
# No connection to the primary is needed: the newest backup whose WAL is
# complete in the repository, restored as a standby; bootstrap writes
# standby.signal and walferry.conf (restore_command, recovery_target_timeline).
run wf bootstrap --config "$work/walferry.yaml" --pgdata "$work/standby" --from repo --no-slot
sport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# The instance's own setting (a pod's ConfigMap would hold it): its port.
# No recovery setting is written by hand.
cat >>"$work/standby/postgresql.conf" <<CONF
port = $sport
CONF
echo "recovery settings written by walferry bootstrap (walferry.conf, included from postgresql.conf):"
grep -v '^#' "$work/standby/walferry.conf" | sed 's/^/  /'
as_pg "$PGBIN/pg_ctl" -D "$work/standby" -l "$work/standby.log" -w start >/dev/null
spsql() { as_pg "$PGBIN/psql" -h 127.0.0.1 -p "$sport" -U postgres -X -q "$@"; }
psql -c "INSERT INTO orders SELECT g, now() FROM generate_series(5001, 6000) g" -c "SELECT pg_switch_wal()" >/dev/null
want=$(psql -Atc "SELECT count(*) || '/' || sum(balance) FROM accounts")
for i in $(seq 1 120); do
  got=$(spsql -Atc "SELECT (SELECT count(*) FROM orders) || ' ' || (SELECT count(*) || '/' || sum(balance) FROM accounts)" 2>/dev/null || true)
  [ "$got" = "6000 $want" ] && break
  sleep 0.5
done
echo "standby (archive replay): orders/accounts = $got; primary: 6000 $want"
[ "$got" = "6000 $want" ] || { echo "demo: the standby did not catch up from the archive:" >&2; tail -20 "$work/standby.log" >&2; exit 1; }

step "Status of the standby: replaying the repository (no sidecar yet)"
run wf status --pgdata "$work/standby" --config "$work/walferry.yaml" --sidecar "127.0.0.1:1" || true

freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# start_sidecar NAME ARGS...: walferry sidecar in the background, its log in $work/NAME-sidecar.log.
start_sidecar() {
  local name=$1; shift
  as_pg "$work/walferry" sidecar --config "$work/walferry.yaml" --log-format text --interval 1s "$@" \
    2>"$work/$name-sidecar.log" </dev/null >/dev/null &
  bg_pids="$bg_pids $!"
}
# wait_status ADDR PYTHON-CONDITION: until the sidecar's status (r) satisfies it.
wait_status() {
  local addr=$1 cond=$2 i
  for i in $(seq 1 120); do
    local body
    body=$(curl -fsS "http://$addr/status" 2>/dev/null || true)
    if [ -n "$body" ] && python3 -c "import json,sys; r=json.load(sys.stdin); sys.exit(0 if ($cond) else 1)" <<<"$body"; then
      return 0
    fi
    sleep 0.5
  done
  echo "demo: the sidecar at $addr never reached: $cond" >&2
  return 1
}

pside=127.0.0.1:$(freeport)
sside=127.0.0.1:$(freeport)
step "Start walferry sidecar beside the primary: hooks' socket, health, metrics, status"
start_sidecar primary --pgdata "$work/primary" --pg-conn "host=127.0.0.1 port=$port user=postgres" \
  --socket "$work/primary.sock" --listen "$pside"
wait_status "$pside" 'r["role"] == "primary"'
run wf status --pgdata "$work/primary" --sidecar "$pside"

step "Start walferry sidecar beside the standby: it switches it to streaming by itself"
start_sidecar standby --pgdata "$work/standby" --pg-conn "host=127.0.0.1 port=$sport user=postgres" \
  --socket "$work/standby.sock" --listen "$sside" \
  --source-conn "host=127.0.0.1 port=$port user=postgres" --slot demo_standby
wait_status "$sside" 'r["mode"] == "streaming"'
grep -E 'upstream|streaming' "$work/standby-sidecar.log" | sed 's/^/  /'
echo "walferry.conf now (written by the sidecar, then a configuration reload):"
grep -v '^#' "$work/standby/walferry.conf" | sed 's/^/  /'
spsql -c "SELECT status, sender_host, sender_port, flushed_lsn FROM pg_stat_wal_receiver"
psql -c "INSERT INTO orders VALUES (6001, now())" >/dev/null
for i in $(seq 1 50); do
  [ "$(spsql -Atc 'SELECT max(id) FROM orders')" = 6001 ] && break
  sleep 0.1
done
echo "a row inserted on the primary is on the standby at once (no segment switch): max(id) = $(spsql -Atc 'SELECT max(id) FROM orders')"
[ "$(spsql -Atc 'SELECT max(id) FROM orders')" = 6001 ] || { echo "demo: the standby does not stream" >&2; exit 1; }
run wf status --pgdata "$work/standby" --sidecar "$sside"

step "The sidecars' health, readiness and metrics"
for addr in "$pside" "$sside"; do
  echo "$addr: healthz $(curl -s "http://$addr/healthz") readyz $(curl -s "http://$addr/readyz")"
done
curl -s "http://$sside/metrics" | grep -E '^walferry_instance_(role|standby_mode|lag_bytes|slot_retained_bytes)' | sed 's/^/  /'

step "Switchover: walferry demote on the primary, then walferry promote on the standby"
# demote: checkpoint, fast shutdown, archive what is left (the last segment
# as .partial), record the switchover in the repository's lineage record,
# and restart the old primary as a standby of the new one.
run wf demote --config "$work/walferry.yaml" --pgdata "$work/primary" --pg-conn "host=127.0.0.1 port=$port user=postgres" \
  --source-conn "host=127.0.0.1 port=$sport user=postgres" --restart --pg-bin "$PGBIN" --pg-log "$work/primary.log" --instance demo-a
# promote: waits until the standby replayed exactly to the token, promotes,
# records the new timeline, and takes a backup at once.
run wf promote --config "$work/walferry.yaml" --pgdata "$work/standby" --pg-conn "host=127.0.0.1 port=$sport user=postgres" \
  --pg-bin "$PGBIN" --instance demo-b
wait_status "$sside" 'r["role"] == "primary"'
wait_status "$pside" 'r["role"] == "standby" and r["mode"] == "streaming"'
run wf status --pgdata "$work/standby" --sidecar "$sside"
run wf status --pgdata "$work/primary" --sidecar "$pside"
spsql -c "INSERT INTO orders VALUES (7001, now())" >/dev/null
for i in $(seq 1 100); do
  [ "$(psql -Atc 'SELECT max(id) FROM orders' 2>/dev/null)" = 7001 ] && break
  sleep 0.1
done
echo "a row inserted on the new primary is on the old one, now its standby: max(id) = $(psql -Atc 'SELECT max(id) FROM orders')"
[ "$(psql -Atc 'SELECT max(id) FROM orders')" = 7001 ] || { echo "demo: the old primary does not follow the new one" >&2; exit 1; }

step "Switch back: walferry demote on the standby site's server, walferry promote on the original primary"
run wf demote --config "$work/walferry.yaml" --pgdata "$work/standby" --pg-conn "host=127.0.0.1 port=$sport user=postgres" \
  --source-conn "host=127.0.0.1 port=$port user=postgres" --restart --pg-bin "$PGBIN" --pg-log "$work/standby.log" --instance demo-b
run wf promote --config "$work/walferry.yaml" --pgdata "$work/primary" --pg-conn "host=127.0.0.1 port=$port user=postgres" \
  --pg-bin "$PGBIN" --instance demo-a
wait_status "$pside" 'r["role"] == "primary"'
wait_status "$sside" 'r["role"] == "standby" and r["mode"] == "streaming"'
run wf status --pgdata "$work/primary" --sidecar "$pside"
run wf status --pgdata "$work/standby" --sidecar "$sside"
psql -c "INSERT INTO orders VALUES (7002, now())" >/dev/null
for i in $(seq 1 100); do
  [ "$(spsql -Atc 'SELECT max(id) FROM orders' 2>/dev/null)" = 7002 ] && break
  sleep 0.1
done
echo "back where we started, nothing re-cloned: max(id) on the standby = $(spsql -Atc 'SELECT max(id) FROM orders')"
[ "$(spsql -Atc 'SELECT max(id) FROM orders')" = 7002 ] || { echo "demo: the standby does not follow after the switchback" >&2; exit 1; }
echo "the repository's lineage record:"
wf status --pgdata "$work/primary" --sidecar "$pside" --json | python3 -c 'import json,sys; l=json.load(sys.stdin)["lineage"]; print("  generation %d: %s, %s, timeline %d" % (l["generation"], l["reason"], l["instance"], l["timeline"]))'

step "Status: replication on the primary, the repository, the backups, and a full verify"
psql -c "SELECT application_name, state, sync_state, replay_lsn FROM pg_stat_replication"
run wf repo info --config "$work/walferry.yaml"
run wf verify --config "$work/walferry.yaml" --wal

step "Done"
echo "The demo's servers are stopped and $work is removed on exit. See README.md for the commands."
