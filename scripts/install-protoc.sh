#!/usr/bin/env bash
# install-protoc.sh: make sure the protobuf toolchain drover's code generation needs is present.
#
#   - protoc: Debian's protobuf-compiler (apt-get), installed only when `protoc` is not on PATH.
#     `apt-get update` runs only if the install fails without it.
#   - protoc-gen-go: google.golang.org/protobuf/cmd/protoc-gen-go at the version go.mod pins for
#     the runtime, installed into ./.tools/bin (GOBIN), skipped when already there at that version.
#
# Idempotent and cached: a second run does nothing but check. Prints the tools it found.
set -euo pipefail

PROTOC_GEN_GO_VERSION="${PROTOC_GEN_GO_VERSION:-v1.36.12}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools/bin"
mkdir -p "$tools"

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
	sudo_cmd=(sudo)
fi

if ! command -v protoc >/dev/null 2>&1; then
	echo "install-protoc: installing Debian protobuf-compiler" >&2
	export DEBIAN_FRONTEND=noninteractive
	if ! "${sudo_cmd[@]}" apt-get install -y --no-install-recommends protobuf-compiler >/dev/null 2>&1; then
		echo "install-protoc: apt-get install failed, running apt-get update first" >&2
		"${sudo_cmd[@]}" apt-get update >/dev/null
		"${sudo_cmd[@]}" apt-get install -y --no-install-recommends protobuf-compiler >/dev/null
	fi
fi
command -v protoc >/dev/null 2>&1 || { echo "install-protoc: protoc still missing" >&2; exit 1; }

gen="$tools/protoc-gen-go"
have=""
if [ -x "$gen" ]; then
	# protoc-gen-go --version prints "protoc-gen-go v1.36.12".
	have="$("$gen" --version 2>/dev/null | awk '{print $2}')" || have=""
fi
if [ "$have" != "$PROTOC_GEN_GO_VERSION" ]; then
	echo "install-protoc: installing protoc-gen-go $PROTOC_GEN_GO_VERSION into $tools" >&2
	(cd "$root" && GOBIN="$tools" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION")
fi

echo "install-protoc: $(protoc --version), $("$gen" --version)" >&2
