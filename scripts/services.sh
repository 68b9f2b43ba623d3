#!/usr/bin/env bash
# Starts and stops the object-store emulators the integration tests use:
# MinIO (S3), fake-gcs-server (GCS) and Azurite (Azure Blob), each on
# 127.0.0.1 with a random free port, state under one directory.
#
#   eval "$(scripts/services.sh start)"   # start, export WALFERRY_TEST_* vars
#   scripts/services.sh env                # print the exports again
#   scripts/services.sh stop               # stop them, remove the state dir
#   scripts/services.sh run -- CMD ARGS... # start, run CMD with the vars set,
#                                          # always stop; exits with CMD's status
#
# The state directory is ${WALFERRY_SERVICES_DIR:-$(mktemp -d)}; stop and env
# find it through WALFERRY_SERVICES_DIR (or take it as their argument).
# Only `export` lines go to stdout; all logging goes to stderr.
# Binaries come from ${WALFERRY_CACHE:-$HOME/.cache/walferry} (filled by
# scripts/install-test-deps.sh), falling back to PATH.
set -euo pipefail

HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${WALFERRY_CACHE:-$HOME/.cache/walferry}"
TIMEOUT="${WALFERRY_SERVICES_TIMEOUT:-90}" # seconds per service
BUCKET=walferry-test
MARKER=.walferry-services
AZURE_KEY='Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
SERVICES=(minio gcs azurite)

log() { echo "services: $*" >&2; }
die() { echo "services: ERROR: $*" >&2; exit 1; }

usage() {
	echo "usage: $0 start|stop|env [STATE_DIR] | run -- CMD [ARGS...]" >&2
	exit 2
}

find_bin() { # name cache-path
	if [ -x "$2" ]; then
		echo "$2"
	elif command -v "$1" >/dev/null 2>&1; then
		command -v "$1"
	else
		die "$1 not found (looked in $2 and PATH); run scripts/install-test-deps.sh"
	fi
}

# --- ports ------------------------------------------------------------------
PICKED=" "
port_in_use() { # port: true when something accepts connections on it
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}
# Sets PORT to a free port not handed out before by this script.
pick_port() {
	local p i
	for i in $(seq 1 100); do
		p=""
		if command -v python3 >/dev/null 2>&1; then
			# The kernel picks a free ephemeral port.
			p=$(python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' 2>/dev/null) || p=""
		fi
		if [ -z "$p" ]; then
			p=$((20000 + (RANDOM * 32768 + RANDOM) % 30000))
		fi
		case "$PICKED" in *" $p "*) continue ;; esac
		port_in_use "$p" && continue
		PICKED="$PICKED$p "
		PORT=$p
		return 0
	done
	die "could not find a free TCP port"
}

# Socket inodes of TCP listeners on 127.0.0.1/0.0.0.0/:: port $1.
listen_inodes() {
	local hex
	hex=$(printf '%04X' "$1")
	awk -v hex="$hex" 'NR > 1 && $4 == "0A" { n = split($2, a, ":"); if (a[n] == hex) print $10 }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null || true
}
# True when process $1 itself holds the listening socket on port $2, so a
# health answer really comes from our process and not from whoever won a race
# for the port. Without /proc we cannot tell and trust the answer.
owns_port() {
	local pid=$1 port=$2 inode fds
	[ -r /proc/net/tcp ] || return 0
	fds=$(ls -l "/proc/$pid/fd" 2>/dev/null) || return 1
	for inode in $(listen_inodes "$port"); do
		case "$fds" in *"socket:[$inode]"*) return 0 ;; esac
	done
	return 1
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# True when pid $1 is alive and its command line mentions $2 (guards against
# a recycled pid: we only ever signal processes we started).
is_ours() {
	local pid=$1 want=$2 cmd
	alive "$pid" || return 1
	[ -r "/proc/$pid/cmdline" ] || return 0
	cmd=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
	case "$cmd" in *"$want"*) return 0 ;; esac
	return 1
}

# --- per-service launch and health --------------------------------------------
# Each launch_* starts one process in the background, writing $DIR/NAME.pid,
# $DIR/NAME.port and $DIR/NAME.log.
launch_minio() {
	local port=$1 console
	pick_port
	console=$PORT
	mkdir -p "$DIR/minio-data"
	MINIO_ROOT_USER="$S3_ACCESS_KEY" MINIO_ROOT_PASSWORD="$S3_SECRET_KEY" \
		MINIO_BROWSER=off MINIO_UPDATE=off MINIO_CI_CD=1 \
		"$MINIO_BIN" server --quiet --address "127.0.0.1:$port" \
		--console-address "127.0.0.1:$console" "$DIR/minio-data" \
		</dev/null >"$DIR/minio.log" 2>&1 &
	echo $! >"$DIR/minio.pid"
}
health_minio() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/minio/health/live" 2>/dev/null; }

