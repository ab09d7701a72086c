#!/usr/bin/env bash
# bench-conns.sh: connection handling at scale (issue 16), with real processes on loopback:
# drover frontends and a router, `drover sim` processes for the devices (scripts/sim-fleet.sh's
# start_sims: at most SIM_PER devices a process, each dialing from its own 127.0.0.x), and, as
# the peer in the same run, nats-server v2.12.3's WebSocket listener driven by `natspeer wsconns`.
#
#   scripts/bench-conns.sh memory     RSS per idle connection (RSS growth ÷ connections) of one
#                                     frontend holding DEVICES (15,000) idle devices, ws:// and
#                                     wss://, with heap and stack apart and the heap's top users;
#                                     then nats-server's WebSocket listener holding as many
#   scripts/bench-conns.sh connect    connect rate of one frontend, admission off, DEVICES (15,000)
#                                     devices at once: ws://, wss:// full handshakes, wss:// resumed
#                                     (every device dropped and back), and after a kill -9 and restart
#                                     of the frontend with the ticket key file and without; frontend
#                                     CPU per connection (connections per core-second) and the total
#                                     rate; then nats-server (ws://, wss:// full and resumed)
#   scripts/bench-conns.sh scale      DEVICES (100,000; then 200,000) devices at one reading per 10 s
#                                     over FRONTENDS frontend processes (default: one per 15,000) on
#                                     one port (PORTS=reuse, SO_REUSEPORT) or a port each
#                                     (PORTS=separate): connected, acked, ack p99, RSS and CPU of
#                                     every process, open files; what stops it, when it stops
#   scripts/bench-conns.sh stampede   DEVICES (50,000) devices over VICTIMS (3) frontends and STEADY
#                                     (2,000) devices on a survivor frontend; kill -9 the victims and
#                                     start them again: time until every device is back and acked,
#                                     refusals and failures, the steady devices' ack p99 during the
#                                     storm, nothing acked lost (internal/bench/ackcheck). ADMISSION=on,
#                                     off, or both (default: both, side by side)
#   scripts/bench-conns.sh isolation  DEVICES (20,000) devices in sim processes on two frontends
#                                     sharing a port, STEADY (1,000) more; kill -9 the processes
#                                     holding the 20,000: the others' acks, and the frontends'
#                                     goroutines, heap and RSS before, with them, and after
#
# Knobs: DEVICES, STEADY, VICTIMS, FRONTENDS (FRONTEND_PER: devices a frontend, 15,000), PORTS,
# ADMISSION, TLS=1 (wss:// for scale, stampede and isolation; memory and connect do both), RATE
# (readings per device per second), DURATION, SETTLE and CPU_WINDOW (scale: seconds before and of
# the CPU measurement, 20 and 60; DURATION 0: until the measurement is over; WARMUP, 60s: what
# the steady ack latency leaves out), SIM_PER (devices per sim process, 15,000), NATS=0 (skip the
# peer), FRONTEND_FLAGS (more flags for every frontend, e.g. smaller TLS limits so that a small
# run overflows them as the full size does), SIM_FLAGS (more flags for every sim process, e.g.
# "-tls-key-exchanges x25519" or "-tls-max-version 1.2": a fleet of trackers' TLS stacks),
# FRONTEND_ENV (environment of every frontend, e.g. "GOGC=50" or "GOMEMLIMIT=200MiB": memory's
# RSS against the GC's headroom),
# SIM_CPUS and SERVER_CPUS (pin the simulators and the servers to different cores with taskset,
# e.g. SIM_CPUS=1 SERVER_CPUS=0; recorded on the first line of the results), PROFILE=SECONDS
# (connect: a CPU profile of the frontend over each wave, cut by phase), OUT (bench-out),
# DROVER_BIN (run that binary instead of building one: a before/after comparison). Results:
# OUT/conns-<scenario>/ (each process's log, metrics and summaries, and <scenario>.txt, the table).
#
# Sizes for a check that the script works (a minute or two each, a few hundred devices):
#   DEVICES=300 scripts/bench-conns.sh memory
#   DEVICES=300 scripts/bench-conns.sh connect
#   DEVICES=300 FRONTEND_PER=150 SIM_PER=150 SETTLE=3 CPU_WINDOW=5 WARMUP=2s scripts/bench-conns.sh scale
#   DEVICES=300 STEADY=50 VICTIMS=2 scripts/bench-conns.sh stampede
#   DEVICES=300 STEADY=50 SIM_PER=150 scripts/bench-conns.sh isolation
# The figures of docs/performance.md are the defaults, run alone on the machine.
set -euo pipefail

scenario="${1:?usage: $0 memory|connect|scale|stampede|isolation}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/conns-$scenario"
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"
trap cleanup EXIT
cd "$root"

