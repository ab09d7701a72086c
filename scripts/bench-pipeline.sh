#!/usr/bin/env bash
# bench-pipeline.sh: measure the whole durable pipeline, each component its own process on
# loopback: `drover sim` → frontend → router (-subscribers lake,influx) → two storage writers,
# one into a real InfluxDB 1.8.10 (started here, on free ports, in a temp dir), one into a
# Parquet lake (a temp dir). Everything shares the machine's cores with the simulator and
# influxd: figures are a floor.
#
#   DURATION=5m scripts/bench-pipeline.sh      (default 5m)
#
# SINK_WRITERS (4) sets each writer's -sink-writers (concurrent sink writes).
# InfluxDB tuning, to measure what an operator can change on their side: INFLUXD_GOGC sets
# influxd's GOGC (default: Go's 100), INFLUXD_DATA adds lines to its [data] section (e.g.
# INFLUXD_DATA='cache-snapshot-memory-size = "100m"').
# Offered load: DEVICES (1,000) × RATE (50 readings/s) = 50,000 readings/s, frames of FRAME (50)
# readings. Every SAMPLE (5s) it records each writer's drover_writer_records_written_total and
# process_cpu_seconds_total and the queue depths (bench-out/pipeline/samples.tsv). When the
# simulator stops it reports:
#   - sustained readings/s written to InfluxDB and to the lake over the load (after WARMUP, 10s);
#   - the backlog at the end of the load (what the router holds for each subscriber: its cursor's
#     lag in the log, or its queue sub-* before issue 20; writer queues writer-*)
#     and whether it returned to zero within DRAIN_TIMEOUT (120s), and how long that took;
#   - each writer's CPU seconds per reading (its process_cpu_seconds_total / records written).
# SIM_CPUS and SERVER_CPUS pin the simulator and the servers (drover's processes and influxd) to CPU
# lists (taskset; e.g. SIM_CPUS=1 SERVER_CPUS=0: see bench-lib.sh); every process's CPU µs and disk
# bytes written (/proc/PID/io) per acked reading over the load and the drain, and the frontend's
# view of the acks, go to procstats.json.
# Results go to bench-out/pipeline/ (OUT sets bench-out): summary.txt and summary.json,
# samples.tsv, the simulator's JSON summary and timeline, the metrics and logs of every process.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/pipeline"
duration="${DURATION:-5m}"
devices="${DEVICES:-1000}"
rate="${RATE:-50}"
frame="${FRAME:-50}"
sample="${SAMPLE:-5}"
warmup="${WARMUP:-10}"
drain_timeout="${DRAIN_TIMEOUT:-120}"
sink_writers="${SINK_WRITERS:-4}"
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh" # cleanup, freeport, waitready
trap cleanup EXIT

cd "$root"
influxd="${DROVER_INFLUXD:-$root/.tools/bin/influxd}"
[[ -x "$influxd" ]] || "$root/scripts/install-influxd.sh"
build_drover "$work/drover"
drover="$work/drover"
# The simulated devices' tokens derive from this seed, a secret: drover takes secrets from the
# environment or a file, never from the command line.
export DROVER_SIM_TOKEN_SEED=bench

metric() { # ops-addr name [label-filter]: the sum of the matching series (0 when none)
	curl -fs "http://$1/metrics" | grep -E "^$2(\{[^}]*${3:-}[^}]*\})? " | awk '{s+=$2} END {printf "%.6f\n", s+0}'
}
now() { date +%s.%N; }
# sub_backlog ops-addr name: what the router holds for one subscriber, whichever router runs
# (DROVER_BIN): its queue sub-NAME's depth (before issue 20) or its cursor's lag in the log.
sub_backlog() {
	awk -v a="$(metric "$1" drover_queue_depth_entries "queue=\"sub-$2\"")" \
		-v b="$(metric "$1" drover_queue_cursor_lag_entries "cursor=\"$2\"")" 'BEGIN {printf "%.6f\n", a + b}'
}

