# walferry's image: walferry and walferry-hook, static, on distroless.
# `make image` builds it (docker or podman); docs/kubernetes.md uses it for
# the init container (walferry bootstrap), the native sidecar and the
# backup CronJob.
#
# Build stage: scripts/build.sh, as `make build`: libzstd through cgo when
# a C compiler is there (the golang image has gcc and the static libc), a
# static binary either way; CGO=0 builds the pure-Go zstd.
FROM golang:1.26.10-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
ARG COMMIT=unknown
ARG CGO=
RUN GO=go CGO="$CGO" VERSION="$VERSION" COMMIT="$COMMIT" bash scripts/build.sh /out

# Run stage: no shell, no package manager, CA certificates for the object
# stores. walferry-hook is next to walferry, where walferry bootstrap
# --install-bin looks for it.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/walferry /out/walferry-hook /usr/local/bin/
# The postgres image's user: the pod runs every container as it, so the
# sidecar can signal the postmaster and reach its socket as a peer.
USER 999:999
ENTRYPOINT ["/usr/local/bin/walferry"]
CMD ["--help"]
