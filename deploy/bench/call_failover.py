#!/usr/bin/env python3
"""Failed tool calls when a node that runs a replica is SIGKILLed under steady load.

    deploy/bench/call_failover.py [--trials 3] [--victim follower|leader|both]
                                  [--seconds 20] [--kill-at 6] [--clients 8]

Each trial starts a fresh three-node cluster (release build) with the stdio
`@modelcontextprotocol/server-everything` at replicas=2, and picks the victim: a node
that runs a replica and is a follower (or the leader). `mcpfleet bench call` then keeps
CLIENTS MCP clients calling `everything__echo` in a closed loop through the /mcp of the
two other nodes; after KILL_AT seconds the victim gets SIGKILL. It reports, per trial,
the calls made and the calls that failed, and the failed fraction over all trials.
With KEEP=1 in the environment, each trial's data dirs and node logs are kept.

Only a call in flight on the victim's replica at the moment of the kill may fail: it
may have run, so it is never sent again. A call routed to the victim afterwards finds
no connection and goes to the other replica at once.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.environ.get("MCPFLEET_BIN", os.path.join(ROOT, "target/release/mcpfleet"))
SERVERS = os.environ.get("MCP_SERVERS_DIR", os.path.join(ROOT, "target/mcp-servers"))
EVERYTHING = os.path.join(SERVERS, "npm/node_modules/.bin/mcp-server-everything")


def cli(*args, endpoint):
    out = subprocess.run([BIN, *args, "--endpoint", endpoint, "-o", "json"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"mcpfleet {' '.join(args)}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def trial(number, victim_role, opts):
    """One cluster, one kill; returns the bench result, or None when no node fits."""
    work = tempfile.mkdtemp(prefix="mcpfleet-callfail-")
    base = 20000 + (os.getpid() * 7 + number * 131) % 20000
    try:
        subprocess.run([os.path.join(ROOT, "deploy/local-cluster.sh"), work, str(base)],
                       check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "MCPFLEET_BIN": BIN})
        with open(os.path.join(work, "pids")) as f:
            pids = [int(p) for p in f.read().split()]
        endpoint = f"127.0.0.1:{base + 1}"
        subprocess.run([BIN, "server", "add", "everything", "--command", EVERYTHING,
                        "--arg", "stdio", "--replicas", "2", "--endpoint", endpoint],
                       check=True, stdout=subprocess.DEVNULL)
        hosts = []
        deadline = time.time() + 60
        while time.time() < deadline:
            status = cli("server", "status", "everything", endpoint=endpoint)
            hosts = [r["node_id"] for r in status["replicas"] if r["state"] == "healthy"]
            tools_everywhere = all(
                "everything__echo" in [t["name"] for t in
                                       cli("tools", endpoint=f"127.0.0.1:{base + n}")]
                for n in (1, 2, 3))
            if len(hosts) == 2 and tools_everywhere:
                break
            time.sleep(0.2)
        else:
            sys.exit(f"trial {number}: replicas not healthy: {hosts}")
        leader = cli("cluster", "status", endpoint=endpoint)["leader_id"]
        fits = [h for h in hosts if (h == leader) == (victim_role == "leader")]
        if not fits:
            return None
        victim = fits[0]
        survivors = [n for n in (1, 2, 3) if n != victim]
        urls = [a for n in survivors for a in ("--url", f"http://127.0.0.1:{base + 100 + n}/mcp")]
        bench = subprocess.Popen(
            [BIN, "bench", "call", *urls, "--clients", str(opts.clients),
             "--duration", str(opts.seconds), "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(opts.kill_at)
        os.kill(pids[victim - 1], 9)
        out, err = bench.communicate(timeout=opts.seconds + 60)
        if bench.returncode != 0:
            sys.exit(f"trial {number}: bench call: {err.strip()}")
        result = json.loads(out)
        result["victim"] = victim
        result["leader"] = leader
        return result
    finally:
        try:
            with open(os.path.join(work, "pids")) as f:
                for pid in f.read().split():
                    try:
                        os.kill(int(pid), 9)
                    except ProcessLookupError:
                        pass
        except FileNotFoundError:
            pass
        time.sleep(0.5)
        if os.environ.get("KEEP"):
            print(f"trial {number}: logs kept in {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--victim", choices=["follower", "leader", "both"], default="both")
    parser.add_argument("--seconds", type=int, default=20)
    parser.add_argument("--kill-at", type=float, default=6.0)
    parser.add_argument("--clients", type=int, default=8)
    opts = parser.parse_args()
    if not os.path.exists(BIN):
        subprocess.run(["cargo", "build", "--release", "-p", "mcpfleet"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "tests/install-mcp-servers.sh")], check=True)
    roles = ["follower", "leader"] if opts.victim == "both" else [opts.victim]
    number = 0
    for role in roles:
        calls = failed = 0
        done = 0
        while done < opts.trials:
            number += 1
            if number > opts.trials * 10:
                sys.exit("no cluster placed a replica on a fitting node")
            result = trial(number, role, opts)
            if result is None:
                continue
            done += 1
            total = result["operations"] + result["errors"]
            calls += total
            failed += result["errors"]
            print(f"victim={role} trial={done} node={result['victim']} calls={total} "
                  f"failed={result['errors']} calls/s={result['per_second']:.0f} "
                  f"p99={result['p99_ms']:.2f}ms max={result['max_ms']:.1f}ms "
                  f"errors={result['error_kinds']}", flush=True)
        print(f"victim={role}: {failed} of {calls} calls failed "
              f"({100.0 * failed / max(calls, 1):.3f}%)", flush=True)


if __name__ == "__main__":
    main()
