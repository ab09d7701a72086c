#!/usr/bin/env bash
# bench-influx-ceiling.sh: InfluxDB's own ingest ceiling on this machine, with the points drover
# writes and no drover in the way, so that docs/performance.md can state drover's writer
# throughput as a ratio of what InfluxDB itself takes (issue 19).
#
#   scripts/bench-influx-ceiling.sh                       (DURATION=30s WRITERS=4 by default)
#   WRITERS=1 scripts/bench-influx-ceiling.sh             (one write at a time)
#
# 1. Capture: `drover all -simulate DEVICES -sinks influx` writes for CAPTURE seconds to a capture
#    server (internal/bench/influxceiling capture) that answers as InfluxDB would and keeps every
#    write body: drover's own line protocol from its encoder, the simulator's readings.
# 2. Replay: a fresh influxd 1.8.10 (as bench-pipeline.sh runs it) takes those bodies from
#    WRITERS concurrent plain HTTP writers as fast as it answers, for DURATION; each pass shifts
#    the timestamps (new points, as a fleet sends them). The replayer runs under `nice` so that
#    influxd gets the cores first.
# Prints points/s and influxd's CPU µs per point (from /proc/PID/stat over the replay), and writes
# bench-out/influx-ceiling/summary.json. Compare with bench-pipeline.sh's InfluxDB rate: the ratio
# says whether drover or InfluxDB is the limit.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/influx-ceiling"
duration="${DURATION:-30s}"
writers="${WRITERS:-4}"
devices="${DEVICES:-1000}"
capture_s="${CAPTURE:-20}"
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh" # cleanup, freeport, waitready
trap cleanup EXIT

cd "$root"
influxd="${DROVER_INFLUXD:-$root/.tools/bin/influxd}"
[[ -x "$influxd" ]] || "$root/scripts/install-influxd.sh"
go build -o "$work/drover" ./cmd/drover
go build -o "$work/influxceiling" ./internal/bench/influxceiling

# 1. Capture drover's points.
"$work/influxceiling" capture -listen 127.0.0.1:0 -out "$work/points.lp" >"$work/capture.addr" 2>"$out/capture.log" &
cappid=$!
pids+=($cappid)
for _ in $(seq 1 100); do [[ -s "$work/capture.addr" ]] && break; sleep 0.1; done
capaddr="$(cat "$work/capture.addr")"
ops=$(freeport)
echo "bench-influx-ceiling: capturing drover's points: drover all -simulate $devices for ${capture_s}s" >&2
"$work/drover" all -data "$work/all" -simulate "$devices" -sinks influx -influx-url "http://$capaddr" \
	-frontend.listen "127.0.0.1:$(freeport)" -router.listen "tcp://127.0.0.1:$(freeport)" \
	-router.live-pub "tcp://127.0.0.1:$(freeport)" -router.store-listen "tcp://127.0.0.1:$(freeport)" \
	-livefeed.listen "127.0.0.1:$(freeport)" -api.listen "127.0.0.1:$(freeport)" \
	-ops-listen "127.0.0.1:$ops" -status-interval 0 2>"$out/drover-all.log" &
allpid=$!
pids+=($allpid)
waitready "127.0.0.1:$ops"
sleep "$capture_s"
kill -TERM "$allpid"; wait "$allpid" || true
kill -TERM "$cappid"; wait "$cappid" || true
cat "$out/capture.log" >&2

# 2. A fresh InfluxDB, as bench-pipeline.sh configures it.
iport=$(freeport); irpc=$(freeport)
idir="$work/influxdb"; mkdir -p "$idir"
cat >"$idir/influxdb.conf" <<CONF
reporting-disabled = true
bind-address = "127.0.0.1:$irpc"
[meta]
  dir = "$idir/meta"
  logging-enabled = false
[data]
  dir = "$idir/data"
  wal-dir = "$idir/wal"
  query-log-enabled = false
${INFLUXD_DATA:-}
[monitor]
  store-enabled = false
[http]
  bind-address = "127.0.0.1:$iport"
  log-enabled = false
  suppress-write-log = true
[logging]
  level = "warn"
  suppress-logo = true
CONF
${INFLUXD_GOGC:+env GOGC="$INFLUXD_GOGC"} "$influxd" run -config "$idir/influxdb.conf" >"$out/influxd.log" 2>&1 &
influxpid=$!
pids+=($influxpid)
for _ in $(seq 1 300); do
	curl -fsS -o /dev/null "http://127.0.0.1:$iport/ping" 2>/dev/null && break
	kill -0 "$influxpid" 2>/dev/null || { echo "bench-influx-ceiling: influxd exited (see $out/influxd.log)" >&2; exit 1; }
	sleep 0.1
done
curl -fsS -o /dev/null -XPOST "http://127.0.0.1:$iport/query" --data-urlencode 'q=CREATE DATABASE drover'

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
t0=$(cpu_ticks "$influxpid")
echo "bench-influx-ceiling: replaying to influxd with $writers writers for $duration" >&2
nice -n 10 "$work/influxceiling" replay -url "http://127.0.0.1:$iport" -db drover -in "$work/points.lp" \
	-writers "$writers" -duration "$duration" >"$out/replay.json"
t1=$(cpu_ticks "$influxpid")
python3 - "$out/replay.json" "$t0" "$t1" "$hz" "$out/summary.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / int(sys.argv[4])
r["influxd_cpu_seconds"] = cpu
r["influxd_cpu_us_per_point"] = cpu / r["points"] * 1e6 if r["points"] else None
json.dump(r, open(sys.argv[5], "w"), indent=2)
print(f"InfluxDB alone took {r['points_per_second']:,.0f} points/s ({r['points']:,} points in {r['seconds']:.1f} s, "
      f"{r['writers']} writers, {r['errors']} errors); influxd used {cpu:.1f} CPU s: "
      f"{r['influxd_cpu_us_per_point']:.2f} µs per point")
PY
echo "bench-influx-ceiling: results in $out" >&2
