#!/usr/bin/env python3
"""A tiny stdio MCP server for the fencing tests (standard library only).

It answers initialize, ping and tools/list, and records its life in
$RECORD_DIR/<pid>.log: a "start <ns>" line, then a "tick <ns>" line every TICK_MS
milliseconds while it runs, with <ns> read from CLOCK_MONOTONIC, which every process
on the host shares. A process killed by SIGKILL cannot say when it died, but its last
tick bounds it: it was alive then, and dead before the next tick was due.

It has one tool, `record`: a call with arguments {"id": ID} appends "call ID" to
$RECORD_DIR/calls-<pid>.log before it answers "ran ID", so that a test can count how
many times each call ran, whatever became of the answer. With SLOW_EVERY=N and
SLOW_MS=M, every Nth call it runs answers M milliseconds late (it has run by then),
as a slow tool does. With CRASH_EVERY=N, every Nth call it runs ends the process
before it answers, as a server that crashes mid-call does.

With DAEMONIZE=1 it first leaves a daemon behind: a double fork whose grandchild calls
setsid (a new session and process group, outside the server's) and ticks into
$RECORD_DIR/daemon-<pid>.log.
"""
import json
import os
import sys
import threading
import time

RECORD_DIR = os.environ["RECORD_DIR"]
TICK_S = int(os.environ.get("TICK_MS", "20")) / 1000.0
SLOW_EVERY = int(os.environ.get("SLOW_EVERY", "0"))
SLOW_S = int(os.environ.get("SLOW_MS", "0")) / 1000.0
CRASH_EVERY = int(os.environ.get("CRASH_EVERY", "0"))
CALLS_RUN = [0]


def now_ns():
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC)


def record(path, first):
    with open(path, "a", buffering=1) as log:
        log.write(f"{first} {now_ns()}\n")
        while True:
            time.sleep(TICK_S)
            log.write(f"tick {now_ns()}\n")


def daemonize():
    child = os.fork()
    if child != 0:
        os.waitpid(child, 0)
        return
    os.setsid()
    if os.fork() != 0:
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    record(os.path.join(RECORD_DIR, f"daemon-{os.getpid()}.log"), "start")


def answer(message):
    method = message.get("method")
    if method == "initialize":
        version = message.get("params", {}).get("protocolVersion", "2025-06-18")
        return {
            "protocolVersion": version,
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "recorder", "version": "1.0"},
        }
    if method == "ping":
        return {}
    if method == "tools/list":
        return {"tools": [{
            "name": "record",
            "description": "records that a call ran",
            "inputSchema": {"type": "object",
                            "properties": {"id": {"type": "string"}},
                            "required": ["id"]},
        }]}
    if method == "tools/call":
        params = message.get("params", {})
        call = str(params.get("arguments", {}).get("id", ""))
        if params.get("name") != "record" or not call:
            return None
        # One write(2) of one line in append mode: whole, whatever kills the process.
        line = f"call {call}\n".encode()
        fd = os.open(os.path.join(RECORD_DIR, f"calls-{os.getpid()}.log"),
                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
        CALLS_RUN[0] += 1
        if CRASH_EVERY and CALLS_RUN[0] % CRASH_EVERY == 0:
            os._exit(3)
        if SLOW_EVERY and CALLS_RUN[0] % SLOW_EVERY == 0:
            time.sleep(SLOW_S)
        return {"content": [{"type": "text", "text": f"ran {call}"}], "isError": False}
    return None


def main():
    if os.environ.get("DAEMONIZE") == "1":
        daemonize()
    log = os.path.join(RECORD_DIR, f"{os.getpid()}.log")
    threading.Thread(target=record, args=(log, "start"), daemon=True).start()
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if "id" not in message:
            continue
        result = answer(message)
        if result is None:
            reply = {"jsonrpc": "2.0", "id": message["id"],
                     "error": {"code": -32601, "message": "method not found"}}
        else:
            reply = {"jsonrpc": "2.0", "id": message["id"], "result": result}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
