#!/usr/bin/env bash
# make bench: walferry side by side with pgBackRest (Debian package), same
# machine, same run, same compression, to a filesystem repository and to
# MinIO. Results go to docs/benchmarks.md (the blocks of the workloads run
# between the GENERATED markers are rewritten; the rest is kept).
#
#   W1  archive-push of N real WAL segments, one call at a time, in order,
#       .ready files renamed to .done after each success (PostgreSQL's
#       archiver); walferry standalone and with its daemon (whose hook is
#       walferry-hook), pgBackRest sync and archive-async (process-max 2).
#   W2  archive-get of the same segments, one call at a time, into
#       pg_wal/RECOVERYXLOG, then one call past the end (recovery's
#       restore_command); walferry standalone (prefetch) and with its daemon,
#       pgBackRest sync and archive-async (archive-get-queue-max).
#   The cost of one hook call (with W1-W2, first compression only): push of
#       an archived segment, push of a segment the tool pushed ahead in the
#       background, get of a missing segment.
#   W3  full backup of a running pgbench database (scale BENCH_BACKUP_SCALE,
#       100: about 1.6 GB) whose archive_command pushes into the tool's own
#       repository: walferry backup-push --jobs 2, pgbackrest --type=full
#       backup with process-max=2, start-fast=y, archive-check on.
#   W4  restore of that backup into an empty directory (walferry restore
#       LATEST, pgbackrest restore); every restored cluster is then started
#       and its tables compared with the source (not timed).
#   W5  incremental backup after UPDATE of 5% of pgbench_accounts and a
#       CHECKPOINT (walferry --incremental, pgbackrest --type=incr).
#   W6  full backup of the many-files cluster: BENCH_MANY_TABLES (20000)
#       small tables of one row, one 8 KiB file each (about 21,000 files,
#       160 MiB), the same way as W3 (its own copies and repositories).
#   W7  incremental backup of it after a row of every 100th table changed
#       and a CHECKPOINT; its restore is checked in round 1 (not timed).
#   S1  a standby from the repository up to consistent: walferry bootstrap
#       --from repo vs pgbackrest restore --type=standby of the same source
#       (a copy of the W3-W5 cluster; each tool's full backup of it, taken
#       first, not timed; filesystem repositories, the first compression),
#       then pg_ctl start until pg_is_in_recovery() answers; data checked.
#   S2  lag of a standby behind its primary's commits under pgbench -c 2:
#       archive only (archive_timeout 60 s), repository with .partial (the
#       primary's walferry sidecar --wal-receive --partial-interval 1s),
#       streaming (the standby's walferry sidecar --source-conn).
#   F1  planned switchover under writes, walferry (demote, promote, rejoin:
#       docs/switchover.md) vs Patroni (patronictl switchover) on a pair of
#       servers each, a -> b and back; write downtime, rows lost, time until
#       the old primary streams from the new one.
#   F2  the primary lost under writes (pg_ctl stop -m immediate; Patroni's
#       agent SIGKILLed first): walferry promote --force run by an operator
#       script at the first failed probe vs Patroni's automatic failover;
#       then the old primary rejoins (walferry rejoin --restart vs Patroni
#       started again, pg_rewind). Patroni (Debian package) is installed
#       when missing; its etcd is the one tools/kube builds.
#
# pgBackRest: PGBACKREST=/path/to/pgbackrest (e.g. the current release built
# from its source, see docs/benchmarks.md) when given, else Debian's package;
# the report names its version and where it came from. W3-W7 and S1 run it
# with repo1-bundle=y (2.39+) and repo1-block=y (2.46+; 2.45: beta=y), W1-W2
# in sync and archive-async mode; every setting is printed in the report.
#
# pgBackRest 2.45 talks to S3 over TLS only, so this script starts its own
# MinIO with a self-signed certificate (--certs-dir) and points both tools
# at it: pgBackRest with repo1-storage-verify-tls=n, walferry with
# SSL_CERT_FILE naming the certificate.
#
# Knobs (environment): BENCH_WORKLOADS (W1,W2,W3,W4,W5; also W6,W7,S1,S2;
# W2 needs W1, W4, W5 need W3 and W7 needs W6, which then run too),
# BENCH_MANY_TABLES (W6-W7, 20000), PGBACKREST, BENCH_SEGMENTS (200), BENCH_SCALE
# (pgbench -i scale of W1-W2's WAL, 60), BENCH_BACKUP_SCALE (W3-W5, 100),
# BENCH_ROUNDS (W3-W5 rounds, each on fresh copies; the median is kept, 5;
# S1 rounds, 3), BENCH_LAG_SECONDS (S2's window per mode, 180),
# BENCH_LAG_TPS (S2: pgbench -R, 0 for unthrottled, 0),
# BENCH_FAILOVER_ROUNDS (F1-F2 rounds, 3; the median is kept),
# BENCH_STORES (fs,MinIO), BENCH_COMPRESSIONS (lz4,zstd), BENCH_OUT
# (docs/benchmarks.md), BENCH_KEEP=1 keeps the work directory.
# Must run as root (the hooks run as the postgres OS user, like PostgreSQL's).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
PGBIN=${WALFERRY_TEST_PGBIN:-/usr/lib/postgresql/15/bin}
SEGMENTS=${BENCH_SEGMENTS:-200}
SCALE=${BENCH_SCALE:-60}
BACKUP_SCALE=${BENCH_BACKUP_SCALE:-100}
WORKLOADS=${BENCH_WORKLOADS:-W1,W2,W3,W4,W5}
ROUNDS=${BENCH_ROUNDS:-5}
FAILOVER_ROUNDS=${BENCH_FAILOVER_ROUNDS:-3}
STANDBY_ROUNDS=${BENCH_ROUNDS:-3}
LAG_SECONDS=${BENCH_LAG_SECONDS:-180}
LAG_TPS=${BENCH_LAG_TPS:-0}
STORES=${BENCH_STORES:-fs,MinIO}
COMPRESSIONS=${BENCH_COMPRESSIONS:-lz4,zstd}
OUT=${BENCH_OUT:-$root/docs/benchmarks.md}
PGBACKREST_GIVEN=${PGBACKREST:-}
MANY_TABLES=${BENCH_MANY_TABLES:-20000}
HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${WALFERRY_CACHE:-$HOME/.cache/walferry}"
BUCKET=walferry-bench

