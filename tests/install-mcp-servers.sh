#!/usr/bin/env bash
# Installs the real MCP servers the tests run, if they are missing:
#  - @modelcontextprotocol/server-everything from the npm registry (needs node and npm);
#  - mcp-server-time from PyPI, in a virtualenv (needs python3 with venv).
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
"$everything" --version >/dev/null 2>&1 || test -x "$everything"
test -x "$time_server"
