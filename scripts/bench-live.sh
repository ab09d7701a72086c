#!/usr/bin/env bash
# bench-live.sh: measure the live lane end to end, as a client sees it: `drover sim` (DEVICES,
# 1,000 vehicles at RATE, 1 reading/s, one reading per frame) → frontend → router → livefeed →
# one WebSocket client (internal/bench/livelat) subscribed to every vehicle, and a lake storage
# writer (the router's fan-out holds everything until a durable subscriber has it). Each its own
# process on loopback, sharing the machine's cores.
#
#   DURATION=20s scripts/bench-live.sh        (default 30s, after a 3 s warm-up)
#   CLIENTS=500 scripts/bench-live.sh         (default 1: the livefeed serves CLIENTS clients that
#                                              follow every vehicle; the first measures)
#
# Latency is from a reading's device timestamp (time_ms: the simulator's clock, the same host)
# and from the frontend's receipt (recv_ms) to the update's arrival at the client, in whole
# milliseconds. Results go to bench-out/live/ (OUT sets bench-out): live.json and
# live-timeline.jsonl (the client's summary and per-second timeline), sim.json, the livefeed's metrics
# (drover_livefeed_ingest_delay_seconds, drover_livefeed_send_delay_seconds) and every log.
# SIM_CPUS and SERVER_CPUS pin the load side (the simulator and livelat) and the servers to CPU
# lists (taskset; e.g. SIM_CPUS=1 SERVER_CPUS=0: see bench-lib.sh); each process's CPU µs and disk
# bytes written per reading, and the frontend's view of the devices' acks, go to procstats.json.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/live"
duration="${DURATION:-30s}"
devices="${DEVICES:-1000}"
rate="${RATE:-1}"
clients="${CLIENTS:-1}"
warmup=3
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh" # cleanup, freeport, waitready
trap cleanup EXIT

cd "$root"
build_drover "$work/drover"
go build -o "$work/livelat" ./internal/bench/livelat
drover="$work/drover"
# The simulated devices' tokens derive from this seed, a secret: drover takes secrets from the
# environment or a file, never from the command line.
export DROVER_SIM_TOKEN_SEED=bench

secs() { python3 -c "import re,sys; v=sys.argv[1]; m={'ms':.001,'s':1,'m':60,'h':3600}; print(sum(float(n)*m[u] for n,u in re.findall(r'([0-9.]+)(ms|s|m|h)',v)))" "$1"; }

rport=$(freeport); lpub=$(freeport); fport=$(freeport); lport=$(freeport)
rops=$(freeport); fops=$(freeport); lops=$(freeport); sport=$(freeport); wops=$(freeport)
token=bench-live-token
"$drover" sim -registry-only -write-registry "$work/registry.json" -devices "$devices" -ops-listen 127.0.0.1:0 2>/dev/null

"${server_pin[@]}" "$drover" router -id router-1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$lpub" \
	-store-listen "tcp://127.0.0.1:$sport" -queue-dir "$work/router" -queue-max-bytes -1 \
	-subscriber-queue-max-bytes -1 -registry "$work/registry.json" -subscribers lake \
	-ops-listen "127.0.0.1:$rops" 2>"$out/router.log" &
pids+=($!); routerpid=$!
"${server_pin[@]}" "$drover" storage-writer -sink lake -name lake -routers "tcp://127.0.0.1:$sport" \
	-queue-dir "$work/writer-lake" -queue-max-bytes -1 -lake-dir "$work/lake" \
	-ops-listen "127.0.0.1:$wops" 2>"$out/writer-lake.log" &
pids+=($!); writerpid=$!
DROVER_LIVEFEED_DEV_TOKEN="$token" "${server_pin[@]}" "$drover" livefeed -id livefeed-1 -listen "127.0.0.1:$lport" -routers "tcp://127.0.0.1:$lpub" \
	-ops-listen "127.0.0.1:$lops" 2>"$out/livefeed.log" &
pids+=($!); livefeedpid=$!
"${server_pin[@]}" "$drover" frontend -id frontend-1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" \
	-queue-dir "$work/frontend" -registry "$work/registry.json" -rate 5000 -rate-burst 10000 \
	-max-connections 20000 -ops-listen "127.0.0.1:$fops" 2>"$out/frontend.log" &
pids+=($!); frontendpid=$!
for a in "$rops" "$wops" "$lops" "$fops"; do waitready "127.0.0.1:$a"; done

simdur="$(secs "$duration")"
simdur="$(python3 -c "print(f'{$simdur + $warmup + 2:g}s')")"
echo "bench-live: $devices vehicles x $rate readings/s, measured for $duration after ${warmup}s; results in $out" >&2
servers=("frontend:$frontendpid" "router:$routerpid" "writer-lake:$writerpid" "livefeed:$livefeedpid")
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend-start.metrics"
proc_snapshot "$out/procs-start.tsv" "${servers[@]}"
"${sim_pin[@]}" "$drover" sim -frontends "ws://127.0.0.1:$fport" -devices "$devices" \
	-rate "$rate" -frame-readings 1 -window 8 -duration "$simdur" \
	-summary "$out/sim.json" -progress 10s -ops-listen 127.0.0.1:0 2>"$out/sim.log" &
simpid=$!
pids+=($simpid)
sleep "$warmup"
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend-warm.metrics"
"${sim_pin[@]}" "$work/livelat" -url "ws://127.0.0.1:$lport/v1/live" -token "$token" -duration "$duration" -clients "$clients" \
	-summary "$out/live.json" -timeline "$out/live-timeline.jsonl" 2>"$out/livelat.log" \
	|| { echo "bench-live: the client failed (see $out/livelat.log)" >&2; cat "$out/livelat.log" >&2; curl -fs "http://127.0.0.1:$lops/metrics" >"$out/livefeed.metrics" || true; exit 1; }
curl -fs "http://127.0.0.1:$lops/metrics" >"$out/livefeed.metrics" || true
wait "$simpid" || echo "bench-live: the simulator exited with an error (see $out/sim.log)" >&2
proc_snapshot "$out/procs-end.tsv" "${servers[@]}"
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend.metrics" || true
python3 - "$out/live.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d, f = s["from_device_ms"], s["from_frontend_ms"]
print(f"live: {s['updates']:,} updates of {s['vehicles']} vehicles ({s['updates_per_second']:,.0f}/s) to each of {s.get('clients', 1)} clients "
      f"({s.get('others_disconnected', 0)} of the others disconnected); "
      f"from device time p50 {d['p50']} ms p99 {d['p99']} ms max {d['max']} ms; "
      f"from frontend receipt p50 {f['p50']} ms p99 {f['p99']} ms")
PY
# The simulator's CPU from its summary (it has exited; it writes no queue).
printf 'simulator\t%s\t0\t0\n' "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('process_cpu_seconds', 0))" "$out/sim.json")" >>"$out/procs-end.tsv"
proc_report "$out" "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('acked', 0))" "$out/sim.json")" \
	"$out/frontend-start.metrics" "$out/frontend.metrics" "$out/frontend-warm.metrics"
echo "bench-live: results in $out"
