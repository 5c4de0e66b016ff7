"""An MCP client on the official Python SDK (PyPI `mcp`), for the gateway tests.

    python_client.py MODE URL [URL ...]

MODE is "auto" (the SDK's default: server/discover, protocol 2026-07-28) or "legacy"
(initialize and Mcp-Session-Id). Each HTTP request goes to the next URL in turn, as a
round-robin load balancer would send it; a URL that refuses the connection is skipped
for the next one, as a load balancer skips a dead backend.

Prints one JSON line when connected: {"protocol": ..., "tools": [names]}. Then for each
line "call MESSAGE" on stdin it calls everything__echo and prints one JSON line,
{"ok": text} or {"error": message}, with the node that answered in "via".
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client


class RoundRobin(httpx2.AsyncBaseTransport):
    def __init__(self, urls):
        self.targets = [httpx2.URL(u) for u in urls]
        self.next = 0
        self.inner = httpx2.AsyncHTTPTransport()
        self.last = None

    async def handle_async_request(self, request):
        error = None
        for _ in range(len(self.targets)):
            target = self.targets[self.next % len(self.targets)]
            self.next += 1
            request.url = request.url.copy_with(host=target.host, port=target.port)
            try:
                response = await self.inner.handle_async_request(request)
                self.last = f"{target.host}:{target.port}"
                return response
            except httpx2.ConnectError as e:
                error = e
        raise error

    async def aclose(self):
        await self.inner.aclose()


async def main():
    mode, urls = sys.argv[1], sys.argv[2:]
    balancer = RoundRobin(urls)
    http = httpx2.AsyncClient(transport=balancer, timeout=httpx2.Timeout(30.0, read=300.0))
    async with Client(streamable_http_client(urls[0], http_client=http), mode=mode) as client:
        tools = await client.list_tools()
        names = [t.name for t in tools.tools]
        print(json.dumps({"protocol": client.protocol_version, "tools": names}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            command, _, message = line.strip().partition(" ")
            if command != "call":
                continue
            try:
                result = await client.call_tool("everything__echo", {"message": message})
                text = "".join(c.text for c in result.content if getattr(c, "text", None))
                out = {"error": text} if result.is_error else {"ok": text}
            except Exception as e:  # the test reports any failure as it is
                out = {"error": f"{type(e).__name__}: {e}"}
            out["via"] = balancer.last
            print(json.dumps(out), flush=True)


asyncio.run(main())
