#!/usr/bin/env bash
# The Python package (python/): builds its wheel with maturin (release), installs it
# into a virtualenv made when missing (target/python-venv, override with PYTHON_VENV),
# and runs its pytest suite against real nodes of the release binary: three for the
# client's tests, one started with its defaults for the examples of docs/python.md,
# which also pass `mypy --strict`. Needs python3 with venv and the Rust toolchain; the
# call tests use the npm server that tests/install-mcp-servers.sh installs.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${PYTHON_VENV:-$PWD/target/python-venv}

if ! [ -x "$venv/bin/maturin" ] || ! "$venv/bin/python" -c 'import pytest, mypy' 2>/dev/null; then
    echo "installing maturin, pytest and mypy into $venv" >&2
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check 'maturin>=1.9,<2' 'pytest>=8,<10' 'mypy>=1.10,<3' >&2
fi

cargo build --release --bin mcpfleet
wheels=target/wheels
rm -rf "$wheels"
"$venv/bin/maturin" build --release --quiet -m python/Cargo.toml -o "$wheels"
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$wheels"/mcpfleet-*.whl

# From the repository's root, so that the installed wheel is imported, not python/mcpfleet.
MCPFLEET_BIN="$PWD/target/release/mcpfleet" "$venv/bin/pytest" python/tests -q -p no:cacheprovider