launch_gcs() {
	local port=$1
	"$FAKEGCS_BIN" -scheme http -host 127.0.0.1 -port "$port" -backend memory \
		-external-url "http://127.0.0.1:$port" -public-host "127.0.0.1:$port" \
		-log-level warn \
		</dev/null >"$DIR/gcs.log" 2>&1 &
	echo $! >"$DIR/gcs.pid"
}
health_gcs() { curl -fsS -o /dev/null --max-time 2 "http://127.0.0.1:$1/storage/v1/b" 2>/dev/null; }

launch_azurite() {
	local port=$1
	mkdir -p "$DIR/azurite-data"
	"$AZURITE_BIN" --skipApiVersionCheck --loose --disableTelemetry --blobHost 127.0.0.1 --blobPort "$port" \
		--location "$DIR/azurite-data" \
		</dev/null >"$DIR/azurite.log" 2>&1 &
	echo $! >"$DIR/azurite.pid"
}
health_azurite() {
	# Any HTTP answer (an auth error included) means the server is up.
	local code
	code=$(curl -s -o /dev/null --max-time 2 -w '%{http_code}' \
		"http://127.0.0.1:$1/devstoreaccount1?comp=list" 2>/dev/null) || true
	[ -n "$code" ] && [ "$code" != 000 ]
}

match_of() { # what /proc/PID/cmdline of each service contains
	case $1 in
	minio) echo "minio" ;;
	gcs) echo "fake-gcs-server" ;;
	azurite) echo "azurite" ;;
	esac
}

# Waits for all launched services; relaunches one on a new port when its
# process dies (a port collision, typically). Sets READY_<name>=1.
wait_all() {
	local name port pid now tries
	declare -A tries_of=() started_at=()
	for name in "${SERVICES[@]}"; do
		tries_of[$name]=1
		started_at[$name]=$(date +%s)
	done
	local pending=("${SERVICES[@]}")
	while [ ${#pending[@]} -gt 0 ]; do
		local next=()
		for name in "${pending[@]}"; do
			port=$(cat "$DIR/$name.port")
			pid=$(cat "$DIR/$name.pid")
			if "health_$name" "$port" && alive "$pid" && owns_port "$pid" "$port"; then
				log "$name ready on 127.0.0.1:$port (pid $pid, $(($(date +%s) - T0))s)"
				continue
			fi
			now=$(date +%s)
			if ! alive "$pid" || { "health_$name" "$port" && ! owns_port "$pid" "$port"; }; then
				# Our process died, or another process answers on our port:
				# a lost race for the port is retried on a fresh one; any
				# other death is a real failure.
				if ! alive "$pid" && ! grep -qiE 'already in use|EADDRINUSE' "$DIR/$name.log" 2>/dev/null; then
					fail "$name exited while starting on port $port"
				fi
				tries=${tries_of[$name]}
				[ "$tries" -ge 5 ] && fail "$name: lost its port to another process $tries times in a row"
				log "$name lost port $port to another process; retrying on a new port"
				if is_ours "$pid" "$(match_of "$name")"; then
					kill "$pid" 2>/dev/null || true
					wait "$pid" 2>/dev/null || true
				fi
				pick_port
				port=$PORT
				echo "$port" >"$DIR/$name.port"
				"launch_$name" "$port"
				tries_of[$name]=$((tries + 1))
				started_at[$name]=$now
				next+=("$name")
				continue
			fi
			if [ $((now - ${started_at[$name]})) -ge "$TIMEOUT" ]; then
				fail "$name did not answer on 127.0.0.1:$port within ${TIMEOUT}s"
			fi
			next+=("$name")
		done
		pending=("${next[@]+"${next[@]}"}")
		[ ${#pending[@]} -gt 0 ] && sleep 0.2
	done
	return 0
}

# On a failed start: show the logs, stop what was started, exit non-zero.
fail() {
	local name
	echo "services: ERROR: $*" >&2
	for name in "${SERVICES[@]}"; do
		if [ -s "$DIR/$name.log" ]; then
			echo "----- last lines of $DIR/$name.log -----" >&2
			tail -n 30 "$DIR/$name.log" >&2
		fi
	done
	echo "-----" >&2
	stop_dir "$DIR"
	exit 1
}

create_buckets() {
	local s3=$1 gcs=$2 code
	code=$(curl -sS -o "$DIR/bucket.out" -w '%{http_code}' --max-time 20 \
		--aws-sigv4 "aws:amz:us-east-1:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
		-X PUT "http://127.0.0.1:$s3/$BUCKET") || code=000
	case $code in
	200) log "created bucket $BUCKET in MinIO" ;;
	409) log "bucket $BUCKET already exists in MinIO" ;;
	*)
		cat "$DIR/bucket.out" >&2 2>/dev/null || true
		fail "creating bucket $BUCKET in MinIO failed (HTTP $code)"
		;;
	esac
	code=$(curl -sS -o "$DIR/bucket.out" -w '%{http_code}' --max-time 20 \
		-H 'Content-Type: application/json' -d "{\"name\":\"$BUCKET\"}" \
		-X POST "http://127.0.0.1:$gcs/storage/v1/b?project=test") || code=000
	case $code in
	200) log "created bucket $BUCKET in fake-gcs-server" ;;
	409) log "bucket $BUCKET already exists in fake-gcs-server" ;;
	*)
		cat "$DIR/bucket.out" >&2 2>/dev/null || true
		fail "creating bucket $BUCKET in fake-gcs-server failed (HTTP $code)"
		;;
	esac
	rm -f "$DIR/bucket.out"
}

