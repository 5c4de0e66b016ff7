"""An MCP client on the official Python SDK (PyPI `mcp`) that gives up on a call.

    python_cancel.py MODE URL TOOL ARGS_JSON [progress]

MODE is "auto" (protocol 2026-07-28) or "legacy". Calls TOOL with a one-second read
timeout, so that the SDK abandons it (and tells the server so); with "progress", it
asks for progress too (the fleet then streams the call between nodes). Prints one JSON
line:
{"gave_up": true, "error": text} or {"gave_up": false, "result": text}.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client


async def main():
    mode, url, tool, args = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
    wants_progress = sys.argv[5:6] == ["progress"]

    async def on_progress(progress, total, message):
        pass
    async with Client(streamable_http_client(url), mode=mode) as client:
        try:
            result = await client.call_tool(
                tool,
                args,
                read_timeout_seconds=1.0,
                progress_callback=on_progress if wants_progress else None,
            )
            text = "".join(getattr(c, "text", "") or "" for c in result.content)
            print(json.dumps({"gave_up": False, "result": text}), flush=True)
        except Exception as error:
            print(json.dumps({"gave_up": True, "error": str(error)}), flush=True)


asyncio.run(main())
