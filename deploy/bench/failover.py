#!/usr/bin/env python3
"""Leader failover on a three-node loopback cluster of real mcpfleet processes.

Each trial: write acknowledged servers, SIGKILL the leader, then time how long a write
through a survivor takes to be acknowledged (the survivor waits for the new leader
itself). Then check that every acknowledged write is still there, restart the killed
node from its data dir and wait until it has caught up.

    python3 deploy/bench/failover.py [--trials 10] [--bin target/release/mcpfleet]

Prints one line per trial and the median, min and max.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time


# A tag no node carries: the servers written are never placed, so the benchmark measures
# the registry's failover, not the launching of MCP servers.
UNPLACED_TAG = "mcpfleet-bench-never-placed"

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli(binary, endpoint, *args, timeout=30):
    out = subprocess.run(
        [binary, *args, "--endpoint", endpoint, "-o", "json"],
        capture_output=True, text=True, timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{args}: {out.stderr.strip()}")
    return json.loads(out.stdout)


def wait_for(check, limit, what):
    deadline = time.monotonic() + limit
    while True:
        try:
            result = check()
            if result:
                return result
        except (RuntimeError, subprocess.TimeoutExpired, json.JSONDecodeError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--bin", default="target/release/mcpfleet")
    parser.add_argument("--writes-per-trial", type=int, default=20)
    args = parser.parse_args()
    binary = os.path.abspath(args.bin)
    workdir = tempfile.mkdtemp(prefix="mcpfleet-failover-")
    addrs = {i: f"127.0.0.1:{free_port()}" for i in (1, 2, 3)}
    initial = ",".join(f"{i}={a}" for i, a in addrs.items())
    procs = {}

    def start(i):
        log = open(os.path.join(workdir, f"node{i}.log"), "a")
        procs[i] = subprocess.Popen(
            [binary, "serve", "--id", str(i), "--listen", addrs[i],
             "--data", os.path.join(workdir, f"data{i}"), "--initial-cluster", initial,
             "--http", "off"],
            stdout=subprocess.DEVNULL, stderr=log,
        )

    try:
        for i in addrs:
            start(i)
        acknowledged = set()
        results = []
        for trial in range(args.trials):
            leader = wait_for(
                lambda: all(
                    cli(binary, addrs[i], "cluster", "status").get("leader_id") for i in addrs
                ) and cli(binary, addrs[1], "cluster", "status")["leader_id"],
                30, "a leader seen by every node")
            for w in range(args.writes_per_trial):
                name = f"t{trial}-w{w}"
                cli(binary, addrs[leader % 3 + 1], "server", "add", name, "--command", "echo", "--tag", UNPLACED_TAG)
                acknowledged.add(name)
            survivor = leader % 3 + 1
            procs[leader].send_signal(signal.SIGKILL)
            killed_at = time.monotonic()
            procs[leader].wait()
            name = f"t{trial}-after-kill"
            cli(binary, addrs[survivor], "server", "add", name, "--command", "echo", "--tag", UNPLACED_TAG)
            elapsed_ms = (time.monotonic() - killed_at) * 1000
            acknowledged.add(name)
            names = {s["name"] for s in cli(binary, addrs[survivor], "server", "ls")}
            lost = acknowledged - names
            if lost:
                raise RuntimeError(f"trial {trial}: acknowledged writes lost: {sorted(lost)}")
            start(leader)
            wait_for(
                lambda: {s["name"] for s in cli(binary, addrs[leader], "server", "ls", "--stale")}
                >= acknowledged, 30, f"node {leader} to catch up")
            results.append(elapsed_ms)
            print(f"trial {trial}: killed leader {leader}; write through node {survivor} "
                  f"acknowledged after {elapsed_ms:.0f} ms; {len(acknowledged)} acknowledged "
                  f"writes all present; node {leader} restarted and caught up", flush=True)
        print(f"failover: trials={len(results)} median={statistics.median(results):.0f}ms "
              f"min={min(results):.0f}ms max={max(results):.0f}ms")
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