write_env() {
	local s3 gcs az
	s3=$(cat "$DIR/minio.port")
	gcs=$(cat "$DIR/gcs.port")
	az=$(cat "$DIR/azurite.port")
	{
		printf "export WALFERRY_TEST_S3_ENDPOINT='http://127.0.0.1:%s'\n" "$s3"
		printf "export WALFERRY_TEST_S3_ACCESS_KEY='%s'\n" "$S3_ACCESS_KEY"
		printf "export WALFERRY_TEST_S3_SECRET_KEY='%s'\n" "$S3_SECRET_KEY"
		printf "export WALFERRY_TEST_S3_BUCKET='%s'\n" "$BUCKET"
		printf "export WALFERRY_TEST_S3_REGION='us-east-1'\n"
		printf "export WALFERRY_TEST_GCS_EMULATOR_HOST='127.0.0.1:%s'\n" "$gcs"
		printf "export WALFERRY_TEST_GCS_BUCKET='%s'\n" "$BUCKET"
		printf "export WALFERRY_TEST_AZURE_CONNECTION_STRING='DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=%s;BlobEndpoint=http://127.0.0.1:%s/devstoreaccount1;'\n" "$AZURE_KEY" "$az"
		printf "export WALFERRY_TEST_AZURE_CONTAINER='%s'\n" "$BUCKET"
		printf "export WALFERRY_TEST_PGBIN='%s'\n" "${WALFERRY_TEST_PGBIN:-/usr/lib/postgresql/15/bin}"
		printf "export WALFERRY_SERVICES_DIR='%s'\n" "$DIR"
	} >"$DIR/env.tmp"
	mv "$DIR/env.tmp" "$DIR/env"
	chmod 644 "$DIR/env"
}

all_running() { # dir
	local name pid
	[ -f "$1/env" ] || return 1
	for name in "${SERVICES[@]}"; do
		pid=$(cat "$1/$name.pid" 2>/dev/null) || return 1
		is_ours "$pid" "$(match_of "$name")" || return 1
	done
}

cmd_start() {
	T0=$(date +%s)
	if [ -n "${WALFERRY_SERVICES_DIR:-}" ]; then
		DIR=$WALFERRY_SERVICES_DIR
		if all_running "$DIR"; then
			log "already running (state in $DIR)"
			cat "$DIR/env"
			return 0
		fi
		if [ -d "$DIR" ] && [ -n "$(ls -A "$DIR")" ] && [ ! -e "$DIR/$MARKER" ]; then
			die "$DIR is not empty and is not a services state directory; refusing to use it"
		fi
		stop_processes "$DIR"
		mkdir -p "$DIR"
	else
		DIR=$(mktemp -d "${TMPDIR:-/tmp}/walferry-services.XXXXXX")
	fi
	DIR=$(cd "$DIR" && pwd)
	touch "$DIR/$MARKER"
	# Interrupted while starting: stop what is already up, remove the dir.
	trap 'trap - EXIT; stop_dir "$DIR"; exit 130' INT
	trap 'trap - EXIT; stop_dir "$DIR"; exit 143' TERM
	# Tests run PostgreSQL as the postgres user; let it traverse the state dir.
	chmod 755 "$DIR"

	command -v curl >/dev/null 2>&1 || die "curl not found; run scripts/install-test-deps.sh"
	MINIO_BIN=$(find_bin minio "$CACHE/bin/minio")
	FAKEGCS_BIN=$(find_bin fake-gcs-server "$CACHE/bin/fake-gcs-server")
	AZURITE_BIN=$(find_bin azurite-blob "$CACHE/azurite/node_modules/.bin/azurite-blob")

	S3_ACCESS_KEY=walferry
	S3_SECRET_KEY=walferry-$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')
	echo "$S3_SECRET_KEY" >"$DIR/minio.secret"
	chmod 600 "$DIR/minio.secret"

	log "starting MinIO, fake-gcs-server and Azurite (state in $DIR)"
	local name port
	for name in "${SERVICES[@]}"; do
		pick_port
		port=$PORT
		echo "$port" >"$DIR/$name.port"
		"launch_$name" "$port"
	done
	wait_all
	create_buckets "$(cat "$DIR/minio.port")" "$(cat "$DIR/gcs.port")"
	write_env
	trap - INT TERM
	log "all services ready in $(($(date +%s) - T0))s; env in $DIR/env"
	cat "$DIR/env"
}

