"""An MCP client on the official Python SDK (PyPI `mcp`) that asks for progress.

    python_progress.py MODE URL TOOL ARGS_JSON

MODE is "auto" (protocol 2026-07-28) or "legacy". Calls TOOL with a progress callback
and prints one JSON line: {"progress": [[progress, total], ...], "result": text}.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main():
    mode, url, tool, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    seen = []

    async def on_progress(progress, total, message):
        seen.append([progress, total])

    async with Client(streamable_http_client(url), mode=mode) as client:
        result = await client.call_tool(tool, args, progress_callback=on_progress)
        text = "".join(getattr(c, "text", "") or "" for c in result.content)
        print(json.dumps({"progress": seen, "result": text}), flush=True)


asyncio.run(main())
