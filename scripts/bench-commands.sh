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
# runs the api on it; its CPU is on the same cores. DROVER_BIN compares two builds (bench-lib.sh).
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
	"${as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -l "$pgdir/postgres.log" -w \
		-o "-p $pgport -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c max_connections=300" start >/dev/null
	pgstop=("${as[@]}" "$pgbin/pg_ctl" -D "$pgdir/data" -m fast stop)
	(umask 077 && printf 'postgres://drover:%s@127.0.0.1:%s/postgres?sslmode=disable\n' "$pw" "$pgport" >"$work/pg-url")
	dbargs=(-db postgres -postgres-url-file "$work/pg-url")
	;;
*) echo "bench-commands: DB=$db, want sqlite or postgres" >&2; exit 2 ;;
esac

aport=$(freeport); aops=$(freeport); rport=$(freeport); rops=$(freeport); fport=$(freeport); fops=$(freeport)
"$drover" api -listen "127.0.0.1:$aport" -data-dir "$work/api" -follower-key-file "$work/api/follower-key" \
	-ops-listen "127.0.0.1:$aops" "${dbargs[@]}" "${pprof[@]}" 2>"$out/api.log" &
pids+=($!)
waitready "127.0.0.1:$aops"
api="http://127.0.0.1:$aport"
"$work/cmdlat" -api "$api" -key-file "$work/api/api-admin-key" -register -devices "$devices"
follow=(-registry-api "$api" -registry-api-key-file "$work/api/follower-key")
"$drover" router -id router-1 -listen "tcp://127.0.0.1:$rport" -live-pub "tcp://127.0.0.1:$(freeport)" \
	-store-listen "tcp://127.0.0.1:$(freeport)" -queue-dir "$work/router" "${follow[@]}" \
	-ops-listen "127.0.0.1:$rops" 2>"$out/router.log" &
pids+=($!)
"$drover" frontend -id frontend-1 -listen "127.0.0.1:$fport" -routers "tcp://127.0.0.1:$rport" \
	-queue-dir "$work/frontend" "${follow[@]}" -max-connections 20000 \
	-ops-listen "127.0.0.1:$fops" "${pprof[@]}" 2>"$out/frontend.log" &
pids+=($!)
for a in "$rops" "$fops"; do waitready "127.0.0.1:$a"; done

"$drover" sim -frontends "ws://127.0.0.1:$fport" -devices "$devices" -rate 0 -connect-rate 2000 \
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
"$work/cmdlat" -api "$api" -key-file "$work/api/api-admin-key" -devices "$devices" -rate "$rate" \
	-duration "$duration" -summary "$out/cmdlat.json" 2>"$out/cmdlat.log"
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
print(f"  devices: executed {s['commands']['executed']:,}, duplicates {s['commands']['duplicates']}, expired on device {s['commands']['expired']}")
PY
echo "bench-commands: results in $out"