log() { echo "bench: $*" >&2; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }

want() { case ",${WORKLOADS^^}," in *",$1,"*) return 0 ;; esac; return 1; }
for w in ${WORKLOADS//,/ }; do
	case "${w^^}" in W1 | W2 | W3 | W4 | W5 | W6 | W7 | S1 | S2 | F1 | F2) ;; *) die "BENCH_WORKLOADS: unknown workload $w (want some of W1,W2,W3,W4,W5,W6,W7,S1,S2,F1,F2)" ;; esac
done
archive_run=0 backup_run=0 standby_run=0 pgbench_run=0 many_run=0 failover_run=0
if want W1 || want W2; then archive_run=1; fi
if want W3 || want W4 || want W5; then backup_run=1 pgbench_run=1; fi
if want W6 || want W7; then backup_run=1 many_run=1; fi
if want S1 || want S2; then standby_run=1; fi
if want F1 || want F2; then failover_run=1; fi
[ "$(id -u)" = 0 ] || die "run as root: the hooks run as the postgres OS user, as PostgreSQL runs them"
BENCH_PATRONI=$failover_run bash "$root/scripts/install-bench-deps.sh"
if [ -n "${PGBACKREST:-}" ]; then
	[ -x "$PGBACKREST" ] || die "PGBACKREST=$PGBACKREST is not an executable"
	PGBACKREST=$(readlink -f "$PGBACKREST")
	pb_source="PGBACKREST=$PGBACKREST"
else
	PGBACKREST=$(command -v pgbackrest) || die "pgbackrest not found"
	PGBACKREST=$(readlink -f "$PGBACKREST")
	pb_source="found on PATH: $PGBACKREST"
fi
case "$(dpkg -S "$PGBACKREST" 2>/dev/null)" in
pgbackrest:*) pb_source="Debian package $(dpkg-query -W -f '${Version}' pgbackrest), $PGBACKREST" ;;
esac
pb_version=$("$PGBACKREST" version | sed 's/pgBackRest //')
log "pgBackRest $pb_version ($pb_source)"
ETCD_BIN=$CACHE/bin/etcd
if [ "$failover_run" = 1 ]; then
	[ -x "$ETCD_BIN" ] || die "$ETCD_BIN missing (scripts/install-test-deps.sh builds it from tools/kube)"
	log "$(patroni --version) (Debian package $(dpkg-query -W -f '${Version}' patroni 2>/dev/null || echo '?')), etcd $ETCD_BIN"
