#!/usr/bin/env bash
# gen-proto.sh: regenerate the Go code of drover's protobuf schemas (`make proto`).
#
# Installs the toolchain if needed (scripts/install-protoc.sh), then runs protoc with the
# protoc-gen-go from ./.tools/bin, writing each .pb.go beside its .proto (paths=source_relative),
# and gofmt's the result. Commit the generated files.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/install-protoc.sh"

cd "$root"
protos=(telemetry/telemetry.proto)

protoc \
	--plugin=protoc-gen-go="$root/.tools/bin/protoc-gen-go" \
	--proto_path="$root" \
	--go_out="$root" \
	--go_opt=paths=source_relative \
	"${protos[@]}"

for p in "${protos[@]}"; do
	gofmt -w "${p%.proto}.pb.go"
done
echo "gen-proto: generated ${protos[*]/%.proto/.pb.go}" >&2
