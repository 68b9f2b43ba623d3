#!/usr/bin/env bash
# make bench: walferry's archive hooks side by side with pgBackRest's (Debian
# package), same machine, same run, same compression, to a filesystem
# repository and to MinIO. Results go to docs/benchmarks.md (the part
# between the GENERATED markers is rewritten; the rest is kept).
#
#   W1  archive-push of N real WAL segments, one call at a time, in order,
#       .ready files renamed to .done after each success (PostgreSQL's
#       archiver); walferry standalone and with its daemon, pgBackRest sync
#       and archive-async (process-max 2).
#   W2  archive-get of the same segments, one call at a time, into
#       pg_wal/RECOVERYXLOG, then one call past the end (recovery's
#       restore_command); walferry standalone (prefetch) and with its daemon,
#       pgBackRest sync and archive-async (archive-get-queue-max).
#
# pgBackRest 2.45 talks to S3 over TLS only, so this script starts its own
# MinIO with a self-signed certificate (--certs-dir) and points both tools
# at it: pgBackRest with repo1-storage-verify-tls=n, walferry with
# SSL_CERT_FILE naming the certificate.
#
# Knobs (environment): BENCH_SEGMENTS (200), BENCH_SCALE (pgbench -i scale,
# 60), BENCH_STORES (fs,MinIO), BENCH_COMPRESSIONS (lz4,zstd), BENCH_OUT
# (docs/benchmarks.md), BENCH_KEEP=1 keeps the work directory.
# Must run as root (the hooks run as the postgres OS user, like PostgreSQL's).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
PGBIN=${WALFERRY_TEST_PGBIN:-/usr/lib/postgresql/15/bin}
SEGMENTS=${BENCH_SEGMENTS:-200}
SCALE=${BENCH_SCALE:-60}
STORES=${BENCH_STORES:-fs,MinIO}
COMPRESSIONS=${BENCH_COMPRESSIONS:-lz4,zstd}
OUT=${BENCH_OUT:-$root/docs/benchmarks.md}
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${WALFERRY_CACHE:-$HOME/.cache/walferry}"
BUCKET=walferry-bench

log() { echo "bench: $*" >&2; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the hooks run as the postgres OS user, as PostgreSQL runs them"
bash "$root/scripts/install-bench-deps.sh"
MINIO_BIN=$CACHE/bin/minio
[ -x "$MINIO_BIN" ] || MINIO_BIN=$(command -v minio) || die "minio not found"

work=$(mktemp -d /tmp/walferry-bench.XXXXXX)
chmod 755 "$work"
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
	if [ -f "$work/minio.pid" ]; then
		pid=$(cat "$work/minio.pid")
		case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" in *minio*) kill "$pid" 2>/dev/null || true ;; esac
		for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	fi
	if [ "${BENCH_KEEP:-0}" = 1 ]; then log "work directory kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- binaries -------------------------------------------------------------
mkdir -p "$work/bin"
version=$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)
commit=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
log "building walferry $version ($commit) and the bench driver"
(cd "$root" && CGO_ENABLED=0 go build -trimpath -ldflags "-X main.version=$version -X main.commit=$commit" \
	-o "$work/bin/walferry" ./cmd/walferry)
(cd "$root" && go build -o "$work/bin/bench" ./scripts/bench)
chmod 755 "$work/bin" "$work/bin/walferry"

# --- MinIO over TLS ---------------------------------------------------------
mkdir -p "$work/certs" "$work/minio-data"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=127.0.0.1" \
	-addext "subjectAltName=IP:127.0.0.1,DNS:localhost" \
	-keyout "$work/certs/private.key" -out "$work/certs/public.crt" 2>/dev/null
chmod 644 "$work/certs/public.crt"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
S3_KEY=walferry
S3_SECRET=bench-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
MINIO_ROOT_USER=$S3_KEY MINIO_ROOT_PASSWORD=$S3_SECRET MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=1 \
	"$MINIO_BIN" server --quiet --certs-dir "$work/certs" --address "127.0.0.1:$port" \
	--console-address "127.0.0.1:0" "$work/minio-data" </dev/null >"$work/minio.log" 2>&1 &
echo $! >"$work/minio.pid"
for i in $(seq 150); do
	curl -fsk -o /dev/null --max-time 2 "https://127.0.0.1:$port/minio/health/live" && break
	kill -0 "$(cat "$work/minio.pid")" 2>/dev/null || { cat "$work/minio.log" >&2; die "MinIO exited"; }
	[ "$i" = 150 ] && die "MinIO did not start"
	sleep 0.2