log() { echo "bench-conns: $*" >&2; }
build_drover "$work/drover" # or $DROVER_BIN: a before/after comparison
drover="$work/drover"
export DROVER_SIM_TOKEN_SEED=bench-conns
scripts/make-test-certs.sh "$work/certs" 2>/dev/null
certs="$work/certs"
tls_flags=(-tls-cert "$certs/server.crt" -tls-key "$certs/server.key")
sim_tls=(-tls-ca "$certs/ca.pem")
nats_on="${NATS:-1}"

# registry N: a registry of N devices, dev-0 to dev-(N-1).
registry() { "$drover" sim -registry-only -write-registry "$work/registry.json" -devices "$1" -ops-listen 127.0.0.1:0 2>/dev/null; }

# start_router: a router keeping everything in its main queue (-fixed-subscribers, none listed),
# so that internal/bench/ackcheck finds every reading there.
start_router() {
	rport=$(freeport); rops="127.0.0.1:$(freeport)"
	"${server_pin[@]}" "$drover" router -id router-1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$(freeport)" \
		-store-listen "tcp://127.0.0.1:$(freeport)" -queue-dir "$work/router" -queue-max-bytes -1 -fixed-subscribers \
		-ops-listen "$rops" 2>"$out/router.log" &
	router_pid=$!; pids+=($!)
	waitready "$rops"
}

# start_frontend NAME LISTEN-ADDR OPS-ADDR ARGS...: a frontend; its pid in fe_pid[NAME]. The same
# call starts it again on the same queue after a kill.
declare -A fe_pid fe_ops fe_args
start_frontend() {
	local name=$1 listen=$2 ops=$3
	shift 3
	fe_ops[$name]=$ops
	fe_args[$name]="$*"
	# shellcheck disable=SC2068,SC2086 # FRONTEND_FLAGS and FRONTEND_ENV are lists
	"${server_pin[@]}" env ${FRONTEND_ENV:-} "$drover" frontend -id "$name" -listen "$listen" -routers "tcp://127.0.0.1:$rport" -queue-dir "$work/$name" \
		-registry "$work/registry.json" -ops-listen "$ops" -pprof "$@" ${FRONTEND_FLAGS:-} 2>>"$out/$name.log" &
	fe_pid[$name]=$!; pids+=($!)
}
restart_frontend() { # NAME LISTEN: again, with the arguments of the first start
	local name=$1 listen=$2
	# shellcheck disable=SC2086
	start_frontend "$name" "$listen" "${fe_ops[$name]}" ${fe_args[$name]}
}

# snap NAME: a process's figures after a forced GC: RSS, heap in use, stacks, goroutines, and the
# heap the runtime holds free (idle and not released to the OS: the GC's headroom, in RSS).
snap() {
	local ops=${fe_ops[$1]} pid=${fe_pid[$1]}
	curl -fs "http://$ops/debug/pprof/heap?gc=1" -o /dev/null || true
	sleep 1
	echo "$(rss "$pid") $(promsum "$ops" go_memstats_heap_inuse_bytes) $(promsum "$ops" go_memstats_stack_inuse_bytes) $(promsum "$ops" go_goroutines)" \
		"$(($(promsum "$ops" go_memstats_heap_idle_bytes) - $(promsum "$ops" go_memstats_heap_released_bytes)))"
}

# refusals_of OPS-ADDR: a frontend's refusals by reason, "reason=count ...".
refusals_of() {
	{ curl -fs "http://$1/metrics" || true; } | awk -F'[{}"= ]+' '/^drover_frontend_refusals_total\{/ && $NF > 0 {printf "%s=%s ", $3, $NF; n++} END {if (!n) printf "none "}'
}

# stop_all: SIGTERM every process started, and wait.
stop_all() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	pids=()
}

# drain_and_check: stop the sims (they write their acked seqs), wait until every frontend has
# forwarded its queue, stop frontends and router, and check per device that nothing acked is
# missing from the router's queue.
drain_and_check() {
	local name
	for name in "$@"; do local -n _p="sim_pids_$name"; for p in "${_p[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; done
	for name in "$@"; do local -n _q="sim_pids_$name"; for p in "${_q[@]}"; do wait "$p" 2>/dev/null || true; done; done
	for name in "${!fe_ops[@]}"; do
		wait_until 300 "$name's queue forwarded" '[ "$(promsum "${fe_ops[$name]}" drover_queue_depth_entries '\''queue="frontend"'\'')" = 0 ]' || true
	done
	stop_all
	{ go run ./internal/bench/ackcheck -queue "$work/router" -acked "$out/*.acked.json" || true; } | tee -a "$out/$scenario.txt"
}

