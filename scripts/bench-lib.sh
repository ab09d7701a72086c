# bench-lib.sh: what the bench-*.sh scripts share. Source it after setting
# $work (a temp dir, removed at exit) and pids=() (processes to stop at exit).

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
