//! Tool calls through the fleet, on real processes: three nodes on loopback, the npm
//! reference server, the CLI and the official MCP SDK clients (Python `mcp` 2.3 in its
//! default and legacy modes, TypeScript `@modelcontextprotocol/sdk` 1.x) pointed at the
//! nodes' `/mcp`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::*;

/// A cluster of three with `everything` (replicas as given) healthy; returns the nodes
/// that run a replica.
fn cluster_with_everything(replicas: &str) -> Result<(Cluster, Vec<u64>)> {
    let servers = mcp_servers()?;
    let cluster = Cluster::start(3)?;
    wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    let marker = process_marker("gateway");
    add_server(
        &cluster.addr(1),
        "everything",
        &[
            "--command",
            &servers.everything,
            "--replicas",
            replicas,
            "--env",
            &marker,
        ],
    )?;
    let want: usize = replicas.parse()?;
    let hosts = eventually(Duration::from_secs(60), || {
        let healthy = healthy_slots(&cluster.addr(1), "everything")?;
        ensure!(healthy.len() == want, "healthy: {healthy:?}");
        Ok(healthy.iter().map(|(_, node)| *node).collect::<Vec<_>>())
    })?;
    // Every node has the catalog once it lists the tool.
    for id in 1..=3 {
        eventually(Duration::from_secs(20), || {
            let tools = cli_json(&cluster.addr(id), &["tools"])?;
            let names: Vec<&str> = tools
                .as_array()
                .context("a list")?
                .iter()
                .filter_map(|t| t["name"].as_str())
                .collect();
            ensure!(names.contains(&"everything__echo"), "tools: {names:?}");
            Ok(())
        })?;
    }
    Ok((cluster, hosts))
}

fn stdout_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

fn stderr_of(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_string()
}

#[test]
fn a_call_through_any_node_reaches_the_server_and_errors_are_clear() -> Result<()> {
    let (cluster, hosts) = cluster_with_everything("1")?;
    let args = r#"{"message":"hi"}"#;
    let mut without_replica = 0;
    for id in 1..=3 {
        if !hosts.contains(&id) {
            without_replica += 1;
        }
        let output = cli(
            &cluster.addr(id),
            &["call", "everything", "echo", "--args", args],
        );
        ensure!(
            output.status.success(),
            "call through node {id}: {}",
            stderr_of(&output)
        );
        assert_eq!(stdout_of(&output), "Echo: hi", "through node {id}");
    }
    assert_eq!(without_replica, 2, "two nodes run no replica");
    // The whole result with -o json.
    let result = cli_json(
        &cluster.addr(1),
        &[
            "call",
            "everything",
            "get-sum",
            "--args",
            r#"{"a":2,"b":3}"#,
        ],
    )?;
    let text = result["content"][0]["text"].as_str().unwrap_or_default();
    assert!(text.contains('5'), "get-sum: {result}");

    // Bad calls: one clear line, exit 1, and the next call works.
    let cases: &[(&[&str], &str)] = &[
        (&["call", "everything", "no-such-tool"], "no-such-tool"),
        (&["call", "nosuch", "echo"], "unknown server \"nosuch\""),
        (
            &["call", "everything", "echo", "--args", "{not json"],
            "arguments",
        ),
        (
            &["call", "everything", "echo", "--args", "[1,2]"],
            "must be a JSON object",
        ),
        (
            &["call", "everything", "echo", "--args", r#"{"message":5}"#],
            "error",
        ),
    ];
    for (args, expected) in cases {
        let output = cli(&cluster.addr(2), args);
        let error = stderr_of(&output);
        ensure!(!output.status.success(), "{args:?} succeeded");
        ensure!(
            error.lines().count() == 1 && error.contains(expected),
            "{args:?}: {error:?} does not say {expected:?}"
        );
    }
    let output = cli(
        &cluster.addr(3),
        &["call", "everything", "echo", "--args", args],
    );
    assert_eq!(stdout_of(&output), "Echo: hi");
    Ok(())
}

/// The Python SDK client of tests/clients/python_client.py, driven line by line.
struct PythonClient {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
}

impl PythonClient {
    fn start(mode: &str, urls: &[String]) -> Result<(PythonClient, serde_json::Value)> {
        let servers = mcp_servers()?;
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/clients/python_client.py"
        );
        let mut child = Command::new(&servers.python)
            .arg(script)
            .arg(mode)
            .args(urls)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("start the Python SDK client")?;
        let input = child.stdin.take().context("stdin")?;
        let output = BufReader::new(child.stdout.take().context("stdout")?);
        let mut client = PythonClient {
            child,
            input,
            output,
        };
        let hello = client.line()?;
        Ok((client, hello))
    }

    fn line(&mut self) -> Result<serde_json::Value> {
        let mut line = String::new();
        if self.output.read_line(&mut line)? == 0 {
            bail!("the Python client ended");
        }
        serde_json::from_str(&line).with_context(|| format!("parse {line:?}"))
    }

    fn echo(&mut self, message: &str) -> Result<serde_json::Value> {
        writeln!(self.input, "call {message}")?;
        self.line()
    }
}