# nats_start MODE(ws|wss): nats-server with a WebSocket listener; sets nats_pid, nats_url, nats_mon.
nats_start() {
	local port mon
	port=$(freeport); mon=$(freeport)
	{
		echo "listen: 127.0.0.1:$(freeport)"
		echo "http: 127.0.0.1:$mon"
		echo "max_connections: 1000000"
		echo "websocket {"
		echo "  listen: \"127.0.0.1:$port\""
		if [[ $1 == wss ]]; then
			echo "  tls { cert_file: \"$certs/server.crt\", key_file: \"$certs/server.key\" }"
		else
			echo "  no_tls: true"
		fi
		echo "}"
	} >"$work/nats-$1.conf"
	"${server_pin[@]}" "$nats_server" -c "$work/nats-$1.conf" >"$out/nats-$1.log" 2>&1 &
	nats_pid=$!; pids+=($!)
	nats_url="$1://127.0.0.1:$port"; nats_mon="127.0.0.1:$mon"
	wait_until 30 "nats-server" 'curl -fs "http://$nats_mon/healthz" -o /dev/null'
}
nats_conns() { curl -fs "http://$nats_mon/varz" | python3 -c 'import json,sys; print(json.load(sys.stdin)["connections"])'; }
nats_prepare() {
	[[ $nats_on == 1 ]] || return 0
	nats_server="$root/.tools/bin/nats-server"
	scripts/install-nats-server.sh
	(cd bench/natspeer && go build -o "$work/natspeer" .)
}

pinning | tee "$out/$scenario.txt"
# shellcheck disable=SC2034 # sim_pids_*, sim_ops_* are set through namerefs
case "$scenario" in
memory)
	n=${DEVICES:-15000}
	registry "$n"
	nats_prepare
	printf '%-26s %8s %14s %14s %14s %14s %11s\n' "server" "conns" "RSS/conn" "heap/conn" "stack/conn" "retained/conn" "goroutines" | tee -a "$out/memory.txt"
	for mode in ws wss; do
		start_router
		args=(-max-connections $((n + 100)) -accept-rate 0 -tls-handshake-rate 0)
		[[ $mode == wss ]] && args+=("${tls_flags[@]}")
		port=$(freeport)
		start_frontend "fe-$mode" "127.0.0.1:$port" "127.0.0.1:$(freeport)" "${args[@]}"
		waitready "${fe_ops[fe-$mode]}"
		read -r rss0 heap0 stack0 _ kept0 < <(snap "fe-$mode")
		start_sims "idle_$mode" "$n" 0 2 -- -rate 0 -connect-rate 5000 -frontends "$mode://127.0.0.1:$port" "${sim_tls[@]}"
		wait_until 600 "$n connections" '[ "$(promsum "${fe_ops[fe-$mode]}" drover_frontend_connections)" -ge "$n" ]'
		sleep 5
		read -r rss1 heap1 stack1 gor1 kept1 < <(snap "fe-$mode")
		curl -fs "http://${fe_ops[fe-$mode]}/debug/pprof/heap" -o "$out/fe-$mode-heap.pprof"
		go tool pprof -top -sample_index=inuse_space -nodecount=25 "$drover" "$out/fe-$mode-heap.pprof" >"$out/fe-$mode-heap.txt" 2>/dev/null || true
		python3 -c "
n=$n; r=($rss1-$rss0)/n; h=($heap1-$heap0)/n; s=($stack1-$stack0)/n; k=($kept1-$kept0)/n
print(f'%-26s %8d %10.2f KiB %10.2f KiB %10.2f KiB %10.2f KiB %11d' % ('drover frontend $mode', n, r/1024, h/1024, s/1024, k/1024, $gor1))" | tee -a "$out/memory.txt"
		stop_all
	done
	if [[ $nats_on == 1 ]]; then
		for mode in ws wss; do
			nats_start "$mode"
			sleep 1
			r0=$(rss "$nats_pid")
			"${sim_pin[@]}" "$work/natspeer" wsconns -url "$nats_url" -ca "$certs/ca.pem" -conns "$n" -hold 600s -summary "$out/nats-$mode.json" 2>"$out/natspeer-$mode.log" &
			speer=$!; pids+=($!)
			wait_until 600 "$n nats connections" '[ "$(nats_conns)" -ge "$n" ]'
			sleep 5
			r1=$(rss "$nats_pid")
			python3 -c "print('%-26s %8d %10.2f KiB %14s %14s %14s %11s' % ('nats-server $mode', $n, ($r1-$r0)/$n/1024, '', '', '', ''))" | tee -a "$out/memory.txt"
			kill -TERM "$speer" 2>/dev/null || true
			stop_all
		done
	fi
	log "heap's top users per frontend: $out/fe-ws-heap.txt, $out/fe-wss-heap.txt"
	;;

