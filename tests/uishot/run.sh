#!/usr/bin/env bash
# Headless-Chromium check of the Temporal Web UI served by `felhom-dev`:
# a destroy waits for a signature, and the UI's saved-view query lists it.
# Not part of CI (it installs Chromium); run it by hand:
#
#   bash tests/uishot/run.sh [OUT.png]
#
# It prints the screenshot's path and fails when the page does not show the
# pending workflow.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-/tmp/felhom-ui-pending.png}
work=$(mktemp -d)
trap 'kill "$dev_pid" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; }
go build -o "$work/felhom-dev" ./cmd/felhom-dev
go build -o "$work/felhomctl" ./cmd/felhomctl

"$work/felhom-dev" --data-dir "$work/dev" --frontend-addr 127.0.0.1:0 --ui-addr 127.0.0.1:0 \
  --metrics-addr off --pvesim-task-duration 200ms > "$work/banner" 2> "$work/dev.log" &
dev_pid=$!
for _ in $(seq 60); do grep -q 'Temporal frontend' "$work/banner" && break; sleep 1; done
ui=$(grep -oP 'Temporal Web UI\s+\K\S+' "$work/banner")
frontend=$(grep -oP 'Temporal frontend\s+\K\S+' "$work/banner")

printf 'host: dev\nvmid: 100\nstate: absent\n' > "$work/absent.yaml"
"$work/felhomctl" --address "$frontend" apply -f "$work/absent.yaml"
for _ in $(seq 60); do
  "$work/felhomctl" --address "$frontend" pending | grep -q guest/dev/100 && break
  sleep 1
done

query=$(jq -rn --arg q "FelhomPendingSignature = true AND ExecutionStatus = 'Running'" '$q|@uri')
url="$ui/namespaces/default/workflows?query=$query"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chrome" --window-size=1400,900 --virtual-time-budget=15000 \
  --screenshot="$out" "$url" 2> "$work/chrome.log"
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$work/chrome" --virtual-time-budget=15000 --dump-dom "$url" 2>> "$work/chrome.log" > "$work/dom.html"

if ! grep -q 'guest/dev/100' "$work/dom.html"; then
  echo "the Web UI page does not list guest/dev/100 ($url); screenshot: $out" >&2
  exit 1
fi
echo "ok: the Web UI lists guest/dev/100 under the pending-approvals query; screenshot: $out"
