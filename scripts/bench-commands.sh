#!/usr/bin/env bash
# bench-commands.sh: the command round trip (issue 17), as an operator and a device see it:
# `drover api` (SQLite, or PostgreSQL with DB=postgres) ← internal/bench/cmdlat posting RATE commands/s with ?wait=5s to random
# devices of DEVICES simulated ones (`drover sim`, connected and idle, answering at once) held by
# one frontend that follows the api, with a router behind it. Each its own process on loopback.
#
#   DURATION=30s DEVICES=10000 RATE=500 scripts/bench-commands.sh
#   DB=postgres scripts/bench-commands.sh    # the api on a private PostgreSQL server (fsync on)
#
# Two figures, goals from the issue: API call → device receives (the simulator's
# commands.latency_ms, from the call time the command carries; same host clock), p99 ≤ 25 ms;
# API call with wait → result back to the caller (cmdlat's call_to_result_ms), p99 ≤ 50 ms.
# Results go to bench-out/commands/ (OUT sets bench-out): cmdlat.json, sim.json, the api's and
# the frontend's metrics, every log. PROFILE=1 also takes a CPU profile of the api and of the
# frontend over the run (api.pprof, frontend.pprof; `go tool pprof -top FILE`). DB=postgres starts
# a private PostgreSQL (Debian's, as internal/testenv does: initdb + pg_ctl in the temp dir, as the
# postgres user when run as root) with its durable defaults (fsync on, synchronous_commit on), and
# runs the api on it; its CPU is on the same cores unless PG_CPUS pins it. DROVER_BIN compares two
# builds (bench-lib.sh).
#
# The api's commits over the window (drover_api_db_commit_duration_seconds): how many, their p50 and
# p99 (bucket bounds), and how many took over 25 and 100 ms: the disk's fsync tail, which the
# commands' tail follows (docs/performance.md).
# Where the CPU goes, over the measured window (cmdlat's run): procstats.json and a line per process,
# CPU seconds, cores and µs per command posted of drover api, frontend, router, sim, cmdlat and, with
# DB=postgres, PostgreSQL (the postmaster and every backend and worker under it, from /proc: live
# children's utime+stime plus what the postmaster reaped, cutime+cstime). With DB=postgres also
# pg-stats.json: the api's write commits/s and per command (drover_api_db_commits_total), statements
# per command on the server (pg_stat_statements; BEGIN and COMMIT, which the api sends in its pgx
# batches, through the extended protocol, are not counted there: the api's own
# drover_api_db_statements_total has them), the api's own count of round trips per command
# (drover_api_db_round_trips_total; several statements sent in one pgx batch are one), WAL per
# command (pg_stat_wal: records, full page images, bytes, writes, syncs), and the statements that ran
# most.
#   SIM_CPUS=1 SERVER_CPUS=0   pin the load side (sim, cmdlat) and drover's servers (taskset -c lists)
#   PG_CPUS=1                  pin PostgreSQL (taskset on pg_ctl: the postmaster and its children)
#   PG_OPTS="-c log_min_duration_statement=100 -c log_lock_waits=on"   more server settings (postgres.log in the results)
#   DB=postgres PG_CPUS=1 SERVER_CPUS=0 SIM_CPUS=0 scripts/bench-commands.sh   # PostgreSQL on a core of its own
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${OUT:-$root/bench-out}/commands"
duration="${DURATION:-30s}"
devices="${DEVICES:-10000}"
rate="${RATE:-500}"
db="${DB:-sqlite}"
pprof=(); profs=(); [[ "${PROFILE:-0}" == 1 ]] && pprof=(-pprof)
rm -rf "$out"; mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh" # cleanup, freeport, waitready, build_drover
pgstop=()
# pg_snapshot PID: the PostgreSQL server under postmaster PID as one proc_snapshot line ("postgres",
# CPU seconds, bytes written, cancelled): the postmaster and its children (backends, walwriter,
# checkpointer...), each utime+stime and what it reaped of its own exited children (cutime+cstime).
pg_snapshot() {
	python3 - "$1" "$(getconf CLK_TCK)" <<'PY'
import os, sys
root, hz = sys.argv[1], int(sys.argv[2])
cpu = wb = cwb = 0
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        st = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
        if p != root and st[1] != root:  # st[1]: ppid
            continue
        cpu += sum(int(x) for x in st[11:15]) / hz  # utime stime cutime cstime
        io = dict(l.split(": ") for l in open(f"/proc/{p}/io").read().splitlines())
        wb += int(io["write_bytes"]); cwb += int(io["cancelled_write_bytes"])
    except (OSError, IndexError, KeyError, ValueError):
        pass  # gone meanwhile, or unreadable
print(f"postgres\t{cpu:.2f}\t{wb}\t{cwb}")
PY
}
# drover's processes first, then their database
trap 'cleanup; ((${#pgstop[@]})) && "${pgstop[@]}" >/dev/null 2>&1; [[ -n "${pgdir:-}" ]] && rm -rf "$pgdir"' EXIT

