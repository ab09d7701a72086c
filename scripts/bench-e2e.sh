#!/usr/bin/env bash
# bench-e2e.sh: drover's benchmarks as one tool (make bench-e2e). Runs a fixed set of scenarios,
# each with real processes on loopback, keeps every scenario's JSON summary and per-second
# timeline, then writes the tables between the bench-e2e markers of docs/performance.md and the
# plots docs/img/bench-e2e-*.png (internal/bench/benchreport).
#
#   throughput  scripts/bench-ingest.sh throughput: 1,000 devices as fast as durable acks allow
#   pipeline    scripts/bench-pipeline.sh: end to end into a real InfluxDB and the Parquet lake
#   latency     scripts/bench-ingest.sh latency: ack latency at 10,000 readings/s
#   live        scripts/bench-live.sh: device timestamp → livefeed WebSocket client
#   idle        scripts/bench-ingest.sh idle: memory per idle device connection (10,000)
#   nats        the peer: NATS JetStream (nats-server v2.12.3, file storage) acking messages of
#               a drover frame's size from as many connections, once with
#               `sync_interval: always` and once with the default (bench/natspeer)
#
# Knobs (environment):
#   DURATION           each scenario's load (default 30s)
#   PIPELINE_DURATION  the end-to-end load (default 60s; DURATION when DURATION is set)
#   SCENARIOS          a subset, e.g. "throughput nats" (default: all, in the order above)
#   OUT                results dir (default bench-out/e2e): OUT/<scenario>/, OUT/run.json
#   REPORT             "no" to leave docs/ alone
#   NATS_SIZE          message size when throughput is not run (else measured from its frames)
#   LINKS              "insecure" to run drover's links as plain ZMTP (-insecure-links) instead of
#                      mutual TLS under a key made for the run: compare the two for TLS's cost
#   SIM_CPUS           CPU list (taskset -c) for the load generators: drover sim, livelat, natspeer
#   SERVER_CPUS        CPU list for the servers: drover's processes, influxd, nats-server. On two
#                      cores, SIM_CPUS=1 SERVER_CPUS=0 keeps the simulator off the servers' core.
#                      Recorded in run.json and in the report; unset, the scheduler places them.
#
# Each drover scenario also writes procstats.json: every process's CPU µs and disk bytes written
# (/proc/PID/io write_bytes) per acked reading, and the frontend's own view of the ack latency.
#
# Every process a scenario starts is stopped when it ends; each scenario is bounded by timeout.
# Exits non-zero if a scenario failed (the report still shows those that ran).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
duration="${DURATION:-30s}"
pipeline_duration="${PIPELINE_DURATION:-${DURATION:-60s}}"
scenarios="${SCENARIOS:-throughput pipeline latency live idle nats}"
out="${OUT:-$root/bench-out/e2e}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
work="$(mktemp -d)"
pids=()
current= # the running scenario's timeout process: it passes a TERM on to the scenario's script
cleanup() {
	[[ -n "$current" ]] && kill -TERM "$current" 2>/dev/null || true
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

secs() { python3 -c "import re,sys; v=sys.argv[1]; m={'ms':.001,'s':1,'m':60,'h':3600}; print(int(sum(float(n)*m[u] for n,u in re.findall(r'([0-9.]+)(ms|s|m|h)',v))))" "$1"; }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
log() { echo "bench-e2e: $*" >&2; }

for s in $scenarios; do
	case "$s" in throughput|pipeline|latency|live|idle|nats) ;; *) log "unknown scenario $s"; exit 2 ;; esac
done
nats_version="${NATS_SERVER_VERSION:-v2.12.3}"
sim_pin=(); server_pin=()
[[ -n "${SIM_CPUS:-}" ]] && sim_pin=(taskset -c "$SIM_CPUS")
[[ -n "${SERVER_CPUS:-}" ]] && server_pin=(taskset -c "$SERVER_CPUS")
python3 - "$out/run.json" "$duration" "$pipeline_duration" "$(nproc)" "$(git describe --tags --always --dirty 2>/dev/null || echo unknown)" "$nats_version" "${SIM_CPUS:-}" "${SERVER_CPUS:-}" $scenarios <<'PY'
import json, sys, datetime
f, d, pd, cores, commit, nats, sim_cpus, server_cpus, *sc = sys.argv[1:]
json.dump({"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "commit": commit,
           "duration": d, "pipeline_duration": pd, "cores": int(cores), "scenarios": sc, "nats_server": nats,
           "sim_cpus": sim_cpus, "server_cpus": server_cpus,
           "loadavg_start": float(open("/proc/loadavg").read().split()[0])},
          open(f, "w"), indent=2)
PY

failed=()
# run_scenario NAME LIMIT_SECONDS CMD...: a scenario with its own results dir, bounded in time.
run_scenario() {
	local name=$1 limit=$2; shift 2
	log "$name: $* (at most ${limit}s)"
	local start; start=$(date +%s)
	# In the background and waited for, so that cleanup can stop it on an interrupt.
	timeout -k 30 "$limit" env OUT="$out" "$@" >"$out/$name.log" 2>&1 &
	current=$!
	local rc=0
	wait "$current" || rc=$?
	current=
	if [[ $rc == 0 ]]; then
		log "$name: done in $(( $(date +%s) - start ))s; $(grep -E '^(acked/s|live:|heap per|sustained|offered)' "$out/$name.log" | tr '\n' ' ')"
	else
		log "$name: FAILED (exit $rc) after $(( $(date +%s) - start ))s; see $out/$name.log"
		tail -n 5 "$out/$name.log" >&2 || true
		failed+=("$name")
	fi
}

