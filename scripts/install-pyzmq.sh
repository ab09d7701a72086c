#!/usr/bin/env bash
# install-pyzmq.sh: make sure Debian's python3-zmq (pyzmq over libzmq) is importable by
# /usr/bin/python3, for the router's libzmq interoperability test (router: TestLiveLaneLibzmq).
#
# Idempotent: when `/usr/bin/python3 -c 'import zmq'` works it only prints the versions.
# Otherwise it runs `apt-get install -y python3-zmq`, and only when that fails (no or stale
# package lists) runs `apt-get update` and tries once more. Needs root (or sudo) for apt-get.
#
# Debian's Python packages belong to /usr/bin/python3: the `python3` first on PATH may be
# another interpreter without them, so the test runs /usr/bin/python3 explicitly.
set -euo pipefail

PY=/usr/bin/python3
check() { "$PY" -c 'import zmq; print("pyzmq", zmq.__version__, "libzmq", zmq.zmq_version())' 2>/dev/null; }

if v="$(check)"; then
	echo "install-pyzmq: already there: $v" >&2
	exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
	SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends python3-zmq; then
	echo "install-pyzmq: apt-get install failed; updating package lists and trying once more" >&2
	$SUDO apt-get update
	$SUDO apt-get install -y --no-install-recommends python3-zmq
fi

if ! v="$(check)"; then
	echo "install-pyzmq: python3-zmq installed but $PY cannot import zmq" >&2
	exit 1
fi
echo "install-pyzmq: installed: $v" >&2