cd "$root"
build_drover "$work/drover"
go build -o "$work/cmdlat" ./internal/bench/cmdlat
drover="$work/drover"
export DROVER_SIM_TOKEN_SEED=bench

dbargs=()
case "$db" in
sqlite) ;;
postgres)
	pgbin="${DROVER_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n | tail -1)}"
	[[ -x "$pgbin/initdb" ]] || { echo "bench-commands: no PostgreSQL (scripts/install-postgres.sh)" >&2; exit 1; }
	pgdir="$(mktemp -d /tmp/drover-bench-pg-XXXXXX)" # not under $work: the postgres user must reach it
	as=()
	if [[ "$(id -u)" == 0 ]]; then # PostgreSQL refuses to run as root
		chown postgres: "$pgdir"
		as=(runuser -u postgres --)
	fi
	pw="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
	printf '%s\n' "$pw" >"$pgdir/pw"
	[[ ${#as[@]} -gt 0 ]] && chown postgres: "$pgdir/pw"
	"${as[@]}" "$pgbin/initdb" -D "$pgdir/data" -U drover --pwfile "$pgdir/pw" --auth scram-sha-256 -E UTF8 --locale C \
		>"$out/initdb.log" 2>&1
	pgport=$(freeport)
	pg_pin=(); [[ -n "${PG_CPUS:-}" ]] && pg_pin=(taskset -c "$PG_CPUS")
	# pg_stat_statements preloaded: the statements per command, counted by the server itself.
	"${pg_pin[@]}" "${as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" -w \
		-o "-p $pgport -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=300 -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all ${PG_OPTS:-}" start >/dev/null
	pgpid=$(head -1 "$pgdir/data/postmaster.pid")
	printf '127.0.0.1:%s:*:drover:%s\n' "$pgport" "$pw" >"$work/pgpass"; chmod 600 "$work/pgpass"
	# psql as the server's superuser (initdb -U drover), its password from a file, not the command line
	pgsql() { PGPASSFILE="$work/pgpass" psql -X -q -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$pgport" -U drover -d postgres "$@"; }
	pgsql -c 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements'
	pgstop=("${as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop)
	(umask 077 && printf 'postgres://drover:%s@127.0.0.1:%s/postgres?sslmode=disable\n' "$pw" "$pgport" >"$work/pg-url")
	dbargs=(-db postgres -postgres-url-file "$work/pg-url")
	;;
*) echo "bench-commands: DB=$db, want sqlite or postgres" >&2; exit 2 ;;
esac

aport=$(freeport); aops=$(freeport); rport=$(freeport); rops=$(freeport); fport=$(freeport); fops=$(freeport)
"${server_pin[@]}" "$drover" api -listen "127.0.0.1:$aport" -data-dir "$work/api" -follower-key-file "$work/api/follower-key" \
	-ops-listen "127.0.0.1:$aops" "${dbargs[@]}" "${pprof[@]}" 2>"$out/api.log" &
pids+=($!); apipid=$!
waitready "127.0.0.1:$aops"
api="http://127.0.0.1:$aport"
"$work/cmdlat" -api "$api" -key-file "$work/api/api-admin-key" -register -devices "$devices"
follow=(-registry-api "$api" -registry-api-key-file "$work/api/follower-key")
"${server_pin[@]}" "$drover" router -id router-1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$(freeport)" \
	-store-listen "tcp://127.0.0.1:$(freeport)" -queue-dir "$work/router" "${follow[@]}" \
	-ops-listen "127.0.0.1:$rops" 2>"$out/router.log" &
pids+=($!); routerpid=$!
"${server_pin[@]}" "$drover" frontend -id frontend-1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" \
	-queue-dir "$work/frontend" "${follow[@]}" -max-connections 20000 \
	-ops-listen "127.0.0.1:$fops" "${pprof[@]}" 2>"$out/frontend.log" &
pids+=($!); frontendpid=$!
for a in "$rops" "$fops"; do waitready "127.0.0.1:$a"; done

"${sim_pin[@]}" "$drover" sim -frontends "ws://127.0.0.1:$fport" -devices "$devices" -rate 0 -connect-rate 2000 \
	-summary "$out/sim.json" -progress 10s -ops-listen 127.0.0.1:0 2>"$out/sim.log" &
simpid=$!
pids+=($simpid)
# Every device connected and its presence reported (the frontend batches it each second).
for _ in $(seq 1 120); do
	n=$(curl -fs "http://127.0.0.1:$fops/metrics" | awk '/^drover_frontend_connections /{print $2}')
	[[ "${n%.*}" -ge "$devices" ]] && break
	sleep 0.5
done
sleep 2
echo "bench-commands: $devices devices, $rate commands/s for $duration, api on $db; results in $out" >&2
if ((${#pprof[@]})); then
	# Profile the steady part: the duration (Go syntax: 30s, 2m, 1m30s) less cmdlat's 3 s warm-up.
	secs=$(python3 -c 'import re,sys; print(max(1, int(sum(float(v)*{"h":3600,"m":60,"s":1}[u] for v,u in re.findall(r"([0-9.]+)([hms])", sys.argv[1]))) - 3))' "$duration")
	(sleep 3; curl -fs -o "$out/api.pprof" "http://127.0.0.1:$aops/debug/pprof/profile?seconds=$secs") &
	profs=($!)
	(sleep 3; curl -fs -o "$out/frontend.pprof" "http://127.0.0.1:$fops/debug/pprof/profile?seconds=$secs") &
	profs+=($!)
fi
# The measured window: cmdlat's run. Counters first, then the load.
procs=(api:"$apipid" frontend:"$frontendpid" router:"$routerpid" sim:"$simpid")
pgwin() { # PostgreSQL's counters at a moment: commits, rollbacks (this database), the api's round trips, WAL
	printf '%s\t%s\t%s\n' "$(pgsql -F $'\t' -c "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = 'postgres'")" \
		"$(promsum "127.0.0.1:$aops" drover_api_db_round_trips_total)" "$(promsum "127.0.0.1:$aops" drover_api_db_commits_total)" \
		"$(pgsql -F $'\t' -c "SELECT wal_records, wal_fpi, wal_bytes, wal_write, wal_sync FROM pg_stat_wal")"
}
if [[ -n "${pgpid:-}" ]]; then
	pgsql -c 'SELECT pg_stat_statements_reset()' >/dev/null
	pgwin >"$out/pg-start.tsv"
fi
proc_snapshot "$out/procs-start.tsv" "${procs[@]}"
[[ -n "${pgpid:-}" ]] && pg_snapshot "$pgpid" >>"$out/procs-start.tsv"
curl -fs "http://127.0.0.1:$aops/metrics" >"$out/api-start.metrics" || true
t0=$(date +%s.%N)
"${sim_pin[@]}" "$work/cmdlat" -api "$api" -key-file "$work/api/api-admin-key" -devices "$devices" -rate "$rate" \
	-duration "$duration" -summary "$out/cmdlat.json" 2>"$out/cmdlat.log" &
cmdlatpid=$!
sleep 0.2; proc_snapshot "$out/procs-cmdlat0.tsv" cmdlat:"$cmdlatpid"
# cmdlat's own CPU, read just before it exits (it is not our child's child: wait gives no rusage)
while kill -0 "$cmdlatpid" 2>/dev/null; do proc_snapshot "$out/procs-cmdlat.tsv.new" cmdlat:"$cmdlatpid"
	[[ -s "$out/procs-cmdlat.tsv.new" ]] && mv "$out/procs-cmdlat.tsv.new" "$out/procs-cmdlat.tsv"; sleep 0.5; done
wait "$cmdlatpid"
t1=$(date +%s.%N)
proc_snapshot "$out/procs-end.tsv" "${procs[@]}"
[[ -n "${pgpid:-}" ]] && pg_snapshot "$pgpid" >>"$out/procs-end.tsv"
cat "$out/procs-cmdlat0.tsv" >>"$out/procs-start.tsv"; cat "$out/procs-cmdlat.tsv" >>"$out/procs-end.tsv" 2>/dev/null || true
rm -f "$out"/procs-cmdlat*.tsv*
if [[ -n "${pgpid:-}" ]]; then
	pgwin >"$out/pg-end.tsv"
	# toplevel: sent by a client; the others ran inside one (foreign key checks)
	pgsql -F $'\t' -c "SELECT calls, rows, round(total_exec_time::numeric, 1), toplevel, left(regexp_replace(query, '\s+', ' ', 'g'), 160)
		FROM pg_stat_statements ORDER BY calls DESC" >"$out/pg-statements.tsv"
	# the statements that took longest, by mean, with their size (an IN list's length shows in it)
	pgsql -F $'\t' -c "SELECT calls, round(mean_exec_time::numeric, 2), round(total_exec_time::numeric, 1), length(query),
		left(regexp_replace(query, '\s+', ' ', 'g'), 100) FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT 40" >"$out/pg-slowest.tsv"
fi
for p in "${profs[@]}"; do wait "$p" || true; done
curl -fs "http://127.0.0.1:$aops/metrics" >"$out/api.metrics" || true
curl -fs "http://127.0.0.1:$fops/metrics" >"$out/frontend.metrics" || true
[[ -n "${pgdir:-}" ]] && cp "$pgdir/postgres.log" "$out/" 2>/dev/null
kill -TERM "$simpid"; wait "$simpid" || true
python3 - "$out/cmdlat.json" "$out/sim.json" <<'PY'
import json, sys
c, s = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
r, d = c["call_to_result_ms"], (s["commands"].get("latency_ms") or {})
print(f"commands: {c['posted']:,} posted at {c['rate']:g}/s to {c['devices']:,} devices; states {c['states']}; statuses {c['statuses']}")
print(f"  API call -> device receives: p50 {d.get('p50')} ms  p99 {d.get('p99')} ms  max {d.get('max')} ms  (goal p99 <= 25 ms)")
print(f"  API call with wait -> result: p50 {r['p50']} ms  p99 {r['p99']} ms  max {r['max']} ms  (goal p99 <= 50 ms)")
ps = [x for x in c.get("call_to_result_ms_per_second") or [] if x["count"]]
if ps:
    p99s = sorted(x["p99"] for x in ps)
    worst = sorted(range(len(ps)), key=lambda i: -ps[i]["p99"])[:3]
    print(f"  with wait, p99 per second: median {p99s[len(p99s)//2]} ms, worst " +
          ", ".join(f"{ps[i]['p99']} ms (second {i})" for i in worst))
print(f"  devices: executed {s['commands']['executed']:,}, duplicates {s['commands']['duplicates']}, expired on device {s['commands']['expired']}")
PY
# Where the CPU went over the window, per command posted; PostgreSQL's work per command.
python3 - "$out" "$t0" "$t1" "${SIM_CPUS:-}" "${SERVER_CPUS:-}" "${PG_CPUS:-}" "$(nproc)" <<'PY'
import json, os, sys
d, t0, t1, sim, server, pg, ncpu = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), *sys.argv[4:]
wall = t1 - t0
posted = json.load(open(f"{d}/cmdlat.json"))["posted"] or 1
def snap(f):
    return {l.split("\t")[0]: [float(x or 0) for x in l.rstrip("\n").split("\t")[1:]] for l in open(f) if l.strip()}
a, b = snap(f"{d}/procs-start.tsv"), snap(f"{d}/procs-end.tsv")
procs = {}
for n, (cpu1, wb1, cwb1) in b.items():
    cpu0, wb0, _ = a.get(n, (0, 0, 0))
    procs[n] = {"cpu_seconds": round(cpu1 - cpu0, 2), "cores": round((cpu1 - cpu0) / wall, 3),
                "cpu_us_per_command": round((cpu1 - cpu0) / posted * 1e6, 1), "write_bytes_per_command": round((wb1 - wb0) / posted, 1)}
res = {"window_seconds": round(wall, 2), "commands_posted": posted, "cpus": int(ncpu),
       "pinning": {"sim_cpus": sim, "server_cpus": server, "pg_cpus": pg}, "processes": procs}
for n, p in procs.items():
    print(f"  cpu {n:9s} {p['cpu_seconds']:7.2f} s  {p['cores']:5.2f} cores  {p['cpu_us_per_command']:8.0f} µs/command  {p['write_bytes_per_command']:8.0f} B written/command")
if os.path.exists(f"{d}/pg-start.tsv"):
    w0, w1 = ([float(x or 0) for x in open(f).read().split()] for f in (f"{d}/pg-start.tsv", f"{d}/pg-end.tsv"))
    (c0, r0, rt0, cm0), (c1, r1, rt1, cm1) = w0[:4], w1[:4]
    wal = {k: round((b - a) / posted, 2) for k, a, b in zip(("records", "full_page_images", "bytes", "writes", "syncs"), w0[4:], w1[4:])}
    stmts = [l.rstrip("\n").split("\t") for l in open(f"{d}/pg-statements.tsv") if l.strip()]
    top = sum(int(s[0]) for s in stmts if s[3] == "t")
    nested = sum(int(s[0]) for s in stmts if s[3] != "t")
    commits = cm1 - cm0  # the api's (drover_api_db_commits_total): pg_stat_statements misses COMMITs sent in a batch
    pgs = {"transactions_per_second": round((c1 - c0) / wall, 1), "write_commits_per_second": round(commits / wall, 1),
           "write_commits_per_command": round(commits / posted, 2), "rollbacks": int(r1 - r0),
           "statements_per_command": round(top / posted, 2), "nested_statements_per_command": round(nested / posted, 2),
           "api_round_trips_per_command": round((rt1 - rt0) / posted, 2), "wal_per_command": wal,
           "top_statements": [{"calls": int(s[0]), "per_command": round(int(s[0]) / posted, 3), "rows": int(s[1]), "ms": float(s[2]),
                               "toplevel": s[3] == "t", "query": s[4]} for s in stmts[:20]]}
    res["postgres"] = pgs
    print(f"  postgres: {pgs['write_commits_per_second']:,} write commits/s by the api ({pgs['write_commits_per_command']} per command), "
          f"{pgs['transactions_per_second']:,} transactions/s with the reads, {pgs['rollbacks']} rollbacks")
    print(f"  postgres: {pgs['statements_per_command']} statements per command sent by clients (pg_stat_statements: BEGIN and "
          f"COMMIT sent in a batch not counted) + {pgs['nested_statements_per_command']} run inside them (foreign key checks); "
          f"the api's round trips per command {pgs['api_round_trips_per_command']} (drover_api_db_round_trips_total)")
    print(f"  postgres WAL per command (pg_stat_wal): {wal.get('records')} records, {wal.get('full_page_images')} full page images, "
          f"{wal.get('bytes'):,} bytes, {wal.get('writes')} writes, {wal.get('syncs')} syncs")
    for s in pgs["top_statements"][:10]:
        print(f"    {s['per_command']:6.2f}/command  {'' if s['toplevel'] else '(nested) '}{s['query'][:100]}")
# The database commits of the window (drover_api_db_commit_duration_seconds): their count and
# tail. On a disk whose fsync stalls now and then, the slow ones are the commands' tail.
def hist(f):
    h = {}
    for l in open(f) if os.path.exists(f) else ():
        if l.startswith("drover_api_db_commit_duration_seconds_bucket{"):
            le = l.split('le="')[1].split('"')[0]
            h[float("inf") if le == "+Inf" else float(le)] = float(l.split()[-1])
    return h
h0, h1 = hist(f"{d}/api-start.metrics"), hist(f"{d}/api.metrics")
if h1:
    n = {le: h1[le] - h0.get(le, 0) for le in h1}
    total = n[float("inf")]
    def q(p):
        return next((le for le in sorted(n) if n[le] >= p * total), float("inf")) * 1000
    over = lambda ms: int(total - n.get(ms / 1000, total))
    res["commits"] = {"count": int(total), "p50_ms_at_most": q(.5), "p99_ms_at_most": q(.99), "over_25ms": over(25), "over_100ms": over(100)}
    print(f"  api commits: {int(total):,} ({total / posted:.2f} per command), p50 <= {q(.5):g} ms, p99 <= {q(.99):g} ms "
          f"(bucket bounds); over 25 ms: {over(25)}, over 100 ms: {over(100)} (drover_api_db_commit_duration_seconds)")
print(f"  CPU figures over the window, per command posted; pinning: sim {sim or 'any'}, servers {server or 'any'}, postgres {pg or 'any'} (of {ncpu} CPUs); window {wall:.1f} s")
json.dump(res, open(f"{d}/procstats.json", "w"), indent=2)
PY
echo "bench-commands: results in $out"
