//! Failover and fencing with real processes and real time: a drained node that dies, a
//! paused node (SIGSTOP), a server that daemonizes, and a supervisor killed by hand.
//! The paused-node and daemon tests use a small MCP server of the tests' own
//! (tests/servers/recorder.py) that records when it starts and, every 20 ms, that it
//! still runs, on the host's monotonic clock.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// The node ids of `fleet` (a `status -o json`) with their liveness and admin state.
fn node_states(endpoint: &str) -> Result<BTreeMap<u64, (String, String)>> {
    let fleet = cli_json(endpoint, &["status"])?;
    Ok(fleet["nodes"]
        .as_array()
        .context("status prints nodes")?
        .iter()
        .filter_map(|n| {
            Some((
                n["id"].as_u64()?,
                (
                    n["status"].as_str()?.to_string(),
                    n["admin"].as_str()?.to_string(),
                ),
            ))
        })
        .collect())
}

/// The one healthy replica of `name`, on a node of `allowed`.
fn healthy_single(endpoint: &str, name: &str, allowed: &[u64]) -> Result<u64> {
    let healthy = healthy_slots(endpoint, name)?;
    match healthy.as_slice() {
        [(_, node)] if allowed.contains(node) => Ok(*node),
        _ => bail!("{name}: not one healthy replica on {allowed:?}: {healthy:?}"),
    }
}

#[test]
fn a_drained_node_that_dies_stops_no_failover() -> Result<()> {
    let servers = mcp_servers()?;
    let mut cluster = Cluster::start(5)?;
    let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let marker = process_marker("drained");
    // Drain a follower, then SIGKILL it, as an operator does before maintenance.
    let drained = (1..=5).find(|id| *id != leader).context("a follower")?;
    eventually(Duration::from_secs(20), || {
        let states = node_states(&cluster.addr(leader))?;
        ensure!(
            states.len() == 5,
            "not every node registered yet: {states:?}"
        );
        Ok(())
    })?;
    let output = cli(
        &cluster.addr(leader),
        &["node", "drain", &drained.to_string()],
    );
    ensure!(
        output.status.success(),
        "drain failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.node(drained).kill();
    // Then the leader dies.
    cluster.node(leader).kill();
    let alive: Vec<u64> = (1..=5)
        .filter(|id| ![drained, leader].contains(id))
        .collect();
    let endpoint = cluster.addr(alive[0]);
    eventually(Duration::from_secs(20), || {
        let new_leader = wait_for_leader(&endpoint, Duration::from_secs(20))?;
        ensure!(alive.contains(&new_leader), "leader {new_leader} is dead");
        Ok(())
    })?;
    eventually(Duration::from_secs(15), || {
        let states = node_states(&endpoint)?;
        ensure!(
            states.get(&drained) == Some(&("down".into(), "draining".into())),
            "drained node {drained}: {:?}",
            states.get(&drained)
        );
        ensure!(
            states.get(&leader).map(|s| s.0.as_str()) == Some("down"),
            "old leader {leader}: {:?}",
            states.get(&leader)
        );
        Ok(())
    })?;

    // A new server is placed and healthy on a live node.
    add_server(
        &endpoint,
        "ev",
        &["--command", &servers.everything, "--env", &marker],
    )?;
    let host = eventually(Duration::from_secs(60), || {
        healthy_single(&endpoint, "ev", &alive)
    })?;
    // The old leader comes back (so that a third death keeps a majority of the five);
    // the drained node stays dead. Killed, the replica's node hands it to a live node.
    cluster.node(leader).restart()?;
    eventually(Duration::from_secs(20), || {
        let states = node_states(&endpoint)?;
        ensure!(
            states.get(&leader).map(|s| s.0.as_str()) == Some("up"),
            "old leader {leader} not up again"
        );
        Ok(())
    })?;
    let endpoint = cluster.addr(*alive.iter().find(|id| **id != host).context("a peer")?);
    let killed_at = std::time::Instant::now();
    cluster.node(host).kill();
    let rest: Vec<u64> = (1..=5).filter(|id| ![drained, host].contains(id)).collect();
    let mut seen_lost = false;
    eventually(Duration::from_secs(30), || {
        let replicas = replicas(&endpoint, "ev")?;
        let on_dead = replicas
            .iter()
            .find(|r| r["node_id"].as_u64() == Some(host));
        if let Some(replica) = on_dead {
            // A replica on a node known to be down is never shown healthy.
            let states = node_states(&endpoint)?;
            if states.get(&host).map(|s| s.0.as_str()) == Some("down") {
                ensure!(
                    replica["state"] == "lost",
                    "a replica on down node {host} shows {}",
                    replica["state"]
                );
                seen_lost = true;
            }
        }
        healthy_single(&endpoint, "ev", &rest)
    })?;
    eprintln!(
        "ev moved off killed node {host} in {:?} (saw it as lost: {seen_lost})",
        killed_at.elapsed()
    );

    // Undraining a node that is down leaves it down.
    let output = cli(&endpoint, &["node", "undrain", &drained.to_string()]);
    ensure!(output.status.success(), "undrain failed");
    let states = node_states(&endpoint)?;
    ensure!(
        states.get(&drained) == Some(&("down".into(), "active".into())),
        "undrained dead node {drained}: {:?}",
        states.get(&drained)
    );
    Ok(())
}

/// What the recorder wrote in `dir`: per log file, (start, last tick) in ns.
fn lives(dir: &Path, prefix: &str) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().to_string();
        let numbered = name
            .strip_suffix(".log")
            .and_then(|n| n.strip_prefix(prefix))
            .is_some_and(|n| n.parse::<u32>().is_ok());
        if !numbered {
            continue;
        }
        let text = std::fs::read_to_string(entry.path())?;
        let times: Vec<u64> = text
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
            .collect();
        if let (Some(first), Some(last)) = (times.first(), times.last()) {
            found.insert(name, (*first, *last));
        }
    }
    Ok(found)
}

