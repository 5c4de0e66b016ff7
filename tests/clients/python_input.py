"""MCP clients on the official Python SDK (PyPI `mcp`) for a tool that asks for input.

    python_input.py URL_A URL_B TOOL ARGS_JSON ROUNDS

The tool answers its first request with `input_required` (protocol 2026-07-28). First
the SDK drives the whole exchange itself through URL_A. Then, ROUNDS times, one client
sends the first request through URL_A and another sends the retry, with the input and
the `requestState`, through URL_B. A legacy-mode client tries the tool too.

Every elicitation is answered {"colour": "blue"}. Prints one JSON line:
{"auto": text, "split": [text or error, ...], "legacy": text or error}.
"""

import asyncio
import json
import sys

from mcp import Client, types
from mcp.client.streamable_http import streamable_http_client

ANSWER = {"colour": "blue"}


async def answer(context, params):
    return types.ElicitResult(action="accept", content=ANSWER)


def reason(error):
    """The innermost reasons of an error (anyio wraps them in exception groups)."""
    if isinstance(error, BaseExceptionGroup):
        return "; ".join(reason(e) for e in error.exceptions)
    return str(error)


def text_of(result):
    return "".join(getattr(c, "text", "") or "" for c in result.content)


async def main():
    url_a, url_b, tool, args, rounds = sys.argv[1:6]
    args, rounds = json.loads(args), int(rounds)
    out = {}
    async with Client(streamable_http_client(url_a), elicitation_callback=answer) as a:
        out["auto"] = text_of(await a.call_tool(tool, args))
        async with Client(streamable_http_client(url_b), elicitation_callback=answer) as b:
            split = []
            for _ in range(rounds):
                first = await a.session.call_tool(tool, args, allow_input_required=True)
                if not isinstance(first, types.InputRequiredResult):
                    split.append(f"no input_required: {text_of(first)}")
                    continue
                responses = {
                    key: types.ElicitResult(action="accept", content=ANSWER)
                    for key in (first.input_requests or {})
                }
                try:
                    second = await b.session.call_tool(
                        tool,
                        args,
                        input_responses=responses,
                        request_state=first.request_state,
                        allow_input_required=True,
                    )
                    split.append(
                        text_of(second) if isinstance(second, types.CallToolResult) else repr(second)
                    )
                except Exception as error:  # the fleet's or the server's error
                    split.append(f"error: {reason(error)}")
            out["split"] = split
    try:
        async with Client(streamable_http_client(url_a), mode="legacy", elicitation_callback=answer) as c:
            result = await c.call_tool(tool, args)
            out["legacy"] = text_of(result)
    except Exception as error:
        out["legacy"] = f"error: {reason(error)}"
    print(json.dumps(out), flush=True)


asyncio.run(main())
