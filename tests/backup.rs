//! `mcpfleet snapshot save` and `snapshot restore` on real processes: a three-node
//! cluster with real MCP servers is saved from a follower, all three data dirs are
//! wiped and restored from the file, and the restored cluster has every server and
//! runs them again; a node that joins later gets the restored state from the leader.
//! Damaged, truncated and foreign files are refused and change nothing.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

/// `snapshot restore FILE` for member `id` of `cluster`: into the member's data dir,
/// with the cluster's addresses as the new cluster's members.
fn restore_args(cluster: &Cluster, file: &str, id: u64) -> Vec<String> {
    let members: Vec<String> = (1..=cluster.nodes.len() as u64)
        .map(|id| format!("{id}={}", cluster.addr(id)))
        .collect();
    [
        "snapshot",
        "restore",
        file,
        "--data",
        &cluster.nodes[id as usize - 1].data.display().to_string(),
        "--id",
        &id.to_string(),
        "--initial-cluster",
        &members.join(","),
    ]
    .map(str::to_string)
    .to_vec()
}

#[test]
fn a_saved_cluster_restored_on_wiped_data_dirs_has_and_runs_every_server() -> Result<()> {
    let servers = mcp_servers()?;
    let mut cluster = Cluster::start(3)?;
    let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let marker = process_marker("backup");
    add_server(
        &cluster.addr(1),
        "time",
        &[
            "--command",
            &servers.time,
            "--env",
            &marker,
            "--replicas",
            "2",
        ],
    )?;
    add_server(
        &cluster.addr(1),
        "everything",
        &["--command", &servers.everything, "--env", &marker],
    )?;
    add_server(
        &cluster.addr(1),
        "time-b",
        &["--command", &servers.time, "--env", &marker],
    )?;
    cli_json(&cluster.addr(1), &["server", "rm", "time-b"])?;
    // Node 1 is drained: that belongs to this cluster, not to what is saved.
    eventually(Duration::from_secs(20), || {
        let (ok, _, stderr) = cli_run(&cluster.addr(2), &["node", "drain", "1"]);
        ensure!(ok, "{stderr}");
        Ok(())
    })?;
    eventually(Duration::from_secs(60), || {
        ensure!(healthy_slots(&cluster.addr(1), "time")?.len() == 2);
        Ok(())
    })?;
    let before = server_specs(&cluster.addr(1))?;
    assert_eq!(before.len(), 2);

    // Saved from a follower: a linearizable read, so it has every server written.
    let follower = (1..=3).find(|id| *id != leader).context("a follower")?;
    let dir = cluster.dir.path().to_path_buf();
    let file = dir.join("fleet.snap");
    let file_arg = file.display().to_string();
    let saved = cli_json(&cluster.addr(follower), &["snapshot", "save", &file_arg])?;
    let revision = saved["revision"].as_u64().context("revision")?;
    assert_eq!(
        saved["servers"],
        serde_json::json!(["everything", "time"]),
        "{saved}"
    );
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file)?.permissions().mode() & 0o777,
        0o600
    );
    let status = cli_json(&cluster.addr(1), &["snapshot", "status", &file_arg])?;
    assert_eq!(status["revision"].as_u64(), Some(revision), "{status}");

    // Damaged, truncated and foreign files are refused, and make no data dir.
    let bytes = std::fs::read(&file)?;
    let mut flipped = bytes.clone();
    let at = bytes.len() - 7;
    flipped[at] ^= 0x01;
    let bad = [
        ("flipped", flipped, "checksum does not match"),
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "truncated"),
        (
            "foreign",
            b"{\"mcpServers\": {}}".to_vec(),
            "not an mcpfleet backup",
        ),
    ];
    for (what, content, expected) in bad {
        let path = dir.join(format!("{what}.snap"));
        std::fs::write(&path, content)?;
        let target = dir.join(format!("restored-{what}"));
        let (ok, _, stderr) = cli_run(
            &cluster.addr(1),
            &[
                "snapshot",
                "restore",
                &path.display().to_string(),
                "--data",
                &target.display().to_string(),
            ],
        );
        ensure!(!ok && stderr.contains(expected), "{what}: {stderr}");
        ensure!(!target.exists(), "{what}: a data dir was made");
    }

    // Every node stops and its data dir is wiped; each is restored from the file.
    for id in 1..=3 {
        cluster.node(id).terminate(Duration::from_secs(20))?;
    }
    ensure!(
        processes_with_marker(&marker).is_empty(),
        "servers outlived their nodes"
    );
    for id in 1..=3 {
        let data = cluster.node(id).data.clone();
        std::fs::remove_dir_all(&data)?;
        let args = restore_args(&cluster, &file_arg, id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let restored = cli_json(&cluster.addr(1), &args)?;
        assert_eq!(restored["revision"].as_u64(), Some(revision), "{restored}");
        // A second restore into the same dir is refused.
        let (ok, _, stderr) = cli_run(&cluster.addr(1), &args);
        ensure!(!ok && stderr.contains("is not empty"), "{stderr}");
    }
    for id in 1..=3 {
        cluster.node(id).restart()?;
    }
    wait_for_leader(&cluster.addr(1), Duration::from_secs(30))?;
    assert_eq!(server_specs(&cluster.addr(2))?, before);
    let status = cli_json(&cluster.addr(1), &["cluster", "status"])?;
    ensure!(
        status["revision"].as_u64() >= Some(revision),
        "the restored registry starts at the saved revision: {status}"
    );
    // The nodes register afresh (all active: drains belong to the old cluster), and
    // the leader places every server again.
    eventually(Duration::from_secs(60), || {
        ensure!(healthy_slots(&cluster.addr(1), "time")?.len() == 2);
        ensure!(healthy_slots(&cluster.addr(1), "everything")?.len() == 1);
        Ok(())
    })?;
    let fleet = cli_json(&cluster.addr(3), &["status"])?;
    let nodes = fleet["nodes"].as_array().context("nodes")?;
    ensure!(nodes.len() == 3, "{fleet}");
    ensure!(
        nodes
            .iter()
            .all(|n| n["status"] == "up" && n["admin"] == "active"),
        "{fleet}"
    );

    // A node that joins the restored cluster on an empty data dir gets its state.
    let fourth_addr = format!("127.0.0.1:{}", free_port());
    let mut fourth = NodeProcess::start(
        4,
        &fourth_addr,
        &dir.join("node4"),
        &["--join".into(), cluster.addr(1)],
    )?;
    eventually(Duration::from_secs(30), || {
        ensure!(server_names(&fourth_addr, true)? == ["everything", "time"]);
        Ok(())
    })?;
    fourth.terminate(Duration::from_secs(20))?;
    Ok(())
}

