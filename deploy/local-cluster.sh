#!/usr/bin/env bash
# Starts a three-node mcpfleet cluster on loopback and waits for a leader.
#   deploy/local-cluster.sh [DIR] [BASE_PORT]
# Data dirs and logs go under DIR (default ./mcpfleet-cluster); ports are BASE_PORT+1..3
# (default 7701..7703), each serving MCP at http://127.0.0.1:BASE_PORT+101..103/mcp.
# Stop the nodes with: kill $(cat DIR/pids)
set -euo pipefail
dir=${1:-./mcpfleet-cluster}
base=${2:-7700}
bin=${MCPFLEET_BIN:-./target/release/mcpfleet}
if [ ! -x "$bin" ]; then
  echo "building $bin" >&2
  cargo build --release -p mcpfleet >&2
fi
mkdir -p "$dir"
ic="1=127.0.0.1:$((base + 1)),2=127.0.0.1:$((base + 2)),3=127.0.0.1:$((base + 3))"
: > "$dir/pids"
for id in 1 2 3; do
  "$bin" serve --id "$id" --listen "127.0.0.1:$((base + id))" --data "$dir/data$id" \
    --initial-cluster "$ic" --http "127.0.0.1:$((base + 100 + id))" 2> "$dir/node$id.log" &
  echo $! >> "$dir/pids"
done
for _ in $(seq 1 100); do
  if "$bin" cluster status --endpoint "127.0.0.1:$((base + 1))" -o json 2>/dev/null | grep -q '"leader_id": [0-9]'; then
    "$bin" cluster status --endpoint "127.0.0.1:$((base + 1))"
    exit 0
  fi
  sleep 0.1
done
echo "no leader after 10 s; see $dir/node*.log" >&2
exit 1
