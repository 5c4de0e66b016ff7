"""Python client of an mcpfleet cluster.

The requests run in Rust, through the same client the ``mcpfleet`` CLI uses
(``mcpfleet._native``); this module gives them types. ``Client`` blocks (with the GIL
released); ``AsyncClient`` has the same methods as coroutines. Every answer is an
object with attributes, and ``to_dict()`` gives the JSON the CLI prints with
``-o json``. Failures raise the classes of ``mcpfleet._errors``.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import (
    Any,
    AsyncIterator,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Union,
)

from . import _native
from ._errors import (
    Conflict,
    InvalidArgument,
    McpfleetError,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Timeout,
    Unavailable,
)

__all__ = [
    "Client",
    "AsyncClient",
    "Watch",
    "AsyncWatch",
    "Server",
    "WatchEvent",
    "Replica",
    "ServerStatus",
    "Member",
    "ClusterStatus",
    "FleetNode",
    "FleetServer",
    "FleetStatus",
    "Tool",
    "CallResult",
    "McpfleetError",
    "NotFound",
    "Conflict",
    "InvalidArgument",
    "Unavailable",
    "Timeout",
    "PermissionDenied",
    "ResourceExhausted",
    "DEFAULT_TIMEOUT",
]

#: Seconds a request waits for its answer unless the client is told otherwise.
DEFAULT_TIMEOUT: float = _native.DEFAULT_TIMEOUT_SECONDS

Json = Dict[str, Any]


@dataclass(frozen=True)
class _View:
    """An answer of the cluster: its fields as attributes, and the JSON it came from."""

    _raw: Json = field(repr=False, compare=False)

    def to_dict(self) -> Json:
        """The JSON the CLI prints for it with ``-o json`` (a copy)."""
        return copy.deepcopy(self._raw)


@dataclass(frozen=True)
class Server(_View):
    """A server as the registry holds it, defaults filled in."""

    name: str
    #: ``"stdio"`` or ``"http"``.
    transport: str
    #: For stdio servers: the command, its arguments, environment and working dir.
    command: Optional[str]
    args: List[str]
    env: Dict[str, str]
    cwd: Optional[str]
    #: For HTTP servers: the URL and headers.
    url: Optional[str]
    headers: Dict[str, str]
    replicas: int
    node_tags: List[str]
    max_concurrent_calls: int
    health_check: Dict[str, int]
    circuit_breaker: Dict[str, int]
    restart: Dict[str, int]
    create_revision: int
    mod_revision: int

    @classmethod
    def _from(cls, raw: Json) -> "Server":
        transport = raw["transport"]
        stdio: Json = transport.get("stdio") or {}
        http: Json = transport.get("http") or {}
        return cls(
            _raw=raw,
            name=raw["name"],
            transport="stdio" if stdio else "http",
            command=stdio.get("command"),
            args=list(stdio.get("args", [])),
            env=dict(stdio.get("env", {})),
            cwd=stdio.get("cwd"),
            url=http.get("url"),
            headers=dict(http.get("headers", {})),
            replicas=raw["replicas"],
            node_tags=list(raw["node_tags"]),
            max_concurrent_calls=raw["max_concurrent_calls"],
            health_check=dict(raw["health_check"]),
            circuit_breaker=dict(raw["circuit_breaker"]),
            restart=dict(raw["restart"]),
            create_revision=raw["create_revision"],
            mod_revision=raw["mod_revision"],
        )


@dataclass(frozen=True)
class WatchEvent(_View):
    """One change: ``kind`` is ``"put"`` (with the server as written) or ``"delete"``."""

    kind: str
    revision: int
    name: str
    server: Optional[Server]

    @classmethod
    def _from(cls, raw: Json) -> "WatchEvent":
        server = raw.get("server")
        return cls(
            _raw=raw,
            kind=raw["kind"],
            revision=raw["revision"],
            name=raw["name"],
            server=Server._from(server) if server else None,
        )


@dataclass(frozen=True)
class Replica(_View):
    slot: int
    node_id: Optional[int]
    node_addr: Optional[str]
    epoch: int
    #: pending, starting, healthy, unhealthy, backoff, crash-loop, stopped, unplaced or lost.
    state: str
    #: closed, open or half-open.
    breaker: str
    restarts: int
    last_error: Optional[str]
    probe_latency_ms: Optional[int]
    unplaced_reason: Optional[str]

    @classmethod
    def _from(cls, raw: Json) -> "Replica":
        return cls(
            _raw=raw,
            slot=raw["slot"],
            node_id=raw.get("node_id"),
            node_addr=raw.get("node_addr"),
            epoch=raw["epoch"],
            state=raw["state"],
            breaker=raw["breaker"],
            restarts=raw["restarts"],
            last_error=raw.get("last_error"),
            probe_latency_ms=raw.get("probe_latency_ms"),
            unplaced_reason=raw.get("unplaced_reason"),
        )


@dataclass(frozen=True)
class ServerStatus(_View):
    name: str
    #: What the server said it is (name, version, protocol), once a replica reported.
    server_info: str
    replicas: List[Replica]
    revision: int

    @classmethod
    def _from(cls, raw: Json) -> "ServerStatus":
        return cls(
            _raw=raw,
            name=raw["name"],
            server_info=raw["server_info"],
            replicas=[Replica._from(r) for r in raw["replicas"]],
            revision=raw["revision"],
        )


@dataclass(frozen=True)
class Member(_View):
    id: int
    addr: str
    voter: bool

    @classmethod
    def _from(cls, raw: Json) -> "Member":
        return cls(_raw=raw, id=raw["id"], addr=raw["addr"], voter=raw["voter"])


@dataclass(frozen=True)
class ClusterStatus(_View):
    """The answering node's view of the cluster."""

    node_id: int
    leader_id: Optional[int]
    leader_addr: str
    term: int
    commit_index: int
    applied_index: int
    revision: int
    server_count: int
    data_bytes: int
    members: List[Member]

    @classmethod
    def _from(cls, raw: Json) -> "ClusterStatus":
        return cls(
            _raw=raw,
            node_id=raw["node_id"],
            leader_id=raw.get("leader_id"),
            leader_addr=raw["leader_addr"],
            term=raw["term"],
            commit_index=raw["commit_index"],
            applied_index=raw["applied_index"],
            revision=raw["revision"],
            server_count=raw["server_count"],
            data_bytes=raw["data_bytes"],
            members=[Member._from(m) for m in raw["members"]],
        )


