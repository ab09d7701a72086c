#!/usr/bin/env bash
# influxd-test.sh: run the project's InfluxDB 1.8.10 in the foreground for trying drover by hand
# (drover all -sink influx, Grafana via grafana/run-grafana.sh). Ctrl-C stops it.
#
#   - installs influxd first if needed (scripts/install-influxd.sh);
#   - listens on 127.0.0.1:${INFLUXD_PORT:-8086} (HTTP) and 127.0.0.1:${INFLUXD_RPC_PORT:-8088} (backup RPC);
#   - keeps its data under ${INFLUXD_DIR:-data/influxdb} of the repository (git-ignored), so it
#     survives restarts; remove that folder to start afresh;
#   - creates the database "drover" once it answers.
# Tests do not use this: they start their own servers (internal/testenv).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-influxd.sh"

port="${INFLUXD_PORT:-8086}"
rpc_port="${INFLUXD_RPC_PORT:-8088}"
dir="${INFLUXD_DIR:-$root/data/influxdb}"
mkdir -p "$dir"
cat >"$dir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$rpc_port"
[meta]
  dir = "$dir/meta"
[data]
  dir = "$dir/data"
  wal-dir = "$dir/wal"
  query-log-enabled = false
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$port"
  log-enabled = false
[logging]
  level = "warn"
  suppress-logo = true
CONF

"$root/.tools/bin/influxd" run -config "$dir/influxdb.conf" &
pid=$!
trap 'kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null' EXIT INT TERM

for _ in $(seq 1 300); do
	if curl -fsS -o /dev/null "http://127.0.0.1:$port/ping" 2>/dev/null; then
		curl -fsS -o /dev/null -XPOST "http://127.0.0.1:$port/query" --data-urlencode 'q=CREATE DATABASE drover'
		echo "influxd-test: InfluxDB 1.8.10 at http://127.0.0.1:$port, database drover, data in $dir (Ctrl-C stops it)" >&2
		break
	fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "influxd-test: influxd exited; is port $port or $rpc_port taken?" >&2
		exit 1
	fi
	sleep 0.1
done
wait "$pid"
