# bench-lib.sh: what the bench-*.sh scripts share. Source it after setting
# $work (a temp dir, removed at exit) and pids=() (processes to stop at exit).
# Sourcing it also gives the run's drover commands their cluster links (see the end).

# cleanup stops every process in pids and removes $work; the scripts trap it on EXIT.
cleanup() {
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
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
