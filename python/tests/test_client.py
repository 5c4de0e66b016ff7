"""The Python package against three real nodes (conftest.py)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import List

import pytest

import mcpfleet
from conftest import EVERYTHING, Cluster, eventually


def test_servers_are_written_read_listed_and_deleted(client: mcpfleet.Client) -> None:
    stdio = client.add_stdio("crud-stdio", "mcp-server-x", args=["--flag"], env={"K": "v"}, replicas=2)
    assert (stdio.name, stdio.transport, stdio.command, stdio.args, stdio.env) == (
        "crud-stdio",
        "stdio",
        "mcp-server-x",
        ["--flag"],
        {"K": "v"},
    )
    assert stdio.replicas == 2 and stdio.mod_revision == stdio.create_revision > 0
    http = client.add_http("crud-http", "http://127.0.0.1:9/mcp", headers={"X-Team": "a"})
    assert (http.transport, http.url, http.headers, http.command) == ("http", "http://127.0.0.1:9/mcp", {"X-Team": "a"}, None)

    got = client.get_server("crud-stdio")
    assert got == stdio
    # The defaults the registry filled in are there, as the CLI prints them.
    assert got.health_check["interval_ms"] > 0
    assert got.to_dict()["transport"]["stdio"]["command"] == "mcp-server-x"
    names = [s.name for s in client.servers()]
    assert names == sorted(names) and {"crud-stdio", "crud-http"} <= set(names)
    assert "crud-http" in [s.name for s in client.servers(stale=True)]

    # What get answers can be changed and written back.
    spec = got.to_dict()
    spec["replicas"] = 1
    updated = client.put_server(spec)
    assert updated.replicas == 1 and updated.mod_revision > got.mod_revision
    assert updated.create_revision == got.create_revision

    revision = client.delete_server("crud-stdio")
    assert revision > updated.mod_revision
    client.delete_server("crud-http")
    assert not {"crud-stdio", "crud-http"} & {s.name for s in client.servers()}


def test_compare_and_set_refuses_a_stale_revision(client: mcpfleet.Client) -> None:
    first = client.add_stdio("cas", "cmd-a", expected_revision=0)
    # 0 means "only if new".
    with pytest.raises(mcpfleet.Conflict) as error:
        client.add_stdio("cas", "cmd-b", expected_revision=0)
    assert "revision mismatch" in error.value.reason and '"cas"' in error.value.reason
    second = client.add_stdio("cas", "cmd-b", expected_revision=first.mod_revision)
    assert second.command == "cmd-b"
    # The first writer's revision no longer holds: for a put and for a delete.
    with pytest.raises(mcpfleet.Conflict):
        client.add_stdio("cas", "cmd-c", expected_revision=first.mod_revision)
    with pytest.raises(mcpfleet.Conflict):
        client.delete_server("cas", expected_revision=first.mod_revision)
    assert client.get_server("cas").command == "cmd-b"
    client.delete_server("cas", expected_revision=second.mod_revision)


def test_each_error_class_carries_the_nodes_reason(cluster: Cluster, client: mcpfleet.Client) -> None:
    with pytest.raises(mcpfleet.NotFound) as not_found:
        client.get_server("no-such-server")
    assert not_found.value.reason == 'server "no-such-server" not found'
    assert str(not_found.value) == not_found.value.reason
    with pytest.raises(mcpfleet.NotFound):
        client.delete_server("no-such-server")
    with pytest.raises(mcpfleet.NotFound):
        client.server_status("no-such-server")
    with pytest.raises(mcpfleet.NotFound):
        client.call("no-such-server", "echo", {})

    with pytest.raises(mcpfleet.InvalidArgument) as invalid:
        client.add_stdio("Not A Name!", "cmd")
    assert "invalid server name" in invalid.value.reason
    with pytest.raises(mcpfleet.InvalidArgument) as invalid:
        client.put_server({"name": "typo", "transport": {"stdio": {"command": "x"}}, "replica": 2})
    assert "unknown field `replica`" in invalid.value.reason
    with pytest.raises(mcpfleet.InvalidArgument) as invalid:
        client.put_server({"name": "typo", "transport": {"stdio": {"command": 7}}})
    assert invalid.value.reason.startswith("spec.transport.stdio.command: invalid type")
    with pytest.raises(mcpfleet.InvalidArgument):
        mcpfleet.Client([])
    with pytest.raises(mcpfleet.InvalidArgument) as invalid:
        mcpfleet.Client(["not a host"])
    assert "not a host" in str(invalid.value)
    with pytest.raises(ValueError):
        mcpfleet.Client(cluster.endpoints, timeout=0)
    # Nothing of the refused writes is there.
    assert not {"Not A Name!", "typo"} & {s.name for s in client.servers()}

    port = cluster.nodes[1].addr.rsplit(":", 1)[0] + ":1"
    with pytest.raises(mcpfleet.Unavailable) as unavailable:
        mcpfleet.Client([port], timeout=2).servers()
    assert "cannot reach" in unavailable.value.reason and "refused" in unavailable.value.reason
    assert isinstance(unavailable.value, mcpfleet.McpfleetError)

    # A node that stops answering (SIGSTOP) once connected: the request times out.
    node = cluster.nodes[3]
    paused = mcpfleet.Client([node.addr], timeout=1)
    paused.cluster_status()
    node.signal(signal.SIGSTOP)
    try:
        with pytest.raises(mcpfleet.Timeout) as timeout:
            paused.cluster_status()
        assert "no answer from" in timeout.value.reason
        assert isinstance(timeout.value, TimeoutError)
        # The cluster's other endpoints still serve a client that lists them.
        assert mcpfleet.Client([node.addr, cluster.nodes[1].addr], timeout=1).servers(stale=True) is not None
    finally:
        node.signal(signal.SIGCONT)
    eventually(lambda: paused.cluster_status(), what="the paused node answering again")


def test_a_watch_sees_each_change_in_order(client: mcpfleet.Client) -> None:
    start = client.status().revision
    with client.watch(start) as watch:
        client.add_stdio("watched", "cmd")
        client.delete_server("watched")
        events = [next(watch), next(watch)]
    assert [(e.kind, e.name) for e in events] == [("put", "watched"), ("delete", "watched")]
    assert events[0].server is not None and events[0].server.command == "cmd"
    assert events[1].server is None and events[0].revision < events[1].revision
    assert events[0].to_dict()["kind"] == "put"
    # From an older revision the same changes are replayed.
    with client.watch(start) as again:
        assert [next(again).revision, next(again).revision] == [e.revision for e in events]


def test_closing_a_watch_ends_a_blocked_iteration(client: mcpfleet.Client) -> None:
    watch = client.watch(client.status().revision)
    seen: List[mcpfleet.WatchEvent] = []
    reader = threading.Thread(target=lambda: seen.extend(watch))
    reader.start()
    time.sleep(0.3)
    # The reader is blocked, the GIL released; closing ends its loop.
    watch.close()
    reader.join(timeout=5)
    assert not reader.is_alive() and seen == []


def test_the_async_client_does_the_same_concurrently(cluster: Cluster) -> None:
    async def scenario() -> None:
        async with mcpfleet.AsyncClient(cluster.endpoints, timeout=10) as client:
            start = (await client.status()).revision
            watch = await client.watch(start)
            written = await asyncio.gather(*(client.add_stdio(f"async-{i}", "cmd") for i in range(8)))
            assert sorted(s.name for s in written) == [f"async-{i}" for i in range(8)]
            names = set()
            async for event in watch:
                names.add(event.name)
                if len(names) == 8:
                    break
            watch.close()
            assert names == {f"async-{i}" for i in range(8)}
            got = await client.get_server("async-3")
            with pytest.raises(mcpfleet.Conflict):
                await client.add_stdio("async-3", "other", expected_revision=0)
            with pytest.raises(mcpfleet.NotFound):
                await client.get_server("async-none")
            assert (await client.cluster_status()).leader_id is not None
            assert [r.slot for r in (await client.server_status(got.name)).replicas] == [0]
            await asyncio.gather(*(client.delete_server(f"async-{i}") for i in range(8)))
            assert not [s for s in await client.servers() if s.name.startswith("async-")]

    asyncio.run(scenario())


def test_drain_and_undrain_a_node(client: mcpfleet.Client) -> None:
    revision = client.drain(2)
    node = next(n for n in client.status().nodes if n.id == 2)
    assert node.admin == "draining" and client.status().revision >= revision
    client.undrain(2)
    assert next(n for n in client.status().nodes if n.id == 2).admin == "active"
    with pytest.raises(mcpfleet.NotFound):
        client.drain(99)


@pytest.mark.skipif(not EVERYTHING.exists(), reason="tests/install-mcp-servers.sh installs it")
def test_a_tool_call_through_a_node_that_runs_no_replica(cluster: Cluster, client: mcpfleet.Client) -> None:
    client.add_stdio("everything", str(EVERYTHING), replicas=1)

    def placed() -> int:
        [replica] = client.server_status("everything").replicas
        assert replica.state == "healthy" and replica.node_id is not None
        return replica.node_id

    runner = eventually(placed, limit=60, what="a healthy replica")
    other = next(n for n in cluster.nodes.values() if n.id != runner)
    remote = mcpfleet.Client([other.addr], timeout=10)
    def echo_listed() -> mcpfleet.Tool:
        [echo] = [t for t in remote.tools("everything") if t.tool == "echo"]
        return echo

    echo = eventually(echo_listed, what="the echo tool listed")
    assert echo.name == "everything__echo" and echo.server == "everything"
    assert echo.definition is not None and "message" in echo.definition["inputSchema"]["properties"]
    result = remote.call("everything", "echo", {"message": "from python"})
    assert not result.is_error and result.text == "Echo: from python"
    assert result.to_dict()["content"][0]["type"] == "text"
    # The tool's own failure comes back as a result; a call past its timeout raises.
    refused = remote.call("everything", "echo", {"message": 7})
    assert refused.is_error and refused.text
    with pytest.raises(mcpfleet.Timeout):
        remote.call("everything", "trigger-long-running-operation", {"duration": 5, "steps": 1}, timeout=0.5)
    client.delete_server("everything")


def test_writes_go_on_through_a_leader_kill(cluster: Cluster) -> None:
    leader = cluster.leader()
    # The client talks to the leader first, so the kill cuts its connection.
    others = [n.addr for n in cluster.nodes.values() if n.id != leader]
    client = mcpfleet.Client([cluster.nodes[leader].addr, *others], timeout=5)
    acknowledged = {}
    retries = 0
    killed_at = 20
    for i in range(60):
        if i == killed_at:
            cluster.nodes[leader].kill()
        deadline = time.monotonic() + 30
        while True:
            try:
                # The caller's retry loop: a write that got no answer is sent again,
                # with the precondition that makes a second application impossible.
                server = client.add_stdio(f"loop-{i}", "cmd", expected_revision=0)
                acknowledged[server.name] = server.mod_revision
                break
            except mcpfleet.Conflict:
                # An earlier attempt was applied before its answer was lost.
                acknowledged[f"loop-{i}"] = client.get_server(f"loop-{i}").mod_revision
                break
            except (mcpfleet.Unavailable, mcpfleet.Timeout):
                retries += 1
                assert time.monotonic() < deadline, "no leader for 30 s"
                time.sleep(0.1)
    assert len(acknowledged) == 60
    assert retries > 0, "the leader kill did not interrupt a write"
    new_leader = cluster.leader()
    assert new_leader != leader
    held = {s.name: s.mod_revision for s in client.servers() if s.name.startswith("loop-")}
    assert held == acknowledged
    cluster.nodes[leader].start()
    eventually(lambda: mcpfleet.Client([cluster.nodes[leader].addr], timeout=2).cluster_status().leader_id, what="the restarted node")
    for name in acknowledged:
        client.delete_server(name)


def test_mutual_tls_with_the_clusters_certificates(tmp_path: Path) -> None:
    from conftest import BINARY, Node, free_port

    certs = str(tmp_path / "certs")
    for args in (["ca"], ["node", "--id", "1", "--host", "127.0.0.1"], ["client", "py"]):
        subprocess.run([str(BINARY), "cert", *args, "--dir", certs], check=True, capture_output=True)
    addr = f"127.0.0.1:{free_port()}"
    flags = ["--http", "off", "--tls-ca", f"{certs}/ca.pem", "--tls-cert", f"{certs}/node-1.pem"]
    node = Node(1, addr, tmp_path / "node1", [*flags, "--tls-key", f"{certs}/node-1-key.pem"])
    try:
        tls = mcpfleet.Client(
            [addr], timeout=5, cacert=f"{certs}/ca.pem", cert=f"{certs}/client-py.pem", key=f"{certs}/client-py-key.pem"
        )

        def elected() -> None:
            assert tls.cluster_status().leader_id is not None

        eventually(elected, what="a leader over TLS")
        assert tls.add_http("over-tls", "http://127.0.0.1:9/mcp").name == "over-tls"
        with pytest.raises(mcpfleet.Unavailable):
            mcpfleet.Client([addr], timeout=2).servers()
        with pytest.raises(mcpfleet.InvalidArgument) as partial:
            mcpfleet.Client([addr], cacert=f"{certs}/ca.pem")
        assert "all of cacert, cert and key" in partial.value.reason
    finally:
        node.kill()


def test_tokens_on_a_node_with_auth(tmp_path: Path) -> None:
    from conftest import BINARY, Node, free_port

    addr = f"127.0.0.1:{free_port()}"
    node = Node(1, addr, tmp_path / "node1", ["--http", "off", "--auth"])
    try:

        def bootstrap() -> str:
            made = subprocess.run(
                [str(BINARY), "token", "bootstrap", "--endpoint", addr], check=True, capture_output=True, text=True
            )
            return made.stdout.strip()

        admin_token = eventually(bootstrap, what="the bootstrap token")
        admin = mcpfleet.Client([addr], timeout=5, token=admin_token)
        eventually(lambda: admin.cluster_status(), what="the admin's token taken")
        reader_token = subprocess.run(
            [str(BINARY), "token", "create", "--role", "reader", "--endpoint", addr],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "MCPFLEET_TOKEN": admin_token},
        ).stdout.strip()
        admin.add_http("web", "http://127.0.0.1:9/mcp")

        reader = mcpfleet.Client([addr], timeout=5, token=reader_token)
        assert [s.name for s in reader.servers()] == ["web"]
        with pytest.raises(mcpfleet.PermissionDenied) as weak:
            reader.delete_server("web")
        assert "needs operator" in weak.value.reason
        with pytest.raises(mcpfleet.PermissionDenied) as missing:
            mcpfleet.Client([addr], timeout=5).servers()
        assert "needs a bearer token" in missing.value.reason
        unknown = "mcpf_" + "0" * 16 + "_" + "0" * 64
        with pytest.raises(mcpfleet.PermissionDenied) as revoked:
            mcpfleet.Client([addr], timeout=5, token=unknown).servers()
        assert "unknown or revoked" in revoked.value.reason
        with pytest.raises(mcpfleet.InvalidArgument):
            mcpfleet.Client([addr], token="not a token")
        assert [s.name for s in admin.servers()] == ["web"]
    finally:
        node.kill()


def test_secret_values_are_sealed_and_come_back_sealed(tmp_path: Path) -> None:
    from conftest import BINARY, Node, free_port

    key = tmp_path / "secrets.key"
    subprocess.run([str(BINARY), "secrets-key", str(key)], check=True, capture_output=True)
    addr = f"127.0.0.1:{free_port()}"
    node = Node(1, addr, tmp_path / "node1", ["--http", "off", "--secrets-key-file", str(key)])
    try:
        client = mcpfleet.Client([addr], timeout=5)
        eventually(lambda: client.cluster_status().leader_id, what="a leader")
        web = client.add_http("web", "http://127.0.0.1:9/mcp", secret_headers={"Authorization": "Bearer py-secret"})
        sealed = web.to_dict()["transport"]["http"]["headers"]["Authorization"]
        assert sealed.startswith("mcpfleet-sealed:v1:")
        assert "py-secret" not in str(web.to_dict())
        # Written back as it came, the sealed value is kept.
        again = client.put_server(web.to_dict())
        assert again.to_dict()["transport"]["http"]["headers"]["Authorization"] == sealed
        moved = web.to_dict()
        moved["name"] = "moved"
        with pytest.raises(mcpfleet.InvalidArgument) as refused:
            client.put_server(moved)
        assert "does not open" in refused.value.reason
        assert [s.name for s in client.servers()] == ["web"]
    finally:
        node.kill()
