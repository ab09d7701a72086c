#!/usr/bin/env bash
# install-nats-server.sh: make sure the nats-server that scripts/bench-e2e.sh runs as drover's
# peer (the NATS JetStream comparison) is present.
#
#   - nats-server: built from source with
#     `go install github.com/nats-io/nats-server/v2@v2.12.3` into ./.tools/bin (GOBIN).
#
# Idempotent and cached: when .tools/bin/nats-server exists and `nats-server --version` names
# the wanted release, a second run does nothing but check. Set NATS_SERVER_VERSION to build
# another release. Prints where nats-server is.
set -euo pipefail

NATS_SERVER_VERSION="${NATS_SERVER_VERSION:-v2.12.3}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools/bin"
mkdir -p "$tools"
bin="$tools/nats-server"

# `nats-server --version` prints "nats-server: v2.12.3".
installed_version() {
	[ -x "$bin" ] || return 0
	"$bin" --version 2>/dev/null | awk '{print $2}' || true
}

if [ "$(installed_version)" != "$NATS_SERVER_VERSION" ]; then
	echo "install-nats-server: building nats-server $NATS_SERVER_VERSION into $tools" >&2
	start=$(date +%s)
	# Build outside the drover module so its go.mod neither constrains nor records anything.
	(cd "$tools" && GOBIN="$tools" GOFLAGS="-mod=mod" \
		go install "github.com/nats-io/nats-server/v2@$NATS_SERVER_VERSION")
	echo "install-nats-server: built in $(( $(date +%s) - start ))s" >&2
	have="$(installed_version)"
	if [ "$have" != "$NATS_SERVER_VERSION" ]; then
		echo "install-nats-server: $bin reports version '$have', want $NATS_SERVER_VERSION" >&2
		exit 1
	fi
fi

echo "install-nats-server: $("$bin" --version) at $bin" >&2
