#!/usr/bin/env bash
# bench-scaleout.sh: CPU per reading of every component with 1, 2 and 4 routers and frontends, to
# show that adding pods adds capacity (issue 19). This machine has 2 cores: a wall-clock speed-up
# cannot show there, so each size runs the same offered load and reports process CPU time divided
# by readings acked. Flat (or falling) CPU per reading as N grows means N pods carry N times the
# load on N times the cores; growth is the overhead of fan-in and fan-out (every frontend dials
# every router, every writer and livefeed subscribes to every router).
#
#   scripts/bench-scaleout.sh                         SIZES="1 2 4", 60 s each
#   SIZES="1 2" DURATION=20s DEVICES=200 scripts/bench-scaleout.sh
#
# For each N: N routers (-subscribers lake), N frontends (each dialling every router), one lake
# writer and one livefeed (subscribed to every router), and `drover sim` with DEVICES devices
# (2,000) at RATE readings/s (1) in frames of FRAME readings (1) spread over the N frontends, for
# DURATION (60s), then a drain. CPU is each process's process_cpu_seconds_total from the start of
# the load to the end of the drain. Results: bench-out/scaleout/summary.tsv (one row per N) and
# summary.txt; the processes' logs and metrics per N. The numbers feed
# internal/capacity/figures.json (frontend, router, writer and livefeed CPU per reading).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/scaleout"
sizes="${SIZES:-1 2 4}"
duration="${DURATION:-60s}"
devices="${DEVICES:-2000}"
rate="${RATE:-1}"
frame="${FRAME:-1}"
drain_timeout="${DRAIN_TIMEOUT:-120}"
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh" # cleanup, freeport, waitready
trap cleanup EXIT

cd "$root"
go build -o "$work/drover" ./cmd/drover
drover="$work/drover"
export DROVER_SIM_TOKEN_SEED=bench
"$drover" sim -registry-only -write-registry "$work/registry.json" -devices "$devices" -ops-listen 127.0.0.1:0 2>/dev/null

metric() { # ops-addr name: the sum of the series (0 when none)
	curl -fs "http://$1/metrics" | grep -E "^$2(\{[^}]*\})? " | awk '{s+=$2} END {printf "%.6f\n", s+0}'
}
printf 'n\tacked\tfrontends_us\trouters_us\twriter_us\tlivefeed_us\tdrover_us\tack_p99_ms\n' >"$out/summary.tsv"

