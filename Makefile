# drover: build, test and run the one binary.
#
#   make build   bin/drover, stamped with git describe and the commit, with the live map page
#   make map     only the live map page: npm packages into .tools/map, esbuild into livefeed/web/dist
#   make build   bin/drover, stamped with git describe and the commit
#   make image   the container image (Containerfile), built here with podman (ENGINE=docker
#                for Docker): localhost/drover:$(VERSION) and :latest
#   make test        vet, gofmt check, race tests of every package, short fuzz
#                    runs, the crash tests and a 2-minute chaos run (what CI runs)
#   make test-crash  only the kill -9 tests
#   make chaos       the 10-minute chaos proof (random kill -9, nothing acked lost)
#   make outage      the sink-outage proof: 10,000 readings/s, 5 minutes with InfluxDB up, 5 down
#   make fuzz        longer fuzz runs of the frame decoders
#   make bench       benchmarks with allocations
#   make bench-e2e   every end-to-end benchmark (ingest, pipeline, latency, live, idle,
#                    NATS JetStream peer) into docs/performance.md and docs/img (DURATION, SCENARIOS)
#   make proto   regenerate the protobuf Go code (scripts/gen-proto.sh)
#   make tidy    go mod tidy in drover's module and in the nested ones (NESTED_MODULES)
#   make run     drover all with a simulated fleet, a local InfluxDB and the live map
#
# The recipes use bash's pipefail so that a failing command in a pipe fails.
SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c

GO      ?= go
BIN     := bin/drover
VERSION := $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
COMMIT  := $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT)

# Go files that are ours to format: everything but hidden folders (.git,
# .tools), bin/, data/ and npm's node_modules/.
GOFILES = $(shell find . \( -name '.?*' -o -path ./bin -o -path ./data -o -name node_modules \) -prune -o -type f -name '*.go' -print)

# Go modules nested in this repository, each with its own go.mod and a replace
# directive to the root, so that what only they need (the NATS client, the
# plotting library, the browser driver) stays out of drover's go.mod and out of
# what a user's go get pulls in. ./... does not reach them: vet and test-unit
# run them one by one.
NESTED_MODULES := bench/natspeer internal/bench/benchreport internal/browsertest internal/k8stest
# Of those, the ones test-unit runs beside the root module's tests; the others (k8stest: a rolling
# update whose readiness it checks, on a machine it needs for itself) run after them.
NESTED_BESIDE := bench/natspeer internal/bench/benchreport internal/browsertest
NESTED_AFTER := $(filter-out $(NESTED_BESIDE),$(NESTED_MODULES))

.PHONY: all build map image test test-unit test-fuzz test-chaos test-crash chaos outage fuzz tools bench bench-e2e proto fmt fmt-check vet tidy run clean

all: build

build: map
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/drover

# The live map page (scripts/build-map.sh): drover's page code (livefeed/map/) bundled with
# Leaflet, supercluster and the offline basemap into livefeed/web/dist/, which go:embed takes.
# The dist folder is gitignored; without it a plain go build serves a placeholder page saying
# to run this. The npm packages are installed once per lock file under .tools/map/.
map:
	scripts/build-map.sh
# The container image: a static binary FROM scratch, non-root (scripts/build-image.sh says how;
# docs/deploy.md what is in it). ENGINE, IMAGE, VERSION and COMMIT pass through the environment.
image: map
	VERSION=$(VERSION) COMMIT=$(COMMIT) scripts/build-image.sh

# The real dependencies tests start (InfluxDB, Azurite, PostgreSQL, ...); each script is
# idempotent and cached under .tools/.
tools:
	@for s in scripts/install-influxd.sh scripts/install-azurite.sh scripts/install-chromium.sh scripts/install-pyzmq.sh scripts/install-postgres.sh scripts/install-podman.sh; do \
		if [[ -x $$s ]]; then $$s; fi; \
	done

# map first: the browser tests (internal/browsertest) need the real page in the binary.
# The fuzz runs (test-fuzz) run inside test-unit here (FUZZ_BESIDE_E2E): once the rest of
# the root module's tests are done, while internal/e2e's last tests still wait, on CPU that
# their waiting leaves free (~1 minute of the run that used to come after).
test: FUZZ_BESIDE_E2E := yes
test: map vet fmt-check tools test-unit test-chaos