fi
MINIO_BIN=$CACHE/bin/minio
[ -x "$MINIO_BIN" ] || MINIO_BIN=$(command -v minio) || die "minio not found"

work=$(mktemp -d /tmp/walferry-bench.XXXXXX)
chmod 755 "$work"
as_pg() { runuser -u postgres -- "$@"; }
cleanup() {
	as_pg "$PGBIN/pg_ctl" -D "$work/pg" -m immediate stop >/dev/null 2>&1 || true
	as_pg "$PGBIN/pg_ctl" -D "$work/bk-template" -m immediate stop >/dev/null 2>&1 || true
	as_pg "$PGBIN/pg_ctl" -D "$work/mf-template" -m immediate stop >/dev/null 2>&1 || true
	for d in "$work"/backup/*/pg "$work"/backup/*/restore* "$work"/standby/*/pg "$work"/standby/s[12]-*; do
		[ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
	done
	# F1-F2: Patroni's agents and etcd first (an agent restarts its server).
	for f in "$work"/failover/patroni/*.pid; do
		[ -f "$f" ] || continue
		pid=$(cat "$f")
		[ -r "/proc/$pid/cmdline" ] || continue
		case "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" in *patroni* | *etcd*) kill "$pid" 2>/dev/null || true ;; esac
		for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
	done
	for d in "$work"/failover/*/[ab]/pg; do
		[ -f "$d/postmaster.pid" ] && as_pg "$PGBIN/pg_ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
	done
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
log "building walferry $version ($commit), walferry-hook next to it, and the bench driver"
VERSION=$version COMMIT=$commit bash "$root/scripts/build.sh" "$work/bin"
(cd "$root" && go build -o "$work/bin/bench" ./scripts/bench)
chmod 755 "$work/bin" "$work/bin/walferry" "$work/bin/walferry-hook"
if [ "$failover_run" = 1 ]; then
	# Patroni's etcd runs as postgres, which cannot read root's cache.
	cp "$ETCD_BIN" "$work/bin/etcd" && chmod 755 "$work/bin/etcd"
	ETCD_BIN=$work/bin/etcd
fi

# --- MinIO over TLS (W1-W5; S1-S2 use filesystem repositories only) ----------
S3_KEY=walferry S3_SECRET= port=0
if [ "$archive_run" = 1 ] || [ "$backup_run" = 1 ]; then
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
fi

# --- workload: real WAL from pgbench ----------------------------------------------
chown postgres: "$work"
if [ "$archive_run" = 1 ]; then
	log "generating $SEGMENTS WAL segments with pgbench (scale $SCALE)"
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
	wal_about="| workload W1-W2 | $n segments written by \`pgbench -i -s $SCALE\` then \`pgbench -c 4 -j 2\` (checkpoint_timeout 30s, max_wal_size 1GB), $((raw >> 20)) MiB |"
fi

# init_template DIR: a stopped cluster (data checksums on) with the
# settings every template shares: the backup workloads' sources.
init_template() {
	as_pg "$PGBIN/initdb" -D "$1" -A trust -U postgres -k >/dev/null
	cat >>"$1/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$work'
shared_buffers = 128MB
wal_level = replica
max_wal_size = 1GB
autovacuum = off  # the same data change on every copy, nothing else
CONF
}

# --- workload W3-W5 (and S1-S2's source): a pgbench database in a stopped cluster
if [ "$pgbench_run" = 1 ] || [ "$standby_run" = 1 ]; then
	log "creating the W3-W5 cluster: pgbench -i -s $BACKUP_SCALE, data checksums on"
	t0=$(date +%s)
	# Each tool's copy appends its port, archive_mode = on and its
	# archive_command (scripts/bench/backup.go).
	init_template "$work/bk-template"
	as_pg "$PGBIN/pg_ctl" -D "$work/bk-template" -l "$work/bk-template.log" -o "-p 5499" -w start >/dev/null
	as_pg "$PGBIN/pgbench" -h "$work" -p 5499 -U postgres -i -q -s "$BACKUP_SCALE" postgres >/dev/null 2>&1 ||
		die "pgbench -i -s $BACKUP_SCALE failed"
	as_pg "$PGBIN/psql" -X -h "$work" -p 5499 -U postgres -d postgres -qc CHECKPOINT
	as_pg "$PGBIN/pg_ctl" -D "$work/bk-template" -m fast -w stop >/dev/null
	bk_bytes=$(du -sb "$work/bk-template" | cut -f1)
	bk_wal=$(du -sb "$work/bk-template/pg_wal" | cut -f1)
	log "W3-W5 cluster: $((bk_bytes >> 20)) MiB ($((bk_wal >> 20)) MiB of pg_wal) in $(($(date +%s) - t0)) s"
	standby_about="| workload S1-S2 | a copy of the W3-W5 cluster (\`pgbench -i -s $BACKUP_SCALE\`, data directory $((bk_bytes >> 20)) MiB) started as the source, archiving into filesystem repositories |"
	backup_about="| workload W3-W5 | \`pgbench -i -s $BACKUP_SCALE\`, data checksums on, autovacuum off: data directory $((bk_bytes >> 20)) MiB ($((bk_wal >> 20)) MiB of it pg_wal); one stopped copy per tool, store and compression |"
fi

# --- workload W6-W7: many small tables in a stopped cluster ---------------------
if [ "$many_run" = 1 ]; then
	log "creating the W6-W7 cluster: $MANY_TABLES tables of one row, data checksums on"
	t0=$(date +%s)
	init_template "$work/mf-template"
	echo "max_locks_per_transaction = 512  # mf_digest() reads every table in one transaction" >>"$work/mf-template/postgresql.conf"
	as_pg "$PGBIN/pg_ctl" -D "$work/mf-template" -l "$work/mf-template.log" -o "-p 5498 -c fsync=off" -w start >/dev/null
	mf_psql() { as_pg "$PGBIN/psql" -X -v ON_ERROR_STOP=1 -h "$work" -p 5498 -U postgres -d postgres -qAt "$@"; }
	# No text column, so no TOAST table: one 8 KiB heap file per table.
	mf_psql -c "DO \$\$ BEGIN FOR i IN 1..$MANY_TABLES LOOP
		EXECUTE format('CREATE TABLE mf_%s (id int, v int)', i);
		EXECUTE format('INSERT INTO mf_%s VALUES (%s, 0)', i, i);
		IF i % 500 = 0 THEN COMMIT; END IF; END LOOP; END \$\$" || die "creating $MANY_TABLES tables failed"
	mf_psql -c "CREATE FUNCTION mf_digest() RETURNS text LANGUAGE plpgsql AS \$\$
		DECLARE t bigint := 0; n bigint := 0; s bigint := 0; r record; c bigint; x bigint;
		BEGIN
			FOR r IN SELECT relname FROM pg_class WHERE relkind = 'r' AND relname ~ '^mf_[0-9]+\$' LOOP
				EXECUTE format('SELECT count(*), coalesce(sum(id::bigint * 1000003 + v), 0) FROM %I', r.relname) INTO c, x;
				t := t + 1; n := n + c; s := s + x;
			END LOOP;
			RETURN t || '/' || n || '/' || s;
		END \$\$" >/dev/null
	mf_psql -c CHECKPOINT
	as_pg "$PGBIN/pg_ctl" -D "$work/mf-template" -m fast -w stop >/dev/null
	mf_bytes=$(du -sb "$work/mf-template" | cut -f1)
	mf_wal=$(du -sb "$work/mf-template/pg_wal" | cut -f1)
	mf_files=$(find "$work/mf-template" -type f | wc -l)
	mf_wal_files=$(find "$work/mf-template/pg_wal" -type f | wc -l)
	log "W6-W7 cluster: $mf_files files, $((mf_bytes >> 20)) MiB ($((mf_wal >> 20)) MiB of pg_wal) in $(($(date +%s) - t0)) s"
	many_about="| workload W6-W7 | $MANY_TABLES tables \`(id int, v int)\` of one row each, data checksums on, autovacuum off: $((mf_files - mf_wal_files)) files outside pg_wal, data directory $((mf_bytes >> 20)) MiB ($((mf_wal >> 20)) MiB of it pg_wal); one stopped copy per tool, store and compression |"
fi

# --- workload F1-F2 ------------------------------------------------------------------
if [ "$failover_run" = 1 ]; then
	failover_about="| workload F1-F2 | per tool two PostgreSQL servers a and b (data checksums, \`pgbench -i -s 10\`, asynchronous streaming, TCP on 127.0.0.1); a writer commits numbered rows one at a time to whichever server accepts them (the last that did first; 2 ms between rows); walferry's pair archives into a filesystem repository, Patroni's does not archive |"
fi

# --- the run ---------------------------------------------------------------------
invocation=""
[ -z "$PGBACKREST_GIVEN" ] || invocation="PGBACKREST=$PGBACKREST_GIVEN "
for v in BENCH_WORKLOADS BENCH_FAILOVER_ROUNDS BENCH_MANY_TABLES BENCH_SEGMENTS BENCH_SCALE BENCH_BACKUP_SCALE BENCH_ROUNDS BENCH_STORES BENCH_COMPRESSIONS BENCH_LAG_SECONDS BENCH_LAG_TPS; do
	if [ -n "${!v:-}" ]; then invocation="$invocation$v=${!v} "; fi
done
invocation="${invocation}make bench"
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
mem=$(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)
{
	echo "Run of $(date -u '+%Y-%m-%d %H:%M UTC') by \`$invocation\` (scripts/bench/run.sh)."
	echo
	echo "| | |"
	echo "|---|---|"
	echo "| machine | $(nproc) CPUs ($cpu), $mem RAM, $(uname -sr) |"
	echo "| walferry | $version, commit $commit ($(go env GOVERSION), zstd: $("$work/bin/walferry" version --json | sed -n 's/.*"zstd": "\(.*\)".*/\1/p')); the daemon variants' hook is walferry-hook |"
	echo "| pgBackRest | $pb_version ($pb_source) |"
	echo "| PostgreSQL | $("$PGBIN/postgres" --version | sed 's/.*) //') (pgbench, segments of 16 MiB) |"
	[ "$port" = 0 ] || echo "| MinIO | $(go version -m "$MINIO_BIN" 2>/dev/null | awk '$1 == "mod" { print $3 }'), one drive in the run's directory, TLS with a self-signed certificate, on the same machine |"
} >"$work/about.md"
log "running $WORKLOADS (logs in $work/logs)"
AWS_ACCESS_KEY_ID=$S3_KEY AWS_SECRET_ACCESS_KEY=$S3_SECRET AWS_REGION=us-east-1 \
	SSL_CERT_FILE=$work/certs/public.crt AWS_CA_BUNDLE=$work/certs/public.crt \
	"$work/bin/bench" all --work "$work" --walferry "$work/bin/walferry" --walferry-hook "$work/bin/walferry-hook" \
	--pgbackrest "$PGBACKREST" \
	--workloads "$WORKLOADS" --rounds "$ROUNDS" --pgbin "$PGBIN" --socket-dir "$work" \
	--template "$work/template" --wal "$work/wal" --wal-about "${wal_about:-}" \
	--backup-template "$([ -d "$work/bk-template" ] && echo "$work/bk-template")" --backup-about "${backup_about:-}" \
	--many-template "$([ -d "$work/mf-template" ] && echo "$work/mf-template")" --many-about "${many_about:-}" --many-tables "$MANY_TABLES" \
	--standby-about "${standby_about:-}" \
	--failover-rounds "$FAILOVER_ROUNDS" --etcd "$ETCD_BIN" --failover-about "${failover_about:-}" \
	--standby-rounds "$STANDBY_ROUNDS" --lag-duration "${LAG_SECONDS}s" --lag-tps "$LAG_TPS" \
	--s3-endpoint "https://127.0.0.1:$port" --s3-bucket "$BUCKET" --s3-key "$S3_KEY" --s3-secret "$S3_SECRET" \
	--ca-cert "$work/certs/public.crt" --stores "$STORES" --compressions "$COMPRESSIONS" \
	--about "$work/about.md" --out "$OUT"
log "report written to $OUT"
