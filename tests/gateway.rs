//! Tool calls through the fleet, on real processes: three nodes on loopback, the npm
//! reference server, the CLI and the official MCP SDK clients (Python `mcp` 2.3 in its
//! default and legacy modes, TypeScript `@modelcontextprotocol/sdk` 1.x and
//! `@modelcontextprotocol/client` 2.x in auto mode) pointed at the nodes' `/mcp`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
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
    let hosts = serving(&cluster, "everything", replicas, "everything__echo")?;
    Ok((cluster, hosts))
}

/// Registers `modern` (tests/servers/modern.py, the Python SDK's own server, on the
/// 2026-07-28 protocol over stdio) with `replicas` replicas, its processes marked.
fn add_modern(cluster: &Cluster, replicas: &str, marker: &str) -> Result<()> {
    let servers = mcp_servers()?;
    add_server(
        &cluster.addr(1),
        "modern",
        &[
            "--command",
            &servers.python,
            "--arg",
            &test_server("modern.py"),
            "--replicas",
            replicas,
            "--env",
            &process_marker(marker),
        ],
    )
}

/// A three-node cluster whose server `modern` runs `replicas` healthy replicas, once
/// every node lists its tools; and the nodes that run them.
fn cluster_with_modern(replicas: &str, marker: &str) -> Result<(Cluster, Vec<u64>)> {
    let cluster = Cluster::start(3)?;
    wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    add_modern(&cluster, replicas, marker)?;
    let hosts = serving(&cluster, "modern", replicas, "modern__hello")?;
    Ok((cluster, hosts))
}

