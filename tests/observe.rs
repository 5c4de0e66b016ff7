//! A node's `/metrics`, `/healthz` and `/readyz`, on real processes: three nodes on
//! loopback and the npm reference server. The metrics are read with the official Python
//! Prometheus client's parser (PyPI `prometheus_client`), so they must be valid
//! Prometheus text, and they must move as servers come and go and calls are made. The
//! gRPC port's standard health and reflection services are asked with gRPC's own
//! Python clients.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

/// One sample: its name and labels, as Prometheus writes them (`name{k="v",...}`, the
/// labels in name order).
type Samples = BTreeMap<String, f64>;

/// Runs tests/clients/`script` with `args` and parses the JSON it prints.
fn python_json(python: &str, script: &str, args: &[&str]) -> Result<serde_json::Value> {
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new(python)
        .arg(&path)
        .args(args)
        .output()
        .with_context(|| format!("run {script}"))?;
    ensure!(
        output.status.success(),
        "{script} {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

fn probe(python: &str, mode: &str, url: &str) -> Result<serde_json::Value> {
    python_json(python, "http_probe.py", &[mode, url])
}

/// `/metrics` of the node whose HTTP address is `http`, parsed.
fn scrape(python: &str, http: &str) -> Result<Samples> {
    let parsed = probe(python, "metrics", &format!("http://{http}/metrics"))?;
    let mut samples = Samples::new();
    for sample in parsed["samples"].as_array().context("samples")? {
        let name = sample[0].as_str().context("name")?;
        let labels = sample[1].as_object().context("labels")?;
        let key = if labels.is_empty() {
            name.to_string()
        } else {
            let labels: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}={:?}", v.as_str().unwrap_or_default()))
                .collect();
            format!("{name}{{{}}}", labels.join(","))
        };
        samples.insert(key, sample[2].as_f64().context("value")?);
    }
    Ok(samples)
}

fn value(samples: &Samples, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or(0.0)
}

/// What the standard gRPC health and reflection services of the node at `addr` say.
fn grpc(python: &str, addr: &str) -> Result<serde_json::Value> {
    python_json(python, "grpc_probe.py", &[addr])
}

fn status(python: &str, http: &str, path: &str) -> Result<(u64, String)> {
    let answer = probe(python, "status", &format!("http://{http}{path}"))?;
    Ok((
        answer["status"].as_u64().context("status")?,
        answer["body"].as_str().unwrap_or_default().to_string(),
    ))
}

#[test]
fn metrics_parse_and_move_with_servers_and_calls_and_health_follows_the_leader() -> Result<()> {
    let servers = mcp_servers()?;
    let python = servers.python.clone();
    let mut cluster = Cluster::start(3)?;
    let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let http = |cluster: &Cluster, id: u64| cluster.nodes[id as usize - 1].http.clone();

    // Every node is alive and ready, and one of them says it leads.
    let mut leaders = 0.0;
    for id in 1..=3 {
        assert_eq!(status(&python, &http(&cluster, id), "/healthz")?.0, 200);
        eventually(Duration::from_secs(20), || {
            let (code, body) = status(&python, &http(&cluster, id), "/readyz")?;
            ensure!(code == 200, "node {id}: {code} {body}");
            Ok(())
        })?;
        let samples = scrape(&python, &http(&cluster, id))?;
        assert_eq!(value(&samples, "mcpfleet_servers"), 0.0, "node {id}");
        assert_eq!(value(&samples, "mcpfleet_nodes{status=\"up\"}"), 3.0);
        ensure!(value(&samples, "mcpfleet_raft_term") >= 1.0);
        ensure!(
            value(&samples, "mcpfleet_raft_commit_index") >= 1.0,
            "node {id}"
        );
        // A node is ready once it knows a leader; its first lease renewal (the last
        // contact) may come a heartbeat later.
        eventually(Duration::from_secs(10), || {
            let samples = scrape(&python, &http(&cluster, id))?;
            let contact = value(&samples, "mcpfleet_leader_contact_age_seconds");
            ensure!(
                (0.0..5.0).contains(&contact),
                "node {id}: last contact {contact}"
            );
            Ok(())
        })?;
        leaders += value(&samples, "mcpfleet_raft_is_leader");
        assert_eq!(value(&samples, "mcpfleet_raft_leader_id"), leader as f64);
    }
    assert_eq!(leaders, 1.0, "exactly one node leads");

    // The gRPC port: health SERVING (the whole server and the client API), and
    // reflection lists the services.
    for id in 1..=3 {
        let answer = eventually(Duration::from_secs(10), || {
            let answer = grpc(&python, &cluster.addr(id))?;
            ensure!(answer["health"][""] == "SERVING", "node {id}: {answer}");
            Ok(answer)
        })?;
        assert_eq!(answer["health"]["mcpfleet.v1.Registry"], "SERVING");
        let services: Vec<&str> = answer["services"]
            .as_array()
            .context("services")?
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        for wanted in [
            "mcpfleet.v1.Registry",
            "mcpfleet.dataplane.v1.ToolCalls",
            "grpc.health.v1.Health",
        ] {
            ensure!(services.contains(&wanted), "node {id}: {services:?}");
        }
    }

    // A server comes: every node counts it, and its replica becomes healthy.
    let marker = process_marker("observe");
    add_server(
        &cluster.addr(1),
        "everything",
        &["--command", &servers.everything, "--env", &marker],
    )?;
    for id in 1..=3 {
        eventually(Duration::from_secs(30), || {
            let samples = scrape(&python, &http(&cluster, id))?;
            ensure!(value(&samples, "mcpfleet_servers") == 1.0);
            ensure!(
                value(&samples, "mcpfleet_replicas{state=\"healthy\"}") == 1.0,
                "node {id}: {samples:?}"
            );
            Ok(())
        })?;
    }
    let on_leader = scrape(&python, &http(&cluster, leader))?;
    ensure!(
        value(&on_leader, "mcpfleet_proposals_total{outcome=\"applied\"}") >= 1.0,
        "the leader counts its proposals"
    );
    ensure!(value(&on_leader, "mcpfleet_proposal_duration_seconds_count") >= 1.0);

    // Calls through node 2: counted there by server and outcome, and timed.
    let calls = "mcpfleet_calls_total{method=\"tools/call\",outcome=\"ok\",server=\"everything\"}";
    let timed = "mcpfleet_call_duration_seconds_count{method=\"tools/call\",server=\"everything\"}";
    let before = scrape(&python, &http(&cluster, 2))?;
    for _ in 0..3 {
        let output = cli(
            &cluster.addr(2),
            &[
                "call",
                "everything",
                "echo",
                "--args",
                r#"{"message":"hi"}"#,
            ],
        );
        ensure!(output.status.success(), "call: {output:?}");
    }
    let output = cli(&cluster.addr(2), &["call", "nosuch", "echo"]);
    ensure!(!output.status.success());
    let after = scrape(&python, &http(&cluster, 2))?;
    assert_eq!(
        value(&after, calls) - value(&before, calls),
        3.0,
        "{after:?}"
    );
    assert_eq!(value(&after, timed) - value(&before, timed), 3.0);
    let unknown =
        "mcpfleet_calls_total{method=\"tools/call\",outcome=\"unknown_server\",server=\"\"}";
    assert_eq!(value(&after, unknown) - value(&before, unknown), 1.0);
    for sample in after.keys() {
        ensure!(
            !sample.contains("nosuch"),
            "an unknown name made a series: {sample}"
        );
    }
    ensure!(value(&after, "process_resident_memory_bytes") > 0.0);
    ensure!(value(&after, "process_open_fds") > 0.0);

    // The server goes: every node counts none.
    let output = cli(&cluster.addr(3), &["server", "rm", "everything"]);
    ensure!(output.status.success(), "rm: {output:?}");
    for id in 1..=3 {
        eventually(Duration::from_secs(20), || {
            let samples = scrape(&python, &http(&cluster, id))?;
            ensure!(value(&samples, "mcpfleet_servers") == 0.0);
            ensure!(value(&samples, "mcpfleet_replicas{state=\"healthy\"}") == 0.0);
            Ok(())
        })?;
    }

    // Without a quorum, the last node is alive but not ready, and says why.
    let last = (1..=3).find(|id| *id != leader).context("a follower")?;
    for id in (1..=3).filter(|id| *id != last) {
        cluster.node(id).kill();
    }
    eventually(Duration::from_secs(30), || {
        let (code, body) = status(&python, &http(&cluster, last), "/readyz")?;
        ensure!(code == 503, "node {last} still ready: {body}");
        ensure!(body.starts_with("not ready: "), "{body:?}");
        Ok(())
    })?;
    assert_eq!(status(&python, &http(&cluster, last), "/healthz")?.0, 200);
    eventually(Duration::from_secs(30), || {
        let answer = grpc(&python, &cluster.addr(last))?;
        ensure!(answer["health"][""] == "NOT_SERVING", "{answer}");
        ensure!(answer["health"]["mcpfleet.v1.Registry"] == "NOT_SERVING");
        Ok(())
    })?;
    Ok(())
}

#[test]
fn a_node_logs_one_json_object_per_line_when_asked() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("node1");
    let addr = format!("127.0.0.1:{}", free_port());
    // Only openraft's lines, down to debug: the filter must let those through and
    // keep mcpfleet's own out.
    let mut node = NodeProcess::start(
        1,
        &addr,
        &data,
        &[
            "--log-format".into(),
            "json".into(),
            "--log".into(),
            "openraft=debug".into(),
        ],
    )?;
    wait_for_leader(&addr, Duration::from_secs(20))?;
    node.kill();
    let text = std::fs::read_to_string(data.with_extension("log"))?;
    let mut debug = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let entry: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("not JSON: {line}"))?;
        ensure!(entry["fields"]["message"].is_string(), "{line}");
        ensure!(entry["timestamp"].is_string(), "{line}");
        let target = entry["target"].as_str().unwrap_or_default();
        ensure!(
            target.starts_with("openraft"),
            "the filter let through {line}"
        );
        if entry["level"] == "DEBUG" {
            debug += 1;
        }
    }
    ensure!(
        debug > 0,
        "--log openraft=debug let no debug line through: {text}"
    );
    Ok(())
}
