#!/usr/bin/env bash
# Builds walferry and walferry-hook into DIR (default bin/), static, with
# the version and commit stamped. Used by `make build`, the demo and the
# benchmarks, so all three run the same binary.
#
# walferry's zstd is libzstd (compiled in through cgo by
# github.com/DataDog/zstd, see internal/libzstd) when a C compiler is here:
# about 1.3x faster compression and 1.7x faster decompression than the
# pure-Go zstd, with a quarter of the encoder memory. Without one, or with
# CGO=0, it is the pure-Go zstd; both read and write the same objects.
# walferry-hook never needs cgo (it compresses nothing).
#
# Environment: CGO (1 or 0; default 1 when $CC, else cc or gcc, is found),
# VERSION, COMMIT, GO (default go).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/bin}
GO=${GO:-go}
VERSION=${VERSION:-$(git -C "$root" describe --tags --always --dirty 2>/dev/null || echo dev)}
COMMIT=${COMMIT:-$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
ldflags="-X main.version=$VERSION -X main.commit=$COMMIT"

if [[ -z ${CGO:-} ]]; then
	CGO=0
	for cc in "${CC:-}" cc gcc; do
		if [[ -n $cc ]] && command -v "$cc" >/dev/null 2>&1; then
			CGO=1
			break
		fi
	done
fi

mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cd "$root"
if [[ $CGO == 1 ]]; then
	# netgo, osusergo: the Go resolver and user lookup, so the static glibc
	# link needs no NSS modules at run time.
	if ! CGO_ENABLED=1 "$GO" build -trimpath -tags netgo,osusergo \
		-ldflags "$ldflags -linkmode external -extldflags -static" -o "$tmp/walferry" ./cmd/walferry; then
		echo "build.sh: the static cgo build failed: it needs a C compiler and the static C library (Debian: apt-get install build-essential); CGO=0 builds walferry with the pure-Go zstd instead" >&2
		exit 1
	fi
else
	echo "build.sh: no C compiler (or CGO=0): walferry uses the pure-Go zstd" >&2
	CGO_ENABLED=0 "$GO" build -trimpath -ldflags "$ldflags" -o "$tmp/walferry" ./cmd/walferry
fi
CGO_ENABLED=0 "$GO" build -trimpath -o "$tmp/walferry-hook" ./cmd/walferry-hook
# Copied into place rather than linked there: a file fresh from the linker
# sits in the page cache in large folios, and every process started from it
# then counts ~13 MB more resident memory than from a copy (measured with
# the external linker), which would distort the benchmarks' peak RSS.
install -m 0755 "$tmp/walferry" "$tmp/walferry-hook" "$out/"
