#!/usr/bin/env bash
# bench-ingest.sh: measure durable-acked ingest through one frontend and one
# router, each its own process on loopback, driven by `drover sim` in a third
# process (the simulator competes for the same 2 cores: figures are a floor).
#
#   scripts/bench-ingest.sh throughput   1,000 devices sending as fast as acks allow
#                                        (each keeps at most 2,000 unsent readings and drops the
#                                        rest: the device does not hoard readings it cannot send, so
#                                        the simulator's CPU goes to sending, not to memory)
#   scripts/bench-ingest.sh latency      1,000 devices x 10 readings/s = 10,000 readings/s
#   scripts/bench-ingest.sh idle         10,000 idle device connections: heap per connection
#
# Results go to bench-out/<scenario>/ (OUT sets bench-out): the simulator's JSON
# summary and per-second timeline, the frontend's and router's metrics, a 10 s
# CPU profile of the frontend and its top functions (PROFILE=0: none, so that the
# profiler's signals do not touch the latencies). DURATION (default 30s) sets the
# length of a run. The latency run reports the whole run and, apart, the steady state
# after WARMUP (default 2s: the second in which 1,000 devices connect at once).
# SIM_ARGS adds flags to the simulator (e.g. SIM_ARGS="-connect-rate 1000" to spread
# the connects over a second instead of all at once); SIM_NICE runs it niced.
# DROVER_BIN runs that drover binary instead of building one (a before/after comparison).
# SIM_CPUS and SERVER_CPUS pin the simulator and the servers to CPU lists (taskset; e.g.
# SIM_CPUS=1 SERVER_CPUS=0: see bench-lib.sh). TLS=1 connects the devices over wss://. Every run also reports each process's CPU µs and
# disk bytes written (/proc/PID/io write_bytes) per acked reading, and the frontend's own view of
# the ack latency (drover_frontend_ack_latency_seconds) beside the device's (procstats.json).
set -euo pipefail

scenario="${1:-throughput}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/$scenario"
duration="${DURATION:-30s}"
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh" # cleanup, freeport, waitready
trap cleanup EXIT

cd "$root"
build_drover "$work/drover"
drover="$work/drover"
# The simulated devices' tokens derive from this seed, a secret: drover takes secrets from the
# environment or a file, never from the command line.
export DROVER_SIM_TOKEN_SEED=bench

metric() { # ops-addr name [label-filter]
	curl -fs "http://$1/metrics" | grep -E "^$2(\{[^}]*${3:-}[^}]*\})? " | awk '{s+=$2} END {printf "%.0f\n", s}'
}

# TLS=1: devices on wss:// (a test CA made by scripts/make-test-certs.sh; no handshake budget, so
# that the connects do not wait for it), as production devices connect.
scheme=ws; fe_tls=(); sim_tls=()
if [[ "${TLS:-0}" == 1 ]]; then
	scripts/make-test-certs.sh "$work/certs" >/dev/null 2>&1
	fe_tls=(-tls-cert "$work/certs/server.crt" -tls-key "$work/certs/server.key" -tls-handshake-rate 0)
	sim_tls=(-tls-ca "$work/certs/ca.pem")
	scheme=wss
fi

rport=$(freeport); fport=$(freeport); rops=$(freeport); fops=$(freeport)
case "$scenario" in
	throughput) devices=1000; simargs=(-rate 1000 -frame-readings 50 -window 8 -outbox 2000 -duration "$duration") ;;
	latency)    devices=1000; simargs=(-rate 10 -frame-readings 1 -window 8 -duration "$duration" -warmup "${WARMUP:-2s}") ;;
	idle)       devices=10000; simargs=(-rate 0 -connect-rate 5000 -duration "$duration") ;;
	*) echo "usage: $0 throughput|latency|idle" >&2; exit 2 ;;
esac
"$drover" sim -registry-only -write-registry "$work/registry.json" -devices "$devices" -ops-listen 127.0.0.1:0 2>/dev/null

"${server_pin[@]}" "$drover" router -id router-1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$(freeport)" \
	-store-listen "tcp://127.0.0.1:$(freeport)" -queue-dir "${ROUTER_QUEUE_DIR:-$work/router}" -queue-max-bytes -1 \
	-ops-listen "127.0.0.1:$rops" 2>"$out/router.log" &
pids+=($!); routerpid=$!
"${server_pin[@]}" "$drover" frontend -id frontend-1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" \
	-queue-dir "$work/frontend" -registry "$work/registry.json" -rate 5000 -rate-burst 10000 \
	-max-connections 20000 -ops-listen "127.0.0.1:$fops" -pprof "${fe_tls[@]}" 2>"$out/frontend.log" &