connect)
	n=${DEVICES:-15000}
	registry "$n"
	nats_prepare
	printf '%-44s %8s %9s %12s %14s %16s\n' "wave" "conns" "seconds" "conns/s" "frontend CPU s" "conns/core-s" | tee -a "$out/connect.txt"
	# wave NAME EXPECT-CONNECTIONS: wait until the frontend holds them; print the wave's line from
	# the marks t0/cpu0 taken before it.
	wave() {
		local wave_want=$2
		wait_until 600 "$1" '[ "$(promsum "${fe_ops[fe]}" drover_frontend_connections)" -ge "$wave_want" ]'
		local t1 c1
		t1=$(date +%s.%N); c1=$(cpusec "${fe_pid[fe]}")
		python3 -c "
n=$2; dt=$t1-$t0; cpu=$c1-$cpu0
print('%-44s %8d %9.2f %12.0f %14.2f %16.0f' % ('$1', n, dt, n/dt, cpu, n/cpu if cpu > 0 else 0))" | tee -a "$out/connect.txt"
		if [[ $mode != ws ]]; then
			# The wave's handshakes and failures as both sides counted them (counts, not timings).
			read -r -a now < <(hs_counts)
			python3 - "${hs0[*]}" "${now[*]}" <<'PY' | tee -a "$out/connect.txt"
import sys
a, b = ([int(x) for x in s.split()] for s in sys.argv[1:3])
d = [y - x for x, y in zip(a, b)]
print("    frontend: handshakes resumed %d, full %d, failed %d; closed before the handshake: backlog full %d, waited too long %d, client gone %d" % tuple(d[:6]))
print("    devices: handshakes resumed %d, full %d; failed attempts: tls %d, timeout %d, refused %d, dial %d" % tuple(d[6:]))
PY
		fi
		prof_end
	}
	# PROFILE=SECONDS: a CPU profile of the frontend over the first SECONDS of each wave
	# (fe-<wave>.cpu.pprof), cut by phase of the connection in µs per connection accepted meanwhile
	# (bench-lib.sh's phases), printed under the wave's line.
	prof_start() {
		[[ -n ${PROFILE:-} ]] || return 0
		prof_file="$out/fe-$1.cpu.pprof"
		prof_acc0=$(promsum "${fe_ops[fe]}" drover_frontend_connections_accepted_total)
		curl -fs "http://${fe_ops[fe]}/debug/pprof/profile?seconds=$PROFILE" -o "$prof_file" &
		prof_pid=$!
	}
	prof_end() {
		[[ -n ${PROFILE:-} ]] || return 0
		wait "$prof_pid" || true
		phases "$drover" "$prof_file" $(($(promsum "${fe_ops[fe]}" drover_frontend_connections_accepted_total) - prof_acc0)) | tee -a "$out/connect.txt"
	}
	# hs_counts: the frontend's and the devices' handshake counters, in the order wave prints them.
	hs_counts() {
		local fe=${fe_ops[fe]} r k
		r="$(promsum "$fe" drover_frontend_tls_handshakes_total 'result="resumed"') $(promsum "$fe" drover_frontend_tls_handshakes_total 'result="full"')"
		r="$r $(promsum "$fe" drover_frontend_tls_handshakes_total 'result="failed"')"
		# backlog: frontends that closed connections finding the backlog full (before they left them
		# in the kernel's accept queue); gone: clients that left while they waited.
		for k in backlog wait gone; do
			r="$r $(promsum "$fe" drover_frontend_tls_handshake_refusals_total "reason=\"$k\"")"
		done
		r="$r $(promsums drover_sim_tls_handshakes_total 'kind="resumed"' "${sim_ops_dev_wss_tickets[@]}" "${sim_ops_dev_wss_no_tickets[@]}")"
		r="$r $(promsums drover_sim_tls_handshakes_total 'kind="full"' "${sim_ops_dev_wss_tickets[@]}" "${sim_ops_dev_wss_no_tickets[@]}")"
		for k in tls timeout refused dial; do
			r="$r $(promsums drover_sim_connect_failures_total "cause=\"$k\"" "${sim_ops_dev_wss_tickets[@]}" "${sim_ops_dev_wss_no_tickets[@]}")"
		done
		echo "$r"
	}
	sim_ops_dev_wss_tickets=(); sim_ops_dev_wss_no_tickets=()
	for mode in ws wss_tickets wss_no_tickets; do
		start_router
		port=$(freeport)
		args=(-max-connections $((n + 100)) -accept-rate 0 -tls-handshake-rate 0 -lame-duck 0)
		sims=(-rate 0 -connect-rate 0 -frontends "${mode%%_*}://127.0.0.1:$port")
		case $mode in
		wss_tickets) args+=("${tls_flags[@]}" -tls-ticket-key-file "$certs/tickets.key"); sims+=("${sim_tls[@]}") ;;
		wss_no_tickets) args+=("${tls_flags[@]}"); sims+=("${sim_tls[@]}") ;;
		esac
		start_frontend fe "127.0.0.1:$port" "127.0.0.1:$(freeport)" "${args[@]}"
		waitready "${fe_ops[fe]}"
		if [[ $mode != wss_no_tickets ]]; then
			prof_start "$mode-first"
			t0=$(date +%s.%N); cpu0=$(cpusec "${fe_pid[fe]}"); read -r -a hs0 < <(hs_counts)
			start_sims "dev_$mode" "$n" 0 2 -- "${sims[@]}"
			wave "$mode: first connections" "$n"
			if [[ $mode != ws ]]; then
				# Every device drops its connection and comes back, resuming its session.
				sleep 2
				read -r -a hs0 < <(hs_counts)
				prof_start "$mode-back"
				for p in "${sim_pids_dev_wss_tickets[@]}"; do kill -USR1 "$p"; done
				wait_until 60 "the drop" '[ "$(promsum "${fe_ops[fe]}" drover_frontend_connections)" -lt "$n" ]'
				t0=$(date +%s.%N); cpu0=$(cpusec "${fe_pid[fe]}")
				wave "$mode: every device back (same process)" "$n"
			fi
		else
			start_sims "dev_$mode" "$n" 0 2 -- "${sims[@]}"
			wait_until 600 "$n connections" '[ "$(promsum "${fe_ops[fe]}" drover_frontend_connections)" -ge "$n" ]'
		fi
		if [[ $mode != ws ]]; then
			# Across a restart: kill -9 and start again on the same port.
			sleep 2
			# The devices' counts from the kill on; the restarted frontend's from 0.
			read -r -a hs0 < <(hs_counts)
			hs0=(0 0 0 0 0 0 "${hs0[@]:6}")
			kill -KILL "${fe_pid[fe]}"; wait "${fe_pid[fe]}" 2>/dev/null || true
			restart_frontend fe "127.0.0.1:$port"
			waitready "${fe_ops[fe]}"
			prof_start "$mode-restart"
			t0=$(date +%s.%N); cpu0=$(cpusec "${fe_pid[fe]}")
			wave "$mode: back after kill -9 and restart" "$n"
			echo "    handshakes of the restarted frontend: resumed $(promsum "${fe_ops[fe]}" drover_frontend_tls_handshakes_total 'result="resumed"'), full $(promsum "${fe_ops[fe]}" drover_frontend_tls_handshakes_total 'result="full"'), failed $(promsum "${fe_ops[fe]}" drover_frontend_tls_handshakes_total 'result="failed"')" | tee -a "$out/connect.txt"
		fi
		stop_all
	done
	if [[ $nats_on == 1 ]]; then
		for mode in ws wss; do
			nats_start "$mode"
			c0=$(cpusec "$nats_pid")
			"${sim_pin[@]}" "$work/natspeer" wsconns -url "$nats_url" -ca "$certs/ca.pem" -conns "$n" -waves 2 -hold 2s -summary "$out/nats-$mode.json" 2>"$out/natspeer-$mode.log"
			c1=$(cpusec "$nats_pid")
			python3 - "$out/nats-$mode.json" "$mode" "$c0" "$c1" <<'PY' | tee -a "$out/connect.txt"
