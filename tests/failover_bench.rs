//! Failover benchmark (not part of the test run): three real nodes on loopback, a
//! server with replicas=2 (the npm reference server), SIGKILL a node that runs one of
//! its replicas, and time until `server status` (asked of a survivor) shows both
//! replicas healthy on the survivors, MCP start-up included; then check that the killed
//! node's MCP server processes are gone. Two series: the killed node is a follower, or
//! it is the leader (then an election and the new leader's grace come first). Prints
//! every trial and each series' median.
//!
//!     cargo test --release --test failover_bench -- --ignored --nocapture
//!
//! `FAILOVER_TRIALS` sets the number of trials per series (default 7).

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use common::*;

fn healthy_nodes(endpoint: &str) -> Result<Vec<u64>> {
    Ok(replicas(endpoint, "everything")?
        .iter()
        .filter(|r| r["state"] == "healthy")
        .filter_map(|r| r["node_id"].as_u64())
        .collect())
}

/// One trial; `None` when the cluster did not offer the wanted victim (the leader ran
/// no replica).
fn trial(everything: &str, kill_leader: bool) -> Result<Option<Duration>> {
    let mut cluster = Cluster::start(3)?;
    let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let marker = process_marker("bench");
    let endpoint = cluster.addr(1);
    cli_json(
        &endpoint,
        &[
            "server",
            "add",
            "everything",
            "--command",
            everything,
            "--replicas",
            "2",
            "--env",
            &marker,
        ],
    )?;
    let hosts = eventually(Duration::from_secs(60), || {
        let nodes = healthy_nodes(&endpoint)?;
        if nodes.len() != 2 {
            bail!("not yet two healthy replicas: {nodes:?}");
        }
        Ok(nodes)
    })?;
    let victim = if kill_leader {
        match hosts.iter().find(|id| **id == leader) {
            Some(id) => *id,
            None => return Ok(None),
        }
    } else {
        *hosts
            .iter()
            .find(|id| **id != leader)
            .context("a follower host")?
    };
    let survivor = (1..=3).find(|id| *id != victim).context("a survivor")?;
    let endpoint = cluster.addr(survivor);
    let victim_pid = cluster.node(victim).child.as_ref().context("running")?.id();
    let groups = groups_started_by(victim_pid, &marker);
    let started = Instant::now();
    cluster.node(victim).kill();
    loop {
        let nodes: BTreeSet<u64> = healthy_nodes(&endpoint)
            .unwrap_or_default()
            .into_iter()
            .collect();
        if nodes.len() == 2 && !nodes.contains(&victim) {
            let took = started.elapsed();
            eventually(Duration::from_secs(10), || {
                let left = alive_in_groups(&groups, &marker);
                if !left.is_empty() {
                    bail!("killed node {victim} left {left:?}");
                }
                Ok(())
            })?;
            return Ok(Some(took));
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("no failover within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "a benchmark: run it with --ignored"]
fn failover_after_sigkill() -> Result<()> {
    let servers = mcp_servers()?;
    let trials: usize = std::env::var("FAILOVER_TRIALS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(7);
    for (kill_leader, what) in [(false, "a follower"), (true, "the leader")] {
        let mut times = Vec::new();
        while times.len() < trials {
            let Some(took) = trial(&servers.everything, kill_leader)? else {
                continue;
            };
            println!(
                "killed {what}: replica healthy on a survivor after {} ms",
                took.as_millis()
            );
            times.push(took);
        }
        times.sort();
        println!(
            "failover, killed {what}: trials={trials} median={} ms min={} ms max={} ms",
            times[trials / 2].as_millis(),
            times[0].as_millis(),
            times[trials - 1].as_millis()
        );
    }
    Ok(())
}
