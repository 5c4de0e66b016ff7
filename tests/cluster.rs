//! Three real `mcpfleet` processes on loopback: forwarding, reads on any node, leader
//! failover, restart from the data dir, joining, graceful shutdown.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

#[test]
fn three_nodes_forward_fail_over_and_catch_up() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let follower = if leader == 1 { 2 } else { 1 };
    let third = 6 - leader - follower;

    // A server added through a follower is readable at once on the third node.
    let added = cli_json(
        &cluster.addr(follower),
        &[
            "server",
            "add",
            "time",
            "--command",
            "uvx",
            "--arg",
            "mcp-server-time",
        ],
    )?;
    // (The registry's revision also counts node liveness and placement, which run on
    // their own: only its order is checked here.)
    let first_revision = added["revision"].as_u64().unwrap_or(0);
    ensure!(first_revision >= 1, "{added}");
    let got = cli_json(&cluster.addr(third), &["server", "get", "time"])?;
    ensure!(
        got["name"] == "time" && got["transport"]["stdio"]["command"] == "uvx",
        "{got}"
    );
    for id in 1..=3 {
        ensure!(
            server_names(&cluster.addr(id), false)? == ["time"],
            "node {id} lists time"
        );
    }

    // More acknowledged writes, then SIGKILL the leader.
    let mut acknowledged = vec!["time".to_string()];
    let mut last_revision = first_revision;
    for i in 0..20 {
        let name = format!("s{i:02}");
        let added = cli_json(
            &cluster.addr(third),
            &["server", "add", &name, "--command", "echo"],
        )?;
        let revision = added["revision"].as_u64().unwrap_or(0);
        ensure!(revision > last_revision, "revisions grow: {added}");
        last_revision = revision;
        acknowledged.push(name);
    }
    acknowledged.sort();
    cluster.node(leader).kill();

    // A survivor accepts writes again once a new leader is elected.
    let write = eventually(Duration::from_secs(15), || {
        cli_json(
            &cluster.addr(follower),
            &["server", "add", "after-kill", "--command", "echo"],
        )
    })?;
    let write_revision = write["revision"].as_u64().unwrap_or(0);
    ensure!(write_revision > last_revision, "{write}");
    let new_leader = wait_for_leader(&cluster.addr(third), Duration::from_secs(10))?;
    ensure!(new_leader != leader, "a survivor leads");
    let mut expected = acknowledged.clone();
    expected.push("after-kill".into());
    expected.sort();
    for id in [follower, third] {
        ensure!(
            server_names(&cluster.addr(id), false)? == expected,
            "node {id} kept every write"
        );
    }

    // The killed node restarts from its data dir and catches up.
    cluster.node(leader).restart()?;
    let addr = cluster.addr(leader);
    eventually(Duration::from_secs(20), || {
        let names = server_names(&addr, true)?;
        ensure!(names == expected, "restarted node lists {names:?}");
        Ok(())
    })?;
    let status = cli_json(&addr, &["cluster", "status"])?;
    ensure!(
        status["revision"].as_u64() >= Some(write_revision),
        "{status}"
    );
    ensure!(
        status["members"].as_array().map(Vec::len) == Some(3),
        "{status}"
    );
    Ok(())
}

#[test]
fn a_node_joins_as_voter_is_removed_and_nodes_stop_on_sigterm() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let first_addr = format!("127.0.0.1:{}", free_port());
    let mut first = NodeProcess::start(1, &first_addr, &dir.path().join("n1"), &[])?;
    wait_for_leader(&first_addr, Duration::from_secs(20))?;
    cli_json(
        &first_addr,
        &["server", "add", "before-join", "--command", "echo"],
    )?;

    let second_addr = format!("127.0.0.1:{}", free_port());
    let mut second = NodeProcess::start(
        2,
        &second_addr,
        &dir.path().join("n2"),
        &["--join".into(), first_addr.clone()],
    )?;
    eventually(Duration::from_secs(20), || {
        let status = cli_json(&first_addr, &["cluster", "status"])?;
        let members = status["members"].as_array().cloned().unwrap_or_default();
        ensure!(
            members.len() == 2 && members.iter().all(|m| m["voter"] == true),
            "members: {members:?}"
        );
        Ok(())
    })?;
    // The joined node serves linearizable reads of what was written before it joined.
    ensure!(server_names(&second_addr, false)? == ["before-join"]);

    // Removing the joined node leaves node 1 alone; it still accepts writes.
    let removed = cli_json(&second_addr, &["cluster", "remove-node", "2"])?;
    let members = removed["members"].as_array().cloned().unwrap_or_default();
    ensure!(
        members.len() == 1 && members[0]["id"] == 1,
        "members: {members:?}"
    );
    eventually(Duration::from_secs(10), || {
        cli_json(
            &first_addr,
            &["server", "add", "after-remove", "--command", "echo"],
        )
    })?;
    // The last voter cannot be removed.
    let output = cli(&first_addr, &["cluster", "remove-node", "1"]);
    ensure!(
        !output.status.success(),
        "removing the last voter must fail"
    );
    ensure!(String::from_utf8_lossy(&output.stderr).contains("last voter"));

    // Graceful shutdown on SIGTERM, with exit status 0.
    let status = second.terminate(Duration::from_secs(10))?;
    ensure!(status.success(), "SIGTERM exit status {status:?}");
    let status = first.terminate(Duration::from_secs(10))?;
    ensure!(status.success(), "SIGTERM exit status {status:?}");
    Ok(())
}