import json, sys
s, mode, c0, c1 = json.load(open(sys.argv[1])), sys.argv[2], float(sys.argv[3]), float(sys.argv[4])
for w in s["waves"]:
    kind = "first connections" if w["wave"] == 1 else "every connection back (same process)"
    tls = f" (TLS full {w.get('tls_handshakes_full', 0)}, resumed {w.get('tls_handshakes_resumed', 0)})" if mode == "wss" else ""
    print("%-44s %8d %9.2f %12.0f %14s %16s%s" % (f"nats-server {mode}: {kind}", w["connected"], w["seconds"], w["connects_per_second"], "", "", tls))
print(f"    nats-server CPU over both waves: {c1 - c0:.2f} s")
PY
			stop_all
		done
	fi
	;;

scale)
	n=${DEVICES:-100000}
	per_fe=${FRONTEND_PER:-15000}
	f=${FRONTENDS:-$(((n + per_fe - 1) / per_fe))}
	rate=${RATE:-0.1}
	# 0: the devices run until the measurement is over (then SIGTERM), however long 200,000
	# take to connect; a fixed DURATION could end before the CPU window does.
	dur=${DURATION:-0}
	registry "$n"
	start_router
	ports=()
	shared=$(freeport)
	for i in $(seq 1 "$f"); do
		if [[ ${PORTS:-reuse} == reuse ]]; then ports+=("$shared"); extra=(-reuse-port); else ports+=("$(freeport)"); extra=(); fi
		[[ ${TLS:-0} == 1 ]] && extra+=("${tls_flags[@]}" -tls-ticket-key-file "$certs/tickets.key")
		start_frontend "fe-$i" "127.0.0.1:${ports[-1]}" "127.0.0.1:$(freeport)" -max-connections $((per_fe + 3000)) "${extra[@]}"
	done
	for i in $(seq 1 "$f"); do waitready "${fe_ops[fe-$i]}"; done
	scheme=ws; [[ ${TLS:-0} == 1 ]] && scheme=wss
	urls=$(printf "$scheme://127.0.0.1:%s," $(printf '%s\n' "${ports[@]}" | sort -u)); urls=${urls%,}
	start_sims dev "$n" 0 2 -- -rate "$rate" -connect-rate 1000 -frontends "$urls" "${sim_tls[@]}" -duration "$dur" -warmup "${WARMUP:-60s}"
	all_ops=("${fe_ops[@]}")
	connected() { promsums drover_frontend_connections '' "${all_ops[@]}"; }
	wait_until 900 "$n devices connected" '[ "$(connected)" -ge "$n" ]' || log "only $(connected) of $n connected: see below"
	sleep "${SETTLE:-20}"
	window=${CPU_WINDOW:-60}
	# CPU over a minute of steady load.
	declare -A c0
	for name in "${!fe_pid[@]}"; do c0[$name]=$(cpusec "${fe_pid[$name]}"); done
	r0=$(cpusec "$router_pid"); s0=0; for p in "${sim_pids_dev[@]}"; do s0=$(python3 -c "print($s0 + $(cpusec "$p"))"); done
	frames0=$(promsums drover_frontend_frames_received_total '' "${all_ops[@]}")
	fsyncs0=$(promsums drover_queue_fsyncs_total 'queue="frontend"' "${all_ops[@]}")
	pings0=$(promsums drover_frontend_pings_sent_total '' "${all_ops[@]}")
	sleep "$window"
	frames=$(($(promsums drover_frontend_frames_received_total '' "${all_ops[@]}") - frames0))
	fsyncs=$(($(promsums drover_queue_fsyncs_total 'queue="frontend"' "${all_ops[@]}") - fsyncs0))
	pings=$(($(promsums drover_frontend_pings_sent_total '' "${all_ops[@]}") - pings0))
	{
		echo "scale: $n devices, $f frontends (${PORTS:-reuse} ports, ${scheme}), one reading every $(python3 -c "print(1/$rate)") s each"
		echo "connected: $(connected) of $n; acking devices (sims): $(promsums drover_sim_devices_acking '' "${sim_ops_dev[@]}")"
		ferss=0; fecpu=0; fefds=""
		for name in "${!fe_pid[@]}"; do
			ferss=$((ferss + $(rss "${fe_pid[$name]}")))
			fecpu=$(python3 -c "print($fecpu + $(cpusec "${fe_pid[$name]}") - ${c0[$name]})")
			fefds="$fefds $(fds "${fe_pid[$name]}")"
		done
		s1=0; srss=0; for p in "${sim_pids_dev[@]}"; do s1=$(python3 -c "print($s1 + $(cpusec "$p"))"); srss=$((srss + $(rss "$p"))); done
		echo "frontends: RSS $((ferss >> 20)) MiB in all, $(python3 -c "print(round($ferss / $n / 1024, 2))") KiB per device; CPU $(python3 -c "print(round($fecpu / $window, 2))") cores; open files per process:$fefds (limit $(ulimit -Hn))"
		echo "router: RSS $(($(rss "$router_pid") >> 20)) MiB, CPU $(python3 -c "print(round(($(cpusec "$router_pid") - $r0) / $window, 2))") cores"
		echo "frontends, per second of the window: frames $((frames / window)), queue fsyncs $((fsyncs / window)), pings sent $((pings / window)); servers' CPU per frame $(python3 -c "print(round(1e6 * ($fecpu + $(cpusec "$router_pid") - $r0) / max($frames, 1)))") µs"
		echo "simulator: ${#sim_pids_dev[@]} processes, RSS $((srss >> 20)) MiB, CPU $(python3 -c "print(round(($s1 - $s0) / $window, 2))") cores"
		echo "machine: load $(cut -d' ' -f1-3 /proc/loadavg), memory available $(awk '/MemAvailable/ {print int($2/1024)}' /proc/meminfo) MiB"
	} | tee -a "$out/scale.txt"
	if [[ $dur == 0 ]]; then for p in "${sim_pids_dev[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; fi
	for p in "${sim_pids_dev[@]}"; do wait "$p" 2>/dev/null || true; done
	sims_summary dev | tee -a "$out/scale.txt"
	python3 - "$out" <<'PY' | tee -a "$out/scale.txt"
