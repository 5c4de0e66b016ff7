//! Placement, failover and replica health with real MCP servers (the npm reference
//! server and the PyPI time server) under real `mcpfleet` processes on loopback.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// The replicas of `name` once each is healthy on a node in `allowed`, on distinct nodes.
fn healthy_on(endpoint: &str, name: &str, count: usize, allowed: &[u64]) -> Result<Vec<u64>> {
    let replicas = replicas(endpoint, name)?;
    let nodes: Vec<u64> = replicas
        .iter()
        .filter(|r| r["state"] == "healthy")
        .filter_map(|r| r["node_id"].as_u64())
        .filter(|id| allowed.contains(id))
        .collect();
    let distinct: BTreeSet<u64> = nodes.iter().copied().collect();
    if nodes.len() != count || distinct.len() != count {
        bail!("{name}: not yet {count} healthy replicas on distinct nodes of {allowed:?}: {replicas:?}");
    }
    Ok(nodes)
}

#[test]
fn replicas_spread_fail_over_drain_and_leave_no_process_behind() -> Result<()> {
    let servers = mcp_servers()?;
    let mut cluster = Cluster::start(3)?;
    let endpoint = cluster.addr(1);
    wait_for_leader(&endpoint, Duration::from_secs(20))?;
    let marker = process_marker("failover");
    let add = |name: &str, command: &str, replicas: &str| {
        let output = cli(
            &endpoint,
            &[
                "server",
                "add",
                name,
                "--command",
                command,
                "--replicas",
                replicas,
                "--env",
                &marker,
            ],
        );
        ensure!(
            output.status.success(),
            "add {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    add("everything", &servers.everything, "2")?;
    add("clock", &servers.time, "1")?;

    let all = [1, 2, 3];
    let hosts = eventually(Duration::from_secs(60), || {
        healthy_on(&endpoint, "clock", 1, &all)?;
        healthy_on(&endpoint, "everything", 2, &all)
    })?;

    // SIGKILL a node that runs a replica of "everything" (not node 1, which the test
    // talks to).
    let victim = *hosts
        .iter()
        .find(|id| **id != 1)
        .context("a replica off node 1")?;
    let victim_pid = cluster.node(victim).child.as_ref().context("running")?.id();
    let groups = groups_started_by(victim_pid, &marker);
    ensure!(
        !groups.is_empty(),
        "node {victim} runs no MCP server process"
    );
    cluster.node(victim).kill();
    let survivors: Vec<u64> = all.iter().copied().filter(|id| *id != victim).collect();
    eventually(Duration::from_secs(30), || {
        healthy_on(&endpoint, "everything", 2, &survivors)
    })?;
    eventually(Duration::from_secs(10), || {
        let left = alive_in_groups(&groups, &marker);
        ensure!(left.is_empty(), "killed node {victim} left {left:?}");
        Ok(())
    })?;
    let fleet = cli_json(&endpoint, &["status"])?;
    let victim_status = fleet["nodes"]
        .as_array()
        .context("nodes")?
        .iter()
        .find(|n| n["id"] == victim)
        .context("victim in status")?["status"]
        .clone();
    ensure!(victim_status == "down", "node {victim} is {victim_status}");

    // The node comes back; then draining another moves its replicas away.
    cluster.node(victim).restart()?;
    let drained = survivors
        .iter()
        .copied()
        .find(|id| *id != 1)
        .context("a node to drain")?;
    let output = cli(&endpoint, &["node", "drain", &drained.to_string()]);
    ensure!(
        output.status.success(),
        "drain: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let in_service: Vec<u64> = all.iter().copied().filter(|id| *id != drained).collect();
    eventually(Duration::from_secs(30), || {
        healthy_on(&endpoint, "everything", 2, &in_service)?;
        healthy_on(&endpoint, "clock", 1, &in_service)
    })?;
    let output = cli(&endpoint, &["node", "undrain", &drained.to_string()]);
    ensure!(
        output.status.success(),
        "undrain: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Stopping every node stops every MCP server.
    for id in all {
        cluster.node(id).terminate(Duration::from_secs(15))?;
    }
    let left = processes_with_marker(&marker);
    ensure!(
        left.is_empty(),
        "MCP server processes left after stop: {left:?}"
    );
    Ok(())
}

/// The replica of `name` (replicas=1) as `server status` shows it.
fn replica(endpoint: &str, name: &str) -> Result<serde_json::Value> {
    replicas(endpoint, name)?
        .into_iter()
        .next()
        .context("one replica")
}

fn expect_state(
    endpoint: &str,
    name: &str,
    state: &str,
    error_has: &[&str],
) -> Result<serde_json::Value> {
    let replica = replica(endpoint, name)?;
    let error = replica["last_error"].as_str().unwrap_or_default();
    if replica["state"] != state || !error_has.iter().all(|part| error.contains(part)) {
        bail!("{name}: want {state} with an error containing {error_has:?}, have {replica}");
    }
    Ok(replica)
}

#[test]
fn bad_specs_and_crashes_get_a_clear_state_and_hold_nothing_up() -> Result<()> {
    let servers = mcp_servers()?;
    let mut cluster = Cluster::start(1)?;
    let endpoint = cluster.addr(1);
    wait_for_leader(&endpoint, Duration::from_secs(20))?;
    let marker = process_marker("bad-specs");
    let unreachable = format!("http://127.0.0.1:{}/mcp", free_port());
    let specs: Vec<(&str, Vec<&str>)> = vec![
        (
            "crasher",
            vec![
                "--command",
                "sh",
                "--arg",
                "-c",
                "--arg",
                "echo boom >&2; exit 3",
            ],
        ),
        ("nonexistent", vec!["--command", "/nonexistent/mcp-server"]),
        ("silent", vec!["--command", "sleep", "--arg", "600"]),
        ("unreachable", vec!["--url", &unreachable]),
        ("clock", vec!["--command", &servers.time]),
    ];
    for (name, spec) in &specs {
        let mut args = vec!["server", "add", name, "--env", &marker];
        args.extend(spec);
        let output = cli(&endpoint, &args);
        ensure!(
            output.status.success(),
            "add {name}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // A missing command is refused and changes nothing.
    let output = cli(&endpoint, &["server", "add", "missing", "--command", ""]);
    ensure!(!output.status.success(), "an empty command was accepted");
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        stderr.contains("command must not be empty"),
        "unclear error: {stderr}"
    );
    ensure!(!server_names(&endpoint, false)?.contains(&"missing".to_string()));

    // The good server is healthy while the bad ones fail (and keep failing).
    eventually(Duration::from_secs(30), || {
        expect_state(&endpoint, "clock", "healthy", &[])
    })?;
    eventually(Duration::from_secs(30), || {
        expect_state(
            &endpoint,
            "crasher",
            "crash-loop",
            &["exited with code 3", "boom"],
        )?;
        expect_state(
            &endpoint,
            "nonexistent",
            "crash-loop",
            &["cannot start", "/nonexistent/mcp-server"],
        )?;
        expect_state(&endpoint, "unreachable", "crash-loop", &[&unreachable])
    })?;
    eventually(Duration::from_secs(30), || {
        let replica = replica(&endpoint, "silent")?;
        let error = replica["last_error"].as_str().unwrap_or_default();
        ensure!(
            error.contains("no answer to initialize within"),
            "silent: {replica}"
        );
        Ok(())
    })?;
    // In crash-loop a server is retried at the longest backoff, not in a storm.
    let before = replica(&endpoint, "crasher")?["restarts"]
        .as_u64()
        .context("restarts")?;
    std::thread::sleep(Duration::from_secs(5));
    let after = replica(&endpoint, "crasher")?["restarts"]
        .as_u64()
        .context("restarts")?;
    ensure!(
        after <= before + 1,
        "crasher restarted {} times in 5 s",
        after - before
    );
    expect_state(&endpoint, "clock", "healthy", &[])?;

    // Killing a server's process: it is restarted and healthy again.
    let (pid, _) = processes_with_marker(&marker)
        .into_iter()
        .find(|(_, cmdline)| cmdline.contains("mcp-server-time") && !cmdline.contains("supervise"))
        .context("the time server's process")?;
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()?;
    ensure!(status.success());
    eventually(Duration::from_secs(20), || {
        let replica = expect_state(&endpoint, "clock", "healthy", &["killed by signal 9"])
            .or_else(|_| expect_state(&endpoint, "clock", "healthy", &["exited with code 137"]))?;
        ensure!(
            replica["restarts"].as_u64() >= Some(1),
            "not restarted: {replica}"
        );
        Ok(())
    })?;

    cluster.node(1).terminate(Duration::from_secs(15))?;
    let left = processes_with_marker(&marker);
    ensure!(
        left.is_empty(),
        "MCP server processes left after stop: {left:?}"
    );
    Ok(())
}