pids+=($!); frontendpid=$!
waitready "127.0.0.1:$rops"; waitready "127.0.0.1:$fops"

heap0=$(metric "127.0.0.1:$fops" go_memstats_heap_inuse_bytes)
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend-start.metrics"
"${sim_pin[@]}" ${SIM_NICE:+nice -n "$SIM_NICE"} "$drover" sim -frontends "$scheme://127.0.0.1:$fport" -devices "$devices" "${simargs[@]}" "${sim_tls[@]}" ${SIM_ARGS:-} \
	-summary "$out/sim.json" -timeline "$out/timeline.jsonl" -progress 5s -ops-listen 127.0.0.1:0 2>"$out/sim.log" &
simpid=$!
pids+=($simpid)
proc_snapshot "$out/procs-start.tsv" "frontend:$frontendpid" "router:$routerpid"

if [[ "$scenario" == idle ]]; then
	for _ in $(seq 1 600); do
		c=$(metric "127.0.0.1:$fops" drover_frontend_connections)
		[[ "$c" -ge "$devices" ]] && break
		sleep 0.1
	done
	# Let the connect burst's garbage go: force a GC via the heap profile.
	curl -fs "http://127.0.0.1:$fops/debug/pprof/heap?gc=1" -o "$out/heap.pprof"
	heap1=$(metric "127.0.0.1:$fops" go_memstats_heap_inuse_bytes)
	stack=$(metric "127.0.0.1:$fops" go_memstats_stack_inuse_bytes)
	rss=$(metric "127.0.0.1:$fops" process_resident_memory_bytes)
	gor=$(metric "127.0.0.1:$fops" go_goroutines)
	echo "connections=$c heap_before=$heap0 heap_after=$heap1 stack=$stack rss=$rss goroutines=$gor" | tee "$out/idle.txt"
	python3 -c "c=$c; h=($heap1-$heap0)/c; s=$stack/c; print(f'heap per connection: {h:.0f} B, stack per connection: {s:.0f} B, total {(h+s)/1024:.1f} KiB')" | tee -a "$out/idle.txt"
elif [[ "$scenario" == latency ]]; then
	# The frontend's view of the steady state starts where the simulator's does.
	sleep "$(python3 -c "import re,sys; v=sys.argv[1]; m={'ms':.001,'s':1,'m':60}; print(sum(float(n)*m[u] for n,u in re.findall(r'([0-9.]+)(ms|s|m)',v)))" "${WARMUP:-2s}")"
	curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend-warm.metrics"
fi
if [[ "$scenario" != idle && "${PROFILE:-1}" != 0 ]]; then
	sleep 8
	curl -fs "http://127.0.0.1:$fops/debug/pprof/profile?seconds=10" -o "$out/frontend-cpu.pprof"
	go tool pprof -top -nodecount=25 "$work/drover" "$out/frontend-cpu.pprof" >"$out/frontend-cpu.txt" 2>/dev/null || true
fi
wait "$simpid" || true
proc_snapshot "$out/procs-end.tsv" "frontend:$frontendpid" "router:$routerpid"
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend.metrics"
curl -fs "http://127.0.0.1:$rops/metrics" >"$out/router.metrics"
if [[ -s "$out/sim.json" ]]; then
	python3 - "$out/sim.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
lat = s.get("ack_latency_ms", {})
print(f"acked/s {s.get('acked_per_second', 0):,.0f}  sent/s {s.get('sent_per_second', 0):,.0f}  "
      f"ack p50 {lat.get('p50')} ms  p99 {lat.get('p99')} ms  max {lat.get('max')} ms")
st = s.get("ack_latency_steady_ms")
if st:
    print(f"after the first {s.get('warmup_seconds')} s (connects): ack p50 {st.get('p50')} ms  p99 {st.get('p99')} ms  "
          f"p99.9 {st.get('p999')} ms  max {st.get('max')} ms")
PY
	# The simulator's CPU over its run, from its own summary (it has exited; it writes no queue).
	printf 'simulator\t%s\t0\t0\n' "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('process_cpu_seconds', 0))" "$out/sim.json")" >>"$out/procs-end.tsv"
	acked=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('acked', 0))" "$out/sim.json")
	proc_report "$out" "$acked" "$out/frontend-start.metrics" "$out/frontend.metrics" \
		"$([[ -s "$out/frontend-warm.metrics" ]] && echo "$out/frontend-warm.metrics")"
fi
echo "bench-ingest: results in $out"
