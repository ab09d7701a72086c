#!/usr/bin/env bash
# install-chromium.sh: make sure a headless-capable Chromium is present for the live map's
# browser end-to-end tests (internal/browsertest: TestBrowserLiveMap, TestLiveMapFromSimulatedFleet).
#
# Uses Debian's `chromium` package. Idempotent: when a chromium is already on PATH (or
# $DROVER_CHROMIUM names one) it only prints its version. Otherwise it runs
# `apt-get install -y chromium`, and only when that fails (no or stale package lists) runs
# `apt-get update` and tries once more. Needs root (or sudo) for apt-get.
#
# internal/testenv/chromium.go looks for the browser in the same places: $DROVER_CHROMIUM,
# then chromium, chromium-browser, google-chrome on PATH.
set -euo pipefail

find_chromium() {
	if [[ -n "${DROVER_CHROMIUM:-}" && -x "${DROVER_CHROMIUM}" ]]; then
		echo "$DROVER_CHROMIUM"
		return 0
	fi
	local c
	for c in chromium chromium-browser google-chrome google-chrome-stable; do
		if command -v "$c" >/dev/null 2>&1; then
			command -v "$c"
			return 0
		fi
	done
	return 1
}

if bin="$(find_chromium)"; then
	echo "install-chromium: found $bin: $("$bin" --version 2>/dev/null || echo 'version unknown')" >&2
	exit 0
fi

command -v apt-get >/dev/null 2>&1 || {
	echo "install-chromium: no chromium and no apt-get: install Chromium yourself and set DROVER_CHROMIUM" >&2
	exit 1
}

sudo=()
if [[ "$(id -u)" != 0 ]]; then
	command -v sudo >/dev/null 2>&1 || {
		echo "install-chromium: apt-get needs root, and sudo is missing" >&2
		exit 1
	}
	sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
apt_install() {
	"${sudo[@]}" apt-get install -y --no-install-recommends chromium fonts-dejavu-core >&2
}

echo "install-chromium: apt-get install -y chromium" >&2
if ! apt_install; then
	echo "install-chromium: install failed; running apt-get update and trying again" >&2
	"${sudo[@]}" apt-get update >&2
	apt_install
fi

bin="$(find_chromium)" || { echo "install-chromium: chromium still missing after apt-get" >&2; exit 1; }
echo "install-chromium: installed $bin: $("$bin" --version 2>/dev/null || echo 'version unknown')" >&2
