#!/usr/bin/env python3
"""Tool calls through the fleet against the same upstream called directly, in one run.

    deploy/bench/calls.py [--rounds 5] [--seconds 5] [--clients 1,8]

Starts `@modelcontextprotocol/server-everything` in streamable-HTTP mode (pinned to
127.0.0.1), `supergateway` (npm, --stateful) in front of a stdio server-everything, and a
three-node mcpfleet cluster (release build) whose server `everything` is that same HTTP
upstream process (replicas=1). Then, round by round and in turn, it runs
`mcpfleet bench call` (closed loop, one MCP client per concurrent caller) against:

  direct      the upstream's own /mcp
  supergw     supergateway's /mcp
  same-node   /mcp of the node that runs the replica
  cross-node  /mcp of a node that does not (one more hop, over the data-plane RPC)

and prints the median over the rounds of calls/s, p50 and p99 for each, with the added
p50 latency over `direct` and the throughput ratio to it. The fleet runs in 2026-07-28
mode (no session); direct and supergateway speak 2025-11-25 with a session, as they
only can. `--legacy` runs the fleet's targets with sessions too.
"""
import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("MCPFLEET_BIN", os.path.join(ROOT, "target/release/mcpfleet"))
SERVERS = os.environ.get("MCP_SERVERS_DIR", os.path.join(ROOT, "target/mcp-servers"))
EVERYTHING_JS = os.path.join(
    SERVERS, "npm/node_modules/@modelcontextprotocol/server-everything/dist/index.js"
)
BENCH_NPM = os.path.join(SERVERS, "bench-npm")
SUPERGATEWAY_JS = os.path.join(BENCH_NPM, "node_modules/supergateway/dist/index.js")

# Wraps net.Server.prototype.listen so that servers that listen on all interfaces listen
# on 127.0.0.1 only.
LOOPBACK_CJS = os.path.join(ROOT, "tests/servers/loopback.cjs")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, what, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"{what} did not listen on {port} within {limit} s")


def cli(*args, endpoint):
    out = subprocess.run([BIN, *args, "--endpoint", endpoint, "-o", "json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"mcpfleet {' '.join(args)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def setup():
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "mcpfleet"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "tests/install-mcp-servers.sh")], check=True)
    if not os.path.exists(SUPERGATEWAY_JS):
        print("installing supergateway into", BENCH_NPM, file=sys.stderr)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        BENCH_NPM, "supergateway@4"], check=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--clients", default="1,8")
    parser.add_argument("--legacy", action="store_true")
    opts = parser.parse_args()
    setup()
    work = tempfile.mkdtemp(prefix="mcpfleet-calls-")
    loopback = LOOPBACK_CJS
    procs = []
    try:
        direct_port, sg_port = free_port(), free_port()
        log = open(os.path.join(work, "upstreams.log"), "w")
        procs.append(subprocess.Popen(
            ["node", "-r", loopback, EVERYTHING_JS, "streamableHttp"],
            env={**os.environ, "PORT": str(direct_port)}, stdout=log, stderr=log))
        procs.append(subprocess.Popen(
            ["node", "-r", loopback, SUPERGATEWAY_JS,
             "--stdio", f"node {EVERYTHING_JS} stdio",
             "--outputTransport", "streamableHttp", "--stateful",
             "--port", str(sg_port), "--logLevel", "none"],
            stdout=log, stderr=log))
        wait_port(direct_port, "server-everything")
        wait_port(sg_port, "supergateway")

        base = 20000 + os.getpid() % 20000
        subprocess.run([os.path.join(ROOT, "deploy/local-cluster.sh"), os.path.join(work, "c"),
                        str(base)], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "MCPFLEET_BIN": BIN})
        endpoint = f"127.0.0.1:{base + 1}"
        direct_url = f"http://127.0.0.1:{direct_port}/mcp"
        subprocess.run([BIN, "server", "add", "everything", "--url", direct_url,
                        "--endpoint", endpoint], check=True, stdout=subprocess.DEVNULL)
        host = None
        deadline = time.time() + 60
        while time.time() < deadline and host is None:
            status = cli("server", "status", "everything", endpoint=endpoint)
            healthy = [r["node_id"] for r in status["replicas"] if r["state"] == "healthy"]
            tools = [t["name"] for t in cli("tools", endpoint=endpoint)]
            if healthy and "everything__echo" in tools:
                host = healthy[0]
            else:
                time.sleep(0.2)
        if host is None:
            sys.exit("the replica did not become healthy")
        other = next(i for i in (1, 2, 3) if i != host)
        mcp = lambda node: f"http://127.0.0.1:{base + 100 + node}/mcp"
        fleet_era = "legacy" if opts.legacy else "auto"
        targets = [
            ("direct", direct_url, "echo", "auto"),
            ("supergw", f"http://127.0.0.1:{sg_port}/mcp", "echo", "auto"),
            ("same-node", mcp(host), "everything__echo", fleet_era),
            ("cross-node", mcp(other), "everything__echo", fleet_era),
        ]
        results = {}
        clients_levels = [int(c) for c in opts.clients.split(",")]
        for round_ in range(opts.rounds):
            for clients in clients_levels:
                for name, url, tool, era in targets:
                    out = subprocess.run(
                        [BIN, "bench", "call", "--url", url, "--tool", tool,
                         "--clients", str(clients), "--duration", str(opts.seconds),
                         "--protocol", era, "--json"],
                        capture_output=True, text=True)
                    if out.returncode != 0:
                        sys.exit(f"bench call {name}: {out.stderr.strip()}")
                    r = json.loads(out.stdout)
                    results.setdefault((clients, name), []).append(r)
                    print(f"round={round_ + 1} clients={clients} {name:<10} "
                          f"calls/s={r['per_second']:.0f} p50={r['p50_ms']:.3f}ms "
                          f"p99={r['p99_ms']:.3f}ms errors={r['errors']}", flush=True)
        print(f"\nmedian of {opts.rounds} rounds of {opts.seconds} s, fleet mode {fleet_era}, "
              f"replica on node {host}, cross-node via node {other}")
        print("| clients | target | calls/s | p50 ms | p99 ms | added p50 ms | x direct |")
        print("|---|---|---|---|---|---|---|")
        for clients in clients_levels:
            med = {name: {k: statistics.median(r[k] for r in results[(clients, name)])
                          for k in ("per_second", "p50_ms", "p99_ms")}
                   for name, *_ in targets}
            errors = {name: sum(r["errors"] for r in results[(clients, name)])
                      for name, *_ in targets}
            for name, *_ in targets:
                m, d = med[name], med["direct"]
                print(f"| {clients} | {name} | {m['per_second']:.0f} | {m['p50_ms']:.3f} | "
                      f"{m['p99_ms']:.3f} | {m['p50_ms'] - d['p50_ms']:+.3f} | "
                      f"{m['per_second'] / d['per_second']:.2f} |"
                      + (f" ({errors[name]} errors)" if errors[name] else ""))
    finally:
        for p in procs:
            p.terminate()
        try:
            with open(os.path.join(work, "c", "pids")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), 15)
                    except ProcessLookupError:
                        pass
        except FileNotFoundError:
            pass
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        time.sleep(0.5)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