# Kills exactly the processes whose pid files are in $1: SIGTERM to all,
# then up to 15s for them to exit, then SIGKILL.
stop_processes() {
	local dir=$1 name pid i
	local -a names=() pids=()
	for name in "${SERVICES[@]}"; do
		[ -f "$dir/$name.pid" ] || continue
		pid=$(cat "$dir/$name.pid" 2>/dev/null) || pid=""
		if [ -n "$pid" ] && is_ours "$pid" "$(match_of "$name")"; then
			kill "$pid" 2>/dev/null || true
			names+=("$name")
			pids+=("$pid")
		fi
	done
	for i in "${!pids[@]}"; do
		pid=${pids[$i]}
		for _ in $(seq 1 75); do
			alive "$pid" || break
			sleep 0.2
		done
		if alive "$pid"; then
			log "${names[$i]} (pid $pid) ignored SIGTERM; sending SIGKILL"
			kill -9 "$pid" 2>/dev/null || true
		fi
		log "stopped ${names[$i]} (pid $pid)"
	done
	for name in "${SERVICES[@]}"; do rm -f "$dir/$name.pid"; done
}

stop_dir() {
	local dir=$1
	[ -d "$dir" ] || return 0
	if [ ! -e "$dir/$MARKER" ]; then
		log "$dir is not a services state directory; leaving it alone"
		return 0
	fi
	stop_processes "$dir"
	rm -rf "$dir"
	log "removed $dir"
}

cmd_stop() {
	local dir=${1:-${WALFERRY_SERVICES_DIR:-}}
	if [ -z "$dir" ]; then
		log "WALFERRY_SERVICES_DIR is unset; nothing to stop"
		return 0
	fi
	if [ ! -d "$dir" ]; then
		log "$dir does not exist; nothing to stop"
		return 0
	fi
	stop_dir "$dir"
}

cmd_env() {
	local dir=${1:-${WALFERRY_SERVICES_DIR:-}}
	[ -n "$dir" ] || die "WALFERRY_SERVICES_DIR is unset; start the services first"
	[ -f "$dir/env" ] || die "no $dir/env; are the services started?"
	all_running "$dir" || log "warning: not every service in $dir is running"
	cat "$dir/env"
}

cmd_run() {
	[ "${1:-}" = "--" ] && shift
	[ $# -gt 0 ] || usage
	local rc
	if [ -n "${WALFERRY_SERVICES_DIR:-}" ] && all_running "$WALFERRY_SERVICES_DIR"; then
		# Services someone started by hand: use them, leave them running.
		log "using the services already running in $WALFERRY_SERVICES_DIR"
	else
		if [ -z "${WALFERRY_SERVICES_DIR:-}" ]; then
			WALFERRY_SERVICES_DIR=$(mktemp -d "${TMPDIR:-/tmp}/walferry-services.XXXXXX")
			touch "$WALFERRY_SERVICES_DIR/$MARKER"
		fi
		# Stop the services however we leave: normal exit, failure, Ctrl-C,
		# TERM (from timeout, say), even while they are still starting.
		trap 'cmd_stop "$WALFERRY_SERVICES_DIR"' EXIT
		cmd_start >/dev/null
		trap 'exit 130' INT
		trap 'exit 143' TERM
	fi
	eval "$(cat "$WALFERRY_SERVICES_DIR/env")"
	set +e
	"$@"
	rc=$?
	set -e
	exit "$rc"
}

case "${1:-}" in
run)
	shift
	cmd_run "$@"
	;;
start)
	[ $# -le 2 ] || usage
	[ $# -eq 2 ] && WALFERRY_SERVICES_DIR=$2
	cmd_start
	;;
stop) cmd_stop "${2:-}" ;;
env) cmd_env "${2:-}" ;;
*) usage ;;
esac
