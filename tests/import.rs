//! `mcpfleet import` and `export` against a real node: the `mcpServers` files of
//! Claude Desktop, Claude Code, Cursor and VS Code, with real MCP servers from npm and
//! PyPI behind them. Six servers come in, all run, and `export` gives back a file that
//! imports as the same registry. A malformed file, or one with a single bad entry,
//! changes nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;
use serde_json::{json, Value};

fn write(dir: &Path, name: &str, value: &Value) -> Result<String> {
    let path = dir.join(name);
    std::fs::write(&path, serde_json::to_string_pretty(value)?)?;
    Ok(path.display().to_string())
}

/// What an import's JSON answer planned for each server, in order.
fn actions(answer: &Value) -> Result<Vec<&str>> {
    Ok(answer["servers"]
        .as_array()
        .context("servers")?
        .iter()
        .filter_map(|s| s["action"].as_str())
        .collect())
}

#[test]
fn six_servers_in_every_dialect_import_run_and_export_back() -> Result<()> {
    let servers = mcp_servers()?;
    let (_web, url) = http_everything(&servers)?;
    let cluster = Cluster::start(1)?;
    let endpoint = cluster.addr(1);
    wait_for_leader(&endpoint, Duration::from_secs(20))?;
    let dir = cluster.dir.path();
    let marker = process_marker("import");
    let (marker_key, marker_value) = marker.split_once('=').context("marker")?;

    // Claude Desktop (no type), Claude Code ("type"), Cursor (a bare url with headers).
    let claude = write(
        dir,
        "claude.json",
        &json!({
            "globalShortcut": "Ctrl+Space",
            "mcpServers": {
                "time": {
                    "command": servers.time,
                    "args": ["--local-timezone", "UTC"],
                    "env": {"TZ": "UTC", marker_key: marker_value},
                },
                "everything": {
                    "type": "stdio",
                    "command": servers.everything,
                    "env": {marker_key: marker_value},
                },
                "web": {"url": url, "headers": {"X-Team": "tools"}},
                "web-code": {"type": "http", "url": url, "headers": {"Authorization": "Bearer t0k"}},
            }
        }),
    )?;
    // VS Code: "servers", with inputs; one has a default, one is given on the line.
    let vscode_dir = dir.join(".vscode");
    std::fs::create_dir_all(&vscode_dir)?;
    let vscode = write(
        &vscode_dir,
        "mcp.json",
        &json!({
            "inputs": [
                {"type": "promptString", "id": "api-key", "description": "Key", "password": true},
                {"type": "pickString", "id": "zone", "options": ["UTC", "Europe/Paris"], "default": "Europe/Paris"},
            ],
            "servers": {
                "time-vscode": {
                    "type": "stdio",
                    "command": servers.time,
                    "args": ["--local-timezone", "${input:zone}"],
                    "env": {"API_KEY": "${input:api-key}", "ROOT": "${workspaceFolder}", marker_key: marker_value},
                },
                "web-vscode": {"type": "http", "url": url, "headers": {"X-Key": "${input:api-key}"}},
            }
        }),
    )?;

    // A dry run shows the plan and writes nothing.
    let plan = cli_json(&endpoint, &["import", &claude, "--dry-run"])?;
    assert_eq!(actions(&plan)?, ["add"; 4], "{plan}");
    assert!(plan["revision"].is_null(), "{plan}");
    assert!(server_names(&endpoint, false)?.is_empty());

    // An input the file has no default for must be given.
    let (ok, _, stderr) = cli_run(&endpoint, &["import", &vscode]);
    ensure!(!ok && stderr.contains("--input api-key=VALUE"), "{stderr}");

    let (ok, stdout, stderr) = cli_run(&endpoint, &["import", &claude]);
    ensure!(ok, "{stderr}");
    ensure!(
        stdout.contains("imported 4 server(s) in one write"),
        "{stdout}"
    );
    let (ok, _, stderr) = cli_run(&endpoint, &["import", &vscode, "--input", "api-key=k-123"]);
    ensure!(ok, "{stderr}");
    assert_eq!(
        server_names(&endpoint, false)?,
        [
            "everything",
            "time",
            "time-vscode",
            "web",
            "web-code",
            "web-vscode"
        ]
    );
    let vs = cli_json(&endpoint, &["server", "get", "time-vscode"])?;
    assert_eq!(
        vs["transport"]["stdio"]["args"],
        json!(["--local-timezone", "Europe/Paris"]),
        "{vs}"
    );
    assert_eq!(vs["transport"]["stdio"]["env"]["API_KEY"], "k-123");
    assert_eq!(
        vs["transport"]["stdio"]["env"]["ROOT"],
        dir.canonicalize()?.display().to_string()
    );
    let web = cli_json(&endpoint, &["server", "get", "web-vscode"])?;
    assert_eq!(
        web["transport"]["http"]["headers"]["X-Key"], "k-123",
        "{web}"
    );

    // Every one of them runs: each has a healthy replica and lists its tools.
    for name in [
        "everything",
        "time",
        "time-vscode",
        "web",
        "web-code",
        "web-vscode",
    ] {
        eventually(Duration::from_secs(60), || {
            let healthy = healthy_slots(&endpoint, name)?;
            ensure!(!healthy.is_empty(), "{name}: no healthy replica");
            let tools = cli_json(&endpoint, &["tools", name])?;
            ensure!(
                tools.as_array().is_some_and(|t| !t.is_empty()),
                "{name}: no tools yet"
            );
            Ok(())
        })?;
    }

    // Export gives a file that imports back as the same registry: on this cluster
    // nothing changes, and a fresh cluster ends with the same servers.
    let exported = dir.join("exported.json");
    let (ok, _, stderr) = cli_run(
        &endpoint,
        &["export", "--file", &exported.display().to_string()],
    );
    ensure!(ok, "{stderr}");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&exported)?.permissions().mode() & 0o777,
        0o600
    );
    let (ok, stdout, _) = cli_run(&endpoint, &["export"]);
    ensure!(ok);
    assert_eq!(stdout, std::fs::read_to_string(&exported)?);
    let text: Value = serde_json::from_str(&stdout)?;
    assert_eq!(
        text["mcpServers"].as_object().map(|m| m.len()),
        Some(6),
        "{text}"
    );
    let again = cli_json(&endpoint, &["import", &exported.display().to_string()])?;
    assert_eq!(actions(&again)?, ["unchanged"; 6], "{again}");
    assert!(again["revision"].is_null());

    let fresh = Cluster::start(1)?;
    wait_for_leader(&fresh.addr(1), Duration::from_secs(20))?;
    let (ok, _, stderr) = cli_run(&fresh.addr(1), &["import", &exported.display().to_string()]);
    ensure!(ok, "{stderr}");
    assert_eq!(server_specs(&fresh.addr(1))?, server_specs(&endpoint)?);
    drop(fresh);

    // An existing server is kept unless --replace is given; then only its transport
    // changes, and its other settings stay.
    let (ok, _, stderr) = cli_run(
        &endpoint,
        &[
            "server",
            "add",
            "web",
            "--url",
            &url,
            "--replicas",
            "1",
            "--breaker-open-ms",
            "777",
        ],
    );
    ensure!(ok, "{stderr}");
    let changed = write(
        dir,
        "changed.json",
        &json!({"mcpServers": {"web": {"url": url, "headers": {"X-Team": "other"}}}}),
    )?;
    let kept = cli_json(&endpoint, &["import", &changed])?;
    assert_eq!(kept["servers"][0]["action"], "keep", "{kept}");
    let web = cli_json(&endpoint, &["server", "get", "web"])?;
    assert!(
        web["transport"]["http"]["headers"].get("X-Team").is_none(),
        "{web}"
    );
    let replaced = cli_json(&endpoint, &["import", &changed, "--replace"])?;
    assert_eq!(replaced["servers"][0]["action"], "replace", "{replaced}");
    let web = cli_json(&endpoint, &["server", "get", "web"])?;
    assert_eq!(
        web["transport"]["http"]["headers"]["X-Team"], "other",
        "{web}"
    );
    assert_eq!(web["circuit_breaker"]["open_ms"], 777, "{web}");
    Ok(())
}

