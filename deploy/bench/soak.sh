#!/usr/bin/env bash
# Bounded growth: 200,000 writes into a three-node loopback cluster, reporting each
# node's data dir size and RSS after every batch.
#   deploy/bench/soak.sh [TOTAL_WRITES] [BATCHES] [CLIENTS]
set -euo pipefail
total=${1:-200000}
batches=${2:-4}
clients=${3:-64}
bin=${MCPFLEET_BIN:-./target/release/mcpfleet}
dir=$(mktemp -d /tmp/mcpfleet-soak-XXXX)
base=$((20000 + RANDOM % 20000))
trap 'kill $(cat "$dir/pids") 2>/dev/null || true; rm -rf "$dir"' EXIT
MCPFLEET_BIN=$bin "$(dirname "$0")/../local-cluster.sh" "$dir" "$base" > /dev/null
endpoint=127.0.0.1:$((base + 1))
report() {
  local line="writes=$1"
  local id=1
  for pid in $(cat "$dir/pids"); do
    local size rss
    size=$(du -sk "$dir/data$id" | cut -f1)
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status")
    line="$line node$id: data=${size}KiB rss=${rss}KiB"
    id=$((id + 1))
  done
  echo "$line"
}
report 0
done_writes=0
for _ in $(seq 1 "$batches"); do
  batch=$((total / batches))
  "$bin" bench put --endpoint "$endpoint" --clients "$clients" --duration 3600 --max-writes "$batch" > "$dir/bench.out"
  done_writes=$((done_writes + batch))
  echo "  $(cat "$dir/bench.out")"
  report "$done_writes"
done