const TICK_NS: u64 = 20_000_000;

#[test]
fn a_paused_node_has_its_server_killed_before_a_replacement_starts() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let records = tempfile::tempdir()?;
    let record_env = format!("RECORD_DIR={}", records.path().display());
    let marker = process_marker("paused");
    let recorder = test_server("recorder.py");
    add_server(
        &cluster.addr(1),
        "rec",
        &[
            "--command",
            "python3",
            "--arg",
            &recorder,
            "--env",
            &record_env,
            "--env",
            &marker,
        ],
    )?;
    let host = eventually(Duration::from_secs(30), || {
        healthy_single(&cluster.addr(1), "rec", &[1, 2, 3])
    })?;
    let first = lives(records.path(), "")?;
    ensure!(first.len() == 1, "one recorder should run: {first:?}");
    let endpoint = cluster.addr(if host == 1 { 2 } else { 1 });
    // Pause the node, as a stalled VM or disk would.
    cluster.node(host).signal("STOP")?;
    let others: Vec<u64> = (1..=3).filter(|id| *id != host).collect();
    let moved = eventually(Duration::from_secs(30), || {
        healthy_single(&endpoint, "rec", &others)
    });
    cluster.node(host).signal("CONT")?;
    moved?;
    let all = lives(records.path(), "")?;
    ensure!(all.len() == 2, "two recorders should have run: {all:?}");
    let (old_name, old) = all
        .iter()
        .find(|(name, _)| first.contains_key(*name))
        .context("the first recorder")?;
    let (_, new) = all
        .iter()
        .find(|(name, _)| !first.contains_key(*name))
        .context("the replacement")?;
    // The old server was last seen alive at old.1 and would have ticked again by
    // old.1 + TICK_NS; the replacement must start after that.
    ensure!(
        old.1 + TICK_NS < new.0,
        "the paused node's server {old_name} ticked at {} ns, {} ms after the replacement started",
        old.1,
        (old.1 as i64 - new.0 as i64) / 1_000_000
    );
    eprintln!(
        "paused node {host}: its server was last alive {} ms before the replacement started",
        (new.0 - old.1) / 1_000_000
    );
    // Once resumed, the node runs nothing of it (its slot is elsewhere).
    eventually(Duration::from_secs(10), || {
        let states = node_states(&endpoint)?;
        ensure!(
            states.get(&host).map(|s| s.0.as_str()) == Some("up"),
            "node {host} not up again"
        );
        Ok(())
    })?;
    std::thread::sleep(Duration::from_secs(1));
    let running = processes_with_marker(&marker)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("recorder.py") && !cmd.contains("supervise"))
        .count();
    ensure!(running == 1, "{running} recorders run after the pause");
    Ok(())
}

/// Live processes among `pids`.
fn still_alive(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let state = s.rsplit_once(')')?.1.split_whitespace().next()?.to_string();
                    Some(state != "Z")
                })
                .unwrap_or(false)
        })
        .collect()
}