impl Drop for PythonClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tool_names(hello: &serde_json::Value) -> Vec<String> {
    hello["tools"]
        .as_array()
        .map(|tools| {
            tools
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn sdk_clients_list_and_call_through_any_node_in_both_protocol_eras() -> Result<()> {
    let (cluster, _) = cluster_with_everything("2")?;
    let all: Vec<String> = (1..=3).map(|id| cluster.mcp_url(id)).collect();

    // Python, default mode: 2026-07-28, no session; requests spread over all nodes.
    let (mut modern, hello) = PythonClient::start("auto", &all)?;
    assert_eq!(hello["protocol"], "2026-07-28", "{hello}");
    assert!(tool_names(&hello).contains(&"everything__echo".to_string()));
    for i in 0..6 {
        let answer = modern.echo(&format!("m{i}"))?;
        assert_eq!(answer["ok"], format!("Echo: m{i}"), "{answer}");
    }

    // Python, legacy mode: one session whose requests alternate between the nodes.
    let (mut legacy, hello) = PythonClient::start("legacy", &all)?;
    assert_ne!(hello["protocol"], "2026-07-28", "{hello}");
    assert!(tool_names(&hello).contains(&"everything__echo".to_string()));
    let mut via = std::collections::BTreeSet::new();
    for i in 0..6 {
        let answer = legacy.echo(&format!("l{i}"))?;
        assert_eq!(answer["ok"], format!("Echo: l{i}"), "{answer}");
        via.insert(answer["via"].as_str().unwrap_or_default().to_string());
    }
    assert!(via.len() >= 2, "the session's calls reached {via:?}");

    // TypeScript SDK 1.x (legacy, Mcp-Session-Id), round-robin over the nodes.
    let servers = mcp_servers()?;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/ts_client.cjs");
    let output = Command::new("node")
        .arg(script)
        .arg("4")
        .args(&all)
        .env("NODE_PATH", &servers.node_modules)
        .output()
        .context("run the TypeScript SDK client")?;
    ensure!(
        output.status.success(),
        "TypeScript client: {}",
        stderr_of(&output)
    );
    let answer: serde_json::Value = serde_json::from_str(&stdout_of(&output))?;
    assert!(
        answer["session"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert!(tool_names(&answer).contains(&"everything__echo".to_string()));
    let echoed: Vec<&str> = answer["echo"]
        .as_array()
        .context("echo")?
        .iter()
        .filter_map(|e| e.as_str())
        .collect();
    assert_eq!(echoed, ["Echo: ts0", "Echo: ts1", "Echo: ts2", "Echo: ts3"]);
    Ok(())
}

#[test]
fn a_legacy_session_carries_on_when_its_first_node_is_killed() -> Result<()> {
    let (mut cluster, hosts) = cluster_with_everything("2")?;
    let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(10))?;
    // The session starts on a follower that runs a replica; the client's next requests
    // find that node dead and go to the next one, as a load balancer would send them.
    let first = *hosts
        .iter()
        .find(|id| **id != leader)
        .context("a follower with a replica")?;
    let rest: Vec<u64> = (1..=3).filter(|id| *id != first).collect();
    let mut urls = vec![cluster.mcp_url(first)];
    urls.extend(rest.iter().map(|id| cluster.mcp_url(*id)));
    let (mut client, hello) = PythonClient::start("legacy", &urls)?;
    assert_ne!(hello["protocol"], "2026-07-28", "{hello}");
    let answer = client.echo("before")?;
    assert_eq!(answer["ok"], "Echo: before", "{answer}");
    cluster.node(first).kill();
    for i in 0..5 {
        let answer = client.echo(&format!("after{i}"))?;
        assert_eq!(answer["ok"], format!("Echo: after{i}"), "{answer}");
        assert_ne!(
            answer["via"],
            cluster.nodes[first as usize - 1].http,
            "{answer}"
        );
    }
    Ok(())
}
