#!/usr/bin/env bash
# run.sh: what `make run` does. drover all on this machine — frontend, router, a storage writer
# for InfluxDB and one for the Parquet lake, the livefeed and its map — with a simulated fleet
# (SIMULATE vehicles, default 1000), a local InfluxDB 1.8.10 (built once by
# scripts/install-influxd.sh and cached) and everything kept under DATA (default ./data).
# Ctrl-C stops it all cleanly. The map shows the offline basemap (Natural Earth, built into
# drover); MAP_TILES (a tile URL template, e.g. https://tile.openstreetmap.org/{z}/{x}/{y}.png)
# and MAP_TILES_ATTRIBUTION draw a tile provider's map over it.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
simulate="${SIMULATE:-1000}"
data="${DATA:-data}"
[[ "$data" == /* ]] || data="$root/$data"
influx_port="${INFLUXD_PORT:-8086}"
map_port="${MAP_PORT:-8081}"
ops_port="${OPS_PORT:-9184}"
api_port="${API_PORT:-8090}"
mkdir -p "$data"

scripts/install-influxd.sh >/dev/null
influx_pid=""
if curl -fsS -o /dev/null "http://127.0.0.1:$influx_port/ping" 2>/dev/null; then
	echo "run: using the InfluxDB already answering on 127.0.0.1:$influx_port" >&2
else
	INFLUXD_PORT="$influx_port" INFLUXD_DIR="$data/influxdb" setsid scripts/influxd-test.sh >"$data/influxd.log" 2>&1 &
	influx_pid=$!
	for _ in $(seq 1 300); do
		curl -fsS -o /dev/null "http://127.0.0.1:$influx_port/ping" 2>/dev/null && break
		kill -0 "$influx_pid" 2>/dev/null || { echo "run: influxd did not start, see $data/influxd.log" >&2; exit 1; }
		sleep 0.1
	done
fi

echo "run: building drover and its live map" >&2
scripts/build-map.sh
go build -o bin/drover ./cmd/drover
token="$(od -An -N12 -tx1 /dev/urandom | tr -d ' \n')"
map_args=()
if [[ -n "${MAP_TILES:-}" ]]; then
	map_args=(-livefeed.map-tiles "$MAP_TILES" -livefeed.map-tiles-attribution "${MAP_TILES_ATTRIBUTION:-}")
fi

# drover and influxd run in sessions of their own, so that Ctrl-C reaches only this script,
# which then stops each of them once, gracefully (a second signal would make drover exit at once).
# drover all creates the InfluxDB database if it is missing; its log goes to drover.log, its
# status line (every 5 s) to this terminal.

# The map's token is a secret: drover takes it from the environment (or a file), never from the
# command line, where every user of the host could read it.
DROVER_ALL_LIVEFEED_DEV_TOKEN="$token" setsid bin/drover all -data "$data" -simulate "$simulate" -sinks lake,influx \
	-influx-url "http://127.0.0.1:$influx_port" -influx-database drover \
	-livefeed.listen "127.0.0.1:$map_port" -livefeed.dev -ops-listen "127.0.0.1:$ops_port" \
	-api.listen "127.0.0.1:$api_port" "${map_args[@]}" \
	2>"$data/drover.log" &
drover_pid=$!

stop() {
	trap - INT TERM EXIT
	echo >&2
	echo "run: stopping drover (queues stay in $data for the next start)" >&2
	kill -TERM "$drover_pid" 2>/dev/null || true
	wait "$drover_pid" 2>/dev/null || true
	if [[ -n "$influx_pid" ]]; then
		kill -TERM "$influx_pid" 2>/dev/null || true
		wait "$influx_pid" 2>/dev/null || true
	fi
	echo "run: stopped" >&2
}
trap stop INT TERM EXIT

for _ in $(seq 1 300); do
	curl -fsS -o /dev/null "http://127.0.0.1:$ops_port/readyz" 2>/dev/null && break
	kill -0 "$drover_pid" 2>/dev/null || { echo "run: drover exited, see $data/drover.log" >&2; tail -20 "$data/drover.log" >&2; exit 1; }
	sleep 0.1
done

# The control plane's first start writes an admin key (mode 0600); a later start keeps the key of
# the first (the file stays until you delete it).
api_key_file="$data/api/api-admin-key"
api_key="(none: $api_key_file is gone; use a key you created)"
[[ -r "$api_key_file" ]] && api_key="$(cat "$api_key_file")"

cat >&2 <<MSG

  drover is running with $simulate simulated vehicles.

  live map      http://localhost:$map_port/?token=$token
  metrics       http://127.0.0.1:$ops_port/metrics   (health: /healthz, /readyz; loopback only)
  InfluxDB      http://127.0.0.1:$influx_port, database drover, measurement telemetry
  lake          $data/lake/date=YYYY-MM-DD/hour=HH/*.parquet
  Grafana       grafana/run-grafana.sh, or see grafana/README.md for the provisioning
  log           $data/drover.log

  control plane http://127.0.0.1:$api_port/v1/  (docs/api.md; OpenAPI: /v1/openapi.json)
  admin key     $api_key
                (from $api_key_file: keep it secret; create named operators and keys with it)
  drover ctl    export DROVER_API_KEY="\$(cat $api_key_file)"
                bin/drover ctl whoami
                bin/drover ctl list                         # the simulated vehicles, registered here, with presence
                bin/drover ctl suspend dev-000007           # closed within 2 s, refused until resumed
                bin/drover ctl add truck-0001 -token       # register a device, print its token once

  Below, a status line every 5 s: readings acked/s, written/s to each sink, live clients, queues.
  Ctrl-C stops everything.
MSG
wait "$drover_pid"