# InfluxDB, as scripts/influxd-test.sh runs it, on free ports in the temp dir.
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
"${server_pin[@]}" ${INFLUXD_GOGC:+env GOGC="$INFLUXD_GOGC"} "$influxd" run -config "$idir/influxdb.conf" >"$out/influxd.log" 2>&1 &
influxpid=$!
pids+=($influxpid)
for _ in $(seq 1 300); do
	curl -fsS -o /dev/null "http://127.0.0.1:$iport/ping" 2>/dev/null && break
	kill -0 "$influxpid" 2>/dev/null || { echo "bench-pipeline: influxd exited (see $out/influxd.log)" >&2; exit 1; }
	sleep 0.1
done
curl -fsS -o /dev/null -XPOST "http://127.0.0.1:$iport/query" --data-urlencode 'q=CREATE DATABASE drover'

"$drover" sim -registry-only -write-registry "$work/registry.json" -devices "$devices" -ops-listen 127.0.0.1:0 2>/dev/null

rport=$(freeport); sport=$(freeport); fport=$(freeport)
rops=$(freeport); fops=$(freeport); iops=$(freeport); lops=$(freeport)
"${server_pin[@]}" "$drover" router -id router-1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$(freeport)" \
	-store-listen "tcp://127.0.0.1:$sport" -queue-dir "$work/router" -queue-max-bytes -1 \
	-subscriber-queue-max-bytes -1 -registry "$work/registry.json" -subscribers lake,influx \
	-ops-listen "127.0.0.1:$rops" 2>"$out/router.log" &
pids+=($!); routerpid=$!
"${server_pin[@]}" "$drover" storage-writer -sink influx -name influx -routers "tcp://127.0.0.1:$sport" \
	-queue-dir "$work/writer-influx" -queue-max-bytes -1 \
	-influx-url "http://127.0.0.1:$iport" -influx-database drover -sink-writers "$sink_writers" \
	-ops-listen "127.0.0.1:$iops" 2>"$out/writer-influx.log" &
pids+=($!); influxwpid=$!
"${server_pin[@]}" "$drover" storage-writer -sink lake -name lake -routers "tcp://127.0.0.1:$sport" \
	-queue-dir "$work/writer-lake" -queue-max-bytes -1 -lake-dir "$work/lake" -sink-writers "$sink_writers" \
	-ops-listen "127.0.0.1:$lops" 2>"$out/writer-lake.log" &
pids+=($!); lakewpid=$!
"${server_pin[@]}" "$drover" frontend -id frontend-1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" \
	-queue-dir "$work/frontend" -registry "$work/registry.json" -rate 5000 -rate-burst 10000 \
	-max-connections 20000 -ops-listen "127.0.0.1:$fops" 2>"$out/frontend.log" &
pids+=($!); frontendpid=$!
for a in "$rops" "$iops" "$lops" "$fops"; do waitready "127.0.0.1:$a"; done

# One sample line: time, records written and CPU seconds of each writer, the queue depths.
header="t\tinflux_written\tlake_written\tinflux_cpu_s\tlake_cpu_s\tfrontend_q\trouter_q\tsub_influx_q\tsub_lake_q\twriter_influx_q\twriter_lake_q"
sample_line() {
	printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$(now)" \
		"$(metric "127.0.0.1:$iops" drover_writer_records_written_total)" \
		"$(metric "127.0.0.1:$lops" drover_writer_records_written_total)" \
		"$(metric "127.0.0.1:$iops" process_cpu_seconds_total)" \
		"$(metric "127.0.0.1:$lops" process_cpu_seconds_total)" \
		"$(metric "127.0.0.1:$fops" drover_queue_depth_entries 'queue="frontend"')" \
		"$(metric "127.0.0.1:$rops" drover_queue_depth_entries 'queue="router"')" \
		"$(sub_backlog "127.0.0.1:$rops" influx)" \
		"$(sub_backlog "127.0.0.1:$rops" lake)" \
		"$(metric "127.0.0.1:$iops" drover_queue_depth_entries 'queue="writer-influx"')" \
		"$(metric "127.0.0.1:$lops" drover_queue_depth_entries 'queue="writer-lake"')"
}
echo -e "$header" >"$out/samples.tsv"
sample_line >>"$out/samples.tsv"

