#!/usr/bin/env bash
# build-image.sh: build drover's container image (Containerfile) here, without a registry.
#
#   scripts/build-image.sh                      # podman, tags localhost/drover:$VERSION and :latest
#   ENGINE=docker scripts/build-image.sh        # the same with Docker
#   IMAGE=localhost/drover:test VERSION=v1.2.3 COMMIT=abc1234 scripts/build-image.sh
#
# Steps: a static binary (CGO_ENABLED=0, -trimpath, stripped, stamped with VERSION and COMMIT) for
# GOARCH (default: this machine's), a build context in bin/image/ holding only what goes in the
# image (see Containerfile), then `$ENGINE build` with the version, commit and build time as
# labels. With podman, CONTAINERS_CONF defaults to scripts/containers.conf (the runc runtime and
# ulimits that work on this kind of machine; scripts/install-podman.sh installs podman).
#
# Prints the image's name and its size: uncompressed (what `podman images` shows) and as a gzip
# layer (what a registry stores and a node pulls).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

ENGINE="${ENGINE:-podman}"
VERSION="${VERSION:-$(git describe --tags --always --dirty 2>/dev/null || echo devel)}"
COMMIT="${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}"
CREATED="${CREATED:-$(date -u +%Y-%m-%dT%H:%M:%SZ)}"
IMAGE="${IMAGE:-localhost/drover:$VERSION}"
GOARCH="${GOARCH:-$(go env GOARCH)}"
CA_BUNDLE="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
ctx="${IMAGE_CONTEXT:-$root/bin/image}"

if [[ "$ENGINE" == podman ]]; then
	export CONTAINERS_CONF="${CONTAINERS_CONF:-$root/scripts/containers.conf}"
fi
if ! command -v "$ENGINE" >/dev/null; then
	echo "build-image: $ENGINE not found (scripts/install-podman.sh installs podman; ENGINE=docker for Docker)" >&2
	exit 1
fi
if [[ ! -r "$CA_BUNDLE" ]]; then
	echo "build-image: no CA bundle at $CA_BUNDLE (Debian: apt-get install ca-certificates; or set CA_BUNDLE)" >&2
	exit 1
fi

rm -rf "$ctx"
tree="$ctx/tree"
mkdir -p "$tree/etc/ssl/certs" "$tree/var/lib/drover" "$tree/tmp"
echo "build-image: building a static drover $VERSION ($COMMIT) for linux/$GOARCH" >&2
CGO_ENABLED=0 GOOS=linux GOARCH="$GOARCH" go build -trimpath \
	-ldflags "-s -w -X main.version=$VERSION -X main.commit=$COMMIT" -o "$tree/drover" ./cmd/drover
cp "$CA_BUNDLE" "$tree/etc/ssl/certs/ca-certificates.crt"
cat >"$tree/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/sbin/nologin
drover:x:65532:65532:drover:/var/lib/drover:/sbin/nologin
PASSWD
cat >"$tree/etc/group" <<'GROUP'
root:x:0:
drover:x:65532:
GROUP
chmod 0755 "$tree" "$tree/etc" "$tree/etc/ssl" "$tree/etc/ssl/certs" "$tree/var" "$tree/var/lib" "$tree/var/lib/drover" "$tree/drover"
chmod 0644 "$tree/etc/passwd" "$tree/etc/group" "$tree/etc/ssl/certs/ca-certificates.crt"
chmod 1777 "$tree/tmp"
# Everything root's but /var/lib/drover; fixed times and order, so that the same binary gives the
# same layer.
tarflags=(--format=gnu --numeric-owner --sort=name --mtime=@0)
tar "${tarflags[@]}" --owner=0 --group=0 --exclude=./var/lib/drover -C "$tree" -cf "$ctx/rootfs.tar" \
	./drover ./etc ./tmp ./var
tar "${tarflags[@]}" --owner=65532 --group=65532 --no-recursion -C "$tree" -rf "$ctx/rootfs.tar" ./var/lib/drover
rm -rf "$tree"

latest="${IMAGE%:*}:latest"
layers=()
if [[ "$(basename "$ENGINE")" == podman ]]; then
	layers=(--layers=false) # no intermediate images left behind
fi
"$ENGINE" build --quiet "${layers[@]}" \
	--build-arg "VERSION=$VERSION" --build-arg "COMMIT=$COMMIT" --build-arg "CREATED=$CREATED" \
	-t "$IMAGE" -t "$latest" -f "$root/Containerfile" "$ctx" >/dev/null

size=$("$ENGINE" image inspect --format '{{.Size}}' "$IMAGE")
gz=$(gzip -c "$ctx/rootfs.tar" | wc -c)
awk -v i="$IMAGE" -v l="$latest" -v s="$size" -v g="$gz" \
	'BEGIN { printf "build-image: %s (and %s): %.1f MB uncompressed, %.1f MB as a gzip layer\n", i, l, s/1e6, g/1e6 }' >&2
echo "$IMAGE"