done
curl -fsSk -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_KEY:$S3_SECRET" \
	-X PUT "https://127.0.0.1:$port/$BUCKET" || die "could not create bucket $BUCKET"
log "MinIO (TLS, self-signed) on https://127.0.0.1:$port"

# --- workload: real WAL from pgbench ----------------------------------------------
log "generating $SEGMENTS WAL segments with pgbench (scale $SCALE)"
chown postgres: "$work"
pgport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
as_pg "$PGBIN/initdb" -D "$work/pg" -A trust -U postgres --no-sync >/dev/null
cat >>"$work/pg/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $pgport
unix_socket_directories = '$work'
fsync = off
shared_buffers = 128MB
wal_level = replica
archive_mode = on
archive_command = ''  # keep every segment, with its .ready file
max_wal_size = 1GB
checkpoint_timeout = 30s
CONF
as_pg "$PGBIN/pg_ctl" -D "$work/pg" -l "$work/pg.log" -w start >/dev/null
export PGHOST=$work PGPORT=$pgport PGUSER=postgres PGDATABASE=postgres
t0=$(date +%s)
as_pg "$PGBIN/pgbench" -i -q -s "$SCALE" >/dev/null 2>&1
ready() { find "$work/pg/pg_wal/archive_status" -name '*.ready' | wc -l; }
while [ "$(ready)" -le "$SEGMENTS" ]; do
	[ $(($(date +%s) - t0)) -lt 900 ] || die "pgbench wrote only $(ready) segments in 15 minutes"
	as_pg "$PGBIN/pgbench" -n -c 4 -j 2 -T 10 >/dev/null 2>&1
done
as_pg "$PGBIN/psql" -qAtc "SELECT pg_switch_wal()" >/dev/null
as_pg "$PGBIN/pg_ctl" -D "$work/pg" -m fast -w stop >/dev/null
mkdir -p "$work/wal" "$work/template/global"
find "$work/pg/pg_wal/archive_status" -name '*.ready' -printf '%f\n' | grep -E '^[0-9A-F]{24}\.ready$' |
	sort | tail -n "$SEGMENTS" | sed 's/\.ready$//' | while read -r seg; do
	cp "$work/pg/pg_wal/$seg" "$work/wal/$seg"
done
cp "$work/pg/PG_VERSION" "$work/template/"
cp "$work/pg/global/pg_control" "$work/template/global/"
chown -R postgres: "$work/wal" "$work/template"
n=$(ls "$work/wal" | wc -l)
[ "$n" = "$SEGMENTS" ] || die "workload has $n segments, want $SEGMENTS"
raw=$(du -sb "$work/wal" | cut -f1)
log "workload: $n segments ($(ls "$work/wal" | head -1) .. $(ls "$work/wal" | tail -1)) in $(($(date +%s) - t0)) s"
rm -rf "$work/pg"

# --- the run ---------------------------------------------------------------------
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
{
	echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC') by \`make bench\` (scripts/bench/run.sh)."
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| machine | $(nproc) CPUs ($cpu), $mem RAM, $(uname -sr) |"
	echo "| walferry | $version, commit $commit ($(go env GOVERSION)) |"
	echo "| pgBackRest | $(pgbackrest version | sed 's/pgBackRest //') (Debian package) |"
	echo "| PostgreSQL | $("$PGBIN/postgres" --version | sed 's/.*) //') (pgbench, segments of 16 MiB) |"
	echo "| MinIO | $(go version -m "$MINIO_BIN" 2>/dev/null | awk '$1 == "mod" { print $3 }'), one drive in the run's directory, TLS with a self-signed certificate, on the same machine |"
	echo "| workload | $n segments written by \`pgbench -i -s $SCALE\` then \`pgbench -c 4 -j 2\` (checkpoint_timeout 30s, max_wal_size 1GB), $((raw >> 20)) MiB |"
	echo
} >"$work/about.md"
log "running the variants (log of every hook call in $work/logs)"
AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=us-east-1 \
	SSL_CERT_FILE=$work/certs/public.crt AWS_CA_BUNDLE=$work/certs/public.crt \
	"$work/bin/bench" all --work "$work" --walferry "$work/bin/walferry" --pgbackrest "$(command -v pgbackrest)" \
	--template "$work/template" --wal "$work/wal" \
	--s3-endpoint "https://127.0.0.1:$port" --s3-bucket "$BUCKET" --s3-key "$S3_KEY" --s3-secret "$S3_SECRET" \
	--ca-cert "$work/certs/public.crt" --stores "$STORES" --compressions "$COMPRESSIONS" \
	--about "$work/about.md" --out "$OUT"
log "report written to $OUT"