echo "bench-pipeline: $devices devices x $rate readings/s (frames of $frame) for $duration; results in $out" >&2
servers=("frontend:$frontendpid" "router:$routerpid" "writer-influx:$influxwpid" "writer-lake:$lakewpid" "influxd:$influxpid")
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend-start.metrics"
proc_snapshot "$out/procs-start.tsv" "${servers[@]}"
"${sim_pin[@]}" ${SIM_NICE:+nice -n "$SIM_NICE"} "$drover" sim -frontends "ws://127.0.0.1:$fport" -devices "$devices" \
	-rate "$rate" -frame-readings "$frame" -window 8 -duration "$duration" \
	-summary "$out/sim.json" -timeline "$out/timeline.jsonl" -progress 10s -ops-listen 127.0.0.1:0 2>"$out/sim.log" &
simpid=$!
pids+=($simpid)
while kill -0 "$simpid" 2>/dev/null; do
	sample_line >>"$out/samples.tsv"
	for _ in $(seq 1 $((sample * 10))); do kill -0 "$simpid" 2>/dev/null || break; sleep 0.1; done
done
wait "$simpid" || echo "bench-pipeline: the simulator exited with an error (see $out/sim.log)" >&2
sample_line >>"$out/samples.tsv"
load_end_line=$(wc -l <"$out/samples.tsv")

# Drain: poll until every queue is empty, or DRAIN_TIMEOUT passes.
drained=no
drain_start=$(now)
deadline=$(( $(date +%s) + drain_timeout ))
while (( $(date +%s) < deadline )); do
	line=$(sample_line); echo "$line" >>"$out/samples.tsv"
	if awk -F'\t' '{exit !($6==0 && $7==0 && $8==0 && $9==0 && $10==0 && $11==0)}' <<<"$line"; then
		# One more sample: this one read the writers' counters before their queue depths, so a
		# write that ended in between is in the depths and not yet in the counters.
		drained=yes; sample_line >>"$out/samples.tsv"; break
	fi
	sleep 0.5
done
drain_secs=$(python3 -c "print(f'{$(now) - $drain_start:.1f}')")
proc_snapshot "$out/procs-end.tsv" "${servers[@]}"

# influxd's own CPU (user + system) from /proc: the database's cost of the same readings.
influxd_cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14+$15)/hz}' "/proc/$influxpid/stat" 2>/dev/null || echo 0)
for n in frontend:$fops router:$rops writer-influx:$iops writer-lake:$lops; do
	curl -fs "http://127.0.0.1:${n#*:}/metrics" >"$out/${n%%:*}.metrics" || true
done

python3 - "$out" "$load_end_line" "$warmup" "$drained" "$drain_secs" "$devices" "$rate" "$influxd_cpu" <<'PY' | tee "$out/summary.txt"
import json, sys
out, load_end, warmup, drained, drain_secs, devices, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4], sys.argv[5], int(sys.argv[6]), float(sys.argv[7])
influxd_cpu = float(sys.argv[8])
rows = [l.rstrip("\n").split("\t") for l in open(f"{out}/samples.tsv")]
cols, rows = rows[0], [[float(x) for x in r] for r in rows[1:]]
C = {c: i for i, c in enumerate(cols)}
load = rows[:load_end - 1]  # samples up to the end of the load
t0 = load[0][C["t"]]
after = [r for r in load if r[C["t"]] - t0 >= warmup] or load
a, b = after[0], load[-1]
span = b[C["t"]] - a[C["t"]]
def rate_of(col):
    return (b[C[col]] - a[C[col]]) / span if span > 0 else 0.0
try:
    s = json.load(open(f"{out}/sim.json"))
except Exception:
    s = {}
print(f"offered: {devices} devices x {rate:g} readings/s = {devices * rate:,.0f} readings/s; "
      f"acked {s.get('acked_per_second', 0):,.0f}/s (ack p50 {s.get('ack_latency_ms', {}).get('p50')} ms, "
      f"p99 {s.get('ack_latency_ms', {}).get('p99')} ms), {s.get('acked', '?')} readings acked in all")
