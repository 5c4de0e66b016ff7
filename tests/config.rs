//! `serve --config mcpfleet.toml`, `MCPFLEET_*` variables and flags on a real node:
//! flag > environment > file > default. `mcpfleet config check` names the line, key
//! and reason of each error, and a node given a bad file refuses to start.

mod common;

use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

#[test]
fn flags_override_variables_which_override_the_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let listen = format!("127.0.0.1:{}", free_port());
    let file_http = format!("127.0.0.1:{}", free_port());
    let env_http = format!("127.0.0.1:{}", free_port());
    let data = dir.path().join("data");
    let file = dir.path().join("mcpfleet.toml");
    std::fs::write(
        &file,
        format!(
            "# a node of its own\nlisten = \"{listen}\"\nhttp = \"{file_http}\"\ndata = \"{}\"\n\
             tag = [\"from-file\"]\ncapacity = 3\nlog-format = \"json\"\n",
            data.display()
        ),
    )?;
    let check = config_check(&file);
    ensure!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    ensure!(String::from_utf8_lossy(&check.stdout).ends_with(": ok\n"));

    let mut node = NodeProcess {
        id: 1,
        addr: listen.clone(),
        http: env_http.clone(),
        data: data.clone(),
        args: vec![
            "serve".into(),
            "--config".into(),
            file.display().to_string(),
            "--tag".into(),
            "from-flag".into(),
        ],
        env: vec![("MCPFLEET_HTTP".into(), env_http.clone())],
        child: None,
    };
    node.restart()?;
    wait_for_leader(&listen, Duration::from_secs(20))?;
    let fleet = eventually(Duration::from_secs(20), || {
        let fleet = cli_json(&listen, &["status"])?;
        ensure!(
            fleet["nodes"].as_array().is_some_and(|n| n.len() == 1),
            "{fleet}"
        );
        Ok(fleet)
    })?;
    let me = &fleet["nodes"][0];
    // The flag's tag, not the file's; the file's capacity, where no flag or variable
    // says otherwise.
    assert_eq!(me["tags"], serde_json::json!(["from-flag"]), "{fleet}");
    assert_eq!(me["capacity"], 3, "{fleet}");
    // The variable's HTTP address, not the file's.
    let servers = mcp_servers()?;
    let probe = |url: &str| {
        Command::new(&servers.python)
            .arg(format!(
                "{}/tests/clients/http_probe.py",
                env!("CARGO_MANIFEST_DIR")
            ))
            .args(["status", url])
            .output()
    };
    let answer = probe(&format!("http://{env_http}/healthz"))?;
    ensure!(
        answer.status.success(),
        "{}",
        String::from_utf8_lossy(&answer.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&answer.stdout)?;
    assert_eq!(answer["status"], 200);
    ensure!(
        std::net::TcpStream::connect(&file_http).is_err(),
        "the file's HTTP address is not used"
    );
    // The file's log format.
    node.terminate(Duration::from_secs(20))?;
    let log = std::fs::read_to_string(data.with_extension("log"))?;
    let first = log.lines().next().context("a log line")?;
    ensure!(first.starts_with('{'), "not JSON: {first}");
    Ok(())
}

#[test]
fn a_bad_file_is_named_key_by_key_and_no_node_starts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let file = dir.path().join("bad.toml");
    std::fs::write(
        &file,
        format!(
            "data = \"{}\"\nheartbeat_interval_ms = 100\nlease-ms = \"soon\"\nlog-format = \"xml\"\n",
            data.display()
        ),
    )?;
    let shown = file.display().to_string();
    let expected = [
        format!(
            "{shown}:2: heartbeat_interval_ms: not a key: did you mean \"heartbeat-interval-ms\"?"
        ),
        format!("{shown}:3: lease-ms: invalid value 'soon'"),
        format!("{shown}:4: log-format: invalid value 'xml'"),
    ];
    let check = config_check(&shown);
    let stderr = String::from_utf8_lossy(&check.stderr);
    ensure!(check.status.code() == Some(1), "{stderr}");
    for line in &expected {
        ensure!(stderr.contains(line.as_str()), "{line} not in {stderr}");
    }
    let serve = Command::new(binary())
        .args(["serve", "--config", &shown])
        .output()?;
    let stderr = String::from_utf8_lossy(&serve.stderr);
    ensure!(serve.status.code() == Some(2), "{stderr}");
    ensure!(stderr.contains(expected[0].as_str()), "{stderr}");
    ensure!(!data.exists(), "a data dir was made");

    // Settings that are each valid but not together are named too.
    std::fs::write(
        &file,
        "election-timeout-min-ms = 900\nelection-timeout-max-ms = 500\n",
    )?;
    let check = config_check(&shown);
    let stderr = String::from_utf8_lossy(&check.stderr);
    ensure!(
        !check.status.success()
            && stderr.contains("election-timeout-min-ms < election-timeout-max-ms"),
        "{stderr}"
    );
    // A file that is not TOML, and one that is missing.
    std::fs::write(&file, "listen = \n")?;
    let check = config_check(&shown);
    let stderr = String::from_utf8_lossy(&check.stderr);
    ensure!(
        !check.status.success() && stderr.contains(&format!("{shown}:1: ")),
        "{stderr}"
    );
    let missing = dir.path().join("missing.toml").display().to_string();
    let check = config_check(&missing);
    ensure!(!check.status.success());
    Ok(())
}