#[test]
fn a_bad_file_names_its_line_and_field_and_registers_nothing() -> Result<()> {
    let cluster = Cluster::start(1)?;
    let endpoint = cluster.addr(1);
    wait_for_leader(&endpoint, Duration::from_secs(20))?;
    let dir = cluster.dir.path();
    let cases: [(&str, &str); 5] = [
        (
            "{\n  \"mcpServers\": {\n    \"a\": {\"command\": \"echo\"},\n    \"b\": {\"command\": \"echo\", \"args\": \"not-a-list\"}\n  }\n}\n",
            "line 4 column 49: mcpServers.b.args: invalid type: string \"not-a-list\", expected a sequence",
        ),
        (
            "{\"mcpServers\": {\"a\": {\"command\": \"echo\"}, \"b\": {\"command\": \"echo\"}",
            "line 1 column 66: mcpServers: EOF while parsing an object",
        ),
        (
            "{\"mcpServers\": {\"a\": {\"command\": \"echo\"}, \"b\": {\"type\": \"sse\", \"url\": \"http://127.0.0.1:9/sse\"}}}",
            "mcpServers.b.type: \"sse\" is the older HTTP+SSE transport",
        ),
        (
            "{\"mcpServers\": {\"a\": {\"command\": \"echo\"}, \"no good\": {\"command\": \"echo\"}}}",
            "mcpServers.no good: invalid server name",
        ),
        (
            "{\"mcpServers\": {\"a\": {\"command\": \"echo\"}, \"b\": {\"command\": \"echo\", \"url\": \"http://127.0.0.1:9/mcp\"}}}",
            "mcpServers.b: has both \"command\" and \"url\"",
        ),
    ];
    for (i, (text, expected)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad{i}.json"));
        std::fs::write(&path, text)?;
        let (ok, _, stderr) = cli_run(&endpoint, &["import", &path.display().to_string()]);
        ensure!(!ok, "case {i} was accepted");
        ensure!(
            stderr.contains(expected) && stderr.contains(&path.display().to_string()),
            "case {i}: {stderr}"
        );
        assert!(
            server_names(&endpoint, false)?.is_empty(),
            "case {i} registered servers"
        );
    }

    // A file that cannot be read is named; a good one then goes in whole.
    let good = dir.join("good.json");
    std::fs::write(
        &good,
        r#"{"mcpServers": {"a": {"command": "echo"}, "b": {"command": "echo"}}}"#,
    )?;
    let missing = dir.join("missing.json");
    let (ok, _, stderr) = cli_run(&endpoint, &["import", &missing.display().to_string()]);
    ensure!(!ok && stderr.contains("cannot read"), "{stderr}");
    let (ok, _, stderr) = cli_run(&endpoint, &["import", &good.display().to_string()]);
    ensure!(ok, "{stderr}");
    assert_eq!(server_names(&endpoint, false)?, ["a", "b"]);
    Ok(())
}
