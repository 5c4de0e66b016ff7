//! Secret env values and headers (src/secrets), on real nodes: a secret reaches the
//! MCP server that needs it in clear, and appears nowhere else in clear: not in any
//! answer or output (get, ls, status, export, tools), log line, metric, status page,
//! data dir or backup file. A sealed value cannot be moved to another server, and a
//! node without the key refuses secrets.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::*;

/// The body of `GET path` on `http` (HOST:PORT).
fn http_get(http: &str, path: &str) -> Result<String> {
    let mut stream = std::net::TcpStream::connect(http)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {http}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}

/// Every file under `dir` (and `dir` itself if a file) that holds `needle`.
fn files_holding(path: &Path, needle: &str) -> Result<Vec<String>> {
    let output = std::process::Command::new("grep")
        .args(["-r", "-l", "-a", "-F", needle])
        .arg(path)
        .output()?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect())
}

#[test]
fn a_secret_reaches_its_server_and_nothing_else_in_clear() -> Result<()> {
    let servers = mcp_servers()?;
    let dir = tempfile::tempdir()?;
    let key = dir.path().join("secrets.key");
    let key_arg = key.display().to_string();
    let made = std::process::Command::new(binary())
        .args(["secrets-key", &key_arg])
        .output()?;
    ensure!(made.status.success(), "{made:?}");
    use std::os::unix::fs::PermissionsExt;
    ensure!(std::fs::metadata(&key)?.permissions().mode() & 0o777 == 0o600);
    let again = std::process::Command::new(binary())
        .args(["secrets-key", &key_arg])
        .output()?;
    ensure!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists"),
        "a key was overwritten"
    );

    let cluster = Cluster::start_with(3, &["--secrets-key-file", &key_arg])?;
    let one = cluster.addr(1);
    wait_for_leader(&one, Duration::from_secs(20))?;
    // Secrets of both kinds, each a string found nowhere else.
    let secret = format!("env-secret-{}", std::process::id());
    let header_secret = format!("header-secret-{}", std::process::id());
    let marker = process_marker("secrets");
    add_server(
        &cluster.addr(2),
        "everything",
        &[
            "--command",
            &servers.everything,
            "--env",
            &marker,
            "--secret-env",
            &format!("API_KEY={secret}"),
        ],
    )?;
    add_server(
        &one,
        "web",
        &[
            "--url",
            "http://127.0.0.1:9/mcp",
            "--secret-header",
            &format!("Authorization=Bearer {header_secret}"),
        ],
    )?;
    eventually(Duration::from_secs(30), || {
        ensure!(
            healthy_slots(&one, "everything")?.len() == 1,
            "not healthy yet"
        );
        Ok(())
    })?;
    // An import marks secrets by name; its own output shows them redacted.
    let import_secret = format!("import-secret-{}", std::process::id());
    let import_dir = tempfile::tempdir()?;
    let file = import_dir.path().join("mcp.json");
    std::fs::write(
        &file,
        serde_json::json!({"mcpServers": {"imported": {
            "command": "true", "env": {"API_KEY": import_secret, "PLAIN": "shown"}
        }}})
        .to_string(),
    )?;
    let file_arg = file.display().to_string();
    let (ok, imported, stderr) = cli_run(
        &one,
        &["import", &file_arg, "--secret", "API_KEY", "-o", "json"],
    );
    ensure!(ok, "{stderr}");
    ensure!(
        !imported.contains(&import_secret) && imported.contains("<secret>"),
        "{imported}"
    );
    drop(import_dir);
    let stored = cli_json(&one, &["server", "get", "imported"])?;
    let env = &stored["transport"]["stdio"]["env"];
    ensure!(
        env["API_KEY"]
            .as_str()
            .is_some_and(|v| v.starts_with("mcpfleet-sealed:v1:"))
            && env["PLAIN"] == "shown",
        "{stored}"
    );
    let (ok, _, stderr) = cli_run(&one, &["server", "rm", "imported"]);
    ensure!(ok, "{stderr}");

    // The server got it in clear, in its environment.
    let (pid, _) = processes_with_marker(&marker)
        .into_iter()
        .next()
        .context("the replica's process")?;
    let environ = std::fs::read(format!("/proc/{pid}/environ"))?;
    ensure!(
        String::from_utf8_lossy(&environ).contains(&format!("API_KEY={secret}")),
        "the replica has no API_KEY in clear"
    );

    // Every kind of output, and where each node keeps things.
    let backup = dir.path().join("backup");
    let exported = dir.path().join("exported.json");
    let mut outputs = Vec::new();
    for args in [
        vec!["server", "get", "everything", "-o", "json"],
        vec!["server", "get", "web", "-o", "json"],
        vec!["server", "ls"],
        vec!["server", "ls", "-o", "json"],
        vec!["server", "status", "everything", "-o", "json"],
        vec!["status"],
        vec!["status", "-o", "json"],
        vec!["tools", "-o", "json"],
        vec!["export"],
        vec!["export", "--file", exported.to_str().context("path")?],
        vec!["snapshot", "save", backup.to_str().context("path")?],
    ] {
        let output = cli(&cluster.addr(3), &args);
        ensure!(output.status.success(), "{args:?}: {output:?}");
        outputs.push(String::from_utf8_lossy(&output.stdout).into_owned());
        outputs.push(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let got = cli_json(&one, &["server", "get", "everything"])?;
    let sealed = got["transport"]["stdio"]["env"]["API_KEY"]
        .as_str()
        .with_context(|| format!("API_KEY in the answer: {got}"))?
        .to_string();
    ensure!(sealed.starts_with("mcpfleet-sealed:v1:"), "{got}");
    for id in 1..=3 {
        let http = cluster.nodes[id - 1].http.clone();
        outputs.push(http_get(&http, "/metrics")?);
        outputs.push(http_get(&http, "/")?);
    }
    for text in &outputs {
        for needle in [&secret, &header_secret] {
            ensure!(
                !text.contains(needle.as_str()),
                "an output shows a secret: {text}"
            );
        }
    }
    // (The search finds what is there.)
    let control = dir.path().join("control");
    std::fs::write(&control, &secret)?;
    ensure!(files_holding(dir.path(), &secret)? == [control.display().to_string()]);
    std::fs::remove_file(&control)?;
    for path in [dir.path(), cluster.dir.path()] {
        for needle in [&secret, &header_secret, &import_secret] {
            let found = files_holding(path, needle)?;
            ensure!(found.is_empty(), "files hold a secret in clear: {found:?}");
        }
    }

    // The exported file imports back unchanged; its sealed value moved to another
    // server is refused, and so is a damaged one, and nothing changes.
    let exported_arg = exported.display().to_string();
    let unchanged = cli_json(&one, &["import", &exported_arg])?;
    ensure!(
        unchanged["servers"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["action"] == "unchanged")),
        "{unchanged}"
    );
    let moved = std::fs::read_to_string(&exported)?.replace("\"everything\"", "\"moved\"");
    std::fs::write(&exported, moved)?;
    let (ok, _, stderr) = cli_run(&one, &["import", &exported_arg]);
    ensure!(
        !ok && stderr.contains("does not open with this node's secrets key"),
        "{stderr}"
    );
    ensure!(server_names(&one, false)? == ["everything", "web"]);

    // A node without the key refuses secrets, and a replica whose secret it cannot
    // open does not start.
    let bare = Cluster::start(1)?;
    wait_for_leader(&bare.addr(1), Duration::from_secs(20))?;
    let (ok, _, stderr) = cli_run(
        &bare.addr(1),
        &[
            "server",
            "add",
            "x",
            "--command",
            "true",
            "--secret-env",
            "A=b",
        ],
    );
    ensure!(!ok && stderr.contains("has no secrets key"), "{stderr}");
    drop(bare);

    Ok(())
}
