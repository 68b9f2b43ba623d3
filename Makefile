# walferry: build, test and tooling entry points. `make help` lists them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := build

GO      ?= go
# The Go toolchain every target builds and tests with: go1.26.10 carries
# the standard library's security fixes that govulncheck finds missing in
# go1.26.8 (net/http, crypto/tls, crypto/x509; docs/security.md). The go
# command fetches it through the module proxy once and caches it.
# GOTOOLCHAIN=local uses the installed Go instead.
GOTOOLCHAIN ?= go1.26.10
export GOTOOLCHAIN
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
# 1: libzstd through cgo; 0: the pure-Go zstd; empty: 1 when a C compiler is found.
CGO     ?=

# go test -timeout (per test binary).
TEST_TIMEOUT ?= 30m
# How long `make fuzz` runs each Fuzz* target.
FUZZTIME ?= 10s
# Storage backends whose conformance suite must run and pass in `make test`
# (package ./storage/NAME, a top-level test named Test*Conformance*).
CONFORMANCE_BACKENDS ?= fs s3 gcs azure
# Tests run PostgreSQL as the postgres OS user, which must be able to reach
# the test temp dirs: keep them under a world-traversable directory.
TEST_TMPDIR ?= /tmp

# Where `make install` puts walferry and walferry-hook, side by side.
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin

.PHONY: help build install image test test-unit vulncheck test-with-services test-faults test-faults-with-services vet fmt deps fuzz test-fuzz demo clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{ printf "  %-20s %s\n", $$1, $$2 }'

build: ## build bin/walferry and bin/walferry-hook (static, version and commit stamped; libzstd when a C compiler is here, CGO=0 for pure Go)
	GO=$(GO) CGO=$(CGO) VERSION=$(VERSION) COMMIT=$(COMMIT) bash scripts/build.sh bin

install: build ## install walferry and walferry-hook into BINDIR (default /usr/local/bin; DESTDIR honoured)
	install -d "$(DESTDIR)$(BINDIR)"
	install -m 0755 bin/walferry bin/walferry-hook "$(DESTDIR)$(BINDIR)/"

# The image `make image` builds (docker, else podman).
IMAGE ?= walferry:$(VERSION)

image: ## build the container image IMAGE (default walferry:VERSION) with docker or podman; see docs/kubernetes.md
	@tool=$$(command -v docker || command -v podman || true); \
	if [ -z "$$tool" ]; then \
		echo "make image: needs docker or podman, and neither is in PATH: install one (e.g. apt-get install podman), or run make build and put bin/walferry and bin/walferry-hook into an image of your own"; \
		exit 1; \
	fi; \
	echo "==> $$tool build -t $(IMAGE)"; \
	"$$tool" build --build-arg VERSION=$(VERSION) --build-arg COMMIT=$(COMMIT) --build-arg CGO=$(CGO) -t $(IMAGE) .

deps: ## install PostgreSQL 15, MinIO, fake-gcs-server, Azurite; build kube-apiserver and etcd from tools/kube once (~13 min) (idempotent)
	@bash scripts/install-test-deps.sh

vet: ## go vet + gofmt check
	$(GO) vet ./...
	@files=$$(find . -name '*.go' -not -path './.git/*' -not -path './bin/*' -not -path '*/testdata/*' -print0 | xargs -0 -r gofmt -l); \
	if [ -n "$$files" ]; then echo "gofmt: these files need formatting (run: make fmt):"; echo "$$files"; exit 1; fi
	@echo "vet: ok"

fmt: ## gofmt -w every Go file
	@find . -name '*.go' -not -path './.git/*' -not -path './bin/*' -not -path '*/testdata/*' -print0 | xargs -0 -r gofmt -w

test-unit: ## unit tests only: go test -short, no services
	TMPDIR=$(TEST_TMPDIR) $(GO) test -short -timeout $(TEST_TIMEOUT) ./...

# Where scripts/install-test-deps.sh puts govulncheck and its database.
WALFERRY_CACHE ?= $(HOME)/.cache/walferry
export WALFERRY_CACHE

vulncheck: deps ## govulncheck ./... against the local database deps builds; fails on vulnerable code we call, but those scripts/vulncheck-accept.txt accepts (docs/security.md)
	@echo "==> govulncheck -db file://$(WALFERRY_CACHE)/vulndb ./..."
	@out=$$(mktemp); \
	"$(WALFERRY_CACHE)/bin/govulncheck" -db "file://$(WALFERRY_CACHE)/vulndb" -format json ./... > "$$out"; \
	$(GO) run ./tools/vulndb findings -accept scripts/vulncheck-accept.txt < "$$out" || { rm -f "$$out"; exit 1; }; \
	rm -f "$$out"

