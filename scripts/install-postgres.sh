#!/usr/bin/env bash
# install-postgres.sh: make sure the PostgreSQL server the control plane's tests start is present.
#
#   - Debian's `postgresql` package (PostgreSQL 15 on Debian 12): initdb and postgres under
#     /usr/lib/postgresql/<major>/bin, and the unprivileged `postgres` user that the tests run
#     the server as when they run as root (PostgreSQL refuses to run as root).
#
# Idempotent: when a postgres binary is there it only prints its version. Otherwise it runs
# `apt-get install -y postgresql`, and only when that fails (no or stale package lists) runs
# `apt-get update` and tries once more. The package's own cluster service is not needed: the tests
# start a private server (initdb + postgres on a random loopback port in a temp dir, see
# internal/testenv/postgres.go). Needs root (or sudo) for apt-get.
set -euo pipefail

find_bin() {
	local d
	for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -t/ -k4 -n -r); do
		if [[ -x "$d/postgres" && -x "$d/initdb" ]]; then
			echo "$d"
			return 0
		fi
	done
	return 1
}

if bin="$(find_bin)"; then
	echo "install-postgres: already there: $("$bin/postgres" --version) at $bin" >&2
	exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
	SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends postgresql; then
	echo "install-postgres: apt-get install failed; updating package lists and trying once more" >&2
	$SUDO apt-get update
	$SUDO apt-get install -y --no-install-recommends postgresql
fi

if ! bin="$(find_bin)"; then
	echo "install-postgres: postgresql installed but no /usr/lib/postgresql/*/bin/postgres" >&2
	exit 1
fi
if ! id postgres >/dev/null 2>&1; then
	echo "install-postgres: no postgres user after the install: tests that run as root cannot start the server" >&2
	exit 1
fi
echo "install-postgres: installed: $("$bin/postgres" --version) at $bin" >&2
