#!/usr/bin/env bash
# Installs everything the integration tests need, idempotently:
#   PostgreSQL 15 (Debian package), MinIO, fake-gcs-server, Azurite, curl,
#   kube-apiserver + etcd built from tools/kube (internal/testenv.Kube), and
#   govulncheck with a local vulnerability database (make vulncheck).
# Tools that are not Debian packages go to a cache outside the clone,
# ${WALFERRY_CACHE:-$HOME/.cache/walferry}, so fresh clones (CI) reuse them.
# Whatever is already present is left alone. Any failed install exits non-zero.
set -euo pipefail

HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
CACHE="${WALFERRY_CACHE:-$HOME/.cache/walferry}"
MINIO_VERSION="${WALFERRY_MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"
FAKEGCS_VERSION="${WALFERRY_FAKEGCS_VERSION:-v1.56.1}"
AZURITE_VERSION="${WALFERRY_AZURITE_VERSION:-3}"
PGBIN="${WALFERRY_TEST_PGBIN:-/usr/lib/postgresql/15/bin}"

log() { echo "install-test-deps: $*" >&2; }
die() { echo "install-test-deps: ERROR: $*" >&2; exit 1; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	command -v sudo >/dev/null 2>&1 && SUDO="sudo"
fi

apt_updated=0
apt_install() {
	command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
	if [ "$apt_updated" -eq 0 ]; then
		log "apt-get update"
		$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 ||
			die "apt-get update failed"
		apt_updated=1
	fi
	log "apt-get install -y $*"
	$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
		die "apt-get install $* failed"
}

mkdir -p "$CACHE/bin" || die "cannot create cache directory $CACHE"

# --- curl --------------------------------------------------------------------
if command -v curl >/dev/null 2>&1; then
	log "found curl: $(command -v curl)"
else
	apt_install curl ca-certificates
	command -v curl >/dev/null 2>&1 || die "curl still missing after install"
	log "installed curl"
fi

# --- PostgreSQL 15 -------------------------------------------------------------
if [ -x "$PGBIN/initdb" ]; then
	log "found PostgreSQL: $("$PGBIN/postgres" --version 2>/dev/null || echo "$PGBIN")"
else
	apt_install postgresql-15
	[ -x "$PGBIN/initdb" ] || die "postgresql-15 installed but $PGBIN/initdb is missing"
	log "installed PostgreSQL: $("$PGBIN/postgres" --version)"
fi
# Tests run PostgreSQL as the postgres OS user (it refuses to run as root).
if ! id postgres >/dev/null 2>&1; then
	log "creating OS user postgres"
	$SUDO useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres ||
		die "could not create the postgres user"
fi
log "found OS user postgres: $(id postgres)"

# --- Go tools --------------------------------------------------------------------
go_tool() { # name module version [the binary go install writes, when not name]
	local name=$1 module=$2 version=$3 built=${4:-$1}
	if [ -x "$CACHE/bin/$name" ]; then
		log "found $name: $CACHE/bin/$name"
		return
	fi
	command -v go >/dev/null 2>&1 || die "go is required to install $name"
	log "installing $name ($module@$version) into $CACHE/bin (this takes a few minutes)"
	if [ "$built" = "$name" ]; then
		(cd "$CACHE" && GOBIN="$CACHE/bin" go install "$module@$version") >&2 ||
			die "go install $module@$version failed"
	else
		(cd "$CACHE" && GOBIN="$CACHE/bin/.install" go install "$module@$version") >&2 ||
			die "go install $module@$version failed"
		mv -f "$CACHE/bin/.install/$built" "$CACHE/bin/$name" || die "cannot move $built to $CACHE/bin/$name"
	fi
	[ -x "$CACHE/bin/$name" ] || die "go install succeeded but $CACHE/bin/$name is missing"
	log "installed $name: $CACHE/bin/$name"
}
go_tool minio github.com/minio/minio "$MINIO_VERSION"
go_tool fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKEGCS_VERSION"

# --- govulncheck and its database (make vulncheck) -----------------------------
# vuln.go.dev cannot be reached from every machine, so the database is built
# from the OSV entries the module golang.org/x/vulndb ships (tools/vulndb),
# once per version, into $CACHE/vulndb-VERSION; $CACHE/vulndb points at it.
# A newer VULNDB_VERSION brings newer advisories.
GOVULNCHECK_VERSION="${WALFERRY_GOVULNCHECK_VERSION:-v1.9.0}"
VULNDB_VERSION="${WALFERRY_VULNDB_VERSION:-v0.0.0-20261105234957-e22db6528018}"
go_tool "govulncheck-$GOVULNCHECK_VERSION" golang.org/x/vuln/cmd/govulncheck "$GOVULNCHECK_VERSION" govulncheck
ln -sfn "govulncheck-$GOVULNCHECK_VERSION" "$CACHE/bin/govulncheck" || die "cannot link $CACHE/bin/govulncheck"
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -f "$CACHE/vulndb-$VULNDB_VERSION/index/modules.json" ]; then
	log "found vulnerability database: $CACHE/vulndb-$VULNDB_VERSION"