for n in $sizes; do
	dir="$out/n$n"; mkdir -p "$dir"
	run="$work/n$n"; mkdir -p "$run"
	declare -a rops=() fops=() routers=() stores=() lives=() fronts=() npids=()
	for i in $(seq 1 "$n"); do
		r=$(freeport); s=$(freeport); l=$(freeport); o=$(freeport)
		routers+=("tcp://127.0.0.1:$r"); stores+=("tcp://127.0.0.1:$s"); lives+=("tcp://127.0.0.1:$l"); rops+=("$o")
		"$drover" router -id "router-$i" -listen "tcp://127.0.0.1:$r" -store-listen "tcp://127.0.0.1:$s" \
			-live-pub "tcp://127.0.0.1:$l" -queue-dir "$run/router-$i" -registry "$work/registry.json" \
			-subscribers lake -ops-listen "127.0.0.1:$o" 2>"$dir/router-$i.log" &
		npids+=($!)
	done
	join() { local IFS=,; echo "$*"; }
	wops=$(freeport); lops=$(freeport)
	"$drover" storage-writer -sink lake -name lake -routers "$(join "${stores[@]}")" -queue-dir "$run/writer" \
		-lake-dir "$run/lake" -ops-listen "127.0.0.1:$wops" 2>"$dir/writer.log" &
	npids+=($!)
	"$drover" livefeed -id livefeed -listen "127.0.0.1:$(freeport)" -routers "$(join "${lives[@]}")" \
		-ops-listen "127.0.0.1:$lops" 2>"$dir/livefeed.log" &
	npids+=($!)
	for i in $(seq 1 "$n"); do
		f=$(freeport); o=$(freeport)
		fronts+=("ws://127.0.0.1:$f"); fops+=("$o")
		"$drover" frontend -id "frontend-$i" -listen "127.0.0.1:$f" -routers "$(join "${routers[@]}")" \
			-queue-dir "$run/frontend-$i" -registry "$work/registry.json" -max-connections 50000 \
			-ops-listen "127.0.0.1:$o" 2>"$dir/frontend-$i.log" &
		npids+=($!)
	done
	pids+=("${npids[@]}")
	for a in "${rops[@]}" "${fops[@]}" "$wops" "$lops"; do waitready "127.0.0.1:$a"; done

	cpu_all() { # the CPU seconds of each group: frontends routers writer livefeed
		local fsum=0 rsum=0
		for o in "${fops[@]}"; do fsum=$(python3 -c "print($fsum + $(metric "127.0.0.1:$o" process_cpu_seconds_total))"); done
		for o in "${rops[@]}"; do rsum=$(python3 -c "print($rsum + $(metric "127.0.0.1:$o" process_cpu_seconds_total))"); done
		echo "$fsum $rsum $(metric "127.0.0.1:$wops" process_cpu_seconds_total) $(metric "127.0.0.1:$lops" process_cpu_seconds_total)"
	}
	before=$(cpu_all)
	echo "bench-scaleout: N=$n: $devices devices x $rate readings/s over $n frontends and $n routers for $duration" >&2
	"$drover" sim -frontends "$(join "${fronts[@]}")" -devices "$devices" -rate "$rate" -frame-readings "$frame" \
		-connect-rate 1000 -duration "$duration" -summary "$dir/sim.json" -ops-listen 127.0.0.1:0 2>"$dir/sim.log" \
		|| echo "bench-scaleout: the simulator failed (see $dir/sim.log)" >&2
	deadline=$(( $(date +%s) + drain_timeout ))
	while (( $(date +%s) < deadline )); do
		total=0
		for o in "${rops[@]}" "${fops[@]}" "$wops"; do
			total=$(python3 -c "print($total + $(metric "127.0.0.1:$o" drover_queue_depth_entries))")
		done
		python3 -c "import sys; sys.exit(0 if $total == 0 else 1)" && break
		sleep 0.5
	done
	after=$(cpu_all)
	for o in "${rops[@]}" "${fops[@]}" "$wops" "$lops"; do curl -fs "http://127.0.0.1:$o/metrics" >"$dir/$o.metrics" || true; done
	python3 - "$n" "$dir/sim.json" "$before" "$after" >>"$out/summary.tsv" <<'PY'
import json, sys
n, sim = sys.argv[1], json.load(open(sys.argv[2]))
b = [float(x) for x in sys.argv[3].split()]
a = [float(x) for x in sys.argv[4].split()]
acked = sim.get("acked", 0) or 1
us = [(a[i] - b[i]) / acked * 1e6 for i in range(4)]
p99 = sim.get("ack_latency_ms", {}).get("p99")
print("\t".join([n, str(sim.get("acked", 0))] + [f"{u:.2f}" for u in us] + [f"{sum(us):.2f}", str(p99)]))
PY
	for p in "${npids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${npids[@]}"; do wait "$p" 2>/dev/null || true; done
	unset rops fops routers stores lives fronts npids
done

python3 - "$out/summary.tsv" <<'PY' | tee "$out/summary.txt"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
print("CPU µs per acked reading, each tier summed over its processes (process_cpu_seconds_total / readings acked):")
print(f"{'N':>3} {'acked':>10} {'frontends':>10} {'routers':>9} {'writer':>8} {'livefeed':>9} {'drover':>8} {'ack p99':>8}")
for r in rows:
    print(f"{r['n']:>3} {int(r['acked']):>10,} {r['frontends_us']:>10} {r['routers_us']:>9} {r['writer_us']:>8} "
          f"{r['livefeed_us']:>9} {r['drover_us']:>8} {r['ack_p99_ms']:>7}ms")
PY
echo "bench-scaleout: results in $out" >&2
