#!/usr/bin/env bash
# sim-fleet.sh: run a simulated fleet too large for one process: `drover sim` processes of at
# most SIM_PER (15,000) devices each (a process holds a file per connection, and at most 20,000
# here), process k dialing from 127.0.0.(2+k) (each source address gives ~28k ports per frontend
# address), all with the same flags. It waits for them and prints their summaries added up.
#
#   DROVER_SIM_TOKEN_SEED=... scripts/sim-fleet.sh DEVICES OUTDIR [drover sim flags...]
#   e.g. scripts/sim-fleet.sh 100000 bench-out/fleet -frontends ws://127.0.0.1:8080 -rate 0.1 -duration 5m
#
# OUTDIR gets each process's summary (sim-K.json), timeline, acked seqs (for
# internal/bench/ackcheck) and log. DROVER names the binary (default: built from this tree).
# SIGUSR1 to a sim process drops all its connections at once (a stampede).
set -euo pipefail
devices="${1:?usage: $0 DEVICES OUTDIR [drover sim flags...]}"
out="${2:?usage: $0 DEVICES OUTDIR [drover sim flags...]}"
shift 2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$out"
work="$(mktemp -d)"
pids=()
source "$root/scripts/bench-lib.sh"
trap cleanup EXIT
drover="${DROVER:-}"
if [[ -z $drover ]]; then
	(cd "$root" && go build -o "$work/drover" ./cmd/drover)
	drover="$work/drover"
fi
# shellcheck disable=SC2034 # set through a nameref
start_sims sim "$devices" 0 2 -- "$@"
echo "sim-fleet: ${#sim_pids_sim[@]} processes for $devices devices; metrics at ${sim_ops_sim[*]}" >&2
for p in "${sim_pids_sim[@]}"; do wait "$p" || true; done
pids=()
sims_summary sim
