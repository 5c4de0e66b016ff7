#!/usr/bin/env python3
"""A stdio MCP server on the official Python SDK (PyPI `mcp` 2.3), which speaks the
2026-07-28 protocol (`server/discover`, no initialize handshake) as well as the older
ones. It offers a tool, a prompt and a resource:

- tool `hello(name)`: answers "Hello, <name>";
- prompt `greet(name)`: one user message, "Please greet <name>.";
- resource `note://fleet`: the text "kept by the fleet";
- tool `paint(wall)`: asks the client which colour (an elicitation: on 2026-07-28 an
  `input_required` result whose `requestState` only this process can open), then
  answers "<wall> painted <colour>";
- tool `sleep(seconds, note)`: sleeps, and if the call is cancelled first, writes
  "cancelled" to the file `note`.
"""
from typing import Annotated

import anyio
from pydantic import BaseModel

from mcp.server.mcpserver import Elicit, MCPServer, Resolve

server = MCPServer("modern")


@server.tool()
def hello(name: str) -> str:
    """Says hello."""
    return f"Hello, {name}"


@server.prompt()
def greet(name: str) -> str:
    """Asks for a greeting."""
    return f"Please greet {name}."


@server.resource("note://fleet")
def note() -> str:
    """A note."""
    return "kept by the fleet"


class Colour(BaseModel):
    colour: str


def ask_colour() -> Elicit[Colour]:
    return Elicit("Which colour?", Colour)


@server.tool()
def paint(wall: str, choice: Annotated[Colour, Resolve(ask_colour)]) -> str:
    """Paints a wall in the colour the user picks."""
    return f"{wall} painted {choice.colour}"


@server.tool()
async def sleep(seconds: float, note: str) -> str:
    """Sleeps; a cancelled call leaves a note."""
    try:
        await anyio.sleep(seconds)
    except anyio.get_cancelled_exc_class():
        with open(note, "w") as f:
            f.write("cancelled")
        raise
    return "slept"


if __name__ == "__main__":
    server.run()
