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
#   DEFLATE=1 DROVER_LIVEFEED_COMPRESSION=true scripts/bench-live.sh
#                                             (the clients offer permessage-deflate, as browsers do,
#                                              and the livefeed accepts it; live.json's
#                                              wire_bytes_per_update says what it saved)
#
# Latency is from a reading's device timestamp (time_ms: the simulator's clock, the same host)
# and from the frontend's receipt (recv_ms) to the update's arrival at the client, in whole
# milliseconds. Results go to bench-out/live/ (OUT sets bench-out): live.json and
# live-timeline.jsonl (the client's summary and per-second timeline), sim.json, the livefeed's metrics
# (drover_livefeed_ingest_delay_seconds, drover_livefeed_send_delay_seconds) and every log.
# SIM_CPUS and SERVER_CPUS pin the load side (the simulator and livelat) and the servers to CPU
# lists (taskset; e.g. SIM_CPUS=1 SERVER_CPUS=0: see bench-lib.sh); each process's CPU µs and disk
# bytes written per reading, and the frontend's view of the devices' acks, go to procstats.json.
# What each core did while the client measured (busy share from /proc/stat) goes to cores.txt, and
# livelat's own CPU (all its clients) to live.json and procstats.json: when the load side's core is
# full, the measuring client waits for it, and that wait is in every latency figure.
# SPREAD=0 starts every simulated device at once (their readings then arrive in one burst a second).
# LIVEFEED_CPUS pins the livefeed apart from the other servers (e.g. LIVEFEED_CPUS=1: with the
# load side), to see what its writes to hundreds of clients cost the servers that share its core.
# PROFILE=1 takes a 10 s CPU profile of the livefeed while the client measures (livefeed.pprof and
# its top functions in livefeed-cpu.txt).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/live"
duration="${DURATION:-30s}"
devices="${DEVICES:-1000}"
rate="${RATE:-1}"
clients="${CLIENTS:-1}"
livelat_args=()
[[ -n "${DEFLATE:-}" ]] && livelat_args+=(-deflate)
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
livefeed_pin=("${server_pin[@]}")
pprof=(); [[ "${PROFILE:-0}" == 1 ]] && pprof=(-pprof)
[[ -n "${LIVEFEED_CPUS:-}" ]] && livefeed_pin=(taskset -c "$LIVEFEED_CPUS")
DROVER_LIVEFEED_DEV_TOKEN="$token" "${livefeed_pin[@]}" "$drover" livefeed -id livefeed-1 -listen "127.0.0.1:$lport" -routers "tcp://127.0.0.1:$lpub" \
	-ops-listen "127.0.0.1:$lops" "${pprof[@]}" 2>"$out/livefeed.log" &
pids+=($!); livefeedpid=$!
"${server_pin[@]}" "$drover" frontend -id frontend-1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" \
	-queue-dir "$work/frontend" -registry "$work/registry.json" -rate 5000 -rate-burst 10000 \
	-max-connections 20000 -ops-listen "127.0.0.1:$fops" 2>"$out/frontend.log" &
pids+=($!); frontendpid=$!
for a in "$rops" "$wops" "$lops" "$fops"; do waitready "127.0.0.1:$a"; done

simdur="$(secs "$duration")"
# The simulator outlives the measurement: the clients connect (seconds for hundreds) and the
# measuring one settles (livelat -settle) before it measures, then the simulator is stopped.
simdur="$(python3 -c "print(f'{$simdur + $warmup + ${SETTLE:-3} + 120:g}s')")"
echo "bench-live: $devices vehicles x $rate readings/s, measured for $duration after ${warmup}s; results in $out" >&2
servers=("frontend:$frontendpid" "router:$routerpid" "writer-lake:$writerpid" "livefeed:$livefeedpid")
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend-start.metrics"
proc_snapshot "$out/procs-start.tsv" "${servers[@]}"
# The devices' phases are spread over one reading period (-connect-rate = devices × rate), as a
# real fleet's are and as `drover all` does: started all at once, every device would send in the
# same few milliseconds of each second, and the figures would be that burst's (SPREAD=0 does that).
connect_rate="$(python3 -c "print(f'{$devices * $rate:g}')")"
[[ "${SPREAD:-1}" == 0 ]] && connect_rate=0
"${sim_pin[@]}" "$drover" sim -frontends "ws://127.0.0.1:$fport" -devices "$devices" -connect-rate "$connect_rate" \
	-rate "$rate" -frame-readings 1 -window 8 -duration "$simdur" \
	-summary "$out/sim.json" -progress 10s -ops-listen 127.0.0.1:0 2>"$out/sim.log" &