import glob, json, sys
st = [json.load(open(f)).get("ack_latency_steady_ms") for f in glob.glob(sys.argv[1] + "/dev-*.json") if not f.endswith(".acked.json")]
st = [s for s in st if s]
if st:
    print("ack latency after the warmup (WARMUP, 60 s from the start), per sim process: p50 %s ms, p99 %s ms (worst process: p99 %s ms)" % (
        sorted(s["p50"] for s in st)[len(st)//2], sorted(s["p99"] for s in st)[len(st)//2], max(s["p99"] for s in st)))
PY
	;;

stampede)
	herd=${DEVICES:-50000}
	steady=${STEADY:-2000}
	victims=${VICTIMS:-3}
	rate=${RATE:-0.1}
	registry $((herd + steady))
	scheme=ws; [[ ${TLS:-0} == 1 ]] && scheme=wss
	modes=${ADMISSION:-both}; [[ $modes == both ]] && modes="on off"
	for adm in $modes; do
		rm -rf "$work"/fe-* "$work/router" "$out"/*.acked.json
		start_router
		fe_ops=(); fe_pid=(); fe_args=()
		common=(-max-connections 18000 -lame-duck 0)
		[[ $adm == off ]] && common+=(-accept-rate 0 -tls-handshake-rate 0 -flap-connects 0)
		[[ $scheme == wss ]] && common+=("${tls_flags[@]}" -tls-ticket-key-file "$certs/tickets.key")
		declare -A addr_of
		herd_urls=""
		for i in $(seq 1 "$victims") s; do
			addr_of[$i]="127.0.0.1:$(freeport)"
			start_frontend "fe-$i" "${addr_of[$i]}" "127.0.0.1:$(freeport)" "${common[@]}"
			herd_urls="$herd_urls$scheme://${addr_of[$i]},"
		done
		for i in $(seq 1 "$victims") s; do waitready "${fe_ops[fe-$i]}"; done
		start_sims herd "$herd" 0 2 -- -rate "$rate" -connect-rate 2000 -frontends "${herd_urls%,}" "${sim_tls[@]}"
		start_sims steady "$steady" "$herd" 200 -- -rate 1 -frontends "$scheme://${addr_of[s]}" "${sim_tls[@]}"
		acking() { promsums drover_sim_devices_acking '' "$@"; }
		wait_until 900 "every device connected and acked" '[ "$(acking "${sim_ops_herd[@]}" "${sim_ops_steady[@]}")" -ge $((herd + steady)) ]'
		sleep 10
		t_kill=$(date +%s.%N)
		for i in $(seq 1 "$victims"); do kill -KILL "${fe_pid[fe-$i]}"; done
		for i in $(seq 1 "$victims"); do wait "${fe_pid[fe-$i]}" 2>/dev/null || true; done
		sleep 1
		for i in $(seq 1 "$victims"); do restart_frontend "fe-$i" "${addr_of[$i]}"; done
		for i in $(seq 1 "$victims"); do waitready "${fe_ops[fe-$i]}"; done
		t_up=$(date +%s.%N)
		wait_until 600 "every device connected again" '[ "$(promsums drover_sim_devices_connected '\'''\'' "${sim_ops_herd[@]}")" -ge "$herd" ]' || true
		t_conn=$(date +%s.%N)
		wait_until 600 "every device back and acked" '[ "$(acking "${sim_ops_herd[@]}")" -ge "$herd" ]' || true
		t_back=$(date +%s.%N)
		sleep 10
		refusals=""
		for i in $(seq 1 "$victims") s; do
			refusals="$refusals fe-$i:$(refusals_of "${fe_ops[fe-$i]}")"
		done
		{
			echo "== admission $adm: $herd devices on $victims frontends killed -9 and restarted, $steady steady devices on a survivor ($scheme)"
			python3 -c "print(f'every device connected again {$t_conn - $t_kill:.1f} s after the kill ({$t_conn - $t_up:.1f} s after the restarts were ready); every device acked again {$t_back - $t_kill:.1f} s after the kill')"
			echo "refusals by frontend (after the restart):$refusals"
		} | tee -a "$out/stampede.txt"
		python3 - "$out" "$t_kill" "$t_back" <<'PY' | tee -a "$out/stampede.txt"
import glob, json, sys
out, t_kill, t_back = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
# The steady devices' timeline: one line a second.
for f in sorted(glob.glob(out + "/steady-*.timeline.jsonl")):
    pts = [json.loads(l) for l in open(f)]
    p99 = [p["ack_p99_ms"] for p in pts if p["acked"] > 0]
    print(f"steady devices: ack p99 per second over the whole run: median {sorted(p99)[len(p99)//2]} ms, worst second {max(p99)} ms; seconds with p99 over 100 ms: {sum(1 for x in p99 if x > 100)}, over 1 s: {sum(1 for x in p99 if x > 1000)}")
PY
		drain_and_check herd steady
		sims_summary herd | tee -a "$out/stampede.txt"
		sims_summary steady | tee -a "$out/stampede.txt"
		mkdir -p "$out/admission-$adm" && mv "$out"/*.json "$out"/*.jsonl "$out"/*.log "$out/admission-$adm/" 2>/dev/null || true
	done
	;;

isolation)
	v=${DEVICES:-20000}
	steady=${STEADY:-1000}
	registry $((v + steady))
	start_router
	port=$(freeport)
	scheme=ws; extra=(-reuse-port -max-connections 15000)
	[[ ${TLS:-0} == 1 ]] && scheme=wss && extra+=("${tls_flags[@]}" -tls-ticket-key-file "$certs/tickets.key")
	start_frontend fe-1 "127.0.0.1:$port" "127.0.0.1:$(freeport)" "${extra[@]}"
	start_frontend fe-2 "127.0.0.1:$port" "127.0.0.1:$(freeport)" "${extra[@]}"
	waitready "${fe_ops[fe-1]}"; waitready "${fe_ops[fe-2]}"
	start_sims steady "$steady" "$v" 200 -- -rate 1 -frontends "$scheme://127.0.0.1:$port" "${sim_tls[@]}"
	wait_until 300 "steady devices acked" '[ "$(promsums drover_sim_devices_acking '\'''\'' "${sim_ops_steady[@]}")" -ge "$steady" ]'
	sleep 5
	b1=$(snap fe-1); b2=$(snap fe-2)
	start_sims victims "$v" 0 2 -- -rate 0.1 -connect-rate 2000 -frontends "$scheme://127.0.0.1:$port" "${sim_tls[@]}"
	wait_until 600 "every victim connected" '[ "$(promsums drover_sim_devices_connected '\'''\'' "${sim_ops_victims[@]}")" -ge "$v" ]'
	sleep 15
	l1=$(snap fe-1); l2=$(snap fe-2)
	t_kill=$(date +%s.%N)
	for p in "${sim_pids_victims[@]}"; do kill -KILL "$p"; done
	wait_until 300 "the frontends released the victims" '[ "$(promsums drover_frontend_connections '\'''\'' "${fe_ops[fe-1]}" "${fe_ops[fe-2]}")" -le "$steady" ]'
	t_rel=$(date +%s.%N)
	sleep 20
	a1=$(snap fe-1); a2=$(snap fe-2)
	{
		echo "isolation: $v devices killed at once (kill -9 of their sim processes), $steady steady devices, 2 frontends on one port ($scheme)"
		python3 -c "print(f'the frontends released every killed connection {$t_rel - $t_kill:.1f} s after the kill')"
		printf '%-8s %-10s %12s %12s %12s %11s\n' frontend when "RSS MiB" "heap MiB" "stack MiB" goroutines
		for row in "fe-1 baseline $b1" "fe-1 loaded $l1" "fe-1 after $a1" "fe-2 baseline $b2" "fe-2 loaded $l2" "fe-2 after $a2"; do
			set -- $row
			python3 -c "print('%-8s %-10s %12.1f %12.1f %12.1f %11d' % ('$1', '$2', $3/2**20, $4/2**20, $5/2**20, $6))"
		done
	} | tee -a "$out/isolation.txt"
	python3 - "$out" <<'PY' | tee -a "$out/isolation.txt"
import glob, json, sys
for f in sorted(glob.glob(sys.argv[1] + "/steady-*.timeline.jsonl")):
    pts = [json.loads(l) for l in open(f)]
    p99 = [(p["t"], p["ack_p99_ms"]) for p in pts if p["acked"] > 0]
    worst = sorted(p99, key=lambda x: -x[1])[:5]
    print(f"steady devices: ack p99 per second, median {sorted(x[1] for x in p99)[len(p99)//2]} ms; worst seconds {worst}; seconds over 1 s: {sum(1 for x in p99 if x[1] > 1000)}")
PY
	drain_and_check steady
	;;

*) echo "usage: $0 memory|connect|scale|stampede|isolation" >&2; exit 2 ;;
esac
log "results in $out"