else
	log "building the vulnerability database from golang.org/x/vulndb@$VULNDB_VERSION into $CACHE/vulndb-$VULNDB_VERSION"
	(cd "$REPO_ROOT" && go run ./tools/vulndb -module "golang.org/x/vulndb@$VULNDB_VERSION" -out "$CACHE/vulndb-$VULNDB_VERSION") >&2 ||
		die "building the vulnerability database failed"
fi
ln -sfn "vulndb-$VULNDB_VERSION" "$CACHE/vulndb" || die "cannot link $CACHE/vulndb"

# --- kube-apiserver and etcd (tools/kube) ------------------------------------------
# Built from source through the Go module proxy (no release downloads, no
# Docker) by the separate module tools/kube, whose go.mod and go.sum pin every
# version. Each binary is cached under a name that carries its version, and
# $CACHE/bin/kube-apiserver and $CACHE/bin/etcd point at the current ones, so a
# machine builds a version once and a version bump in tools/kube/go.mod builds
# the new one. First build on 2 cores: kube-apiserver about 10 minutes, etcd
# about 1 minute.
KUBE_TOOLS="$(cd "$(dirname "${BASH_SOURCE[0]}")/../tools/kube" && pwd)"
kube_tool() { # name package cache-name ldflags
	local name=$1 pkg=$2 file=$3 ldflags=$4
	if [ -x "$CACHE/bin/$file" ]; then
		log "found $name: $CACHE/bin/$file"
	else
		log "building $name ($pkg) into $CACHE/bin/$file (kube-apiserver: about 10 minutes on 2 cores, etcd: about 1)"
		local start=$SECONDS
		(cd "$KUBE_TOOLS" && CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
			go build -trimpath -ldflags "$ldflags" -o "$CACHE/bin/$file.tmp" "$pkg") >&2 ||
			die "go build $pkg in $KUBE_TOOLS failed"
		mv -f "$CACHE/bin/$file.tmp" "$CACHE/bin/$file" || die "cannot move $file into $CACHE/bin"
		log "built $name in $((SECONDS - start))s: $CACHE/bin/$file"
	fi
	ln -sfn "$file" "$CACHE/bin/$name" || die "cannot link $CACHE/bin/$name to $file"
}
command -v go >/dev/null 2>&1 || die "go is required to build kube-apiserver and etcd"
KUBE_VERSION=$(cd "$KUBE_TOOLS" && go list -m -f '{{.Version}}' k8s.io/kubernetes) ||
	die "cannot read the k8s.io/kubernetes version from $KUBE_TOOLS/go.mod"
ETCD_VERSION=$(cd "$KUBE_TOOLS" && go list -m -f '{{.Version}}' go.etcd.io/etcd/server/v3) ||
	die "cannot read the etcd version from $KUBE_TOOLS/go.mod"
# The wrapper's own source is part of etcd's key: its flags are what
# internal/testenv passes.
ETCD_KEY="$ETCD_VERSION-$(sha256sum "$KUBE_TOOLS/etcd/main.go" | cut -c1-8)"
kube_major=${KUBE_VERSION#v}
kube_minor=${kube_major#*.}
kube_major=${kube_major%%.*}
kube_minor=${kube_minor%%.*}
# The version the apiserver reports (/version, kubectl version) comes from
# these variables; a plain go build would report v0.0.0-master.
kube_ldflags="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
	kube_ldflags="$kube_ldflags -X $p.gitVersion=$KUBE_VERSION -X $p.gitMajor=$kube_major"
	kube_ldflags="$kube_ldflags -X $p.gitMinor=$kube_minor -X $p.gitTreeState=clean"
	kube_ldflags="$kube_ldflags -X $p.buildDate=1970-01-01T00:00:00Z"
done
kube_tool kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "kube-apiserver-$KUBE_VERSION" "$kube_ldflags"
kube_tool etcd ./etcd "etcd-$ETCD_KEY" "-s -w"

# --- Azurite (npm) ---------------------------------------------------------------
AZURITE_BIN="$CACHE/azurite/node_modules/.bin/azurite-blob"
if [ -x "$AZURITE_BIN" ]; then
	log "found azurite-blob: $AZURITE_BIN"
else
	if ! command -v npm >/dev/null 2>&1; then
		apt_install nodejs npm
	fi
	command -v node >/dev/null 2>&1 || die "node is required for Azurite"
	log "installing azurite@$AZURITE_VERSION into $CACHE/azurite"
	mkdir -p "$CACHE/azurite"
	npm install --no-audit --no-fund --loglevel=error --prefix "$CACHE/azurite" "azurite@$AZURITE_VERSION" >&2 ||
		die "npm install azurite@$AZURITE_VERSION failed"
	[ -x "$AZURITE_BIN" ] || die "npm install succeeded but $AZURITE_BIN is missing"
	log "installed azurite-blob: $AZURITE_BIN"
fi

log "all test dependencies present (cache: $CACHE)"