#[test]
fn a_cluster_that_lost_its_majority_is_recovered_from_a_survivor() -> Result<()> {
    let servers = mcp_servers()?;
    let mut cluster = Cluster::start(3)?;
    wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let marker = process_marker("majority");
    add_server(
        &cluster.addr(1),
        "time",
        &["--command", &servers.time, "--env", &marker],
    )?;
    // Every node has applied the write before two of them are lost for good.
    eventually(Duration::from_secs(20), || {
        ensure!(server_names(&cluster.addr(3), true)? == ["time"]);
        Ok(())
    })?;
    cluster.node(1).kill();
    cluster.node(2).kill();

    // The survivor cannot confirm a read, so it saves its own applied state.
    let dir = cluster.dir.path().to_path_buf();
    let file = dir.join("survivor.snap").display().to_string();
    let saved = cli_json(&cluster.addr(3), &["snapshot", "save", &file, "--stale"])?;
    assert_eq!(saved["servers"], serde_json::json!(["time"]), "{saved}");
    cluster.node(3).terminate(Duration::from_secs(20))?;

    // A new cluster of three, on new data dirs and the same addresses.
    for id in 1..=3 {
        let data = cluster.node(id).data.clone();
        std::fs::remove_dir_all(&data)?;
        let args = restore_args(&cluster, &file, id);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        cli_json(&cluster.addr(1), &args)?;
        cluster.node(id).restart()?;
    }
    wait_for_leader(&cluster.addr(1), Duration::from_secs(30))?;
    eventually(Duration::from_secs(60), || {
        ensure!(healthy_slots(&cluster.addr(2), "time")?.len() == 1);
        Ok(())
    })?;
    // And it takes writes again.
    add_server(
        &cluster.addr(3),
        "time-2",
        &["--command", &servers.time, "--env", &marker],
    )?;
    assert_eq!(server_names(&cluster.addr(1), false)?, ["time", "time-2"]);
    Ok(())
}
