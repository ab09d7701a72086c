# drover: build, test and run the one binary.
#
#   make build   bin/drover, stamped with git describe and the commit
#   make test    vet, race tests of every package, gofmt check (what CI runs)
#   make bench   benchmarks with allocations
#   make proto   regenerate the protobuf Go code (scripts/gen-proto.sh)
#   make run     drover all, every component in one process
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

.PHONY: all build test bench proto fmt fmt-check vet run clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/drover

test: vet fmt-check
	$(GO) test -race -count=1 ./...

bench:
	$(GO) test -run='^$$' -bench=. -benchmem ./...

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

run:
	$(GO) run ./cmd/drover all

# Leaves data/ alone: it holds the queues of drover all.
clean:
	rm -rf bin/
