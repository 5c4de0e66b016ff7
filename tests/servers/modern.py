#!/usr/bin/env python3
"""A stdio MCP server on the official Python SDK (PyPI `mcp` 2.3), which speaks the
2026-07-28 protocol (`server/discover`, no initialize handshake) as well as the older
ones. It offers a tool, a prompt and a resource:

- tool `hello(name)`: answers "Hello, <name>";
- prompt `greet(name)`: one user message, "Please greet <name>.";
- resource `note://fleet`: the text "kept by the fleet".
"""
from mcp.server.mcpserver import MCPServer

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


if __name__ == "__main__":
    server.run()
