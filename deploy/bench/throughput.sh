#!/usr/bin/env bash
# Closed-loop write throughput against the leader of a fresh three-node loopback
# cluster, at 1, 16 and 64 clients, each run REPEATS times on its own fresh cluster.
#   deploy/bench/throughput.sh [SECONDS] [REPEATS]
set -euo pipefail
seconds=${1:-5}
repeats=${2:-3}
bin=${MCPFLEET_BIN:-./target/release/mcpfleet}
for run in $(seq 1 "$repeats"); do
  dir=$(mktemp -d /tmp/mcpfleet-throughput-XXXX)
  base=$((20000 + RANDOM % 20000))
  MCPFLEET_BIN=$bin "$(dirname "$0")/../local-cluster.sh" "$dir" "$base" > /dev/null
  leader=$("$bin" cluster status --endpoint "127.0.0.1:$((base + 1))" -o json |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["leader_id"])')
  for clients in 1 16 64; do
    echo "run=$run $("$bin" bench put --endpoint "127.0.0.1:$((base + leader))" --clients "$clients" --duration "$seconds")"
  done
  kill $(cat "$dir/pids")
  wait 2>/dev/null || true
  rm -rf "$dir"
done
