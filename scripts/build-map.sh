#!/usr/bin/env bash
# build-map.sh: bundle the live map page (livefeed/map/) into livefeed/web/dist/, which the
# livefeed embeds with go:embed. make build, make run and make test run it before compiling.
#
#   1. The npm packages the page uses (Leaflet, Leaflet-Geoman for drawing geofences,
#      supercluster, topojson-client, Natural Earth's world-atlas) and the bundler (esbuild), at the exact versions of livefeed/map/package.json
#      and package-lock.json, are installed with `npm ci` into .tools/map/<hash of the lock>/,
#      once per lock file: a second run only checks. Nothing of theirs is ever committed.
#   2. esbuild bundles livefeed/map/src/main.js and the CSS it imports into main.js and main.css
#      (minified, licence comments kept apart), and the page's index.html, the offline basemap (world-atlas countries-50m.json: country
#      borders and coastlines from Natural Earth) and the licences of what the bundle contains
#      are copied beside them.
#
# livefeed/web/dist/ is gitignored. Without it the binary serves a placeholder page that says to
# run this script (livefeed/web/placeholder/). Needs node and npm (Debian: apt-get install npm).
# Prints where the bundle went.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
src="$root/livefeed/map"
out="$root/livefeed/web/dist"

for tool in node npm sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || {
		echo "build-map: $tool not found; install Node.js and npm (Debian: apt-get install npm)" >&2
		exit 1
	}
done

# One folder per lock file, so that branches with different locks share .tools/ without
# overwriting each other, and a half-finished install is never taken for a finished one (it is
# made in a temporary folder and renamed into place).
hash="$(cat "$src/package.json" "$src/package-lock.json" | sha256sum | cut -c1-16)"
deps="$root/.tools/map/$hash"
if [[ ! -f "$deps/.installed" ]]; then
	mkdir -p "$root/.tools/map"
	tmp="$(mktemp -d "$root/.tools/map/.install-XXXXXX")"
	trap 'rm -rf "$tmp"' EXIT
	cp "$src/package.json" "$src/package-lock.json" "$tmp/"
	echo "build-map: npm ci into $deps" >&2
	(cd "$tmp" && npm ci --no-audit --no-fund --loglevel=error >&2)
	touch "$tmp/.installed"
	if ! mv -T "$tmp" "$deps" 2>/dev/null; then
		# Another build installed the same lock meanwhile: keep theirs.
		[[ -f "$deps/.installed" ]] || { echo "build-map: cannot move $tmp to $deps" >&2; exit 1; }
	fi
	trap - EXIT
	rm -rf "$tmp"
fi
nm="$deps/node_modules"

# A fresh folder each time: a file left from an older page must not be embedded.
stage="$(mktemp -d "$root/livefeed/web/.dist-XXXXXX")"
trap 'rm -rf "$stage"' EXIT

# NODE_PATH: the sources are in the repository, their packages under .tools/.
NODE_PATH="$nm" "$nm/.bin/esbuild" "$src/src/main.js" \
	--bundle --minify --target=es2020 --format=iife \
	--legal-comments=external --loader:.png=dataurl --loader:.svg=dataurl \
	--outdir="$stage" --entry-names='[name]' --log-level=warning

cp "$src/src/index.html" "$stage/index.html"
# The offline basemap, as TopoJSON (a third of the GeoJSON's size); the page decodes it with
# topojson-client.
cp "$nm/world-atlas/countries-50m.json" "$stage/basemap.json"

# The licences of every package inside the bundle and of the basemap's data.
{
	echo "The drover live map page bundles the following packages, under their licences."
	echo "The offline basemap is Natural Earth (public domain), as packaged by world-atlas."
	# Leaflet-Geoman's dist file has its own dependencies (turf, lodash, polyclip-ts and theirs)
	# built into it: their licences too.
	geoman_deps="$(cd "$nm" && ls -d @turf/*) lodash polyclip-ts bignumber.js splaytree-ts rbush quickselect
		robust-predicates point-in-polygon-hao tinyqueue"
	for p in leaflet @geoman-io/leaflet-geoman-free $geoman_deps supercluster kdbush topojson-client world-atlas; do
		pj="$nm/$p/package.json"
		[[ -f "$pj" ]] || { echo "build-map: $p missing from $nm" >&2; exit 1; }
		v="$(node -e 'process.stdout.write(require(process.argv[1]).version)' "$pj")"
		echo
		echo "=== $p $v ==="
		lic="$(ls "$nm/$p" | grep -iE '^licen[cs]e' | head -1 || true)"
		[[ -n "$lic" ]] || { echo "build-map: $p has no licence file" >&2; exit 1; }
		cat "$nm/$p/$lic"
	done
} >"$stage/third-party-notices.txt"
# esbuild's extracted legal comments (the @license / @preserve headers), when there are any.
for f in "$stage"/*.LEGAL.txt; do
	[[ -e "$f" ]] || continue
	{ echo; echo "=== license comments in $(basename "${f%.LEGAL.txt}") ==="; cat "$f"; } >>"$stage/third-party-notices.txt"
	rm -f "$f"
done

for f in index.html main.js main.css basemap.json third-party-notices.txt; do
	[[ -s "$stage/$f" ]] || { echo "build-map: $f missing from the bundle" >&2; exit 1; }
done
chmod 755 "$stage"
rm -rf "$out"
mv -T "$stage" "$out"
trap - EXIT
echo "build-map: live map bundled into ${out#"$root"/} ($(du -sh "$out" | cut -f1))" >&2
