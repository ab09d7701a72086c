#!/usr/bin/env bash
# bench-frame-shapes.sh: what a frame costs the frontend and the simulator when the same frames a
# second come from many sparse devices or from few busy ones (issue 16, "Per frame, many
# connections against few"). For each shape (SHAPES, "15000:0.1 1500:1": devices:readings per
# second each, 1,500 one-reading frames a second both): a router and one frontend (SERVER_CPUS,
# default 0) and one `drover sim` process (SIM_CPUS, default 1); once every device is connected
# and SETTLE (8) seconds more, WINDOW (15) seconds of CPU profiles of the frontend and the
# simulator (/debug/pprof/profile), and per frame: CPU µs of each process (from /proc), queue
# fsyncs, voluntary context switches (threads going to sleep); with STRACE=1 also `strace -c -f`
# of both for 5 s (system calls by kind; strace slows the processes: counts per frame, not times).
# Results: OUT (bench-out)/frame-shapes/<devices>x<rate>/ (fe.pprof, sim.pprof, summary.txt, the
# strace tables); compare the profiles' shares (`go tool pprof -top -cum`), not their times.
# DROVER_BIN: run that binary (a before/after comparison). ~1.5 min a shape at the defaults; a
# check that it works: SHAPES="300:1" WINDOW=3 SETTLE=2 scripts/bench-frame-shapes.sh
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/frame-shapes"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
SIM_CPUS=${SIM_CPUS-1} SERVER_CPUS=${SERVER_CPUS-0}
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
trap cleanup EXIT
cd "$root"
build_drover "$work/drover"
drover="$work/drover"
export DROVER_SIM_TOKEN_SEED=frame-shapes
window=${WINDOW:-15}

# vcsw PID: voluntary context switches of all the process's threads so far.
vcsw() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/^voluntary_ctxt_switches/ {s += $2} END {print s + 0}'; }

for shape in ${SHAPES:-15000:0.1 1500:1}; do
	n=${shape%%:*} rate=${shape#*:}
	dir="$out/${n}x$rate"; rm -rf "$dir"; mkdir -p "$dir"
	"$drover" sim -registry-only -write-registry "$work/reg.json" -devices "$n" -ops-listen 127.0.0.1:0 2>/dev/null
	rport=$(freeport); rops="127.0.0.1:$(freeport)"
	"${server_pin[@]}" "$drover" router -id r1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$(freeport)" \
		-store-listen "tcp://127.0.0.1:$(freeport)" -queue-dir "$work/router-$n" -queue-max-bytes -1 -fixed-subscribers \
		-ops-listen "$rops" 2>"$dir/router.log" &
	rpid=$!; pids+=($!)
	waitready "$rops"
	fport=$(freeport); fops="127.0.0.1:$(freeport)"
	"${server_pin[@]}" "$drover" frontend -id fe1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" -queue-dir "$work/fe-$n" \
		-registry "$work/reg.json" -ops-listen "$fops" -pprof -max-connections $((n + 3000)) -accept-rate 0 2>"$dir/fe.log" &
	fpid=$!; pids+=($!)
	waitready "$fops"
	sops="127.0.0.1:$(freeport)"
	"${sim_pin[@]}" "$drover" sim -devices "$n" -local-addrs 127.0.0.2 -frontends "ws://127.0.0.1:$fport" -rate "$rate" \
		-connect-rate 2000 -ops-listen "$sops" -pprof -duration 0 >"$dir/sim.json" 2>"$dir/sim.log" &
	spid=$!; pids+=($!)
	wait_until 300 "$n devices connected" '[ "$(promsum "$fops" drover_frontend_connections)" -ge "$n" ]'
	sleep "${SETTLE:-8}"
	f0=$(promsum "$fops" drover_frontend_frames_received_total); y0=$(promsum "$fops" drover_queue_fsyncs_total 'queue="frontend"')
	fc0=$(cpusec "$fpid"); sc0=$(cpusec "$spid"); rc0=$(cpusec "$rpid"); fv0=$(vcsw "$fpid"); sv0=$(vcsw "$spid")
	curl -fs "http://$fops/debug/pprof/profile?seconds=$window" -o "$dir/fe.pprof" & p1=$!
	curl -fs "http://$sops/debug/pprof/profile?seconds=$window" -o "$dir/sim.pprof" & p2=$!
	wait "$p1" "$p2"
	f1=$(promsum "$fops" drover_frontend_frames_received_total); y1=$(promsum "$fops" drover_queue_fsyncs_total 'queue="frontend"')
	fc1=$(cpusec "$fpid"); sc1=$(cpusec "$spid"); rc1=$(cpusec "$rpid"); fv1=$(vcsw "$fpid"); sv1=$(vcsw "$spid")
	if [[ ${STRACE:-0} == 1 ]]; then
		timeout -s INT 5 strace -c -f -p "$fpid" -o "$dir/fe.strace" 2>/dev/null & t1=$!
		timeout -s INT 5 strace -c -f -p "$spid" -o "$dir/sim.strace" 2>/dev/null & t2=$!
		wait "$t1" "$t2" || true
	fi
	frames=$((f1 - f0))
	python3 - "$n" "$rate" "$frames" "$((y1 - y0))" "$fc0" "$fc1" "$rc0" "$rc1" "$sc0" "$sc1" "$fv0" "$fv1" "$sv0" "$sv1" <<'PY' | tee "$dir/summary.txt"
import sys
n, rate, frames, fsyncs = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fc0, fc1, rc0, rc1, sc0, sc1 = map(float, sys.argv[5:11])
fv0, fv1, sv0, sv1 = map(int, sys.argv[11:15])
f = max(frames, 1)
print(f"{n} devices at {rate}/s: {frames} frames in the window, {f / fsyncs if fsyncs else 0:.2f} frames a queue fsync")
print(f"  CPU µs per frame: frontend {1e6 * (fc1 - fc0) / f:.0f}, router {1e6 * (rc1 - rc0) / f:.0f}, simulator {1e6 * (sc1 - sc0) / f:.0f}")
print(f"  voluntary context switches per frame: frontend {(fv1 - fv0) / f:.2f}, simulator {(sv1 - sv0) / f:.2f}")
PY
	for p in "$spid" "$fpid" "$rpid"; do kill -TERM "$p" 2>/dev/null || true; done
	wait "$spid" "$fpid" "$rpid" 2>/dev/null || true
	pids=()
done
