#!/usr/bin/env bash
# run-grafana.sh: start a Grafana installed on this machine (no Docker) with drover's data source and
# dashboards, provisioned from this folder. Grafana's own files stay where its package put them;
# its database and logs go under data/grafana of the repository (or GF_PATHS_DATA / GF_PATHS_LOGS).
#
#   DROVER_INFLUX_URL          InfluxDB to query (default http://localhost:8086)
#   DROVER_INFLUX_USER         InfluxDB user, if it has auth on (default none)
#   DROVER_INFLUX_PASSWORD     its password, or an API token for InfluxDB 2.x/3 (default none)
#   DROVER_PROMETHEUS_URL      Prometheus scraping drover, for the pipeline dashboard (default http://localhost:9090)
#   DROVER_GRAFANA_DASHBOARDS  dashboards folder (default: grafana/dashboards here)
#   GRAFANA_HOME               Grafana's home path (default /usr/share/grafana, the Debian/RPM one)
#
# Arguments go to Grafana, e.g. cfg:default.server.http_port=3001. Grafana listens on :3000.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(dirname "$here")"

# Grafana's provisioning expands ${VAR} but has no default syntax: the defaults live here.
export DROVER_INFLUX_URL="${DROVER_INFLUX_URL:-http://localhost:8086}"
export DROVER_INFLUX_USER="${DROVER_INFLUX_USER:-}"
export DROVER_INFLUX_PASSWORD="${DROVER_INFLUX_PASSWORD:-}"
export DROVER_PROMETHEUS_URL="${DROVER_PROMETHEUS_URL:-http://localhost:9090}"
export DROVER_GRAFANA_DASHBOARDS="${DROVER_GRAFANA_DASHBOARDS:-$here/dashboards}"

# GF_<SECTION>_<KEY> overrides grafana.ini: [paths] provisioning, data, logs.
export GF_PATHS_PROVISIONING="$here/provisioning"
export GF_PATHS_DATA="${GF_PATHS_DATA:-$root/data/grafana}"
export GF_PATHS_LOGS="${GF_PATHS_LOGS:-$root/data/grafana/log}"
mkdir -p "$GF_PATHS_DATA" "$GF_PATHS_LOGS"

homepath="${GRAFANA_HOME:-/usr/share/grafana}"
echo "run-grafana: InfluxDB $DROVER_INFLUX_URL, Prometheus $DROVER_PROMETHEUS_URL, dashboards $DROVER_GRAFANA_DASHBOARDS, data $GF_PATHS_DATA" >&2
if command -v grafana >/dev/null 2>&1; then
	exec grafana server --homepath "$homepath" "$@"
elif command -v grafana-server >/dev/null 2>&1; then
	exec grafana-server --homepath "$homepath" "$@"
fi
echo "run-grafana: no grafana (or grafana-server) on PATH; install Grafana from its packages, see grafana/README.md" >&2
exit 1