/// 5,120 servers: more than ten pages of `server ls` and `status`, a registry that is
/// snapshotted (every 1,000 log entries here) and whose log is purged, read back after
/// a restart, and installed from the snapshot by a node that joins afterwards.
#[test]
fn five_thousand_servers_list_in_pages_and_survive_snapshot_restart_and_install() -> Result<()> {
    const SERVERS: usize = 320 * 16;
    let dir = tempfile::tempdir()?;
    let first_addr = format!("127.0.0.1:{}", free_port());
    let snapshots = ["--snapshot-after-logs".to_string(), "1000".into()];
    let mut first = NodeProcess::start(1, &first_addr, &dir.path().join("n1"), &snapshots)?;
    wait_for_leader(&first_addr, Duration::from_secs(20))?;
    let bench = |args: &[&str]| -> Result<()> {
        let mut all = vec!["bench", "put", "--duration", "300", "--json"];
        all.extend(args);
        let output = cli(&first_addr, &all);
        ensure!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(&output.stdout)?;
        ensure!(summary["errors"] == 0, "{summary}");
        Ok(())
    };
    // `bench put` writes 16 servers per client, `bench-{client}-{0..16}`.
    bench(&["--clients", "320", "--max-writes", "5120"])?;
    // Concurrent writes share log entries; 1,500 writes one at a time (rewriting
    // client 0's servers) take an entry each, so a snapshot is taken and the log purged.
    bench(&["--max-writes", "1500"])?;
    let count = |addr: &str, stale: bool| -> Result<usize> {
        let names = server_names(addr, stale)?;
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        ensure!(unique.len() == names.len(), "a name is listed twice");
        Ok(names.len())
    };
    ensure!(count(&first_addr, false)? == SERVERS);
    let status = cli_json(&first_addr, &["status"])?;
    ensure!(status["servers"].as_array().map(Vec::len) == Some(SERVERS));

    first.terminate(Duration::from_secs(10))?;
    first.restart()?;
    wait_for_leader(&first_addr, Duration::from_secs(30))?;
    ensure!(count(&first_addr, false)? == SERVERS);

    let second_addr = format!("127.0.0.1:{}", free_port());
    let second_data = dir.path().join("n2");
    let mut second = NodeProcess::start(
        2,
        &second_addr,
        &second_data,
        &["--join".into(), first_addr.clone()],
    )?;
    eventually(Duration::from_secs(60), || {
        let listed = count(&second_addr, true)?;
        ensure!(listed == SERVERS, "node 2 lists {listed} servers");
        Ok(())
    })?;
    let log_path = second_data.with_extension("log");
    let log = std::fs::read_to_string(&log_path)
        .with_context(|| format!("read {}", log_path.display()))?;
    ensure!(
        log.contains("installing a snapshot from the leader"),
        "node 2 caught up without a snapshot; its log:\n{log}"
    );
    second.terminate(Duration::from_secs(10))?;
    first.terminate(Duration::from_secs(10))?;
    Ok(())
}

#[test]
fn client_flags_are_taken_anywhere_on_the_line() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port());
    let _node = NodeProcess::start(1, &addr, &dir.path().join("node1"), &[])?;
    wait_for_leader(&addr, Duration::from_secs(20))?;
    let run = |args: &[&str], env: &[(&str, &str)]| -> Result<serde_json::Value> {
        let output = std::process::Command::new(binary())
            .args(args)
            .envs(client_tls_env())
            .envs(env.iter().copied())
            .env_remove("RUST_LOG")
            .output()?;
        ensure!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_slice(&output.stdout).with_context(|| format!("{args:?}: not JSON"))
    };
    let lines: [&[&str]; 3] = [
        &["--endpoint", &addr, "-o", "json", "cluster", "status"],
        &["cluster", "--endpoint", &addr, "status", "-o", "json"],
        &["-o", "json", "cluster", "status", "--endpoint", &addr],
    ];
    for args in lines {
        assert_eq!(run(args, &[])?["leader_id"], 1, "{args:?}");
    }
    let status = run(&["-o", "json", "status"], &[("MCPFLEET_ENDPOINT", &addr)])?;
    ensure!(status.is_object(), "{status}");
    // The bench commands print JSON with -o json too.
    let bench = run(
        &[
            "-o",
            "json",
            "bench",
            "put",
            "--endpoint",
            &addr,
            "--max-writes",
            "10",
        ],
        &[],
    )?;
    assert_eq!(bench["operations"], 10, "{bench}");
    Ok(())
}