simpid=$!
pids+=($simpid)
sleep "$warmup"
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend-warm.metrics"
grep '^cpu[0-9]' /proc/stat >"$out/cpustat-start.txt"
if [[ "${PROFILE:-0}" == 1 ]]; then
	# livelat connects its clients and settles first: profile from then on.
	(sleep "$(python3 -c "print($clients / 200 + ${SETTLE:-3} + 1)")"
		curl -fs "http://127.0.0.1:$lops/debug/pprof/profile?seconds=10" >"$out/livefeed.pprof" &&
			go tool pprof -top -cum "$out/livefeed.pprof" 2>/dev/null | head -60 >"$out/livefeed-cpu.txt") &
fi
"${sim_pin[@]}" "$work/livelat" -url "ws://127.0.0.1:$lport/v1/live" -token "$token" -duration "$duration" -settle "${SETTLE:-3}s" -clients "$clients" "${livelat_args[@]}" \
	-summary "$out/live.json" -timeline "$out/live-timeline.jsonl" 2>"$out/livelat.log" \
	|| { echo "bench-live: the client failed (see $out/livelat.log)" >&2; cat "$out/livelat.log" >&2; curl -fs "http://127.0.0.1:$lops/metrics" >"$out/livefeed.metrics" || true; exit 1; }
grep '^cpu[0-9]' /proc/stat >"$out/cpustat-end.txt"
curl -fs "http://127.0.0.1:$lops/metrics" >"$out/livefeed.metrics" || true
curl -fs "http://127.0.0.1:$rops/metrics" >"$out/router.metrics" || true
kill -TERM "$simpid" 2>/dev/null || true
wait "$simpid" || echo "bench-live: the simulator exited with an error (see $out/sim.log)" >&2
proc_snapshot "$out/procs-end.tsv" "${servers[@]}"
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend.metrics" || true
python3 - "$out/live.json" "$out/cpustat-start.txt" "$out/cpustat-end.txt" "$out/cores.txt" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
d, f = s["from_device_ms"], s["from_frontend_ms"]
print(f"live: {s['updates']:,} updates of {s['vehicles']} vehicles ({s['updates_per_second']:,.0f}/s) to each of {s.get('clients', 1)} clients "
      f"({s.get('others_disconnected', 0)} of the others disconnected); "
      f"from device time p50 {d['p50']} ms p99 {d['p99']} ms max {d['max']} ms; "
      f"from frontend receipt p50 {f['p50']} ms p99 {f['p99']} ms; "
      f"{s.get('wire_bytes_per_update', 0):,.0f} bytes on the wire per client update; "
      f"livelat used {s.get('cores_used', 0):.2f} of a core")
# Each core's busy share while the client measured (/proc/stat: all but idle and iowait).
def stat(p):
    return {l.split()[0]: [int(x) for x in l.split()[1:]] for l in open(p)}
a, b = stat(sys.argv[2]), stat(sys.argv[3])
lines = []
for cpu in sorted(b, key=lambda c: int(c[3:])):
    delta = [y - x for x, y in zip(a.get(cpu, [0] * len(b[cpu])), b[cpu])]
    total, idle = sum(delta[:8]), delta[3] + delta[4]
    lines.append(f"{cpu}: {100 * (total - idle) / total:.0f}% busy" if total else f"{cpu}: no samples")
open(sys.argv[4], "w").write("\n".join(lines) + "\n")
print("cores while measuring: " + "; ".join(lines))
PY
# The simulator's and livelat's CPU from their summaries (they have exited; they write no queue).
printf 'simulator\t%s\t0\t0\n' "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('process_cpu_seconds', 0))" "$out/sim.json")" >>"$out/procs-end.tsv"
printf 'livelat\t%s\t0\t0\n' "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('process_cpu_seconds', 0))" "$out/live.json")" >>"$out/procs-end.tsv"
proc_report "$out" "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('acked', 0))" "$out/sim.json")" \
	"$out/frontend-start.metrics" "$out/frontend.metrics" "$out/frontend-warm.metrics"
echo "bench-live: results in $out"
