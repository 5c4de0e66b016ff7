"""An MCP client on the official Python SDK (PyPI `mcp`) that reads the fleet's prompts
and resources.

    python_offers.py MODE URL PROMPT URI

MODE is "auto" (protocol 2026-07-28) or "legacy". Lists the prompts and resources,
gets PROMPT with the argument name="fleet" and reads URI, and prints one JSON line:
{"protocol", "prompts": [names], "prompt": text, "resources": [[uri, name]],
"resource": text}.
"""

import asyncio
import json
import sys

from mcp import Client
from mcp.client.streamable_http import streamable_http_client


def text_of(content):
    return getattr(content, "text", None) or ""


async def main():
    mode, url, prompt, uri = sys.argv[1:5]
    async with Client(streamable_http_client(url), mode=mode) as client:
        prompts = await client.list_prompts()
        got = await client.get_prompt(prompt, {"name": "fleet"})
        resources = await client.list_resources()
        read = await client.read_resource(uri)
        print(json.dumps({
            "protocol": client.protocol_version,
            "prompts": sorted(p.name for p in prompts.prompts),
            "prompt": "".join(text_of(m.content) for m in got.messages),
            "resources": sorted([str(r.uri), r.name] for r in resources.resources),
            "resource": "".join(text_of(c) for c in read.contents),
        }), flush=True)


asyncio.run(main())