/// One node running the recorder with DAEMONIZE=1; returns the node, the record dir and
/// the marker.
fn daemonizing_node(
    name: &str,
    env: &[(&str, &str)],
) -> Result<(tempfile::TempDir, NodeProcess, tempfile::TempDir, String)> {
    let dir = tempfile::tempdir()?;
    let addr = format!("127.0.0.1:{}", free_port());
    let node = NodeProcess::start_with_env(
        1,
        &addr,
        &dir.path().join("node1"),
        &["--initial-cluster".into(), format!("1={addr}")],
        env,
    )?;
    wait_for_leader(&addr, Duration::from_secs(20))?;
    let records = tempfile::tempdir()?;
    let record_env = format!("RECORD_DIR={}", records.path().display());
    let marker = process_marker(name);
    add_server(
        &addr,
        "daemon",
        &[
            "--command",
            "python3",
            "--arg",
            &test_server("recorder.py"),
            "--env",
            &record_env,
            "--env",
            "DAEMONIZE=1",
            "--env",
            &marker,
        ],
    )?;
    eventually(Duration::from_secs(30), || {
        healthy_single(&addr, "daemon", &[1])?;
        ensure!(
            !lives(records.path(), "daemon-")?.is_empty(),
            "no daemon yet"
        );
        Ok(())
    })?;
    Ok((dir, node, records, marker))
}

#[test]
fn daemons_and_killed_supervisors_leave_no_process_behind() -> Result<()> {
    // With cgroups where the host has them (and the subreaper otherwise).
    let (_dir, mut node, records, marker) = daemonizing_node("daemon-cgroup", &[])?;
    let before: Vec<(u32, String)> = processes_with_marker(&marker);
    let supervisor = before
        .iter()
        .find(|(_, cmd)| cmd.contains(" supervise "))
        .map(|(pid, _)| *pid)
        .context("a supervisor")?;
    let pids: Vec<u32> = before.iter().map(|(pid, _)| *pid).collect();
    ensure!(pids.len() >= 3, "supervisor, server and daemon: {before:?}");
    // SIGKILL the supervisor by hand (as the OOM killer would): its server and the
    // server's daemon go too, and the node starts the replica again.
    let status = std::process::Command::new("kill")
        .args(["-KILL", &supervisor.to_string()])
        .status()?;
    ensure!(status.success());
    eventually(Duration::from_secs(10), || {
        let left = still_alive(&pids);
        ensure!(
            left.is_empty(),
            "left after the supervisor was killed: {left:?}"
        );
        Ok(())
    })?;
    eventually(Duration::from_secs(30), || {
        healthy_single(&node.addr, "daemon", &[1])?;
        ensure!(
            lives(records.path(), "daemon-")?.len() >= 2,
            "no new daemon yet"
        );
        Ok(())
    })?;
    // Stopping the node leaves nothing either.
    let status = node.terminate(Duration::from_secs(15))?;
    ensure!(status.success(), "node exited with {status}");
    let left = processes_with_marker(&marker);
    ensure!(left.is_empty(), "left after the node stopped: {left:?}");

    // Without cgroups: the supervisor, a child subreaper, finds the daemon all the same.
    let (_dir, mut node, _records, marker) =
        daemonizing_node("daemon-subreaper", &[("MCPFLEET_NO_CGROUP", "1")])?;
    ensure!(processes_with_marker(&marker).len() >= 3);
    let status = node.terminate(Duration::from_secs(15))?;
    ensure!(status.success(), "node exited with {status}");
    let left = processes_with_marker(&marker);
    ensure!(
        left.is_empty(),
        "left after the node stopped (no cgroup): {left:?}"
    );
    Ok(())
}

