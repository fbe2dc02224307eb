#!/usr/bin/env bash
# Builds the felhom-agent Debian package: bash deploy/debian/build.sh VERSION OUTDIR
# VERSION is a Debian version starting with a digit (0.1.0, 0.1.0+git1a2b3c).
set -euo pipefail
cd "$(dirname "$0")/../.."
version=${1:?usage: build.sh VERSION OUTDIR}
out=${2:?usage: build.sh VERSION OUTDIR}
[[ $version =~ ^[0-9][A-Za-z0-9.+~-]*$ ]] || { echo "build.sh: VERSION $version must start with a digit and hold only A-Za-z0-9.+~-" >&2; exit 2; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
arch=$(go env GOARCH)
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w -X main.version=$version" -o "$work/felhom-agent" ./cmd/felhom-agent
sed -e "s|\${VERSION}|$version|g" -e "s|\${ARCH}|$arch|g" -e "s|\${BINARY}|$work/felhom-agent|g" \
  deploy/debian/nfpm.yaml > "$work/nfpm.yaml"
go tool -modfile=deploy/debian/go.mod nfpm package --config "$work/nfpm.yaml" --packager deb --target "$out/"
