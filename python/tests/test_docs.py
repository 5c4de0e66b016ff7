"""docs/python.md, as written: every `python` block runs against a single node started
with `mcpfleet serve` and its defaults (127.0.0.1:7700, data in ./mcpfleet-data), and
passes `mypy --strict` against the package's stubs."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, List

import pytest

import mcpfleet
from conftest import BINARY, EVERYTHING, ROOT, eventually

PAGE = ROOT / "docs" / "python.md"


def python_blocks() -> List[str]:
    blocks: List[str] = []
    current: List[str] = []
    inside = False
    for line in PAGE.read_text().splitlines():
        if not inside and line.rstrip() == "```python":
            inside, current = True, []
        elif inside and line.rstrip() == "```":
            inside = False
            blocks.append("\n".join(current) + "\n")
        elif inside:
            current.append(line)
    return blocks


@pytest.fixture()
def default_node() -> Iterator[Path]:
    """`mcpfleet serve` with no flags, in a fresh directory under the npm tree of the
    tests, so that the page's `npx -y @modelcontextprotocol/server-everything` finds
    the package there without a download."""
    if not EVERYTHING.exists():
        pytest.skip("tests/install-mcp-servers.sh installs the example server")
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", 7700)) == 0:
            pytest.fail("127.0.0.1:7700 is in use; the page's examples need the default port")
    work = Path(tempfile.mkdtemp(dir=EVERYTHING.parents[2]))
    log = open(work / "node.log", "wb")
    node = subprocess.Popen([str(BINARY), "serve"], cwd=work, stdout=subprocess.DEVNULL, stderr=log)
    try:
        client = mcpfleet.Client("127.0.0.1:7700", timeout=2)

        def elected() -> None:
            assert client.cluster_status().leader_id is not None

        eventually(elected, what="the default node's election")
        yield work
    finally:
        node.kill()
        node.wait()
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def test_the_examples_run_as_written(default_node: Path) -> None:
    blocks = python_blocks()
    assert len(blocks) >= 8, "the page's examples were not found"
    # The one line a newcomer runs first.
    first = "import mcpfleet; c = mcpfleet.Client(['127.0.0.1:7700']); print(c.servers())"
    assert subprocess.run([sys.executable, "-c", first], cwd=default_node, timeout=60).returncode == 0
    for number, block in enumerate(blocks, 1):
        run = subprocess.run(
            [sys.executable, "-c", block], cwd=default_node, timeout=180, capture_output=True, text=True
        )
        assert run.returncode == 0, f"example {number} failed:\n{block}\n{run.stdout}\n{run.stderr}"
    # The examples clean up after themselves.
    assert mcpfleet.Client("127.0.0.1:7700").servers() == []


def test_the_package_passes_mypy_strict() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "-p", "mcpfleet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_examples_pass_mypy_strict(tmp_path: Path) -> None:
    files = []
    for number, block in enumerate(python_blocks(), 1):
        path = tmp_path / f"example_{number}.py"
        path.write_text(block)
        files.append(str(path))
    run = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", *files],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
