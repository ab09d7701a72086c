# bench-lib.sh: what the bench-*.sh scripts share. Source it after setting
# $work (a temp dir, removed at exit) and pids=() (processes to stop at exit).
# Sourcing it also gives the run's drover commands their cluster links (see the end).

# cleanup stops every process in pids and removes $work; the scripts trap it on EXIT.
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}

# build_drover PATH builds drover at PATH, or copies $DROVER_BIN there when it is set: a
# before/after comparison runs the same script with two binaries (compare as ratios in one run).
build_drover() {
	if [[ -n "${DROVER_BIN:-}" ]]; then
		cp "$DROVER_BIN" "$1"
	else
		(cd "$root" && go build -o "$1" ./cmd/drover)
	fi
}

# freeport prints a loopback TCP port that is free right now.
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# waitready ADDR waits up to 30 s for http://ADDR/readyz to answer 200.
waitready() {
	for _ in $(seq 1 300); do
		curl -fs "http://$1/readyz" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "${0##*/}: $1 never became ready" >&2; return 1
}

# Pinning (issue 20), so that the load generator does not compete with the servers for a core:
# SIM_CPUS runs the load side (drover sim, and the measuring clients: livelat) and SERVER_CPUS the
# servers (drover's processes, influxd) with `taskset -c`, each a CPU list as taskset takes it
# (SIM_CPUS=1 SERVER_CPUS=0; SERVER_CPUS=1-3). Unset: the scheduler places them, as before. Prefix a
# command with "${sim_pin[@]}" or "${server_pin[@]}": taskset execs the command, so $! is its pid.
sim_pin=(); server_pin=()
[[ -n "${SIM_CPUS:-}" ]] && sim_pin=(taskset -c "$SIM_CPUS")
[[ -n "${SERVER_CPUS:-}" ]] && server_pin=(taskset -c "$SERVER_CPUS")
if [[ -n "${SIM_CPUS:-}${SERVER_CPUS:-}" ]]; then
	echo "${0##*/}: pinned: load generator on CPUs ${SIM_CPUS:-any}, servers on CPUs ${SERVER_CPUS:-any} (of $(nproc))" >&2
fi

# iobytes PID FIELD: a field of /proc/PID/io (write_bytes: bytes the process caused to be written to
# the storage layer; cancelled_write_bytes: of those, dirty pages truncated before writeback); 0 when
# gone or unreadable.
iobytes() { awk -v f="$2:" '$1 == f {print $2}' "/proc/$1/io" 2>/dev/null || echo 0; }

