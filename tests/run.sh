#!/usr/bin/env bash
# Every test of mcpfleet, on a fresh machine with the Rust toolchain, Node.js and Python:
#  0. the real MCP servers the tests run, from npm and PyPI, and Debian's Chromium, if
#     they are missing;
#  1. `cargo test --workspace`: unit tables, the storage suite, multi-process tests on
#     loopback, and the simulator's own tests;
#  2. the Python package (tests/python.sh): its wheel built and installed into a venv,
#     and its pytest suite against three real nodes of the release binary;
#  3. a short run (FUZZ_SECONDS, 12 s) of every fuzz target (tests/fuzz.sh, cargo-fuzz
#     installed if missing);
#  4. a sweep of the chaos simulation over 150 seeds (release build), and of the
#     write-storm (exactly-once writes at a high rate) and slow-disk scenarios over
#     12 each, of the autopilot scenario over 10, and of the scale scenario at 20
#     nodes and 2,000 servers over 2 (docs/benchmarks.md has it at 100 and 10,000);
#  5. every deliberate bug of the simulator switched on in turn: each must be caught;
#  6. the nemesis on real processes (NEMESIS_SECONDS, 60 s): three release nodes, each
#     in a network namespace of its own, under kills, pauses, cuts and slow links (one
#     or two at a time), with tool calls; and again with `ack-before-commit` switched
#     on in the nodes, and with `retry-after-send`, each of which it must catch;
#  7. the soak (SOAK_SECONDS, 120 s): three release nodes on loopback with 1,000
#     servers, 200 of them running, under registry churn, tool calls and kills; it
#     fails when memory, fds, threads, a data dir or a p99 grows past its bound, and
#     its chart is drawn (matplotlib, in the venv of step 0).
set -euo pipefail
cd "$(dirname "$0")/.."

SIM_SEEDS=${SIM_SEEDS:-150}
BUG_SEEDS=${BUG_SEEDS:-50}
NEMESIS_SECONDS=${NEMESIS_SECONDS:-60}
STORM_SEEDS=${STORM_SEEDS:-12}
SOAK_SECONDS=${SOAK_SECONDS:-120}
# Each step is announced with the seconds since the start, so that a slow one shows.
step() { echo "== [$SECONDS s] $*" >&2; }

step "MCP servers"
tests/install-mcp-servers.sh
# The status page is checked in a real browser: Debian's headless Chromium.
if ! command -v chromium >/dev/null; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >/dev/null
fi
step "cargo test"
cargo test --workspace
step "the Python package"
tests/python.sh
step "fuzz targets"
tests/fuzz.sh

step "simulator sweeps"
cargo build --release -p mcpfleet-sim
sim=./target/release/mcpfleet-sim
"$sim" --seeds "$SIM_SEEDS"
"$sim" --scenario write-storm --seeds "$STORM_SEEDS"
"$sim" --scenario slow-disk --seeds "$STORM_SEEDS"
"$sim" --scenario autopilot --seeds 10
"$sim" --scenario scale --nodes 20 --servers 2000 --seeds 2

step "deliberate bugs"
for bug in $("$sim" --inject-bug list); do
    if output=$("$sim" --inject-bug "$bug" --seeds "$BUG_SEEDS" 2>&1); then
        echo "injected bug $bug was not caught in $BUG_SEEDS seeds:"
        echo "$output"
        exit 1
    fi
    if ! grep -q "FAILED: " <<<"$output" || ! grep -q "^replay: " <<<"$output"; then
        echo "injected bug $bug: the simulator failed without reporting a violation:"
        echo "$output"
        exit 1
    fi
    echo "injected bug $bug caught: $(grep -m1 'FAILED: ' <<<"$output" | cut -c1-200)"
done

step "nemesis"
nemesis=./target/release/mcpfleet-nemesis
"$nemesis" --nodes 3 --duration "$NEMESIS_SECONDS" --seed 1
for bug in ack-before-commit:7 retry-after-send:3; do
    name=${bug%:*}
    seed=${bug#*:}
    if output=$("$nemesis" --nodes 3 --duration 40 --seed "$seed" --inject-bug "$name" 2>&1); then
        echo "the nemesis on real processes did not catch $name:"
        echo "$output"
        exit 1
    fi
    if ! grep -q "^FAILED: " <<<"$output" || ! grep -q "^replay: " <<<"$output"; then
        echo "the nemesis with $name failed without reporting a violation:"
        echo "$output"
        exit 1
    fi
    echo "nemesis: $name caught on real processes: $(grep -m1 '^FAILED: ' <<<"$output" | cut -c1-200)"
done
step "soak"
soak_dir=$(mktemp -d)
./target/release/mcpfleet-soak --duration "$SOAK_SECONDS" --kill-every 20 --dir "$soak_dir/run"
"${MCP_SERVERS_DIR:-$PWD/target/mcp-servers}/py/bin/python" simulations/soak_chart.py \
    "$soak_dir/run" "$soak_dir/soak.png"
rm -rf "$soak_dir"
step "done"
echo "all tests passed"
