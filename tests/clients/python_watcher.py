"""An MCP client on the official Python SDK (PyPI `mcp`) that watches the tool list.

    python_watcher.py MODE URL

MODE is "auto" (protocol 2026-07-28: a `subscriptions/listen` stream asking for tool
list changes) or "legacy" (initialize, Mcp-Session-Id, and the notifications the
server sends on the session's GET stream). Prints {"tools": [names]} once listening,
then, after each `notifications/tools/list_changed`, lists the tools again and prints
{"changed": [names]}. Runs until killed.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def names(result):
    return sorted(t.name for t in result.tools)


def is_tools_changed(message):
    message = getattr(message, "root", message)
    return getattr(message, "method", None) == "notifications/tools/list_changed"


async def watch_auto(url):
    async with Client(streamable_http_client(url), mode="auto") as client:
        async with client.listen(tools_list_changed=True) as subscription:
            print(json.dumps({"tools": names(await client.list_tools())}), flush=True)
            async for _event in subscription:
                tools = await client.list_tools(cache_mode="refresh")
                print(json.dumps({"changed": names(tools)}), flush=True)


async def watch_legacy(url):
    changed = asyncio.Event()

    async def on_message(message):
        if is_tools_changed(message):
            changed.set()

    async with Client(
        streamable_http_client(url), mode="legacy", message_handler=on_message
    ) as client:
        print(json.dumps({"tools": names(await client.list_tools())}), flush=True)
        while True:
            await changed.wait()
            changed.clear()
            tools = await client.list_tools(cache_mode="refresh")
            print(json.dumps({"changed": names(tools)}), flush=True)


mode, url = sys.argv[1], sys.argv[2]
asyncio.run(watch_auto(url) if mode == "auto" else watch_legacy(url))
