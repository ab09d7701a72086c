#!/usr/bin/env bash
# install-azurite.sh: make sure the npm tools the lake's tests use are present.
#
#   - azurite (the Azure Storage emulator, for the lake's Azure Blob tests): its azurite-blob
#     command ends up in ./.tools/azurite/node_modules/.bin/.
#   - @duckdb/node-api (DuckDB for Node, for the check that analysts can query the lake).
#
# Both go into ./.tools/azurite (npm --prefix), each installed only when missing or at another
# version: a second run does nothing but check. Needs node and npm (Debian: apt-get install npm).
# Prints what it found.
set -euo pipefail

AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"
DUCKDB_NODE_API_VERSION="${DUCKDB_NODE_API_VERSION:-1.5.6-r.1}" # empty: any installed version

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.tools/azurite"
mkdir -p "$prefix"

for tool in node npm; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "install-azurite: $tool not found; install Node.js and npm (Debian: apt-get install npm)" >&2
		exit 1
	}
done

# installed_version PACKAGE: the version in node_modules/PACKAGE/package.json, or nothing.
installed_version() {
	local pj="$prefix/node_modules/$1/package.json"
	[[ -f "$pj" ]] || return 0
	node -e 'process.stdout.write(require(process.argv[1]).version || "")' "$pj" 2>/dev/null || true
}

want=()
have="$(installed_version azurite)"
if [[ "$have" != "$AZURITE_VERSION" || ! -x "$prefix/node_modules/.bin/azurite-blob" ]]; then
	want+=("azurite@$AZURITE_VERSION")
fi
have="$(installed_version @duckdb/node-api)"
if [[ -z "$have" || (-n "$DUCKDB_NODE_API_VERSION" && "$have" != "$DUCKDB_NODE_API_VERSION") ]]; then
	want+=("@duckdb/node-api${DUCKDB_NODE_API_VERSION:+@$DUCKDB_NODE_API_VERSION}")
fi

if ((${#want[@]} > 0)); then
	echo "install-azurite: npm install ${want[*]} into $prefix" >&2
	npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error "${want[@]}" >&2
fi

[[ -x "$prefix/node_modules/.bin/azurite-blob" ]] || { echo "install-azurite: azurite-blob still missing" >&2; exit 1; }
echo "install-azurite: azurite $(installed_version azurite), @duckdb/node-api $(installed_version @duckdb/node-api) in $prefix" >&2