test: vet deps vulncheck ## vet, install deps, govulncheck, start services, run all tests, stop services
	@TMPDIR=$(TEST_TMPDIR) bash scripts/services.sh run -- $(MAKE) --no-print-directory test-with-services

# The summary reads `go test -v` output, which go prints one package at a time
# when it tests several packages: it shows each package's result line, the
# conformance results of the storage backends and the full output of failing
# packages, then a per-backend conformance table and the test counts.
define TEST_SUMMARY_AWK
function flush(pkg, failed,   i, l, why) {
	why = 0
	for (i = 1; i <= n; i++) {
		l = buf[i]
		if (why && l ~ /^    [^ -]/) { print "    " l; continue }
		why = 0
		if (failed) {
			if (l !~ /^ *=== (RUN|PAUSE|CONT|NAME)/) print l
		} else if (l ~ /^# / || l ~ /^[^ \t].*\.go:[0-9]+:[0-9]+: /) {
			print l
		} else if (l ~ /^--- (PASS|FAIL|SKIP): Test[A-Za-z0-9_]*Conformance/) {
			print "    " l
			why = (l ~ /^--- SKIP/)
		} else if (i == n) {
			print l
		}
	}
	n = 0
}
BEGIN {
	nb = split(backends, want, " ")
	passed = failed = skipped = pkgfail = 0
}
{ buf[++n] = $$0 }
/^--- PASS: / { passed++; pkgtests++ }
/^--- FAIL: / { failed++; pkgtests++; pkgfailed++ }
/^--- SKIP: / { skipped++ }
/^--- (PASS|FAIL|SKIP): Test[A-Za-z0-9_]*Conformance/ {
	name = $$3
	cres[name] = cres[name] $$2 " "
}
/^(ok|FAIL|\?)[ \t]+[^ \t]+/ && NF >= 2 {
	pkg = $$2
	isfail = ($$1 == "FAIL")
	for (b = 1; b <= nb; b++) {
		if (pkg ~ ("/storage/" want[b] "$$")) {
			res = ""
			for (t in cres) res = res cres[t]
			conf[want[b]] = res
			if (isfail && res == "") conf[want[b]] = "FAIL: "
		}
	}
	flush(pkg, isfail)
	if (isfail && pkgfailed == 0) pkgfail++
	pkgtests = pkgfailed = 0
	delete cres
}
END {
	if (n > 0) flush("", 1)
	bad = 0
	print ""
	print "==> storage conformance suite"
	for (b = 1; b <= nb; b++) {
		r = conf[want[b]]
		if (!(want[b] in conf)) { st = "MISSING (package ./storage/" want[b] " not tested)"; bad = 1 }
		else if (r == "") { st = "MISSING (no Test*Conformance in ./storage/" want[b] ")"; bad = 1 }
		else if (r ~ /FAIL/) { st = "FAIL"; bad = 1 }
		else if (r ~ /SKIP/) { st = "SKIPPED (a backend must never be skipped)"; bad = 1 }
		else st = "PASS"
		printf "    %-8s %s\n", want[b], st
	}
	print ""
	printf "tests: %d passed, %d failed, %d skipped\n", passed, failed + pkgfail, skipped
	exit bad
}
endef
export TEST_SUMMARY_AWK

test-with-services: ## all tests against services already started (scripts/services.sh start)
	@export TMPDIR=$(TEST_TMPDIR) WALFERRY_TEST_REQUIRE_SERVICES=1; \
	log=$$(mktemp "$(TEST_TMPDIR)/walferry-test.XXXXXX.log"); \
	echo "==> go test -v -timeout $(TEST_TIMEOUT) ./...  (WALFERRY_TEST_REQUIRE_SERVICES=1; full log in $$log)"; \
	echo "    then internal/codec again with CGO_ENABLED=0 (the pure-Go zstd of builds without a C compiler)"; \
	set +e; \
	( $(GO) test -v -timeout $(TEST_TIMEOUT) ./...; all=$$?; \
	  CGO_ENABLED=0 $(GO) test -v -timeout $(TEST_TIMEOUT) ./internal/codec/; exit $$((all | $$?)) ) 2>&1 | tee "$$log" | \
		awk -v backends="$(CONFORMANCE_BACKENDS)" "$$TEST_SUMMARY_AWK"; \
	st=("$${PIPESTATUS[@]}"); \
	set -e; \
	if [ "$${st[0]}" -ne 0 ] || [ "$${st[2]}" -ne 0 ]; then \
		echo "FAIL: make test (go test exit $${st[0]}, conformance check exit $${st[2]}; full log in $$log)"; exit 1; \
	fi; \
	rm -f "$$log"

