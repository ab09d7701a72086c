#!/usr/bin/env bash
# install-podman.sh: make sure Debian's podman, with the runc runtime and netavark networking,
# is present, for `make image` and the container tests (internal/e2e/container*, k8s/).
#
#   - podman (4.3 on Debian 12), runc, conmon: build `FROM scratch` images and run containers.
#     podman's default runtime, crun, fails on this kind of machine (rlimits, hybrid cgroups);
#     runc works. The project's containers.conf (k8s/podman/containers.conf, given through
#     CONTAINERS_CONF, see scripts/podman.sh) selects runc and default ulimits within the
#     machine's limits (20,000 open files).
#   - netavark and aardvark-dns: the network backend whose networks have DNS, so that pods
#     played by `podman kube play` on one network resolve each other by name (the stand-in
#     for a cluster's DNS; see docs/deploy.md, "What is tested here").
#   - iptables: netavark sets up its port forwarding and masquerading with it.
#
# Idempotent: when every binary is there it only prints podman's version. Otherwise it runs
# `apt-get install -y --no-install-recommends` of the packages, and only when that fails (no or
# stale package lists) runs `apt-get update` and tries once more. Needs root (or sudo).
#
# No image registry is reachable here, so nothing is pulled: drover's image is FROM scratch,
# and podman builds its own pause image for pods locally (catatonit is needed for that).
set -euo pipefail

PKGS=(podman runc conmon netavark aardvark-dns iptables catatonit)

have_all() {
	command -v podman >/dev/null && command -v runc >/dev/null && command -v conmon >/dev/null \
		&& [[ -x /usr/lib/podman/netavark && -x /usr/lib/podman/aardvark-dns ]] \
		&& command -v iptables >/dev/null && [[ -x /usr/libexec/podman/catatonit || -x /usr/bin/catatonit ]]
}

if have_all; then
	echo "install-podman: already there: $(podman --version), $(runc --version | head -1)" >&2
	exit 0
fi

SUDO=""
if [[ "$(id -u)" != 0 ]]; then
	SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${PKGS[@]}"; then
	echo "install-podman: apt-get install failed; updating package lists and trying once more" >&2
	$SUDO apt-get update
	$SUDO apt-get install -y --no-install-recommends "${PKGS[@]}"
fi

if ! have_all; then
	echo "install-podman: installed ${PKGS[*]} but a binary is missing (podman, runc, conmon, netavark, aardvark-dns, iptables, catatonit)" >&2
	exit 1
fi
echo "install-podman: installed: $(podman --version), $(runc --version | head -1)" >&2