@dataclass(frozen=True)
class FleetNode(_View):
    id: int
    addr: str
    #: Liveness: up or down.
    status: str
    #: Admin state: active or draining.
    admin: str
    tags: List[str]
    replicas: int
    capacity: Optional[int]
    voter: Optional[bool]
    leader: bool

    @classmethod
    def _from(cls, raw: Json) -> "FleetNode":
        return cls(
            _raw=raw,
            id=raw["id"],
            addr=raw["addr"],
            status=raw["status"],
            admin=raw["admin"],
            tags=list(raw["tags"]),
            replicas=raw["replicas"],
            capacity=raw.get("capacity"),
            voter=raw.get("voter"),
            leader=raw["leader"],
        )


@dataclass(frozen=True)
class FleetServer(_View):
    name: str
    desired: int
    placed: int
    healthy: int
    replicas: List[Replica]

    @classmethod
    def _from(cls, raw: Json) -> "FleetServer":
        return cls(
            _raw=raw,
            name=raw["name"],
            desired=raw["desired"],
            placed=raw["placed"],
            healthy=raw["healthy"],
            replicas=[Replica._from(r) for r in raw["replicas"]],
        )


@dataclass(frozen=True)
class FleetStatus(_View):
    """The whole fleet: nodes, servers and their replicas."""

    leader_id: Optional[int]
    term: int
    revision: int
    nodes: List[FleetNode]
    servers: List[FleetServer]

    @classmethod
    def _from(cls, raw: Json) -> "FleetStatus":
        return cls(
            _raw=raw,
            leader_id=raw.get("leader_id"),
            term=raw["term"],
            revision=raw["revision"],
            nodes=[FleetNode._from(n) for n in raw["nodes"]],
            servers=[FleetServer._from(s) for s in raw["servers"]],
        )


