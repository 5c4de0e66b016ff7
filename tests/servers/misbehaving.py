#!/usr/bin/env python3
"""A stdio MCP server that misbehaves on purpose, for the gateway's bad-upstream tests
(standard library only). It answers initialize, ping and tools/list properly; its tools:

- `echo`: answers at once with the `message` argument (proof that other calls work);
- `slow`: answers after `seconds` (default 5);
- `garbage`: answers with a line that is not JSON;
- `malformed`: answers with a JSON-RPC result that is not a tool result;
- `oversize`: answers with one message of 20 MiB, over the MCP transport's 16 MiB cap.
"""
import json
import sys
import threading
import time

TOOLS = [
    {"name": name, "description": what, "inputSchema": {"type": "object"}}
    for name, what in [
        ("echo", "answers with its message"),
        ("slow", "answers after `seconds`"),
        ("garbage", "answers with a line that is not JSON"),
        ("malformed", "answers with a result that is not a tool result"),
        ("oversize", "answers with a 20 MiB message"),
    ]
]

lock = threading.Lock()


def send_line(line):
    with lock:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def send(message):
    send_line(json.dumps(message))


def result(id, value):
    send({"jsonrpc": "2.0", "id": id, "result": value})


def text(id, body):
    result(id, {"content": [{"type": "text", "text": body}], "isError": False})


def call(id, params):
    name = params.get("name")
    args = params.get("arguments") or {}
    if name == "echo":
        text(id, f"Echo: {args.get('message', '')}")
    elif name == "slow":
        time.sleep(float(args.get("seconds", 5)))
        text(id, "slow done")
    elif name == "garbage":
        send_line("this is not JSON {{{")
    elif name == "malformed":
        result(id, {"content": "not a list", "isError": "maybe"})
    elif name == "oversize":
        text(id, "x" * (20 * 1024 * 1024))
    else:
        send({"jsonrpc": "2.0", "id": id, "error": {"code": -32602, "message": f"unknown tool {name}"}})


def main():
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        method, id = message.get("method"), message.get("id")
        if id is None:
            continue
        if method == "initialize":
            result(id, {
                "protocolVersion": message["params"].get("protocolVersion", "2025-06-18"),
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "misbehaving", "version": "1.0.0"},
            })
        elif method == "ping":
            result(id, {})
        elif method == "tools/list":
            result(id, {"tools": TOOLS})
        elif method in ("prompts/list", "resources/list"):
            result(id, {method.split("/")[0]: []})
        elif method == "tools/call":
            threading.Thread(target=call, args=(id, message.get("params") or {}), daemon=True).start()
        else:
            send({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": f"no method {method}"}})


if __name__ == "__main__":
    main()