/// The supervisors (one per replica) that carry `marker`.
fn supervisors(marker: &str) -> Vec<u32> {
    let mut pids: Vec<u32> = processes_with_marker(marker)
        .into_iter()
        .filter(|(_, cmd)| cmd.contains(" supervise "))
        .map(|(pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

#[test]
fn spec_changes_restart_nothing_but_a_transport_change_rolls() -> Result<()> {
    let servers = mcp_servers()?;
    let cluster = Cluster::start(3)?;
    let endpoint = cluster.addr(1);
    wait_for_leader(&endpoint, Duration::from_secs(20))?;
    let marker = process_marker("spec-change");
    let add = |extra: &[&str]| {
        let mut args = vec!["--command", servers.everything.as_str(), "--env", &marker];
        args.extend_from_slice(extra);
        add_server(&endpoint, "ev", &args)
    };
    let healthy = |count: usize| -> Result<()> {
        let slots = healthy_slots(&endpoint, "ev")?;
        ensure!(slots.len() == count, "not {count} healthy: {slots:?}");
        Ok(())
    };
    add(&["--replicas", "2"])?;
    eventually(Duration::from_secs(60), || healthy(2))?;
    let first = supervisors(&marker);
    ensure!(first.len() == 2, "two supervisors: {first:?}");

    // A health setting applies live: the same processes keep running.
    add(&["--replicas", "2", "--health-interval-ms", "300"])?;
    std::thread::sleep(Duration::from_secs(3));
    healthy(2)?;
    ensure!(
        supervisors(&marker) == first,
        "a health setting restarted replicas"
    );

    // Three replicas instead of two: one more process, the first two untouched.
    add(&["--replicas", "3", "--health-interval-ms", "300"])?;
    eventually(Duration::from_secs(60), || healthy(3))?;
    let three = supervisors(&marker);
    ensure!(
        three.len() == 3 && first.iter().all(|pid| three.contains(pid)),
        "--replicas 3 restarted replicas: {first:?} -> {three:?}"
    );

    // A transport change (new env) rolls through the slots: one at a time, with at
    // least one healthy replica throughout.
    add(&[
        "--replicas",
        "3",
        "--health-interval-ms",
        "300",
        "--env",
        "ROLLED=1",
    ])?;
    let mut fewest = usize::MAX;
    eventually(Duration::from_secs(90), || {
        let slots = healthy_slots(&endpoint, "ev")?;
        fewest = fewest.min(slots.len());
        let now = supervisors(&marker);
        ensure!(
            slots.len() == 3 && now.len() == 3 && now.iter().all(|pid| !three.contains(pid)),
            "not rolled yet: {slots:?}, supervisors {now:?}"
        );
        Ok(())
    })?;
    ensure!(
        fewest >= 1,
        "no replica was healthy at some point of the roll"
    );
    eprintln!("transport change rolled; fewest healthy replicas seen: {fewest}");
    Ok(())
}

#[test]
fn a_voter_on_a_wiped_data_dir_is_refused_and_the_replace_procedure_works() -> Result<()> {
    let mut cluster = Cluster::start(3)?;
    let endpoint = cluster.addr(1);
    wait_for_leader(&endpoint, Duration::from_secs(20))?;
    // Every node has registered (with its incarnation).
    eventually(Duration::from_secs(20), || {
        let states = node_states(&endpoint)?;
        ensure!(states.len() == 3, "not every node registered: {states:?}");
        Ok(())
    })?;
    add_server(&endpoint, "before", &["--command", "echo"])?;

    // Node 3 restarts on an empty data dir under its old id: refused, with the reason.
    let status = cluster.node(3).terminate(Duration::from_secs(15))?;
    ensure!(status.success());
    let data = cluster.node(3).data.clone();
    std::fs::remove_dir_all(&data)?;
    let log = data.with_extension("log");
    std::fs::write(&log, "")?;
    cluster.node(3).restart()?;
    let exit = eventually(Duration::from_secs(20), || {
        let child = cluster.node(3).child.as_mut().context("running")?;
        child.try_wait()?.context("node 3 still runs")
    })?;
    cluster.node(3).child = None;
    ensure!(
        !exit.success(),
        "a replaced node must exit non-zero, got {exit}"
    );
    let text = std::fs::read_to_string(&log)?;
    let reason = text
        .lines()
        .find(|l| l.starts_with("error: "))
        .context("an error line")?;
    ensure!(
        reason.contains("cannot rejoin under its old id") && reason.contains("remove-node 3"),
        "unclear reason: {reason}"
    );
    eprintln!("{reason}");
    // The cluster keeps working meanwhile.
    add_server(&endpoint, "during", &["--command", "echo"])?;

    // The documented procedure: remove it, then start it on an empty data dir with
    // --join.
    let output = cli(&endpoint, &["cluster", "remove-node", "3"]);
    ensure!(
        output.status.success(),
        "remove-node: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::remove_dir_all(&data).ok();
    let addr = cluster.addr(3);
    cluster.nodes[2] = NodeProcess::start(3, &addr, &data, &["--join".into(), endpoint.clone()])?;
    eventually(Duration::from_secs(30), || {
        let status = cli_json(&endpoint, &["cluster", "status"])?;
        let members = status["members"].as_array().cloned().unwrap_or_default();
        ensure!(
            members.len() == 3 && members.iter().all(|m| m["voter"] == true),
            "members: {members:?}"
        );
        let states = node_states(&endpoint)?;
        ensure!(
            states.get(&3).map(|s| s.0.as_str()) == Some("up"),
            "node 3: {:?}",
            states.get(&3)
        );
        Ok(())
    })?;
    // It serves linearizable reads of everything written before.
    let names = server_names(&addr, false)?;
    ensure!(names == ["before", "during"], "node 3 lists {names:?}");
    Ok(())
}