/// Waits until `server` runs `replicas` healthy replicas and every node lists its
/// `tool` (so every node has its catalog); returns the nodes that run them.
fn serving(cluster: &Cluster, server: &str, replicas: &str, tool: &str) -> Result<Vec<u64>> {
    let want: usize = replicas.parse()?;
    let hosts = eventually(Duration::from_secs(60), || {
        let healthy = healthy_slots(&cluster.addr(1), server)?;
        ensure!(healthy.len() == want, "healthy: {healthy:?}");
        Ok(healthy.iter().map(|(_, node)| *node).collect::<Vec<_>>())
    })?;
    for id in 1..=3 {
        eventually(Duration::from_secs(20), || {
            let tools = cli_json(&cluster.addr(id), &["tools"])?;
            let names: Vec<&str> = tools
                .as_array()
                .context("a list")?
                .iter()
                .filter_map(|t| t["name"].as_str())
                .collect();
            ensure!(names.contains(&tool), "tools: {names:?}");
            Ok(())
        })?;
    }
    Ok(hosts)
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

/// One failed call: exit 1 with one line on stderr that says `expected`.
fn fails_saying(endpoint: &str, args: &[&str], expected: &str) -> Result<()> {
    let output = cli(endpoint, args);
    let error = stderr_of(&output);
    ensure!(!output.status.success(), "{args:?} succeeded");
    ensure!(
        error.lines().count() == 1 && error.contains(expected),
        "{args:?}: {error:?} does not say {expected:?}"
    );
    Ok(())
}

fn echoes(endpoint: &str, server: &str, message: &str) -> Result<()> {
    let args = format!(r#"{{"message":"{message}"}}"#);
    let output = cli(endpoint, &["call", server, "echo", "--args", &args]);
    ensure!(
        output.status.success(),
        "{server} echo: {}",
        stderr_of(&output)
    );
    ensure!(stdout_of(&output) == format!("Echo: {message}"));
    Ok(())
}

#[test]
fn bad_upstreams_give_clear_errors_and_break_no_other_call() -> Result<()> {
    let (cluster, _) = cluster_with_everything("1")?;
    let endpoint = cluster.addr(1);
    let marker = process_marker("gateway-bad");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/servers/misbehaving.py");
    // One call at a time; a breaker that stays closed through the failures below, so
    // that each case shows its own error.
    add_server(
        &endpoint,
        "bad",
        &[
            "--command",
            "python3",
            "--arg",
            script,
            "--max-concurrent-calls",
            "1",
            "--breaker-failure-threshold",
            "1000",
            "--env",
            &marker,
        ],
    )?;
    add_server(
        &endpoint,
        "broken",
        &[
            "--command",
            "/bin/sh",
            "--arg",
            "-c",
            "--arg",
            "echo broken on purpose >&2; exit 3",
            "--restart-initial-backoff-ms",
            "50",
            "--restart-max-backoff-ms",
            "100",
            "--crash-loop-restarts",
            "2",
            "--env",
            &marker,
        ],
    )?;
    eventually(Duration::from_secs(30), || {
        ensure!(healthy_slots(&endpoint, "bad")?.len() == 1);
        let broken = replicas(&endpoint, "broken")?;
        ensure!(
            broken.iter().any(|r| r["state"] == "crash-loop"),
            "{broken:?}"
        );
        Ok(())
    })?;
    eventually(Duration::from_secs(20), || {
        echoes(&cluster.addr(3), "bad", "up")
    })?;

    let cases: &[(&[&str], &str)] = &[
        // A server in crash-loop: the call says so at once.
        (&["call", "broken", "anything"], "crash-loop"),
        // The call's own timeout.
        (
            &[
                "call",
                "bad",
                "slow",
                "--args",
                r#"{"seconds":3}"#,
                "--timeout-ms",
                "300",
            ],
            "within 300 ms",
        ),
        // Garbage and an over-size message: the transport drops them, and the call
        // ends at its timeout.
        (
            &["call", "bad", "garbage", "--timeout-ms", "500"],
            "within 500 ms",
        ),
        (
            &["call", "bad", "oversize", "--timeout-ms", "2000"],
            "within 2000 ms",
        ),
        // A well-formed answer that is not a tool result.
        (
            &["call", "bad", "malformed"],
            "replica bad/0: the server answered tools/call with another kind of result",
        ),
    ];
    for (args, expected) in cases {
        for via in 1..=3 {
            fails_saying(&cluster.addr(via), args, expected)?;
            echoes(&cluster.addr(via), "everything", "still")?;
        }
    }

    // A full bulkhead: while one slow call holds the only place, the next call fails
    // as overloaded at once; afterwards calls go through again.
    let slow = std::process::Command::new(binary())
        .envs(client_tls_env())
        .args(["call", "bad", "slow", "--args", r#"{"seconds":3}"#])
        .args(["--endpoint", &cluster.addr(2)])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    eventually(Duration::from_secs(3), || {
        fails_saying(
            &cluster.addr(3),
            &["call", "bad", "echo", "--args", r#"{"message":"x"}"#],
            "overloaded (1 calls in flight)",
        )
    })?;
    echoes(&cluster.addr(1), "everything", "meanwhile")?;
    let slow_output = slow.wait_with_output()?;
    ensure!(slow_output.status.success(), "the slow call failed");
    assert_eq!(stdout_of(&slow_output), "slow done");
    for via in 1..=3 {
        echoes(&cluster.addr(via), "bad", "after")?;
    }
    Ok(())
}

/// A Python SDK client of tests/clients/, driven line by line.
struct PythonClient {
    child: Child,
    input: ChildStdin,
    /// Its stdout, line by line, from a reader thread (so that a wait has a limit).
    lines: std::sync::mpsc::Receiver<String>,
}

/// How long a Python client may take to answer one line.
const CLIENT_LINE_TIMEOUT: Duration = Duration::from_secs(60);

impl PythonClient {
    fn start(mode: &str, urls: &[String]) -> Result<(PythonClient, serde_json::Value)> {
        PythonClient::start_script("python_client.py", mode, urls)
    }

    fn start_script(
        script: &str,
        mode: &str,
        urls: &[String],
    ) -> Result<(PythonClient, serde_json::Value)> {
        let servers = mcp_servers()?;
        let script = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
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
        let (send, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in output.lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    return;
                }
            }
        });
        let mut client = PythonClient {
            child,
            input,
            lines,
        };
        let hello = client.line()?;
        Ok((client, hello))
    }

    fn line(&mut self) -> Result<serde_json::Value> {
        let line = match self.lines.recv_timeout(CLIENT_LINE_TIMEOUT) {
            Ok(line) => line,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                bail!("the Python client said nothing for {CLIENT_LINE_TIMEOUT:?}")
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                bail!("the Python client ended")
            }
        };
        serde_json::from_str(&line).with_context(|| format!("parse {line:?}"))
    }

    fn echo(&mut self, message: &str) -> Result<serde_json::Value> {
        writeln!(self.input, "call {message}")?;
        self.line()
    }

    /// Reads lines until one lists tools that satisfy `wanted`.
    fn changed_until(&mut self, wanted: impl Fn(&[String]) -> bool) -> Result<Vec<String>> {
        loop {
            let line = self.line()?;
            ensure!(line.get("changed").is_some(), "unexpected line {line}");
            let names: Vec<String> = line["changed"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|name| name.as_str().map(String::from))
                .collect();
            if wanted(&names) {
                return Ok(names);
            }
        }
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
    let answer = ts_client("ts_client.cjs", &all)?;
    assert!(
        answer["session"].as_str().is_some_and(|s| !s.is_empty()),
        "{answer}"
    );
    assert_eq!(
        echoed(&answer),
        ["Echo: ts0", "Echo: ts1", "Echo: ts2", "Echo: ts3"]
    );

    // TypeScript SDK 2.x in auto mode: it discovers 2026-07-28 and needs no session.
    let answer = ts_client("ts2_client.cjs", &all)?;
    assert_eq!(answer["protocol"], "2026-07-28", "{answer}");
    assert!(answer["session"].is_null(), "{answer}");
    assert_eq!(
        echoed(&answer),
        ["Echo: v2-0", "Echo: v2-1", "Echo: v2-2", "Echo: v2-3"]
    );
    Ok(())
}

#[test]
fn clients_are_told_when_the_fleet_tool_list_changes() -> Result<()> {
    let servers = mcp_servers()?;
    let (cluster, _) = cluster_with_everything("1")?;
    // A 2026-07-28 client on a `subscriptions/listen` stream through node 2, and a
    // legacy session (its GET stream) through node 3.
    let (mut modern, hello) =
        PythonClient::start_script("python_watcher.py", "auto", &[cluster.mcp_url(2)])?;
    let (mut legacy, legacy_hello) =
        PythonClient::start_script("python_watcher.py", "legacy", &[cluster.mcp_url(3)])?;
    for hello in [&hello, &legacy_hello] {
        let tools = tool_names(hello);
        ensure!(tools.contains(&"everything__echo".to_string()), "{hello}");
        ensure!(!tools.contains(&"second__echo".to_string()), "{hello}");
    }

    // A server added through node 1: both are told, and list its tools.
    let marker = process_marker("gateway-changes");
    add_server(
        &cluster.addr(1),
        "second",
        &["--command", &servers.everything, "--env", &marker],
    )?;
    for watcher in [&mut modern, &mut legacy] {
        let tools = watcher.changed_until(|tools| tools.iter().any(|t| t == "second__echo"))?;
        ensure!(tools.contains(&"everything__echo".to_string()), "{tools:?}");
    }

    // Deleted again: its tools leave both lists.
    let removed = cli(&cluster.addr(1), &["server", "rm", "second"]);
    ensure!(removed.status.success(), "{}", stderr_of(&removed));
    for watcher in [&mut modern, &mut legacy] {
        let tools = watcher.changed_until(|tools| !tools.iter().any(|t| t == "second__echo"))?;
        ensure!(tools.contains(&"everything__echo".to_string()), "{tools:?}");
    }
    Ok(())
}

#[test]
fn upstreams_of_either_protocol_era_are_reached() -> Result<()> {
    let servers = mcp_servers()?;
    let cluster = Cluster::start(3)?;
    wait_for_leader(&cluster.addr(1), Duration::from_secs(20))?;
    // Protocol 2026-07-28 over stdio: the Python SDK's own server.
    add_modern(&cluster, "1", "gateway-eras")?;
    // 2025-11-25 and older over streamable HTTP, with sessions: the npm reference
    // server in HTTP mode, pinned to loopback.
    let (_everything, url) = http_everything(&servers)?;
    add_server(&cluster.addr(1), "web", &["--url", &url])?;

    for (server, protocol) in [("modern", "2026-07-28"), ("web", "2025-11-25")] {
        let info = eventually(Duration::from_secs(60), || {
            let status = cli_json(&cluster.addr(1), &["server", "status", server])?;
            let info = status["server_info"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            ensure!(!info.is_empty(), "no catalog yet: {status}");
            Ok(info)
        })?;
        ensure!(
            info.contains(&format!("(protocol {protocol})")),
            "{server}: {info}"
        );
    }
    for via in 1..=3 {
        let endpoint = cluster.addr(via);
        eventually(Duration::from_secs(20), || {
            let output = cli(
                &endpoint,
                &["call", "modern", "hello", "--args", r#"{"name":"fleet"}"#],
            );
            ensure!(output.status.success(), "{}", stderr_of(&output));
            ensure!(
                stdout_of(&output) == "Hello, fleet",
                "{}",
                stdout_of(&output)
            );
            Ok(())
        })?;
        eventually(Duration::from_secs(20), || {
            echoes(&endpoint, "web", "over http")
        })?;
    }

    // The modern server's prompt and resource, through every node, in both eras.
    for via in 1..=3 {
        for mode in ["auto", "legacy"] {
            let offers =
                python_offers(mode, &cluster.mcp_url(via), "modern__greet", "note://fleet")?;
            let prompts = offers["prompts"].to_string();
            ensure!(prompts.contains("\"modern__greet\""), "{offers}");
            ensure!(offers["prompt"] == "Please greet fleet.", "{offers}");
            let resources = offers["resources"].to_string();
            ensure!(
                resources.contains(r#"["note://fleet","modern__note"]"#),
                "{offers}"
            );
            ensure!(offers["resource"] == "kept by the fleet", "{offers}");
        }
    }
    // An unknown prompt and an unknown resource are clear errors.
    let unknown = python_offers("auto", &cluster.mcp_url(1), "modern__nope", "note://fleet");
    let error = format!(
        "{:#}",
        unknown.err().context("an unknown prompt was served")?
    );
    ensure!(error.contains("unknown prompt"), "{error}");
    let unknown = python_offers("auto", &cluster.mcp_url(1), "modern__greet", "note://nope");
    let error = format!(
        "{:#}",
        unknown.err().context("an unknown resource was served")?
    );
    ensure!(
        error.contains("no server of the fleet offers resource"),
        "{error}"
    );
    Ok(())
}

#[test]
fn progress_comes_back_through_any_node_in_both_protocol_eras() -> Result<()> {
    let servers = mcp_servers()?;
    let (cluster, hosts) = cluster_with_everything("1")?;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_progress.py"
    );
    // The node that runs the replica (local) and one that does not (the data plane).
    let remote = (1..=3)
        .find(|id| !hosts.contains(id))
        .context("a node without it")?;
    for via in [hosts[0], remote] {
        for mode in ["auto", "legacy"] {
            let output = Command::new(&servers.python)
                .args([
                    script,
                    mode,
                    &cluster.mcp_url(via),
                    "everything__trigger-long-running-operation",
                    r#"{"duration": 1, "steps": 4}"#,
                ])
                .output()
                .context("run the Python SDK client")?;
            ensure!(output.status.success(), "{}", stderr_of(&output));
            let line: serde_json::Value = serde_json::from_str(&stdout_of(&output))?;
            let progress: Vec<f64> = line["progress"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|step| step[0].as_f64())
                .collect();
            ensure!(
                progress == [1.0, 2.0, 3.0, 4.0],
                "through node {via} ({mode}): {line}"
            );
            ensure!(
                line["result"]
                    .as_str()
                    .is_some_and(|r| r.contains("completed")),
                "through node {via} ({mode}): {line}"
            );
        }
    }
    Ok(())
}

#[test]
fn a_request_that_asks_for_input_resumes_at_its_replica_through_any_node() -> Result<()> {
    let servers = mcp_servers()?;
    // The Python SDK's server seals its requestState with a key of its own process:
    // a retry that reached the other replica would be refused.
    let (cluster, hosts) = cluster_with_modern("2", "gateway-input")?;
    // Each node prefers its own replica: the first round runs on the replica of
    // hosts[0], and without the fleet's envelope the retry through hosts[1] would
    // reach the other one.
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/python_input.py");
    let output = Command::new(&servers.python)
        .args([
            script,
            &cluster.mcp_url(hosts[0]),
            &cluster.mcp_url(hosts[1]),
            "modern__paint",
            r#"{"wall": "kitchen"}"#,
            "4",
        ])
        .output()
        .context("run the Python SDK clients")?;
    ensure!(output.status.success(), "{}", stderr_of(&output));
    let line: serde_json::Value = serde_json::from_str(&stdout_of(&output))?;
    ensure!(line["auto"] == "kitchen painted blue", "{line}");
    let split: Vec<&str> = line["split"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect();
    ensure!(split == ["kitchen painted blue"; 4], "{line}");
    // A legacy session cannot take an input request in a result: a clear error.
    ensure!(
        line["legacy"]
            .as_str()
            .is_some_and(|r| r.starts_with("error:") && r.contains("capability")),
        "{line}"
    );
    Ok(())
}

#[test]
fn a_client_that_gives_up_cancels_the_call_upstream_through_any_node() -> Result<()> {
    let servers = mcp_servers()?;
    let (cluster, hosts) = cluster_with_modern("1", "gateway-cancel")?;
    let host = hosts[0];
    let remote = (1..=3)
        .find(|id| *id != host)
        .context("a node without it")?;
    let notes = tempfile::tempdir()?;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_cancel.py"
    );
    for via in [host, remote] {
        // With progress asked for, a call between nodes takes the streaming RPC.
        for (mode, progress) in [
            ("auto", "plain"),
            ("legacy", "plain"),
            ("auto", "progress"),
            ("legacy", "progress"),
        ] {
            let note = notes.path().join(format!("{via}-{mode}-{progress}"));
            let args = serde_json::json!({"seconds": 60, "note": note}).to_string();
            let url = cluster.mcp_url(via);
            let output = Command::new(&servers.python)
                .args([script, mode, &url, "modern__sleep", &args, progress])
                .output()
                .context("run the Python SDK client")?;
            ensure!(output.status.success(), "{}", stderr_of(&output));
            let line: serde_json::Value = serde_json::from_str(&stdout_of(&output))?;
            ensure!(
                line["gave_up"] == true,
                "through node {via} ({mode}, {progress}): {line}"
            );
            // The server hears of it and stops the call.
            eventually(Duration::from_secs(15), || {
                let written = std::fs::read_to_string(&note).unwrap_or_default();
                ensure!(
                    written == "cancelled",
                    "through node {via} ({mode}, {progress}): no note"
                );
                Ok(())
            })?;
        }
    }
    Ok(())
}

/// Runs tests/clients/python_offers.py against `url` and returns its JSON line, or its
/// stderr as the error.
fn python_offers(mode: &str, url: &str, prompt: &str, uri: &str) -> Result<serde_json::Value> {
    let servers = mcp_servers()?;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_offers.py"
    );
    let output = Command::new(&servers.python)
        .args([script, mode, url, prompt, uri])
        .output()
        .context("run the Python SDK client")?;
    ensure!(output.status.success(), "{}", stderr_of(&output));
    serde_json::from_str(&stdout_of(&output)).context("parse the client's line")
}

/// Runs one of the TypeScript SDK clients of tests/clients against `urls` (four echo
/// calls) and returns its JSON line, after checking that it listed the echo tool.
fn ts_client(script: &str, urls: &[String]) -> Result<serde_json::Value> {
    let servers = mcp_servers()?;
    let path = format!("{}/tests/clients/{script}", env!("CARGO_MANIFEST_DIR"));
    let output = Command::new("node")
        .arg(path)
        .arg("4")
        .args(urls)
        .env("NODE_PATH", &servers.node_modules)
        .output()
        .with_context(|| format!("run {script}"))?;
    ensure!(output.status.success(), "{script}: {}", stderr_of(&output));
    let answer: serde_json::Value = serde_json::from_str(&stdout_of(&output))?;
    ensure!(
        tool_names(&answer).contains(&"everything__echo".to_string()),
        "{script}: {answer}"
    );
    Ok(answer)
}

fn echoed(answer: &serde_json::Value) -> Vec<&str> {
    answer["echo"]
        .as_array()
        .map(|all| all.iter().filter_map(|e| e.as_str()).collect())
        .unwrap_or_default()
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

#[test]
fn calls_through_the_survivors_go_on_when_a_node_with_a_replica_is_killed() -> Result<()> {
    let (mut cluster, hosts) = cluster_with_everything("2")?;
    let leader = wait_for_leader(&cluster.addr(1), Duration::from_secs(10))?;
    let victim = *hosts
        .iter()
        .find(|id| **id != leader)
        .context("a follower with a replica")?;
    let survivors: Vec<u64> = (1..=3).filter(|id| *id != victim).collect();
    // Four closed-loop clients through the two survivors' /mcp, for eight seconds.
    let mut bench = Command::new(binary());
    bench.args([
        "bench",
        "call",
        "--clients",
        "4",
        "--duration",
        "8",
        "--json",
    ]);
    for id in &survivors {
        bench.args(["--url", &cluster.mcp_url(*id)]);
    }
    let bench = bench
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    std::thread::sleep(Duration::from_secs(3));
    cluster.node(victim).kill();
    let output = bench.wait_with_output()?;
    ensure!(
        output.status.success(),
        "bench call: {}",
        stderr_of(&output)
    );
    let result: serde_json::Value = serde_json::from_str(&stdout_of(&output))?;
    let (done, failed) = (
        result["operations"].as_u64().unwrap_or(0),
        result["errors"].as_u64().unwrap_or(u64::MAX),
    );
    // Only a call in flight on the victim's replica when it died may fail (it may
    // have run, so it is not sent again): at most one per client. Every call routed
    // to the dead node afterwards went to the other replica.
    ensure!(failed <= 4, "{failed} calls failed: {result}");
    ensure!(done >= 100, "only {done} calls: {result}");
    for id in survivors {
        echoes(&cluster.addr(id), "everything", "after")?;
    }
    Ok(())
}