@dataclass(frozen=True)
class Tool(_View):
    #: The fleet's name for it, ``server__tool``, as ``/mcp`` lists it.
    name: str
    server: str
    #: The server's own name for it.
    tool: str
    description: str
    #: The MCP Tool object as the server sent it.
    definition: Optional[Json]

    @classmethod
    def _from(cls, raw: Json) -> "Tool":
        return cls(
            _raw=raw,
            name=raw["name"],
            server=raw["server"],
            tool=raw["tool"],
            description=raw.get("description", ""),
            definition=raw.get("definition"),
        )


@dataclass(frozen=True)
class CallResult(_View):
    """A tool's answer: the MCP ``CallToolResult``. A tool's own failure is not raised:
    it comes back with ``is_error`` set."""

    content: List[Json]
    is_error: bool
    structured_content: Optional[Any]

    @property
    def text(self) -> str:
        """The text parts of the content, one per line."""
        return "\n".join(c["text"] for c in self.content if c.get("type") == "text")

    @classmethod
    def _from(cls, raw: Json) -> "CallResult":
        return cls(
            _raw=raw,
            content=list(raw.get("content", [])),
            is_error=bool(raw.get("isError", False)),
            structured_content=raw.get("structuredContent"),
        )


def _json(answer: Optional[str]) -> Any:
    if answer is None:
        raise McpfleetError("the node's answer was empty")
    return json.loads(answer)


def _stdio_spec(
    name: str,
    command: str,
    args: Sequence[str],
    env: Optional[Mapping[str, str]],
    cwd: Optional[str],
    replicas: int,
    tags: Sequence[str],
    secret_env: Optional[Mapping[str, str]] = None,
) -> Json:
    stdio: Json = {"command": command, "args": list(args), "env": dict(env or {}), "cwd": cwd}
    if secret_env:
        stdio["secret_env"] = dict(secret_env)
    return {"name": name, "transport": {"stdio": stdio}, "replicas": replicas, "node_tags": list(tags)}


def _http_spec(
    name: str,
    url: str,
    headers: Optional[Mapping[str, str]],
    replicas: int,
    tags: Sequence[str],
    secret_headers: Optional[Mapping[str, str]] = None,
) -> Json:
    http: Json = {"url": url, "headers": dict(headers or {})}
    if secret_headers:
        http["secret_headers"] = dict(secret_headers)
    return {"name": name, "transport": {"http": http}, "replicas": replicas, "node_tags": list(tags)}


def _spec_json(spec: Union[Server, Mapping[str, Any]]) -> str:
    return json.dumps(spec.to_dict() if isinstance(spec, Server) else dict(spec))


def _endpoints(endpoints: Union[str, Sequence[str]]) -> List[str]:
    if isinstance(endpoints, str):
        return endpoints.split(",")
    return list(endpoints)


def _timeout_ms(timeout: Optional[float]) -> int:
    if timeout is None:
        return 0
    if not timeout > 0:
        raise InvalidArgument(f"timeout must be above 0 seconds, not {timeout}")
    return max(1, round(timeout * 1000))


class _Connected:
    """What both clients hold: the Rust client of the cluster."""

    def __init__(
        self,
        endpoints: Union[str, Sequence[str]] = "127.0.0.1:7700",
        timeout: float = DEFAULT_TIMEOUT,
        cacert: Optional[str] = None,
        cert: Optional[str] = None,
        key: Optional[str] = None,
        token: Optional[str] = None,
    ) -> None:
        self._native = _native.NativeClient(_endpoints(endpoints), float(timeout), cacert, cert, key, token)

    @property
    def endpoints(self) -> List[str]:
        return self._native.endpoints


