"""A real three-node cluster of the release binary, for the tests of the package.

The binary is ``MCPFLEET_BIN`` (default: target/release/mcpfleet of this checkout);
the MCP server the call tests run is ``MCP_SERVER_EVERYTHING`` (default: the one
tests/install-mcp-servers.sh installs). Every node listens on free loopback ports and
keeps its data and log in the test's temporary directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, TypeVar

import pytest

import mcpfleet

ROOT = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("MCPFLEET_BIN", ROOT / "target" / "release" / "mcpfleet"))
EVERYTHING = Path(
    os.environ.get(
        "MCP_SERVER_EVERYTHING",
        ROOT / "target" / "mcp-servers" / "npm" / "node_modules" / ".bin" / "mcp-server-everything",
    )
)

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def eventually(check: Callable[[], T], limit: float = 20.0, what: str = "the condition") -> T:
    """Calls ``check`` until it returns without raising, or ``limit`` seconds pass."""
    deadline = time.monotonic() + limit
    while True:
        try:
            return check()
        except Exception as error:  # noqa: BLE001 - any failure means not yet
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} did not hold within {limit} s: {error!r}") from error
            time.sleep(0.1)


class Node:
    def __init__(self, id: int, addr: str, data: Path, args: List[str]) -> None:
        self.id = id
        self.addr = addr
        self.data = data
        self.args = args
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def start(self) -> None:
        log = open(self.data.with_suffix(".log"), "ab")
        self.process = subprocess.Popen(
            [str(BINARY), "serve", "--id", str(self.id), "--listen", self.addr, "--data", str(self.data), *self.args],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
        log.close()

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)


class Cluster:
    def __init__(self, root: Path, size: int = 3) -> None:
        assert BINARY.exists(), f"{BINARY} is missing: run `cargo build --release` first"
        addrs = [f"127.0.0.1:{free_port()}" for _ in range(size)]
        initial = ",".join(f"{i + 1}={a}" for i, a in enumerate(addrs))
        self.nodes: Dict[int, Node] = {}
        for i, addr in enumerate(addrs):
            id = i + 1
            args = ["--http", f"127.0.0.1:{free_port()}", "--initial-cluster", initial]
            self.nodes[id] = Node(id, addr, root / f"node{id}", args)
        self.client = mcpfleet.Client(self.endpoints, timeout=5)
        eventually(lambda: self.leader(), what="a leader")

    @property
    def endpoints(self) -> List[str]:
        return [n.addr for n in self.nodes.values()]

    def leader(self) -> int:
        status = self.client.cluster_status()
        assert status.leader_id is not None, "no leader yet"
        return status.leader_id

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.process is not None:
                try:
                    node.signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
            node.kill()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture()
def client(cluster: Cluster) -> mcpfleet.Client:
    return mcpfleet.Client(cluster.endpoints, timeout=10)
