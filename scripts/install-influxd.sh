#!/usr/bin/env bash
# install-influxd.sh: make sure the InfluxDB server drover's tests start is present.
#
#   - influxd: InfluxDB OSS 1.8.10, built from source with
#     `go install github.com/influxdata/influxdb/cmd/influxd@v1.8.10` into ./.tools/bin (GOBIN).
#     It serves InfluxQL (/query) and the v2 write API (/api/v2/write) drover's sink uses.
#
# Idempotent and cached: when .tools/bin/influxd exists and `influxd version` names 1.8.10, a
# second run does nothing but check. The first build takes about two minutes on two cores.
# Set INFLUXD_VERSION to build another 1.x release. Prints where influxd is.
#
# A plain `go install` leaves influxd's version unset ("InfluxDB vunknown"): the release builds
# stamp it with -ldflags, and so do we, so that `influxd version` and the X-Influxdb-Version
# header of /ping name the release (Grafana and clients read that header).
set -euo pipefail

INFLUXD_VERSION="${INFLUXD_VERSION:-v1.8.10}"

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.tools/bin"
mkdir -p "$tools"
bin="$tools/influxd"

# `influxd version` prints "InfluxDB v1.8.10 (git: v1.8.10 go-install)".
installed_version() {
	[ -x "$bin" ] || return 0
	"$bin" version 2>/dev/null | awk '{print $2}' || true
}

if [ "$(installed_version)" != "$INFLUXD_VERSION" ]; then
	echo "install-influxd: building influxd $INFLUXD_VERSION into $tools (takes a couple of minutes)" >&2
	start=$(date +%s)
	# Build outside the drover module so its go.mod neither constrains nor records anything;
	# -mod=mod lets the Go command resolve influxdb's own module graph as it stands.
	(cd "$tools" && GOBIN="$tools" GOFLAGS="-mod=mod" \
		go install -ldflags "-X main.version=${INFLUXD_VERSION#v} -X main.branch=$INFLUXD_VERSION -X main.commit=go-install" \
		"github.com/influxdata/influxdb/cmd/influxd@$INFLUXD_VERSION")
	echo "install-influxd: built in $(( $(date +%s) - start ))s" >&2
	have="$(installed_version)"
	if [ "$have" != "$INFLUXD_VERSION" ]; then
		echo "install-influxd: $bin reports version '$have', want $INFLUXD_VERSION" >&2
		exit 1
	fi
fi

echo "install-influxd: $("$bin" version) at $bin" >&2