print(f"sustained written over {span:.0f} s of load (after {warmup:g} s warm-up): "
      f"InfluxDB {rate_of('influx_written'):,.0f} readings/s, lake {rate_of('lake_written'):,.0f} readings/s")
q = ["frontend_q", "router_q", "sub_influx_q", "sub_lake_q", "writer_influx_q", "writer_lake_q"]
print("backlog at the end of the load (entries): " + ", ".join(f"{c[:-2]} {b[C[c]]:.0f}" for c in q))
last = rows[-1]
print("backlog after the drain (entries): " + ", ".join(f"{c[:-2]} {last[C[c]]:.0f}" for c in q) +
      f"; returned to zero: {drained} ({drain_secs} s after the load ended)")
dspan = last[C["t"]] - b[C["t"]]
if dspan > 0:
    print(f"drain (no load): InfluxDB {(last[C['influx_written']] - b[C['influx_written']]) / dspan:,.0f} readings/s, "
          f"lake {(last[C['lake_written']] - b[C['lake_written']]) / dspan:,.0f} readings/s over {dspan:.0f} s")
acked = s.get("acked")
if isinstance(acked, (int, float)) and acked:
    for w in ("influx", "lake"):
        n = last[C[f"{w}_written"]]
        print(f"writer {w}: wrote {n:,.0f} of {acked:,.0f} acked readings" + ("" if n >= acked else "  << SHORT"))
for w in ("influx", "lake"):
    n, cpu = last[C[f"{w}_written"]], last[C[f"{w}_cpu_s"]]
    per = cpu / n * 1e6 if n else float("nan")
    print(f"writer {w}: {n:,.0f} records written, {cpu:.1f} CPU s in all, {per:.2f} CPU µs per reading "
          f"({cpu / n if n else float('nan'):.2e} CPU s/reading)")
n = last[C["influx_written"]]
if n and influxd_cpu:
    print(f"influxd itself: {influxd_cpu:.1f} CPU s in all, {influxd_cpu / n * 1e6:.2f} CPU µs per reading written")
# Every process's CPU over the whole run (load and drain), per acked reading: where the 2 cores go.
def proc_cpu(name):
    try:
        for l in open(f"{out}/{name}.metrics"):
            if l.startswith("process_cpu_seconds_total "):
                return float(l.split()[1])
    except OSError:
        pass
    return 0.0
cpu = {"simulator": float(s.get("process_cpu_seconds", 0) or 0), "frontend": proc_cpu("frontend"),
       "router": proc_cpu("router"), "writer influx": last[C["influx_cpu_s"]],
       "writer lake": last[C["lake_cpu_s"]], "influxd": influxd_cpu}
if isinstance(acked, (int, float)) and acked:
    total = sum(cpu.values())
    print("CPU per acked reading, whole run: " + ", ".join(f"{k} {v / acked * 1e6:.2f} µs" for k, v in cpu.items()) +
          f"; total {total / acked * 1e6:.2f} µs = {total / acked * devices * rate:.2f} cores at the offered rate")
json.dump({
    "load_seconds": round(span, 1), "warmup_seconds": warmup,
    "influx_per_second": round(rate_of("influx_written"), 1), "lake_per_second": round(rate_of("lake_written"), 1),
    "backlog_end": {c[:-2]: b[C[c]] for c in q}, "drained": drained == "yes", "drain_seconds": float(drain_secs),
    "influx_written": last[C["influx_written"]], "lake_written": last[C["lake_written"]],
    "cpu_seconds": cpu,
}, open(f"{out}/summary.json", "w"), indent=2)
PY
# Per process, from /proc, over the load and the drain (the simulator's CPU from its summary).
printf 'simulator\t%s\t0\t0\n' "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('process_cpu_seconds', 0))" "$out/sim.json" 2>/dev/null || echo 0)" >>"$out/procs-end.tsv"
proc_report "$out" "$(python3 -c "import json,sys; print(json.load(open(sys.argv[1])).get('acked', 0))" "$out/sim.json" 2>/dev/null || echo 0)" \
	"$out/frontend-start.metrics" "$out/frontend.metrics" | tee -a "$out/summary.txt"
echo "bench-pipeline: results in $out"
[[ "$drained" == yes ]]
