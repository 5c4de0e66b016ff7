"""MCP over /mcp with bearer tokens, on the official Python SDK (PyPI `mcp`), for the
auth tests.

    python_token.py status URL [TOKEN]
        Prints {"status": HTTP status, "challenge": WWW-Authenticate} of one
        initialize request, sent with TOKEN if given.
    python_token.py session URL TOKEN TOOL
        Connects through the SDK with TOKEN, lists the tools, calls everything__echo,
        then TOOL, and prints {"tools": [names], "echo": text, "other": error or null}.
    python_token.py lists URL TOKEN
        Connects through the SDK with TOKEN and prints how many tools, prompts and
        resources it is shown: {"tools": n, "prompts": n, "resources": n}.
"""

import asyncio
import json
import sys

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "mcpfleet-auth-test", "version": "1.0.0"},
    },
}


async def status(url, token):
    headers = {"Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with httpx2.AsyncClient(timeout=30.0) as http:
        response = await http.post(url, json=INITIALIZE, headers=headers)
    return {"status": response.status_code, "challenge": response.headers.get("www-authenticate")}


async def session(url, token, other):
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=httpx2.Timeout(30.0, read=120.0),
    )
    async with Client(streamable_http_client(url, http_client=http)) as client:
        tools = await client.list_tools()
        echo = await client.call_tool("everything__echo", {"message": "with a token"})
        try:
            await client.call_tool(other, {})
            refused = None
        except Exception as error:  # the SDK raises the server's JSON-RPC error
            refused = str(error)
        return {
            "tools": sorted(t.name for t in tools.tools),
            "echo": "".join(c.text for c in echo.content),
            "other": refused,
        }


async def lists(url, token):
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=30.0)
    async with Client(streamable_http_client(url, http_client=http)) as client:
        return {
            "tools": len((await client.list_tools()).tools),
            "prompts": len((await client.list_prompts()).prompts),
            "resources": len((await client.list_resources()).resources),
        }


def main():
    mode, url, rest = sys.argv[1], sys.argv[2], sys.argv[3:]
    if mode == "status":
        answer = asyncio.run(status(url, rest[0] if rest else None))
    elif mode == "lists":
        answer = asyncio.run(lists(url, rest[0]))
    else:
        answer = asyncio.run(session(url, rest[0], rest[1]))
    print(json.dumps(answer), flush=True)


main()
