#!/usr/bin/env bash
# bench-firmware.sh: telemetry first (issue 17): the ack latency of devices sending readings,
# without and then with DOWNLOADERS other devices downloading firmware through the same frontend
# (a campaign over them, all at once), the frontend capping firmware at FW_BPS bytes/s. Goal:
# ack p99 with downloads within 2x of without. Real processes on loopback: api, router,
# frontend, two `drover sim` (one sending TELEMETRY devices' readings at 1 Hz, one holding the
# downloaders, which take their images as fast as the frontend gives them).
#
#   DURATION=30s TELEMETRY=1000 DOWNLOADERS=1000 FW_BPS=1048576 IMAGE_BYTES=1048576 scripts/bench-firmware.sh
#
# Results go to bench-out/firmware/ (OUT sets bench-out): sim-quiet.json and sim-load.json (the
# telemetry fleet's summaries: ack_latency_steady_ms), sim-dl.json (the downloaders'), the
# frontend's metrics (drover_frontend_firmware_bytes_total), every log.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/firmware"
duration="${DURATION:-30s}"
telemetry="${TELEMETRY:-1000}"
downloaders="${DOWNLOADERS:-1000}"
fwbps="${FW_BPS:-1048576}"
imgbytes="${IMAGE_BYTES:-1048576}"
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh" # cleanup, freeport, waitready
trap cleanup EXIT

cd "$root"
go build -o "$work/drover" ./cmd/drover
go build -o "$work/cmdlat" ./internal/bench/cmdlat
drover="$work/drover"
export DROVER_SIM_TOKEN_SEED=bench
total=$((telemetry + downloaders))

aport=$(freeport); aops=$(freeport); rport=$(freeport); rops=$(freeport); fport=$(freeport); fops=$(freeport)
"$drover" api -listen "127.0.0.1:$aport" -data-dir "$work/api" -follower-key-file "$work/api/follower-key" \
	-max-body-bytes $((imgbytes + 1048576)) -firmware-max-bytes $((imgbytes + 1024)) \
	-ops-listen "127.0.0.1:$aops" 2>"$out/api.log" &
pids+=($!)
waitready "127.0.0.1:$aops"
api="http://127.0.0.1:$aport"
key="$(cat "$work/api/api-admin-key")"
"$work/cmdlat" -api "$api" -key-file "$work/api/api-admin-key" -register -devices "$total"
follow=(-registry-api "$api" -registry-api-key-file "$work/api/follower-key")
"$drover" router -id router-1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$(freeport)" \
	-store-listen "tcp://127.0.0.1:$(freeport)" -queue-dir "$work/router" "${follow[@]}" \
	-ops-listen "127.0.0.1:$rops" 2>"$out/router.log" &
pids+=($!)
"$drover" frontend -id frontend-1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" \
	-queue-dir "$work/frontend" "${follow[@]}" -max-connections 20000 -firmware-bytes-per-second "$fwbps" \
	-ops-listen "127.0.0.1:$fops" 2>"$out/frontend.log" &
pids+=($!)
for a in "$rops" "$fops"; do waitready "127.0.0.1:$a"; done

telemetry_run() { # $1: summary file
	"$drover" sim -frontends "ws://127.0.0.1:$fport" -devices "$telemetry" -rate 1 -duration "$duration" \
		-warmup 5s -summary "$1" -progress 10s -ops-listen 127.0.0.1:0 2>>"$out/sim-telemetry.log"
}
echo "bench-firmware: $telemetry devices at 1 Hz for $duration, quiet" >&2
telemetry_run "$out/sim-quiet.json"

# The downloaders: connected, idle, downloading as fast as the frontend serves.
"$drover" sim -frontends "ws://127.0.0.1:$fport" -devices "$downloaders" -device-offset "$telemetry" -rate 0 \
	-summary "$out/sim-dl.json" -progress 10s -ops-listen 127.0.0.1:0 2>"$out/sim-dl.log" &
dlpid=$!
pids+=($dlpid)
head -c "$imgbytes" /dev/urandom >"$work/image.bin"
fw=$(curl -sS --fail-with-body -H "Authorization: Bearer $key" -H 'Content-Type: application/octet-stream' \
	--data-binary @"$work/image.bin" "$api/v1/firmware?version=bench" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
devs=$(python3 -c "import json; print(json.dumps(['dev-%06d' % i for i in range($telemetry, $telemetry + $downloaders)]))")
sleep 5 # the downloaders connected and reported
curl -sS --fail-with-body -H "Authorization: Bearer $key" -H 'Content-Type: application/json' \
	-d "{\"firmware\":\"$fw\",\"devices\":$devs,\"per_minute\":100000,\"max_concurrent\":$downloaders,\"device_timeout\":\"1h\"}" \
	"$api/v1/firmware-campaigns" >"$out/campaign.json"
sleep 3
echo "bench-firmware: the same with $downloaders devices downloading ($fwbps B/s cap)" >&2
telemetry_run "$out/sim-load.json"
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend.metrics" || true
kill -TERM "$dlpid"; wait "$dlpid" || true
python3 - "$out" <<'PY'
import json, sys, os
o = sys.argv[1]
q = json.load(open(os.path.join(o, "sim-quiet.json")))
l = json.load(open(os.path.join(o, "sim-load.json")))
d = json.load(open(os.path.join(o, "sim-dl.json")))["commands"]
qa = q.get("ack_latency_steady_ms") or q["ack_latency_ms"]
la = l.get("ack_latency_steady_ms") or l["ack_latency_ms"]
print(f"ack latency without downloads: p50 {qa['p50']} ms p99 {qa['p99']} ms")
print(f"ack latency with downloads:    p50 {la['p50']} ms p99 {la['p99']} ms  (ratio p99 {la['p99'] / max(qa['p99'], 0.001):.2f}, goal <= 2)")
print(f"downloaders: {d['firmware_installed']} installed, {d['firmware_bytes']:,} bytes, {d['firmware_restarts']} restarts from zero")
PY
echo "bench-firmware: results in $out"