# Every package's tests with the race detector, the kill -9 tests included.
# TestChaos runs on its own after (test-chaos): it is a load of its own.
# Three go test runs side by side, each printed whole once all are done (so
# that their output does not interleave); any failing fails the target:
#  - internal/e2e (E2E_PKG): real processes and simulated devices in real
#    time, mostly waiting (under one core), the longest package by far.
#    Inside the root module's ./... it had one of go test's two slots for
#    ~520 s and was the long pole; in a go test of its own it starts as soon
#    as it is built, and its t.Parallel tests run E2E_PARALLEL at a time.
#  - the rest of the root module (-p 2, go test's default here).
#  - the nested modules but k8stest (NESTED_BESIDE): most of their time
#    (browsertest's Chromium) is spent waiting; run after ./... they added
#    ~5 minutes to make test.
# go build -race ./... first: the three would otherwise each compile the
# race-instrumented packages they share, at the same time. With
# FUZZ_BESIDE_E2E=yes (make test sets it) the fuzz runs follow the rest of
# the root module's tests, while internal/e2e still runs.
# k8stest (NESTED_AFTER) runs after, alone (see NESTED_BESIDE above).
E2E_PKG := ./internal/e2e/
E2E_PARALLEL ?= 2
test-unit:
	e2e_log="$$(mktemp)"; nested_log="$$(mktemp)"; trap 'rm -f "$$e2e_log" "$$nested_log"' EXIT; \
	$(GO) build -race ./...; \
	root_pkgs="$$($(GO) list ./... | grep -v '/internal/e2e$$')"; \
	$(GO) test -race -count=1 -timeout 20m -parallel $(E2E_PARALLEL) -skip '^TestChaos$$' $(E2E_PKG) >"$$e2e_log" 2>&1 & \
	e2e=$$!; \
	( for m in $(NESTED_BESIDE); do (cd $$m && $(GO) test -race -count=1 -timeout 20m ./...) || exit 1; done ) >"$$nested_log" 2>&1 & \
	nested=$$!; \
	root_rc=0; $(GO) test -race -count=1 -timeout 20m $$root_pkgs || root_rc=$$?; \
	fuzz_rc=0; if [[ "$(FUZZ_BESIDE_E2E)" == yes ]]; then ( $(FUZZ_RUNS) ) || fuzz_rc=$$?; fi; \
	e2e_rc=0; wait $$e2e || e2e_rc=$$?; \
	nested_rc=0; wait $$nested || nested_rc=$$?; \
	echo "--- $(E2E_PKG) (beside the rest, -parallel $(E2E_PARALLEL)) ---"; cat "$$e2e_log"; \
	echo "--- nested modules: $(NESTED_BESIDE) ---"; cat "$$nested_log"; \
	after_rc=0; for m in $(NESTED_AFTER); do (cd $$m && $(GO) test -race -count=1 -timeout 20m ./...) || after_rc=$$?; done; \
	if (( root_rc != 0 || fuzz_rc != 0 || e2e_rc != 0 || nested_rc != 0 || after_rc != 0 )); then echo "test-unit: root module exit $$root_rc, fuzz runs exit $$fuzz_rc, $(E2E_PKG) exit $$e2e_rc, nested modules exit $$nested_rc beside, $$after_rc after"; exit 1; fi

# The 2-minute chaos proof, without the race detector (its 2,000 simulated
# devices run in the test process) and alone, so that what it measures is
# drover and not the other tests.
test-chaos:
	DROVER_CHAOS_DURATION=2m $(GO) test -count=1 -run '^TestChaos$$' -v -timeout 20m ./internal/e2e/

# Short fuzz runs of the frame decoders, seeded with real frames.
# A count, not a duration: when a duration runs out while a worker is busy,
# go test can report "context deadline exceeded" as a failure with no input
# at fault (seen in CI); a count ends the run between inputs.
# FUZZ_RUNS is one shell command, so that test-unit can run it too (FUZZ_BESIDE_E2E).
FUZZTIME ?= 200000x
FUZZ_RUNS = $(GO) test -run='^$$' -fuzz='^FuzzDecodeUplinkBinary$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=50x ./telemetry/ && \
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeUplinkJSON$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=50x ./telemetry/ && \
	$(GO) test -run='^$$' -fuzz='^FuzzValidReadingEncodes$$' -fuzztime=$(FUZZTIME) -fuzzminimizetime=50x ./storagewriter/influx/
test-fuzz:
	$(FUZZ_RUNS)

fuzz:
	$(MAKE) test-fuzz FUZZTIME=10000000x

# kill -9 tests: the queue's child process, and real drover processes.
test-crash:
	$(GO) test -count=1 -run='Crash' -v ./queue/ ./internal/e2e/

# The chaos proof (docs/reliability.md): the whole pipeline as real processes,
# a random one killed -9 every 3-8 s for 10 minutes; nothing acked is lost.
# The summary and kill log go to $DROVER_ARTIFACTS (default: the test's temp dir).
chaos:
	DROVER_CHAOS_DURATION=10m $(GO) test -count=1 -run '^TestChaos$$' -v -timeout 40m ./internal/e2e/

# The sink-outage proof (docs/reliability.md, "Sink outages"): every queue bound at its
# default, 1,000 devices x 10 readings/s for 5 minutes with InfluxDB up, then 5 minutes with
# it stopped; devices acked throughout, live and lake unaffected, InfluxDB complete after.
# Prints both phases' ack p99 and the queues' fill. A load of its own: run it alone.
outage:
	DROVER_OUTAGE_DURATION=5m $(GO) test -count=1 -run '^TestSinkOutageLong$$' -v -timeout 60m ./internal/e2e/

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

# The end-to-end benchmarks with real processes (scripts/bench-e2e.sh; docs/performance.md says
# what each measures). DURATION, PIPELINE_DURATION, SCENARIOS and OUT pass through the environment.
bench-e2e:
	scripts/bench-e2e.sh

proto:
	scripts/gen-proto.sh

# </dev/null: with no file at all, gofmt would wait for standard input.
fmt:
	gofmt -w $(GOFILES) </dev/null

fmt-check:
	@unformatted="$$(gofmt -l $(GOFILES) </dev/null)"; \
	if [[ -n "$$unformatted" ]]; then \
		echo "gofmt: these files need 'make fmt':"; echo "$$unformatted"; exit 1; \
	fi

vet:
	$(GO) vet ./...
	for m in $(NESTED_MODULES); do (cd $$m && $(GO) vet ./...); done

# go mod tidy in drover's module and in each nested one (after a dependency
# change in drover's go.mod, the nested modules need their go.sum updated).
tidy:
	$(GO) mod tidy
	for m in $(NESTED_MODULES); do (cd $$m && $(GO) mod tidy); done

# drover all with 1,000 simulated vehicles, a local InfluxDB and the lake.
run:
	scripts/run.sh

# Leaves data/ alone: it holds the queues of drover all.
clean:
	rm -rf bin/
