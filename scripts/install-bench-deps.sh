#!/usr/bin/env bash
# Installs what `make bench` needs on top of the test dependencies,
# idempotently: pgBackRest (Debian package, the tool walferry is compared
# with), openssl (a self-signed certificate for the TLS MinIO pgBackRest
# talks to), and the test dependencies themselves (PostgreSQL 15, MinIO).
# Whatever is already present is left alone. Any failed install exits non-zero.
set -euo pipefail

log() { echo "install-bench-deps: $*" >&2; }
die() { echo "install-bench-deps: ERROR: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
bash "$root/scripts/install-test-deps.sh"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null 2>&1 && SUDO="sudo"
fi

apt_updated=0
apt_install() {
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
	if [ "$apt_updated" -eq 0 ]; then
		log "apt-get update"
		$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 || die "apt-get update failed"
		apt_updated=1
	fi
	log "apt-get install -y $*"
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
		die "apt-get install $* failed"
}

# PGBACKREST=/path (e.g. the current release built from source, see
# docs/benchmarks.md) replaces Debian's package, which is then not needed.
tools="pgbackrest:pgbackrest openssl:openssl python3:python3"
if [ -n "${PGBACKREST:-}" ]; then
	[ -x "$PGBACKREST" ] || die "PGBACKREST=$PGBACKREST is not an executable"
	tools="openssl:openssl python3:python3"
fi
# F1-F2 (BENCH_PATRONI=1 from run.sh): Patroni, walferry's peer for failover.
[ "${BENCH_PATRONI:-0}" = 1 ] && tools="$tools patroni:patroni patronictl:patroni"
for tool in $tools; do
	cmd=${tool%%:*} pkg=${tool#*:}
	if command -v "$cmd" >/dev/null 2>&1; then
		log "found $cmd: $(command -v "$cmd")"
	else
		apt_install "$pkg"
		command -v "$cmd" >/dev/null 2>&1 || die "$pkg installed but $cmd is missing"
		log "installed $cmd"
	fi
done
# pgbench (W1-W5's data), psql and pg_ctl (W3-W5 run and check clusters)
# ship with the postgresql-15 package install-test-deps.sh installs.
PGBIN="${WALFERRY_TEST_PGBIN:-/usr/lib/postgresql/15/bin}"
for prog in pgbench psql pg_ctl initdb; do
	[ -x "$PGBIN/$prog" ] || die "$PGBIN/$prog is missing (postgresql-15 / postgresql-contrib)"
done
log "pgBackRest: $("${PGBACKREST:-pgbackrest}" version)"
log "all benchmark dependencies present"