# go test -timeout of the fault suite (about 11 minutes on 2 cores: TestLoad's
# 10 minutes of pgbench, WALFERRY_FAULT_LOAD_DURATION, beside the rest).
FAULTS_TIMEOUT ?= 25m

test-faults: deps ## fault suite (network faults, kill -9, damaged objects) against PostgreSQL 15 and MinIO; prints the fault x operation table (docs/guarantees.md)
	@TMPDIR=$(TEST_TMPDIR) bash scripts/services.sh run -- $(MAKE) --no-print-directory test-faults-with-services

# Shows each trial's line, failures and the table; the full log stays on failure.
test-faults-with-services: ## the fault suite against services already started (scripts/services.sh start)
	@export TMPDIR=$(TEST_TMPDIR) WALFERRY_TEST_REQUIRE_SERVICES=1; \
	log=$$(mktemp "$(TEST_TMPDIR)/walferry-faults.XXXXXX.log"); \
	echo "==> go test -tags faults -v -parallel 8 -timeout $(FAULTS_TIMEOUT) ./faults/  (full log in $$log)"; \
	$(GO) vet -tags faults ./faults/; \
	set +e; \
	$(GO) test -tags faults -v -count=1 -parallel 8 -timeout $(FAULTS_TIMEOUT) ./faults/ 2>&1 | tee "$$log" | \
		awk '/^==> fault suite/ { table = 1 } table || /^faults: seed/ || /^(--- |FAIL|ok |panic:)/ || /_test\.go:[0-9]+: / { print } /^faults: seed/ && table { table = 0 }'; \
	st=$${PIPESTATUS[0]}; \
	set -e; \
	if [ "$$st" -ne 0 ]; then echo "FAIL: make test-faults (go test exit $$st; full log in $$log)"; exit 1; fi; \
	rm -f "$$log"

fuzz: ## run each Fuzz* target for FUZZTIME (default 10s); stops at the first failure and prints the failing input's path
	@found=0; \
	while read -r pkg dir; do \
		grep -qs '^func Fuzz' "$$dir"/*_test.go || continue; \
		for t in $$(TMPDIR=$(TEST_TMPDIR) $(GO) test -list '^Fuzz' "$$pkg" | grep '^Fuzz' || true); do \
			found=$$((found + 1)); \
			echo "==> $$pkg $$t (fuzztime $(FUZZTIME))"; \
			if ! out=$$(TMPDIR=$(TEST_TMPDIR) $(GO) test -run "^$$t\$$" -fuzz "^$$t\$$" -fuzztime $(FUZZTIME) "$$pkg" 2>&1); then \
				echo "$$out"; \
				input=$$(echo "$$out" | sed -n 's/.*Failing input written to \(.*\)$$/\1/p' | head -n1); \
				echo "FAIL: make fuzz: $$pkg $$t; failing input: $${input:+$$dir/$$input} (rerun: go test -run '^$$t\$$' $$pkg; keep the file as a seed once fixed)"; \
				exit 1; \
			fi; \
			echo "$$out" | tail -n 1; \
		done; \
	done < <($(GO) list -f '{{.ImportPath}} {{.Dir}}' ./...); \
	echo "fuzz: $$found target(s) ran for $(FUZZTIME) each"

# How long `make test-fuzz` (CI) runs each Fuzz* target: with about 30
# targets, 5s each keeps the run near 4 minutes on 2 cores once the
# instrumented builds are cached.
TEST_FUZZTIME ?= 5s

test-fuzz: ## every Fuzz* target for TEST_FUZZTIME (default 5s), as CI runs them after the fault suite
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

demo: build ## run the end-to-end demo (scripts/demo.sh)
	bash scripts/demo.sh

clean: ## remove build and coverage outputs
	rm -rf bin/ dist/ coverage.out coverage.html *.coverprofile *.test

.PHONY: bench
bench: ## W1-W5 benchmarks vs pgBackRest -> docs/benchmarks.md (root; ~50 min; BENCH_WORKLOADS=W3,W4,W5 for backups only; not part of test)
	@bash scripts/bench/run.sh