class Client(_Connected):
    """A client of one cluster, blocking.

    ``endpoints`` are nodes as ``"host:port"`` (a list, or one string joined by commas):
    the client talks to one at a time, goes to the leader a node names or to the next
    endpoint when one cannot serve, and sends a read again at once. A write that fails
    with ``Unavailable`` is not sent again: the caller decides. ``timeout`` is in
    seconds, per request. Nothing connects until the first request. ``cacert``,
    ``cert`` and ``key`` (PEM files, all three) connect over mutual TLS, to nodes
    started with ``--tls-ca``, ``--tls-cert`` and ``--tls-key``. ``token``
    (``mcpf_...``, from ``mcpfleet token create``) goes with every request, for nodes
    started with ``--auth``; a missing or bad one, or one with too little privilege,
    raises ``PermissionDenied``.
    """

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def put_server(self, spec: Union[Server, Mapping[str, Any]], expected_revision: Optional[int] = None) -> Server:
        """Writes a server from its spec: the shape ``Server.to_dict()`` gives, in which
        all but ``name`` and ``transport`` may be left out. With ``expected_revision``
        it applies only if the server's revision is still that (0: only if new), else
        raises ``Conflict``."""
        return Server._from(_json(self._native.put_server(_spec_json(spec), expected_revision).wait()))

    def add_stdio(
        self,
        name: str,
        command: str,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        replicas: int = 1,
        tags: Sequence[str] = (),
        expected_revision: Optional[int] = None,
        secret_env: Optional[Mapping[str, str]] = None,
    ) -> Server:
        """Writes a stdio server (a command each replica's node runs). ``secret_env``
        values are sealed with the cluster's secrets key before they are stored, and come
        back sealed (``mcpfleet-sealed:v1:...``); only the server's process gets them in
        clear."""
        spec = _stdio_spec(name, command, args, env, cwd, replicas, tags, secret_env)
        return self.put_server(spec, expected_revision)

    def add_http(
        self,
        name: str,
        url: str,
        headers: Optional[Mapping[str, str]] = None,
        replicas: int = 1,
        tags: Sequence[str] = (),
        expected_revision: Optional[int] = None,
        secret_headers: Optional[Mapping[str, str]] = None,
    ) -> Server:
        """Writes a streamable-HTTP server (a URL each replica's node connects to);
        ``secret_headers`` are sealed as ``add_stdio``'s ``secret_env``."""
        spec = _http_spec(name, url, headers, replicas, tags, secret_headers)
        return self.put_server(spec, expected_revision)

    def get_server(self, name: str, stale: bool = False) -> Server:
        """One server; ``stale`` answers from the node's own state without a read barrier."""
        return Server._from(_json(self._native.get_server(name, stale).wait()))

    def servers(self, stale: bool = False) -> List[Server]:
        """Every server, in name order."""
        return [Server._from(s) for s in _json(self._native.servers(stale).wait())]

    def delete_server(self, name: str, expected_revision: Optional[int] = None) -> int:
        """Deletes a server; returns the revision of the delete."""
        return int(_json(self._native.delete_server(name, expected_revision).wait()))

    def watch(self, from_revision: int = 0) -> "Watch":
        """Every change with a revision above ``from_revision`` (as far back as the node
        keeps them), then live changes, as an iterator. To see only what comes next,
        pass the revision of a read, such as ``status().revision``."""
        return Watch(self._native.watch(from_revision))

    def status(self, stale: bool = False) -> FleetStatus:
        """The whole fleet: nodes, servers and replicas."""
        return FleetStatus._from(_json(self._native.status(stale).wait()))

    def server_status(self, name: str, stale: bool = False) -> ServerStatus:
        return ServerStatus._from(_json(self._native.server_status(name, stale).wait()))

    def cluster_status(self) -> ClusterStatus:
        return ClusterStatus._from(_json(self._native.cluster_status().wait()))

    def drain(self, node: int) -> int:
        """Moves a node's replicas to other nodes; returns the revision."""
        return int(_json(self._native.set_node_status(node, "draining").wait()))

    def undrain(self, node: int) -> int:
        return int(_json(self._native.set_node_status(node, "active").wait()))

    def tools(self, server: Optional[str] = None) -> List[Tool]:
        """The tools of every server, or of one."""
        return [Tool._from(t) for t in _json(self._native.tools(server).wait())]

    def call(
        self,
        server: str,
        tool: str,
        arguments: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> CallResult:
        """Calls a tool of a server, on whichever node runs a healthy replica. The call
        runs at most once. ``timeout`` (seconds) is the call's, else the node's default."""
        args = json.dumps(dict(arguments)) if arguments is not None else ""
        pending = self._native.call(server, tool, args, _timeout_ms(timeout))
        return CallResult._from(_json(pending.wait()))


class Watch:
    """The changes to servers, as they commit: iterate over it; ``close()`` ends it."""

    def __init__(self, native: _native.NativeWatch) -> None:
        self._native = native
        native.open().wait()

    def __iter__(self) -> Iterator[WatchEvent]:
        return self

    def __next__(self) -> WatchEvent:
        answer = self._native.next().wait()
        if answer is None:
            raise StopIteration
        return WatchEvent._from(json.loads(answer))

    def close(self) -> None:
        self._native.close()

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Connected):
    """``Client``'s methods as coroutines, on one shared tokio runtime."""

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def put_server(self, spec: Union[Server, Mapping[str, Any]], expected_revision: Optional[int] = None) -> Server:
        return Server._from(_json(await self._native.put_server(_spec_json(spec), expected_revision)))

    async def add_stdio(
        self,
        name: str,
        command: str,
        args: Sequence[str] = (),
        env: Optional[Mapping[str, str]] = None,
        cwd: Optional[str] = None,
        replicas: int = 1,
        tags: Sequence[str] = (),
        expected_revision: Optional[int] = None,
        secret_env: Optional[Mapping[str, str]] = None,
    ) -> Server:
        spec = _stdio_spec(name, command, args, env, cwd, replicas, tags, secret_env)
        return await self.put_server(spec, expected_revision)

    async def add_http(
        self,
        name: str,
        url: str,
        headers: Optional[Mapping[str, str]] = None,
        replicas: int = 1,
        tags: Sequence[str] = (),
        expected_revision: Optional[int] = None,
        secret_headers: Optional[Mapping[str, str]] = None,
    ) -> Server:
        spec = _http_spec(name, url, headers, replicas, tags, secret_headers)
        return await self.put_server(spec, expected_revision)

    async def get_server(self, name: str, stale: bool = False) -> Server:
        return Server._from(_json(await self._native.get_server(name, stale)))

    async def servers(self, stale: bool = False) -> List[Server]:
        return [Server._from(s) for s in _json(await self._native.servers(stale))]

    async def delete_server(self, name: str, expected_revision: Optional[int] = None) -> int:
        return int(_json(await self._native.delete_server(name, expected_revision)))

    async def watch(self, from_revision: int = 0) -> "AsyncWatch":
        """As ``Client.watch``, as an async iterator."""
        native = self._native.watch(from_revision)
        await native.open()
        return AsyncWatch(native)

    async def status(self, stale: bool = False) -> FleetStatus:
        return FleetStatus._from(_json(await self._native.status(stale)))

    async def server_status(self, name: str, stale: bool = False) -> ServerStatus:
        return ServerStatus._from(_json(await self._native.server_status(name, stale)))

    async def cluster_status(self) -> ClusterStatus:
        return ClusterStatus._from(_json(await self._native.cluster_status()))

    async def drain(self, node: int) -> int:
        return int(_json(await self._native.set_node_status(node, "draining")))

    async def undrain(self, node: int) -> int:
        return int(_json(await self._native.set_node_status(node, "active")))

    async def tools(self, server: Optional[str] = None) -> List[Tool]:
        return [Tool._from(t) for t in _json(await self._native.tools(server))]

    async def call(
        self,
        server: str,
        tool: str,
        arguments: Optional[Mapping[str, Any]] = None,
        timeout: Optional[float] = None,
    ) -> CallResult:
        args = json.dumps(dict(arguments)) if arguments is not None else ""
        return CallResult._from(_json(await self._native.call(server, tool, args, _timeout_ms(timeout))))


class AsyncWatch:
    """The changes to servers, as an async iterator; ``close()`` ends it."""

    def __init__(self, native: _native.NativeWatch) -> None:
        self._native = native

    def __aiter__(self) -> AsyncIterator[WatchEvent]:
        return self

    async def __anext__(self) -> WatchEvent:
        answer = await self._native.next()
        if answer is None:
            raise StopAsyncIteration
        return WatchEvent._from(json.loads(answer))

    def close(self) -> None:
        self._native.close()