# proc_snapshot FILE NAME:PID...: CPU seconds (user + system) and disk bytes written of each process,
# one tab-separated line each (name, cpu_s, write_bytes, cancelled_write_bytes), for proc_report.
proc_snapshot() {
	local f=$1 np
	shift
	for np in "$@"; do
		printf '%s\t%s\t%s\t%s\n' "${np%%:*}" "$(cpusec "${np#*:}")" "$(iobytes "${np#*:}" write_bytes)" \
			"$(iobytes "${np#*:}" cancelled_write_bytes)"
	done >"$f"
}

# proc_report DIR READINGS [FRONTEND_METRICS_START FRONTEND_METRICS_END [FRONTEND_METRICS_WARM]]: from
# DIR/procs-start.tsv and DIR/procs-end.tsv (proc_snapshot), each process's CPU µs and disk bytes
# written per reading (READINGS: those acked in between); with scrapes of a frontend's /metrics, the
# frontend's own view of the ack latency (drover_frontend_ack_latency_seconds, frame read → ack
# written: p50 and p99 interpolated within its buckets, and the shares under 5 and 10 ms) from START
# to END (the whole run) and from WARM to END (the steady state, as the simulator's after its
# warm-up). Prints a line per process and writes DIR/procstats.json (with the pinning), which
# benchreport shows.
proc_report() {
	python3 - "$1" "$2" "${3:-}" "${4:-}" "${5:-}" "${SIM_CPUS:-}" "${SERVER_CPUS:-}" <<'PY'
import json, sys
d, readings, m0, m1, mw, sim_cpus, server_cpus = sys.argv[1], float(sys.argv[2] or 0), *sys.argv[3:]
def snap(f):
    out = {}
    for l in open(f):
        n, cpu, wb, cwb = l.rstrip("\n").split("\t")
        out[n] = (float(cpu or 0), float(wb or 0), float(cwb or 0))
    return out
a, b = snap(f"{d}/procs-start.tsv"), snap(f"{d}/procs-end.tsv")
procs = {}
for n, (cpu1, wb1, cwb1) in b.items():
    cpu0, wb0, cwb0 = a.get(n, (0, 0, 0))
    p = {"cpu_seconds": round(cpu1 - cpu0, 3), "write_bytes": wb1 - wb0, "cancelled_write_bytes": cwb1 - cwb0}
    if readings > 0:
        p["cpu_us_per_reading"] = round((cpu1 - cpu0) / readings * 1e6, 3)
        p["write_bytes_per_reading"] = round((wb1 - wb0) / readings, 1)
    procs[n] = p
def hist(f):
    # cumulative bucket counts of drover_frontend_ack_latency_seconds, by upper bound
    h = {}
    for l in open(f):
        if l.startswith("drover_frontend_ack_latency_seconds_bucket{"):
            le = l.split('le="', 1)[1].split('"', 1)[0]
            h[float("inf") if le == "+Inf" else float(le)] = float(l.split()[-1])
    return h
def view(m0, m1):
    try:
        h0, h1 = hist(m0), hist(m1)
    except OSError as e:
        print(f"proc_report: frontend histogram: {e}", file=sys.stderr)
        return None
    bounds = sorted(h1)
    cum = [h1[x] - h0.get(x, 0) for x in bounds]
    total = cum[-1] if cum else 0
    if total <= 0:
        return None
    def q(p):
        want, lo, prev = p * total, 0.0, 0.0
        for ub, c in zip(bounds, cum):
            if c >= want:
                if ub == float("inf"):
                    return lo * 1e3
                return (lo + (ub - lo) * ((want - prev) / (c - prev) if c > prev else 1)) * 1e3
            lo, prev = ub, c
        return lo * 1e3
    under = lambda x: round(cum[bounds.index(x)] / total, 4) if x in bounds else None
    return {"frames": int(total), "p50_ms": round(q(0.5), 2), "p99_ms": round(q(0.99), 2),
            "under_5ms": under(0.005), "under_10ms": under(0.01)}
fe = view(m0, m1) if m0 and m1 else None
fes = view(mw, m1) if mw and m1 else None
json.dump({"sim_cpus": sim_cpus, "server_cpus": server_cpus, "readings": readings, "processes": procs,
           "frontend_ack": fe, "frontend_ack_steady": fes}, open(f"{d}/procstats.json", "w"), indent=2)
for n, p in procs.items():
    per = f"{p['cpu_us_per_reading']:.2f} CPU µs and {p['write_bytes_per_reading']:,.0f} bytes written per reading" if readings else "no readings"
    print(f"process {n}: {p['cpu_seconds']:.2f} CPU s, {p['write_bytes'] / 2**20:,.1f} MiB written; {per}")
for label, v in (("whole run", fe), ("steady state", fes)):
    if v:
        print(f"frontend's own view, {label} (frame read → ack written, {v['frames']:,} frames): p50 {v['p50_ms']} ms, "
              f"p99 {v['p99_ms']} ms (interpolated in its buckets), {v['under_10ms'] * 100:.1f}% under 10 ms")
print(f"pinning: load generator on CPUs {sim_cpus or 'any'}, servers on CPUs {server_cpus or 'any'}")
PY
}

# The links between the drover processes of a run: mutual TLS 1.3 under a cluster key made for
# the run, given to every command through its environment fallback (DROVER_<COMMAND>_CLUSTER_KEY_FILE),
# so that the command lines stay as they are. LINKS=insecure runs them with -insecure-links instead:
# the two runs side by side are what authentication and encryption cost (docs/security.md).
if [[ "${LINKS:-tls}" == insecure ]]; then
	for t in FRONTEND ROUTER STORAGE_WRITER LIVEFEED; do export "DROVER_${t}_INSECURE_LINKS=true"; done
else
	(umask 077 && head -c 32 /dev/urandom | base64 >"$work/cluster.key")
	for t in FRONTEND ROUTER STORAGE_WRITER LIVEFEED; do export "DROVER_${t}_CLUSTER_KEY_FILE=$work/cluster.key"; done
fi

# --- helpers of the connection benchmarks (bench-conns.sh, sim-fleet.sh) ---

# SIM_CPUS and SERVER_CPUS pin the load generators (drover sim, natspeer) and the servers
# (frontends, router, nats-server) to CPU lists (taskset -c syntax: "1", "2-3", "0,2"), so that on a
# machine with cores to spare the simulators' CPU does not count against the servers' (e.g.
# SIM_CPUS=1 SERVER_CPUS=0 on two cores; unset: anywhere). Launch lines put "${sim_pin[@]}" or
# "${server_pin[@]}" first; taskset execs the command, so $! stays the process's pid.
sim_pin=(); server_pin=()
if [[ -n ${SIM_CPUS:-} ]]; then sim_pin=(taskset -c "$SIM_CPUS"); fi
if [[ -n ${SERVER_CPUS:-} ]]; then server_pin=(taskset -c "$SERVER_CPUS"); fi
# pinning: the line that records the pinning in a run's results.
pinning() { echo "cpus: servers ${SERVER_CPUS:-any}, simulators ${SIM_CPUS:-any} (machine: $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg))"; }

# promsum ADDR NAME [LABEL-REGEX]: the sum of a metric's series (matching the regex inside the
# braces) at http://ADDR/metrics; 0 when absent or unreachable.
promsum() {
	{ curl -fs "http://$1/metrics" 2>/dev/null || true; } |
		awk -v re="^$2(\\{[^}]*${3:-}[^}]*\\})? " '$0 ~ re {s+=$NF} END {printf "%.0f\n", s}'
}

# promsums NAME [LABEL-REGEX] ADDR...: promsum over several processes.
promsums() {
	local name=$1 re=$2 total=0 a v
	shift 2
	for a in "$@"; do v=$(promsum "$a" "$name" "$re"); total=$((total + v)); done
	echo "$total"
}

# rss PID: resident set size in bytes (VmRSS), 0 when gone.
rss() { awk '/^VmRSS:/ {print $2 * 1024}' "/proc/$1/status" 2>/dev/null || echo 0; }

# cpusec PID: user + system CPU seconds of a process so far.
cpusec() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f\n", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo 0; }

# fds PID: open file descriptors.
fds() { { ls "/proc/$1/fd" 2>/dev/null || true; } | wc -l; }

# wait_until TIMEOUT-SECONDS DESCRIPTION 'CONDITION': evaluate CONDITION (a shell command line,
# given in single quotes so that it is expanded afresh each time) every 0.2 s until it succeeds;
# 1 (and a message) when TIMEOUT passes.
wait_until() {
	local deadline=$((SECONDS + $1)) what=$2
	shift 2
	until eval "$*"; do
		if ((SECONDS >= deadline)); then echo "${0##*/}: timed out waiting for $what" >&2; return 1; fi
		sleep 0.2
	done
}

# start_sims NAME TOTAL OFFSET FIRST-ADDR -- SIM-ARGS...: start `drover sim` processes for TOTAL
# devices from index OFFSET, at most $SIM_PER (15,000) devices each (a process holds one file per
# connection, and at most 20,000 here), process k dialing from 127.0.0.(FIRST-ADDR+k), pinned to
# SIM_CPUS when set, with $SIM_FLAGS (more sim flags, e.g. "-tls-key-exchanges x25519"). Each writes
# $out/NAME-k.{json,timeline.jsonl,acked.json,log}; their pids go to pids and sim_pids_NAME, their
# ops addresses to sim_ops_NAME.
start_sims() {
	local name=$1 total=$2 offset=$3 addr=$4 per=${SIM_PER:-15000} k=0 n ops
	shift 5
	local -n _pids="sim_pids_$name" _ops="sim_ops_$name"
	_pids=(); _ops=()
	while ((total > 0)); do
		n=$((total < per ? total : per))
		ops="127.0.0.1:$(freeport)"
		# shellcheck disable=SC2086 # SIM_FLAGS is a list of flags
		"${sim_pin[@]}" "$drover" sim -devices "$n" -device-offset "$offset" -local-addrs "127.0.0.$((addr + k))" ${SIM_FLAGS:-} \
			-summary "$out/$name-$k.json" -timeline "$out/$name-$k.timeline.jsonl" -acked "$out/$name-$k.acked.json" \
			-progress 10s -ops-listen "$ops" "$@" 2>"$out/$name-$k.log" &
		pids+=($!); _pids+=($!); _ops+=("$ops")
		total=$((total - n)); offset=$((offset + n)); k=$((k + 1))
	done
}

# sims_summary NAME: one line adding up the JSON summaries of NAME's sim processes.
sims_summary() {
	python3 - "$out" "$1" <<'PY'
import glob, json, sys
out, name = sys.argv[1], sys.argv[2]
tot, fails, disc, p99s = {}, {}, {}, []
for f in sorted(glob.glob(f"{out}/{name}-*.json")):
    if f.endswith(".acked.json"):
        continue
    s = json.load(open(f))
    for k in ("devices", "connected", "connects", "acked", "generated", "tls_handshakes_full", "tls_handshakes_resumed"):
        tot[k] = tot.get(k, 0) + s.get(k, 0)
    for k, v in (s.get("connect_failures") or {}).items():
        fails[k] = fails.get(k, 0) + v
    for k, v in (s.get("disconnects") or {}).items():
        disc[k] = disc.get(k, 0) + v
    p99s.append(s.get("ack_latency_ms", {}).get("p99", 0))
print(f"{name}: " + ", ".join(f"{k} {v:,}" for k, v in tot.items()) +
      f"; connect failures {fails or 'none'}; disconnects {disc or 'none'}; ack p99 (worst process) {max(p99s or [0])} ms")
PY
}

# phases BINARY PROFILE CONNS: a frontend's CPU profile over a connect storm cut by phase of the
# connection, in µs of sampled CPU per connection (CONNS: connections accepted over the profile).
# Phases overlap nowhere except "of which" lines, which are parts of the line above; "rest" is
# what no phase matched (scheduler, timers, the drainer, metrics).
phases() {
	local bin=$1 prof=$2 conns=$3 total
	# sampled seconds matching a focus regex ("" for all), from pprof's "Showing nodes accounting for" line
	_sampled() {
		go tool pprof -top -nodecount=1000000 -nodefraction=0 ${1:+-focus="$1"} "$bin" "$prof" 2>/dev/null |
			awk '/accounting for/ {for (i = 1; i <= NF; i++) if ($i == "for") {v = $(i+1); sub(/,$/, "", v)} } END {
				if (v ~ /ms$/) {sub(/ms$/, "", v); v /= 1000} else if (v ~ /us$|µs$/) {sub(/(us|µs)$/, "", v); v /= 1e6} else {sub(/s$/, "", v)}
				print v + 0 }'
	}
	total=$(_sampled "")
	python3 - "$conns" "$total" \
		"accept (TCP accept, socket setup)" "$(_sampled 'tlsserve.\(\*Listener\).acceptLoop|net/http.\(\*Server\).Serve$')" \
		"TLS handshake" "$(_sampled 'tlsserve.\(\*Listener\).handshake$')" \
		"  of which key exchange (ECDHE, ML-KEM)" "$(_sampled 'KeyExchange\).serverSharedSecret|generateECDHEKey|ecdh.\(\*.*\).GenerateKey|ecdheKeyAgreement\).processClientKeyExchange')" \
		"  of which certificate signature" "$(_sampled 'ecdsa.*Sign|signHandshake|rsa.*Sign')" \
		"HTTP request, admission, auth, upgrade" "$(_sampled 'net/http.\(\*conn\).serve$')" \
		"  of which the upgrade (gorilla)" "$(_sampled 'websocket.\(\*Upgrader\).Upgrade$')" \
		"  of which drover's checks (admission, registry, token hash, flapping)" "$(_sampled 'frontend.\(\*Frontend\).(admitNew|admit|notFlapping|refuse.*)$|frontend.authenticate$|auth.\(\*Limiter\)')" \
		"read loop, close and release" "$(_sampled 'frontend.\(\*conn\).readLoop$')" \
		"garbage collection (background)" "$(_sampled 'runtime.gcBgMarkWorker$')" <<'PY'
import sys
conns, total = float(sys.argv[1]), float(sys.argv[2])
rows = list(zip(sys.argv[3::2], (float(x) for x in sys.argv[4::2])))
if conns <= 0 or total <= 0:
    print("    (no connections or no samples in the profile)"); sys.exit()
print("    %-72s %10s %7s" % ("phase (CPU profile over %d connections)" % conns, "µs/conn", "share"))
top = 0.0
for name, s in rows:
    if not name.startswith("  "):
        top += s
    print("    %-72s %10.0f %6.1f%%" % (name, s / conns * 1e6, 100 * s / total))
print("    %-72s %10.0f %6.1f%%" % ("rest (scheduler, timers, drainer, metrics)", (total - top) / conns * 1e6, 100 * (total - top) / total))
print("    %-72s %10.0f %6.1f%%" % ("all sampled CPU", total / conns * 1e6, 100.0))
PY
}
