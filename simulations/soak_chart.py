#!/usr/bin/env python3
"""Draws the soak's CSV files (from `mcpfleet-soak --dir DIR`) as one PNG.

    python soak_chart.py DIR OUT.png

Panels, over the run's seconds: RSS, open fds, threads and replicas of each node (a
node holds five fds per replica), each node's data dir, and the p99 latency of writes, reads and tool calls per sample
window. Kills are grey bands (the node was down). Needs matplotlib.
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: soak_chart.py DIR OUT.png")
    run, out = sys.argv[1], sys.argv[2]
    samples = read(f"{run}/samples.csv")
    latency = read(f"{run}/latency.csv")
    kills = read(f"{run}/kills.csv")
    if not samples or not latency:
        sys.exit(f"{run}: no samples yet")

    per_node = defaultdict(lambda: defaultdict(list))
    for row in samples:
        node = per_node[row["node"]]
        up = row["up"] == "1"
        t = float(row["seconds"])
        for field in ("rss_mib", "fds", "threads"):
            node[field].append((t, float(row[field]) if up else float("nan")))
        for field in ("replicas", "data_mib"):
            node[field].append((t, float(row[field])))
    per_kind = defaultdict(list)
    for row in latency:
        per_kind[row["kind"]].append((float(row["seconds"]), float(row["p99_ms"])))

    panels = [
        ("rss_mib", "RSS (MiB)"),
        ("fds", "open fds"),
        ("threads", "threads"),
        ("replicas", "replicas placed"),
        ("data_mib", "data dir (MiB)"),
    ]
    fig, axes = plt.subplots(len(panels) + 1, 1, figsize=(10, 15), sharex=True)
    for ax, (field, title) in zip(axes, panels):
        for name in sorted(per_node, key=int):
            points = per_node[name][field]
            ax.plot([t for t, _ in points], [v for _, v in points], label=f"node {name}")
        ax.set_ylabel(title)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right", ncol=3)
    ax = axes[-1]
    for kind in sorted(per_kind):
        points = per_kind[kind]
        ax.plot([t for t, _ in points], [v for _, v in points], label=kind)
    ax.set_ylabel("p99 per window (ms)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", ncol=3)
    ax.set_xlabel("seconds into the soak")
    for kill in kills:
        start = float(kill["seconds"])
        for a in axes:
            a.axvspan(start, start + float(kill["down_seconds"]), color="grey", alpha=0.15)
    seconds = max(float(r["seconds"]) for r in samples)
    fig.suptitle(
        f"mcpfleet soak: 3 nodes, {seconds / 60:.0f} min, {len(kills)} kills of node 2 or 3 "
        "(grey)"
    )
    fig.tight_layout()
    fig.savefig(out, dpi=80)


if __name__ == "__main__":
    main()