d=$(secs "$duration"); pd=$(secs "$pipeline_duration")
for s in $scenarios; do
	case "$s" in
	throughput|latency|idle) run_scenario "$s" $((d + 180)) env DURATION="$duration" scripts/bench-ingest.sh "$s" ;;
	# The pipeline's warm-up (excluded from its sustained rates): 10 s, or a third of a short run.
	pipeline) run_scenario pipeline $((pd + 420)) env DURATION="$pipeline_duration" WARMUP="${WARMUP:-$(( pd < 30 ? pd / 3 : 10 ))}" scripts/bench-pipeline.sh ;;
	live) run_scenario live $((d + 180)) env DURATION="$duration" scripts/bench-live.sh ;;
	nats) ;; # below, after the others: it needs the frame size the throughput run measured
	esac
done

# The NATS JetStream peer.
nats_run() { # label sync-line
	local label=$1 sync=$2 dir="$out/nats-$1"
	rm -rf "$dir"; mkdir -p "$dir"
	local store="$work/nats-$label" port mport
	port=$(freeport); mport=$(freeport)
	mkdir -p "$store"
	cat >"$dir/nats-server.conf" <<CONF
listen: 127.0.0.1:$port
http: 127.0.0.1:$mport
jetstream {
  store_dir: "$store"
  $sync
}
CONF
	"${server_pin[@]}" "$nats_server" -c "$dir/nats-server.conf" >"$dir/nats-server.log" 2>&1 &
	local spid=$!
	pids+=($spid)
	local ok=no
	for _ in $(seq 1 300); do
		if curl -fs "http://127.0.0.1:$mport/healthz?js-enabled-only=true" >/dev/null 2>&1; then ok=yes; break; fi
		kill -0 "$spid" 2>/dev/null || break
		sleep 0.1
	done
	if [[ $ok != yes ]]; then
		log "nats-$label: nats-server did not start (see $dir/nats-server.log)"; kill -TERM "$spid" 2>/dev/null || true
		return 1
	fi
	log "nats-$label: $publishers publishers, $size-byte messages, window 8, for $duration"
	local rc=0
	timeout -k 10 $((d + 120)) "${sim_pin[@]}" "$work/natspeer" -url "nats://127.0.0.1:$port" -publishers "$publishers" -size "$size" \
		-readings "$readings" -window 8 -duration "$duration" -label "$label" \
		-summary "$dir/nats.json" -timeline "$dir/timeline.jsonl" 2>"$dir/natspeer.log" &
	current=$!
	wait "$current" || rc=$?
	current=
	du -sh "$store" >"$dir/store-size.txt" 2>/dev/null || true
	kill -TERM "$spid" 2>/dev/null || true
	wait "$spid" 2>/dev/null || true
	rm -rf "$store"
	if [[ $rc != 0 ]]; then
		log "nats-$label: natspeer failed (exit $rc; see $dir/natspeer.log)"; tail -n 3 "$dir/natspeer.log" >&2
		return 1
	fi
	python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print(f\"bench-e2e: nats-$label: {s['acked_readings_per_second']:,.0f} readings/s acked ({s['acked_per_second']:,.0f} messages/s, ack p50 {s['ack_latency_ms']['p50']} ms, p99 {s['ack_latency_ms']['p99']} ms, {s['errors']} errors)\")" "$dir/nats.json" >&2
}

if [[ " $scenarios " == *" nats "* ]]; then
	nats_server="$root/.tools/bin/nats-server"
	NATS_SERVER_VERSION="$nats_version" scripts/install-nats-server.sh
	(cd bench/natspeer && go build -o "$work/natspeer" .)
	# The message: a frame of the throughput run, as the simulator encoded it.
	read -r size readings publishers < <(python3 - "$out/throughput/sim.json" "${NATS_SIZE:-}" <<'PY'
import json, sys
try:
    s = json.load(open(sys.argv[1]))
    frames, b = s.get("frames_sent", 0), s.get("bytes_sent", 0)
    size = round(b / frames) if frames else 0
    print(sys.argv[2] or size, s["config"]["frame_readings"], s["config"]["devices"])
except FileNotFoundError:
    print(sys.argv[2] or 0, 50, 1000)
PY
)
	if [[ "$size" -le 0 ]]; then
		log "nats: no frame size: run the throughput scenario too, or set NATS_SIZE"; failed+=(nats)
	else
		nats_run always "sync_interval: always" || failed+=(nats-always)
		nats_run default "" || failed+=(nats-default)
	fi
fi

# The machine is shared: the 1-minute load average at the end says how much else ran.
python3 - "$out/run.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["loadavg_end"] = float(open("/proc/loadavg").read().split()[0])
json.dump(r, open(sys.argv[1], "w"), indent=2)
PY
if [[ "${REPORT:-yes}" != no ]]; then
	# Its own module (its plotting library stays out of drover's go.mod): build it there.
	(cd internal/bench/benchreport && go build -o "$work/benchreport" .)
	"$work/benchreport" -results "$out" -doc docs/performance.md -img docs/img
	log "wrote docs/performance.md (bench-e2e section) and docs/img/bench-e2e-*.png"
fi
log "results in $out"
if (( ${#failed[@]} )); then
	log "failed: ${failed[*]}"; exit 1
fi
